"""Shared-health fan-out at 50 and 200 proxy replicas on the real API server (issue 14.3).

`make cluster` must be up (or it is started and stopped here). Each replica is the real
`SharedHealthService` with its own pod-bound ServiceAccount token, all in one asyncio loop
(tests/cluster/fanout.py): API requests are counted from the API server's audit log, watch events
by the replicas' clients. Loopback only; bounded (each size takes about a minute) and stops by itself.

    .venv/bin/python bench/shared_health_fanout.py [--sizes 50 200]

Writes bench/results/shared_health_fanout.json. The "previous protocol" figures are computed, not
measured: every pod wrote its annotation every heartbeat (10 s) and watched every other pod, so
N/10 PATCH/s and N(N-1)/10 watch events/s at rest; during an incident every pod also wrote what
it had imported, so up to N(N-1)/minInterval events/s.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
import time
import uuid

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from cluster.fanout import measure  # noqa: E402
from cluster.realkube import Cluster  # noqa: E402
from cluster.scale_support import install_crds  # noqa: E402

OUT = ROOT / "bench" / "results" / "shared_health_fanout.json"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[50, 200])
    ap.add_argument("--window", type=float, default=10.0, help="seconds measured at rest and after the outage")
    args = ap.parse_args()
    cluster = Cluster.ensure()
    install_crds(cluster)
    results = []
    try:
        for n in args.sizes:
            ns = f"fanout-{n}-{uuid.uuid4().hex[:6]}"
            cluster.kubectl("create", "namespace", ns)
            try:
                t0 = time.time()
                fig = measure(cluster, ns, n, window=args.window)
                fig["wall_s"] = round(time.time() - t0, 1)
                fig["previous_protocol_computed"] = {
                    "at_rest_patch_per_s": n / 10, "at_rest_watch_events_per_s": n * (n - 1) / 10,
                    "incident_watch_events_per_s_max": n * (n - 1) / 0.5}
                print(json.dumps(fig, sort_keys=True), flush=True)
                results.append(fig)
            finally:
                cluster.kubectl("delete", "namespace", ns, "--wait=false", check=False)
    finally:
        if cluster.started:
            cluster.stop()
    OUT.write_text(json.dumps({"measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                               "machine": "2 cores, shared; API server, etcd and replicas on the same host",
                               "runs": results}, indent=2, sort_keys=True) + "\n")
    print(f"wrote {OUT.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
