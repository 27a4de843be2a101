"""Two real proxy processes with active probes on, sharing health through one emulated API server:
one probe per interval goes to a target that is down for both, not one per proxy (the probe claim
in the `detour.dev/health` annotation). The claim rules: tests/unit/policy/test_policy_probes.py and
tests/unit/shared_health/test_shared_health_probe_protocol.py; a probe closing a recovered target:
tests/integration/test_active_probes.py."""

from __future__ import annotations

import contextlib
import pathlib
import time
from collections.abc import Iterator
from typing import Any

import orjson
import pytest

from detour_proxy.cluster.health_codec import ANNOTATION
from e2e.conftest import LABELS, MODEL, NS
from e2e.proxyproc import ProxyProcess, write_atomic
from k8s_emulator import K8sEmulator, create_pod, pod_annotation, versions
from support import Sim, wait_until

INTERVAL = 2.0
PODS = ("pod-1", "pod-2")


def config(sim_a: Sim, sim_b: Sim) -> dict[str, Any]:
    return {
        "providers": [
            {"name": "a", "type": "openai", "baseURL": sim_a.v1, "apiKey": {"value": "sk-a"},
             "activeProbes": {"enabled": True, "interval": f"{INTERVAL}s", "timeout": "2s"}},
            {"name": "b", "type": "openai", "baseURL": sim_b.v1, "apiKey": {"value": "sk-b"}}],
        "routes": [{"name": "chat", "match": {"models": [MODEL]},
                    "targets": [{"provider": "a", "model": MODEL, "priority": 0},
                                {"provider": "b", "model": MODEL, "priority": 1}],
                    "retry": {"attempts": 1}, "timeout": "10s"}],
        # cooldown < interval: the interval, not the cooldown, spaces the probes
        "health": {"breaker": {"consecutiveFailures": 1, "cooldown": "1s", "maxCooldown": "1s"}},
        "server": {"drainTimeout": "1s"},
        "sharedHealth": {"enabled": True, "heartbeat": "10s", "keepalive": "10s", "minInterval": "200ms",
                         "podSelector": "app.kubernetes.io/component=proxy"},
    }


@pytest.fixture()
def proxies(tmp_path: pathlib.Path, sim_a: Sim, sim_b: Sim) -> Iterator[tuple[K8sEmulator, list[ProxyProcess]]]:
    sim_a.reset()
    sim_b.reset()
    with contextlib.ExitStack() as stack:
        k8s = stack.enter_context(K8sEmulator(kubeconfig=tmp_path / "kubeconfig", namespace=NS))
        procs = []
        for name in PODS:
            create_pod(k8s, name, LABELS)
            path = tmp_path / name / "config.yaml"
            path.parent.mkdir()
            write_atomic(path, config(sim_a, sim_b))
            proc = ProxyProcess(path, env={"POD_NAME": name, "POD_NAMESPACE": NS, "KUBECONFIG": str(k8s.kubeconfig)})
            stack.callback(proc.stop)
            procs.append(proc)
        for p in procs:
            p.wait_started()
        for name, p in zip(PODS, procs):
            wait_until(lambda: pod_annotation(k8s, name, ANNOTATION), 5, f"{name}'s annotation")
            wait_until(lambda: p.metric("detour_shared_health_api_available") == 1, 5, f"{name} publishing and watching")
        yield k8s, procs


def probes(p: ProxyProcess, outcome: str) -> float:
    return p.metric("detour_probe_attempts_total", provider="a", outcome=outcome)


def test_two_proxies_send_one_probe_per_interval_not_two(proxies, sim_a, sim_b):
    k8s, (p1, p2) = proxies
    sim_a.faults(status=503)
    for p in (p1, p2):   # each proxy's breaker of A opens (its own request, or pod-1's announcement)
        r = p.chat(MODEL)
        assert r.status_code == 200 and r.headers["x-detour-target"] == f"b/{MODEL}"
    clients = int(sim_a.stats()["total"])
    assert 1 <= clients <= 2

    # No client traffic from here on: only probes reach A. Each arrival is awaited on the sim.
    arrivals = []
    for n in range(clients + 1, clients + 4):
        sim_a.wait("total", n, timeout=15)
        arrivals.append(time.monotonic())
    gaps = [round(b - a, 2) for a, b in zip(arrivals, arrivals[1:])]
    # Without the claim each proxy probes every interval (+ a tick) on its own: two probes per
    # interval, so some gap is at most half of that (measured: 1.2-1.4 s; with claims 2.7 s).
    assert min(gaps) >= 0.9 * INTERVAL, f"two probes in one interval: {gaps}"
    wait_until(lambda: probes(p1, "failure") + probes(p2, "failure") >= 3, 5, "the probes' outcomes")
    claimed = [c["model"] for name in PODS for v in versions(k8s, "v1/pods", NS, name)
               for c in orjson.loads((v["metadata"].get("annotations") or {}).get(ANNOTATION) or "{}").get("probes", [])]
    assert len(claimed) >= 3 and set(claimed) == {MODEL}, "each probe was claimed in a health annotation first"

