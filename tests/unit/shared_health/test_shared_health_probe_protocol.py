"""One replica at a time: `cluster.prober.claim_probe` against the real SharedHealthService publish
loop (a recording API, no HTTP). A claim is written, with the open label, before the probe may
go; a peer's claim that arrives meanwhile decides by `since`; a live peer claim stops a claim."""

from __future__ import annotations

import asyncio

import orjson
import pytest

from detour_proxy.cluster import prober
from detour_proxy.cluster.health_codec import endpoint_id, format_time, parse_time
from detour_proxy.cluster.shared_health import ANNOTATION, SharedHealthService
from detour_proxy.config import parse_config
from detour_proxy.policy import TargetKey
from detour_proxy.state import AppState
from support import poll
from test_shared_health_publish import BASE, RecordingAPI


def make_state(models: list[str]) -> tuple[AppState, list[TargetKey]]:
    state = AppState()
    state.install(parse_config({
        "providers": [{"name": "p", "baseURL": BASE, "activeProbes": {"enabled": True}}],
        "routes": [{"name": "r", "targets": [{"provider": "p", "model": m} for m in models]}],
        "sharedHealth": {"enabled": True, "heartbeat": "30s", "keepalive": "60s", "minInterval": "100ms"},
    }))
    return state, [TargetKey("p", m, BASE) for m in models]


@pytest.fixture(autouse=True)
def short_settle(monkeypatch):
    monkeypatch.setattr(prober, "CLAIM_SETTLE", 0.2)


async def started(state):
    api = RecordingAPI()
    svc = SharedHealthService(state, pod="pod-1", namespace="ns", api_factory=lambda: api)
    await svc.start()
    await poll(lambda: api.patches and svc.coordinating(), 5, "the start-up publish")
    return svc, api


def peer_claim(svc: SharedHealthService, model: str, since: float) -> None:
    """pod-2's report arrives through the watch, claiming `model` from `since` (wall) for 60 s."""
    wall = svc.wall()
    doc = {"version": 1, "pod": "pod-2", "updated": format_time(wall), "heartbeatSeconds": 10, "targets": [],
           "probes": [{"provider": "p", "model": model, "endpoint": endpoint_id(BASE),
                       "since": format_time(since), "until": format_time(since + 60)}]}
    svc._on_pod("MODIFIED", {"metadata": {"name": "pod-2", "labels": {"detour.dev/health-open": "true"},
                                          "annotations": {ANNOTATION: orjson.dumps(doc).decode()}},
                             "status": {"phase": "Running"}})


def claims_written(api: RecordingAPI) -> list:
    return [doc.get("probes") for _, doc in api.patches]


async def test_a_claim_is_written_with_the_open_label_before_the_probe_goes():
    state, (key,) = make_state(["m1"])
    svc, api = await started(state)
    try:
        assert await prober.claim_probe(svc, key, 60.0)
        (claim,) = claims_written(api)[-1]
        assert (claim["model"], api.labels[-1]) == ("m1", {"detour.dev/health-open": "true"})
    finally:
        await svc.stop()


@pytest.mark.parametrize(("peer_offset", "won"), [(-0.5, False), (+0.5, True)])
async def test_simultaneous_claims_the_earliest_wins(peer_offset, won):
    state, (key,) = make_state(["m1"])
    svc, api = await started(state)
    try:
        task = asyncio.create_task(prober.claim_probe(svc, key, 60.0))
        await poll(lambda: any(claims_written(api)), 5, "our claim written")
        since = claims_written(api)[-1][0]["since"]
        peer_claim(svc, "m1", parse_time(since) + peer_offset)   # pod-2 claimed at about the same time
        assert await task is won
        mine = [k for k, _ in svc.probe_claims.held_by("pod-1", state.clock.now())]
        assert mine == ([key] if won else []), "a lost claim is withdrawn"
    finally:
        await svc.stop()


async def test_a_live_peer_claim_stops_a_claim_and_nothing_is_written():
    state, (key,) = make_state(["m1"])
    svc, api = await started(state)
    try:
        peer_claim(svc, "m1", svc.wall() - 1)
        writes = len(api.patches)
        assert not await prober.claim_probe(svc, key, 60.0)
        assert len(api.patches) == writes and svc.probe_claims.held_by("pod-1", state.clock.now()) == []
    finally:
        await svc.stop()
