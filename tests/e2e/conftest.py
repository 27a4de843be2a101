"""End-to-end fixtures: simulated providers (processes) and a cluster of real proxy processes
sharing health through one emulated API server; the figures file the tests write.

How "provider A fails for pod 1 only" is made without breaking target identity: all proxies
point provider `a` at the *same* simulator with the same model and baseURL, so the published
identity (provider, model, sha256(baseURL)[:8]) is the same everywhere. A pod's config may add a
static provider header `x-sim-fault: {"status": 503}`, which the simulator obeys per request;
provider headers are not part of a target's identity. So only that pod's requests to A fail,
and the others can only learn of the outage from its annotation.
"""

from __future__ import annotations

import contextlib
import pathlib
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import orjson
import pytest

from e2e.proxyproc import ProxyProcess, write_atomic
from k8s_emulator import K8sEmulator, api_requests, create_pod
from support import Sim, record_figures

NS = "default"
LABELS = {"app.kubernetes.io/component": "proxy", "app.kubernetes.io/name": "detour"}
MODEL = "m1"
COOLDOWN = 3.0
RESULTS = pathlib.Path(__file__).resolve().parent / "results" / "shared_health.json"


@pytest.fixture(scope="module")
def sim_a():
    s = Sim("a")
    yield s
    s.stop()


@pytest.fixture(scope="module")
def sim_b():
    s = Sim("b")
    yield s
    s.stop()


def config(sim_a: Sim, sim_b: Sim, *, fail_a: bool, heartbeat: float, min_interval: float = 0.2,
           keepalive: float | None = None) -> dict[str, Any]:
    a = {"name": "a", "type": "openai", "baseURL": sim_a.v1, "apiKey": {"value": "sk-a"}}
    if fail_a:
        a["headers"] = {"x-sim-fault": orjson.dumps({"status": 503}).decode()}
    return {
        "providers": [a, {"name": "b", "type": "openai", "baseURL": sim_b.v1, "apiKey": {"value": "sk-b"}}],
        "routes": [{"name": "chat", "match": {"models": [MODEL]}, "strategy": "priority",
                    "targets": [{"provider": "a", "model": MODEL, "priority": 0},
                                {"provider": "b", "model": MODEL, "priority": 1}],
                    "retry": {"attempts": 1}, "timeout": "10s"}],
        "health": {"breaker": {"consecutiveFailures": 1, "cooldown": f"{COOLDOWN}s", "maxCooldown": "10s"}},
        "retryBudget": {"ratio": 1.0, "minPerSecond": 100},
        "server": {"drainTimeout": "1s"},
        "sharedHealth": {"enabled": True, "heartbeat": f"{heartbeat}s", "keepalive": f"{keepalive or heartbeat}s",
                         "minInterval": f"{min_interval}s",
                         "podSelector": "app.kubernetes.io/component=proxy"},
    }


class Traffic:
    """Sequential requests to one proxy in a thread, every ~`period` s: (sent, done, target, status)."""

    def __init__(self, proxy: ProxyProcess, period: float = 0.02) -> None:
        self.proxy, self.period = proxy, period
        self.log: list[tuple[float, float, str, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with httpx.Client(base_url=self.proxy.url, timeout=10) as c:
            body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}
            while not self._stop.is_set():
                sent = time.monotonic()
                try:
                    r = c.post("/v1/chat/completions", json=body)
                    self.log.append((sent, time.monotonic(), r.headers.get("x-detour-target", ""), r.status_code))
                except httpx.HTTPError:
                    self.log.append((sent, time.monotonic(), "", -1))
                self._stop.wait(self.period)

    def __enter__(self) -> Traffic:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join(10)

    def switched_to(self, target: str, after: float) -> float | None:
        """Sent-time of the first request after `after` from which on every answer is `target`."""
        entries = [e for e in self.log if e[0] >= after]
        if not entries or entries[-1][2] != target:
            return None
        i = len(entries)
        while i > 0 and entries[i - 1][2] == target:
            i -= 1
        return entries[i][0] if i < len(entries) and len(entries) - i >= 3 else None


def patches_by_pod(k8s: K8sEmulator) -> Counter[str]:
    """PATCH requests the API server received so far, by Pod name."""
    return Counter(name for (method, _a, plural, name) in api_requests(k8s) if method == "PATCH" and plural == "pods")


def api_load(k8s: K8sEmulator, seconds: float, during: Callable[[], Any] | None = None) -> dict[str, float]:
    """API requests per second over `seconds` (PATCH vs everything else)."""
    before = Counter(api_requests(k8s))
    t0 = time.monotonic()
    time.sleep(seconds)  # a measurement window: nothing to await
    elapsed = time.monotonic() - t0
    delta = Counter(api_requests(k8s)) - before
    patches = sum(n for (m, _a, _r, _n), n in delta.items() if m == "PATCH")
    return {"seconds": round(elapsed, 2), "patch_per_s": round(patches / elapsed, 2),
            "patches": patches, "other_requests": sum(delta.values()) - patches}


def record(section: str, figures: dict[str, Any]) -> None:
    """Merge one section into tests/e2e/results/shared_health.json (git-ignored) and print it."""
    record_figures(RESULTS, section, figures, "shared-health")


Cluster = tuple[K8sEmulator, list[ProxyProcess]]


@pytest.fixture()
def cluster(tmp_path: pathlib.Path, sim_a: Sim, sim_b: Sim) -> Iterator[Callable[..., Cluster]]:
    """`cluster(heartbeat=..., keepalive=..., failing=(1,))`: an emulated API server with Pods
    pod-1..3 (plus an unrelated Pod) and a proxy process for each, started."""
    sim_a.reset()
    sim_b.reset()
    with contextlib.ExitStack() as stack:
        def start(*, heartbeat: float, keepalive: float | None = None, failing: tuple[int, ...] = ()) -> Cluster:
            k8s = stack.enter_context(K8sEmulator(kubeconfig=tmp_path / "kubeconfig", namespace=NS))
            for i in (1, 2, 3):
                create_pod(k8s, f"pod-{i}", LABELS)
            create_pod(k8s, "unrelated", {"app": "something-else"})
            procs = []
            for i in (1, 2, 3):
                path = tmp_path / f"pod-{i}" / "config.yaml"
                path.parent.mkdir()
                write_atomic(path, config(sim_a, sim_b, fail_a=i in failing, heartbeat=heartbeat, keepalive=keepalive))
                proc = ProxyProcess(path, env={"POD_NAME": f"pod-{i}", "POD_NAMESPACE": NS,
                                               "KUBECONFIG": str(k8s.kubeconfig)})
                stack.callback(proc.stop)
                procs.append(proc)
            for p in procs:
                p.wait_started()
            return k8s, procs
        yield start
