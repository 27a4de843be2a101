"""The replica count that splits per-target rate limits comes from a census of the proxy Pods
(peers are no longer all watched: only those reporting an open breaker), taken only while some
target has limits."""

from __future__ import annotations

import asyncio

from detour_proxy.state import AppState
from detour_proxy.config import parse_config
from detour_proxy.policy import FakeClock
from detour_proxy.cluster.shared_health import SharedHealthService
from support import poll


class CensusAPI:
    """`list_pods` only: the pods of the Deployment; records each call's parameters."""

    def __init__(self, names: list[str]) -> None:
        self.names = names
        self.calls: list[tuple[dict, bool]] = []

    async def list_pods(self, namespace: str, params: dict, metadata_only: bool = False) -> tuple[list, str]:
        self.calls.append((params, metadata_only))
        return [{"metadata": {"name": n}} for n in self.names], "5"


def admitted(state: AppState, clock: FakeClock) -> int:
    target = state.gateway.routes[0].targets[0].state
    n = 0
    while target.try_acquire(clock.now()):
        target.release(clock.now())
        n += 1
        if n > 100:
            break
    return n


def make_state(clock: FakeClock, limits: dict | None) -> AppState:
    state = AppState(clock=clock)
    target = {"provider": "p", "model": "m", **({"limits": limits} if limits else {})}
    state.install(parse_config({
        "providers": [{"name": "p", "baseURL": "http://127.0.0.1:1/v1"}],
        "routes": [{"name": "r", "targets": [target]}], "sharedHealth": {"enabled": True},
    }))
    return state


async def census(state: AppState, api: CensusAPI, until) -> None:
    svc = SharedHealthService(state, pod="pod-1", namespace="ns")
    svc.api = api  # type: ignore[assignment]
    task = asyncio.create_task(svc._census_loop(state.gateway.config.shared_health))
    try:
        await poll(until, 5, "a census")
        await asyncio.sleep(0.05)  # nothing more happens until the next interval
    finally:
        task.cancel()


async def test_the_census_splits_requests_per_minute_across_the_replicas_it_counts():
    clock = FakeClock(1000.0)
    state = make_state(clock, {"requestsPerMinute": 30})
    api = CensusAPI(["pod-1", "pod-2", "pod-3"])
    await census(state, api, lambda: api.calls)
    assert admitted(state, clock) == 10            # 30 rpm / 3 replicas
    (params, metadata_only), = api.calls           # one metadata-only LIST from the watch cache
    assert metadata_only and params["resourceVersion"] == "0"
    api.names = ["pod-1"]
    await census(state, api, lambda: len(api.calls) == 2)
    clock.advance(61)
    assert admitted(state, clock) == 30            # alone again: the whole limit


async def test_no_census_without_limits():
    state = make_state(FakeClock(1000.0), None)
    api = CensusAPI(["pod-1", "pod-2"])
    svc = SharedHealthService(state, pod="pod-1", namespace="ns")
    svc.api = api  # type: ignore[assignment]
    task = asyncio.create_task(svc._census_loop(state.gateway.config.shared_health))
    await asyncio.sleep(0.1)
    task.cancel()
    assert api.calls == []
