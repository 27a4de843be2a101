"""A peer whose Pod is gone takes its claims with it: opens imported only from it are dropped,
while local evidence and other live peers' claims keep a target open. FakeClock, no I/O."""

from __future__ import annotations

import orjson

from detour_proxy.state import AppState
from detour_proxy.config import parse_config
from detour_proxy.policy import BreakerState, FakeClock, Outcome, OutcomeKind, TargetKey
from detour_proxy.cluster.shared_health import ANNOTATION, SharedHealthService
from detour_proxy.cluster.health_codec import endpoint_id, format_time

WALL0 = 1_800_000_000.0
BASE = "http://127.0.0.1:1/v1"


def pod(name: str, open_models: list[str], *, until: float = WALL0 + 30, phase: str = "Running") -> dict:
    doc = {"version": 1, "pod": name, "updated": format_time(WALL0), "heartbeatSeconds": 10,
           "targets": [{"provider": "p", "model": m, "endpoint": endpoint_id(BASE), "state": "open",
                        "openUntil": format_time(until)} for m in open_models]}
    return {"metadata": {"name": name, "annotations": {ANNOTATION: orjson.dumps(doc).decode()}},
            "status": {"phase": phase}}


def test_deleting_a_pod_drops_the_opens_imported_only_from_it():
    clock = FakeClock(1000.0)
    state = AppState(clock=clock)
    state.install(parse_config({
        "providers": [{"name": "p", "baseURL": BASE}],
        "routes": [{"name": "r", "targets": [{"provider": "p", "model": m} for m in "ABCD"]}],
        "health": {"breaker": {"consecutiveFailures": 1, "cooldown": "20s"}},
    }))
    svc = SharedHealthService(state, pod="pod-1", namespace="ns", wall=lambda: WALL0)
    target = {m: state.registry.get(TargetKey("p", m, BASE)) for m in "ABCD"}

    def is_open(m: str) -> bool:
        return target[m].breaker_state(clock.now()) is BreakerState.OPEN

    target["D"].record(Outcome(OutcomeKind.HTTP_ERROR, status=503), clock.now())  # seen locally
    svc._on_pod("ADDED", pod("pod-2", ["A", "C", "D"]))
    svc._on_pod("ADDED", pod("pod-3", ["B", "C"]))
    assert all(is_open(m) for m in "ABCD")

    svc._on_pod("DELETED", pod("pod-2", ["A", "C", "D"]))
    assert not is_open("A") and target["A"].admits(clock.now()), "A was open only on pod-2's word"
    assert is_open("C"), "pod-3 still claims C"
    assert is_open("D"), "D failed here: local evidence keeps its cooldown"
    assert is_open("B")

    # A Pod that finished counts as gone too; what it alone claimed is dropped.
    svc._on_pod("MODIFIED", pod("pod-3", ["B", "C"], phase="Failed"))
    assert not is_open("B") and not is_open("C")
    assert is_open("D")


def test_a_gone_pod_whose_claim_already_expired_changes_nothing_later():
    clock = FakeClock(1000.0)
    state = AppState(clock=clock)
    state.install(parse_config({
        "providers": [{"name": "p", "baseURL": BASE}],
        "routes": [{"name": "r", "targets": [{"provider": "p", "model": "A"}]}],
        "health": {"breaker": {"consecutiveFailures": 1, "cooldown": "20s"}},
    }))
    wall = [WALL0]
    svc = SharedHealthService(state, pod="pod-1", namespace="ns", wall=lambda: wall[0])
    a = state.registry.get(TargetKey("p", "A", BASE))
    svc._on_pod("ADDED", pod("pod-2", ["A"], until=WALL0 + 5))
    clock.advance(6)
    wall[0] += 6
    # The import ran out; the local breaker went half-open and a local failure re-opened it.
    assert a.breaker_state(clock.now()) is BreakerState.HALF_OPEN
    ticket = a.acquire(clock.now())
    a.record(Outcome(OutcomeKind.HTTP_ERROR, status=503), clock.now(), ticket)
    assert a.breaker_state(clock.now()) is BreakerState.OPEN
    svc._on_pod("DELETED", pod("pod-2", ["A"]))
    assert a.breaker_state(clock.now()) is BreakerState.OPEN, "a local re-open is not pod-2's claim"
