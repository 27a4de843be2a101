"""CPU instructions per request, counted by valgrind's callgrind: drift-proof costs.

    .venv/bin/python bench/instructions.py       # about 3 minutes; needs valgrind (apt-get install valgrind)

Throughput on a shared VM drifts by more than the few percent some questions are about ("do
header/metadata routes and limits cost anything?"). Instructions executed per request do not:
for the same code, inputs and environment callgrind gives the same count however busy the
machine is. Each server under test runs under callgrind; after a warm-up its counters are
zeroed, N sequential keep-alive requests are sent (the upstream and the client run natively
in other processes, so only the server is counted), and the counters are dumped: the total
divided by N is the cost of one request, including uvicorn, the event loop and aiohttp.
Writes bench/results/instructions.md and .json.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from procs import HEADERS, Procs, free_port, wait_ready  # noqa: E402
from run import BENCH, BODY, PY, ROOT, detour_config  # noqa: E402

SERVERS = ("passthrough", "detour", "detour-rules")
LABELS = {"passthrough": "raw-ASGI pass-through (ceiling)", "detour": "Detour",
          "detour-rules": "Detour, header/metadata routes + limits"}


def drive(port: int, n: int, stream: bool) -> None:
    """n sequential requests over one keep-alive connection, each read to the end."""
    body = json.dumps({**BODY, "stream": True} if stream else BODY).encode()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        for _ in range(n):
            conn.request("POST", "/v1/chat/completions", body, HEADERS)
            resp = conn.getresponse()
            data = resp.read()
            if resp.status != 200:
                raise RuntimeError(f"HTTP {resp.status}: {data[:200]!r}")
    finally:
        conn.close()


def callgrind(cmd: str, pid: int) -> None:
    subprocess.run(["callgrind_control", cmd, str(pid)], check=True, capture_output=True, timeout=60)


def total_instructions(out_prefix: Path, pid: int, before: set[Path]) -> int:
    """The `summary:` line of the newest dump of `pid` (counts since the last zeroing)."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        dumps = sorted(set(out_prefix.parent.glob(f"{out_prefix.name}.{pid}.*")) - before)
        for d in dumps:
            for line in d.read_text(errors="replace").splitlines():
                if line.startswith("summary:"):
                    return int(line.split()[1])
        time.sleep(0.2)
    raise RuntimeError("callgrind wrote no dump")


def measure(server: str, upstream: str, tmp: Path, procs: Procs, a: argparse.Namespace) -> dict:
    port = free_port()
    if server == "passthrough":
        argv = [PY, str(BENCH / "passthrough.py"), "--upstream", upstream, "--port", str(port)]
    else:
        cfg = tmp / f"{server}.yaml"
        cfg.write_text(detour_config(upstream, rules=server == "detour-rules"))
        argv = [PY, "-m", "detour_proxy", "--config", str(cfg), "--port", str(port), "--no-watch", "--no-access-log"]
    prefix = tmp / f"cg.{server}"
    proc = procs.start(server, ["valgrind", "--tool=callgrind", f"--callgrind-out-file={prefix}.%p", *argv],
                       a.server_core)
    url = f"http://127.0.0.1:{port}"
    wait_ready(proc, url + "/v1/chat/completions", json.dumps(BODY).encode(), timeout=300)
    out = {}
    try:
        for workload, stream in (("non-stream", False), ("stream", True)):
            drive(port, a.warmup, stream)
            callgrind("-z", proc.pid)
            before = set(tmp.glob(f"{prefix.name}.{proc.pid}.*"))
            drive(port, a.requests, stream)
            callgrind("-d", proc.pid)
            out[workload] = total_instructions(prefix, proc.pid, before) / a.requests
            print(f"  {server:13} {workload:10} {out[workload] / 1000:8,.0f} k instructions/request", flush=True)
    finally:
        procs.stop(proc)
    return out


def render(res: dict) -> str:
    m, r = res["meta"], res["results"]
    lines = [f"# Detour: CPU instructions per request ({m['date']})", "",
             f"callgrind (valgrind {m['valgrind']}), commit {m['commit']}; {m['requests']} sequential keep-alive "
             f"requests per cell after {m['warmup']} warm-up requests, upstream bench/upstream.py (4 content chunks "
             "per stream) running natively. Counts are of the server process only and repeat exactly for the "
             "same code and inputs, whatever else the machine is doing.", "",
             "| workload | " + " | ".join(LABELS[s] for s in SERVERS) + " | Detour / pass-through | rules / plain |",
             "|---|" + "---:|" * (len(SERVERS) + 2)]
    for w in ("non-stream", "stream"):
        p, d, x = (r[s][w] for s in SERVERS)
        lines.append(f"| {w} | " + " | ".join(f"{v / 1000:,.0f} k" for v in (p, d, x))
                     + f" | {d / p:.2f} | {x / d:.3f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--requests", type=int, default=500)
    p.add_argument("--warmup", type=int, default=100)
    p.add_argument("--server-core", type=int, default=0)
    p.add_argument("--client-core", type=int, default=1)
    p.add_argument("--out", default=str(BENCH / "results"))
    a = p.parse_args(argv)
    if not shutil.which("valgrind"):
        p.error("valgrind is not installed (apt-get install -y valgrind)")
    tmp = Path(tempfile.mkdtemp(prefix="detour-instr-"))
    procs = Procs(tmp)
    try:
        os.sched_setaffinity(0, {a.client_core})
        uport = free_port()
        upstream_proc = procs.start("upstream", [PY, str(BENCH / "upstream.py"), "--port", str(uport)], a.client_core)
        upstream = f"http://127.0.0.1:{uport}"
        wait_ready(upstream_proc, upstream + "/v1/chat/completions", json.dumps(BODY).encode())
        results = {s: measure(s, upstream, tmp, procs, a) for s in SERVERS}
    finally:
        procs.close()
    meta = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "requests": a.requests, "warmup": a.warmup,
            "valgrind": subprocess.run(["valgrind", "--version"], capture_output=True, text=True).stdout.strip(),
            "commit": subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                                     text=True).stdout.strip()}
    res = {"meta": meta, "results": results}
    md = render(res)
    print()
    print(md)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "instructions.md").write_text(md)
    (out / "instructions.json").write_text(json.dumps(res, indent=2) + "\n")
    shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
