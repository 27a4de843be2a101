"""Shared-health fan-out with N simulated proxy replicas on the real API server (issue 14.3).

Each replica is the real `SharedHealthService` with its own `AppState` (real policy engine) and
its own pod-bound ServiceAccount token (so the chart's RBAC and admission policy apply), all in one
asyncio loop: lightweight, but every API request and watch event is real. Replicas do not serve
HTTP; "traffic" is the engine's own bookkeeping: each replica sends to target A every
`1/rate` s (random phase) while its breaker admits it, and records a failure during an outage.

Measured per phase (API requests from the audit log, watch events counted by each replica's client):
- rest: steady traffic, no failure, for `window` s (after the health window has filled);
- outage: A fails for everyone; each replica's breaker opens after `consecutiveFailures` local
  failures unless it has imported a peer's open period first; the phase ends when every replica
  avoids A, plus `window` s.
Figures: requests/s and watch events/s per phase, PATCHes, staleness (first open -> last replica
avoiding A), and replicas that opened on their own evidence (each costs one PATCH x N watchers).
"""

from __future__ import annotations

import asyncio
import random
import ssl
import time
from collections import Counter
from typing import Any

from detour_proxy.cluster.kube_api import KubeAPI
from detour_proxy.cluster.shared_health import SharedHealthService
from detour_proxy.config import parse_config
from detour_proxy.policy import BreakerState, Outcome, OutcomeKind, TargetKey
from detour_proxy.state import AppState

from cluster.realkube import Cluster
from cluster.scale_support import PROXY_SA, calls, install_chart_rbac

BASE = "http://127.0.0.1:9/v1"   # never contacted: outcomes are recorded, not sent
MODEL = "m1"
HEALTH_WINDOW = 5.0  # short, so the request figures reach their steady state quickly
LABELS = {"app.kubernetes.io/component": "proxy", "app.kubernetes.io/name": "detour"}


class CountingAPI(KubeAPI):
    """KubeAPI that counts the watch events it receives."""

    events = 0

    async def watch_pods(self, *args: Any, **kwargs: Any):  # type: ignore[override]
        async for ev in super().watch_pods(*args, **kwargs):
            if ev.get("type") in ("ADDED", "MODIFIED", "DELETED"):
                CountingAPI.events += 1
            yield ev


def _config(heartbeat: float, keepalive: float, min_interval: float) -> dict[str, Any]:
    return {
        "providers": [{"name": "a", "baseURL": BASE}, {"name": "b", "baseURL": BASE.replace(":9", ":10")}],
        "routes": [{"name": "r", "targets": [{"provider": "a", "model": MODEL}, {"provider": "b", "model": MODEL}]}],
        "health": {"window": f"{HEALTH_WINDOW}s",
                   "breaker": {"consecutiveFailures": 3, "cooldown": "60s", "maxCooldown": "120s"}},
        "sharedHealth": {"enabled": True, "heartbeat": f"{heartbeat}s", "keepalive": f"{keepalive}s",
                         "minInterval": f"{min_interval}s", "podSelector": "app.kubernetes.io/component=proxy"},
    }


def create_pods(cluster: Cluster, ns: str, n: int) -> list[str]:
    names = [f"proxy-{i:03d}" for i in range(n)]
    cluster.apply([{"apiVersion": "v1", "kind": "Pod", "metadata": {"name": p, "labels": LABELS},
                    "spec": {"serviceAccountName": PROXY_SA, "automountServiceAccountToken": False,
                             "containers": [{"name": "proxy", "image": "detour-proxy:sim"}]}} for p in names], ns=ns)
    return names


class Replica:
    def __init__(self, pod: str, ns: str, server: str, token: str, ctx: ssl.SSLContext, config: dict[str, Any]) -> None:
        self.state = AppState()
        self.state.install(parse_config(config))
        self.key = TargetKey("a", MODEL, BASE)
        self.pod = pod
        self.svc = SharedHealthService(self.state, pod=pod, namespace=ns,
                                       api_factory=lambda: CountingAPI(server, token=lambda: f"Bearer {token}",
                                                                       ssl_context=ctx))
        self.opened_locally = False

    def avoids_a(self) -> bool:
        st = self.state.registry.get(self.key)
        return st is not None and st.breaker_state(self.state.clock.now()) is not BreakerState.CLOSED

    async def traffic(self, rate: float, failing: asyncio.Event, stop: asyncio.Event) -> None:
        await asyncio.sleep(random.random() / rate)
        while not stop.is_set():
            st = self.state.registry.state(self.key)
            now = self.state.clock.now()
            if st.breaker_state(now) is BreakerState.CLOSED:
                if failing.is_set():
                    st.record(Outcome(OutcomeKind.HTTP_ERROR, status=503), now)
                    if st.breaker_state(now) is BreakerState.OPEN and not st.breaker.imported:
                        self.opened_locally = True
                else:
                    st.record(Outcome(OutcomeKind.SUCCESS), now)
            await asyncio.sleep(1 / rate)


def _published(r: Replica) -> bool:
    return r.svc.publishes >= 1 and r.state.metrics.shared_api._value.get() == 1  # noqa: SLF001


async def _run(cluster: Cluster, ns: str, pods: list[str], tokens: dict[str, str], *, rate: float,
               window: float, heartbeat: float, keepalive: float, min_interval: float) -> dict[str, Any]:
    ctx = ssl.create_default_context(cafile=str(cluster.dir / "pki" / "ca.crt"))
    config = _config(heartbeat, keepalive, min_interval)
    replicas = [Replica(p, ns, cluster.server, tokens[p], ctx, config) for p in pods]
    user = f"system:serviceaccount:{ns}:{PROXY_SA}"
    failing, stop = asyncio.Event(), asyncio.Event()
    for r in replicas:
        await r.svc.start()
    traffic = [asyncio.create_task(r.traffic(rate, failing, stop)) for r in replicas]
    try:
        t_start = time.time()
        while not all(_published(r) for r in replicas):
            if time.time() - t_start > 120:
                raise AssertionError("replicas did not all publish and watch within 120 s")
            await asyncio.sleep(0.2)
        # Steady traffic until the health window is full and one heartbeat more has written the
        # figures: "at rest" is steady traffic without failures, not an idle cluster.
        await asyncio.sleep(HEALTH_WINDOW + heartbeat + 1)

        def phase(since: float, ev0: int) -> dict[str, Any]:
            seconds = time.time() - since
            reqs = calls(cluster, since, user)
            by = Counter(v for v, *_ in reqs)
            events = CountingAPI.events - ev0
            return {"seconds": round(seconds, 2), "requests": len(reqs), "patches": by["patch"],
                    "lists": by["list"], "requests_per_s": round(len(reqs) / seconds, 2),
                    "watch_events": events, "watch_events_per_s": round(events / seconds, 2)}

        t_rest, ev_rest = time.time(), CountingAPI.events
        await asyncio.sleep(window)  # the measurement window at rest: nothing to await
        rest = phase(t_rest, ev_rest)

        t_out, ev_out = time.time(), CountingAPI.events
        failing.set()
        first_open = None
        while not all(r.avoids_a() for r in replicas):
            if first_open is None and any(r.avoids_a() for r in replicas):
                first_open = time.monotonic()
            if time.time() - t_out > 60:
                raise AssertionError(f"{sum(r.avoids_a() for r in replicas)}/{len(replicas)} avoid A after 60 s")
            await asyncio.sleep(0.005)
        all_avoid = time.monotonic()
        await asyncio.sleep(window)  # the measurement window: the incident's tail
        outage = phase(t_out, ev_out)
        outage["opened_locally"] = sum(r.opened_locally for r in replicas)
        outage["staleness_s"] = round(all_avoid - (first_open or all_avoid), 3)
        return {"replicas": len(replicas), "client_rate_per_replica": rate, "heartbeat_s": heartbeat,
                "keepalive_s": keepalive, "min_interval_s": min_interval, "at_rest": rest, "outage": outage}
    finally:
        stop.set()
        for t in traffic:
            t.cancel()
        await asyncio.gather(*traffic, return_exceptions=True)
        await asyncio.gather(*(r.svc.stop() for r in replicas), return_exceptions=True)


def measure(cluster: Cluster, ns: str, n: int, *, rate: float = 5.0, window: float = 5.0,
            heartbeat: float = 10.0, keepalive: float = 300.0, min_interval: float = 0.5) -> dict[str, Any]:
    """Set up `n` Pods with pod-bound tokens in `ns` and measure (see the module docstring)."""
    admission = install_chart_rbac(cluster, ns)
    try:
        pods = create_pods(cluster, ns, n)
        tokens = {p: cluster.token(PROXY_SA, ns, pod=p) for p in pods}
        CountingAPI.events = 0
        return asyncio.run(_run(cluster, ns, pods, tokens, rate=rate, window=window, heartbeat=heartbeat,
                                keepalive=keepalive, min_interval=min_interval))
    finally:
        cluster.kubectl("delete", *admission, "--ignore-not-found", check=False)
