"""Peers seen through the Pod watch split per-target rate limits across replicas."""

from __future__ import annotations

import orjson

from detour_proxy.state import AppState
from detour_proxy.config import parse_config
from detour_proxy.policy import FakeClock
from detour_proxy.cluster.shared_health import ANNOTATION, SharedHealthService
from detour_proxy.cluster.health_codec import format_time

WALL0 = 1_800_000_000.0


def pod(name: str, updated: float) -> dict:
    doc = {"version": 1, "pod": name, "updated": format_time(updated), "heartbeatSeconds": 10, "targets": []}
    return {"metadata": {"name": name, "annotations": {ANNOTATION: orjson.dumps(doc).decode()}},
            "status": {"phase": "Running"}}


def admitted(state: AppState, clock: FakeClock) -> int:
    target = state.gateway.routes[0].targets[0].state
    n = 0
    while target.try_acquire(clock.now()):
        target.release(clock.now())
        n += 1
        if n > 100:
            break
    return n


def test_fresh_peers_split_requests_per_minute_and_gone_peers_restore_it():
    clock = FakeClock(1000.0)
    state = AppState(clock=clock)
    state.install(parse_config({
        "providers": [{"name": "p", "baseURL": "http://127.0.0.1:1/v1"}],
        "routes": [{"name": "r", "targets": [{"provider": "p", "model": "m",
                                              "limits": {"requestsPerMinute": 30}}]}],
    }))
    svc = SharedHealthService(state, pod="pod-1", namespace="ns", wall=lambda: WALL0)
    svc._on_pod("ADDED", pod("pod-2", WALL0))
    svc._on_pod("ADDED", pod("pod-3", WALL0))
    assert admitted(state, clock) == 10            # 30 rpm / 3 replicas
    svc._on_pod("DELETED", pod("pod-2", WALL0))
    svc._on_pod("DELETED", pod("pod-3", WALL0))
    clock.advance(61)
    assert admitted(state, clock) == 30            # alone again: the whole limit
