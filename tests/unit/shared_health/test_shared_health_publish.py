"""When the publisher writes: a breaker change goes out before the heartbeat, held back to at most
one write per `minInterval`, with every change since the last write in it; imports echo nothing.

The service runs its real publish loop against a recording API object (no HTTP), on the real
event loop clock; breakers change through the real `HealthRegistry`, as requests would make them.
"""

from __future__ import annotations

import asyncio

import orjson

from detour_proxy.state import AppState
from detour_proxy.config import parse_config
from detour_proxy.policy import BreakerState, Outcome, OutcomeKind, TargetKey
from detour_proxy.cluster.shared_health import ANNOTATION, SharedHealthService
from detour_proxy.cluster.health_codec import endpoint_id, format_time
from support import poll

BASE = "http://127.0.0.1:1/v1"
HEARTBEAT = 30.0      # far longer than the test: every write seen here is change-driven
MIN_INTERVAL = 0.5


class RecordingAPI:
    """Stands in for `KubeAPI`: records each PATCH (loop time, document); a quiet watch."""

    def __init__(self) -> None:
        self.patches: list[tuple[float, dict]] = []
        self.labels: list[dict] = []

    async def patch_annotation(self, namespace: str, pod: str, key: str, value: str, labels=None) -> None:
        self.patches.append((asyncio.get_running_loop().time(), orjson.loads(value)))
        self.labels.append(dict(labels or {}))

    async def list_pods(self, namespace: str, params: dict, metadata_only: bool = False) -> tuple[list, str]:
        return [], "1"

    async def watch_pods(self, namespace, params, rv, idle, on_open=None, metadata_only=False):
        if on_open is not None:
            on_open()
        await asyncio.Event().wait()
        yield {}  # pragma: no cover - never reached

    async def close(self) -> None:
        pass


def make_state(models: list[str], heartbeat: float = HEARTBEAT) -> tuple[AppState, list[TargetKey]]:
    state = AppState()
    state.install(parse_config({
        "providers": [{"name": "p", "baseURL": BASE}],
        "routes": [{"name": "r", "targets": [{"provider": "p", "model": m} for m in models]}],
        "health": {"breaker": {"consecutiveFailures": 1, "cooldown": "60s"}},
        "sharedHealth": {"enabled": True, "heartbeat": f"{heartbeat}s", "keepalive": "60s",
                         "minInterval": f"{MIN_INTERVAL}s"},
    }))
    return state, [TargetKey("p", m, BASE) for m in models]


def trip(state: AppState, key: TargetKey) -> None:
    now = state.clock.now()
    state.registry.get(key).record(Outcome(OutcomeKind.HTTP_ERROR, status=503), now)
    assert state.registry.get(key).breaker_state(now) is BreakerState.OPEN


def open_models(doc: dict) -> set[str]:
    return {t["model"] for t in doc["targets"] if t["state"] == "open"}


async def test_breaker_changes_are_published_before_the_heartbeat_at_most_once_per_min_interval():
    state, keys = make_state(["m1", "m2", "m3", "m4", "m5"])
    api = RecordingAPI()
    svc = SharedHealthService(state, pod="pod-1", namespace="ns", api_factory=lambda: api)
    await svc.start()
    loop = asyncio.get_running_loop()
    try:
        await poll(lambda: api.patches, 5, "the start-up publish")
        t0 = api.patches[0][0]

        # Three breakers open right after a write: one write, held back to minInterval.
        for key in keys[:3]:
            trip(state, key)
        await poll(lambda: len(api.patches) >= 2, 5, "the publish of the opened breakers")
        t1, doc = api.patches[1]
        assert t1 - t0 >= MIN_INTERVAL - 0.01, "never two writes closer than minInterval"
        assert t1 - t0 < 2.0, "published on the change, not at the 30 s heartbeat"
        assert open_models(doc) == {"m1", "m2", "m3"}, "one write carries every change since the last"
        assert api.labels[0] == {"detour.dev/health-open": None} and api.labels[1] == {"detour.dev/health-open": "true"}

        # An open period imported from a peer is not echoed back (no write for it).
        peer = {"version": 1, "pod": "pod-2", "updated": format_time(svc._wall()), "heartbeatSeconds": 10,
                "targets": [{"provider": "p", "model": "m4", "endpoint": endpoint_id(BASE), "state": "open",
                             "openUntil": format_time(svc._wall() + 30)}]}
        svc._on_pod("ADDED", {"metadata": {"name": "pod-2", "annotations": {ANNOTATION: orjson.dumps(peer).decode()}},
                              "status": {"phase": "Running"}})
        assert state.registry.get(keys[3]).breaker_state(state.clock.now()) is BreakerState.OPEN
        await asyncio.sleep(2 * MIN_INTERVAL)   # absence of a write: nothing to await
        assert len(api.patches) == 2, "no write without a local change (coalesced, import not echoed)"

        # Long after the last write, a change is published within minInterval (not held back needlessly).
        t_change = loop.time()
        trip(state, keys[4])
        await poll(lambda: len(api.patches) >= 3, 5, "the publish of a later change")
        # at most a random part of minInterval (suppression jitter), never a heartbeat
        assert api.patches[2][0] - t_change <= MIN_INTERVAL + 0.05
        assert "m5" in open_models(api.patches[2][1])
    finally:
        await svc.stop()


async def test_at_rest_nothing_is_written_and_an_importer_stays_silent():
    """Heartbeat 0.1 s, keepalive 60 s: the figures are checked ten times a second, written only
    when they moved; an imported open is no news (no write, no open label)."""
    state, keys = make_state(["m1", "m2"], heartbeat=0.1)
    api = RecordingAPI()
    svc = SharedHealthService(state, pod="pod-1", namespace="ns", api_factory=lambda: api)
    await svc.start()
    skipped = lambda: state.metrics.registry.get_sample_value(  # noqa: E731
        "detour_shared_health_publish_total", {"result": "skipped"}) or 0
    try:
        await poll(lambda: api.patches, 5, "the start-up publish")
        await poll(lambda: skipped() >= 5, 5, "five heartbeats with nothing new")
        assert len(api.patches) == 1, "at rest: no write per heartbeat"

        peer = {"version": 1, "pod": "pod-2", "updated": format_time(svc._wall()), "heartbeatSeconds": 300,
                "targets": [{"provider": "p", "model": "m1", "endpoint": endpoint_id(BASE), "state": "open",
                             "openUntil": format_time(svc._wall() + 30)}]}
        svc._on_pod("ADDED", {"metadata": {"name": "pod-2", "labels": {"detour.dev/health-open": "true"},
                                           "annotations": {ANNOTATION: orjson.dumps(peer).decode()}}})
        assert state.registry.get(keys[0]).breaker_state(state.clock.now()) is BreakerState.OPEN
        before = skipped()
        await poll(lambda: skipped() >= before + 5, 5, "five heartbeats after the import")
        assert len(api.patches) == 1, "an importer stays silent"

        # The peer drops its label (its breaker closed): what was imported only from it goes.
        svc._on_pod("MODIFIED", {"metadata": {"name": "pod-2", "labels": {}, "annotations": {}}})
        assert state.registry.get(keys[0]).breaker_state(state.clock.now()) is BreakerState.CLOSED

        # Request figures that moved meaningfully go out at the next heartbeat, without the label.
        now = state.clock.now()
        for _ in range(5):
            state.registry.get(keys[1]).record(Outcome(OutcomeKind.SUCCESS), now)
        await poll(lambda: len(api.patches) >= 2, 5, "the figures' publish")
        assert next(t for t in api.patches[1][1]["targets"] if t["model"] == "m2")["requests"] == 5
        assert api.labels[1] == {"detour.dev/health-open": None}
    finally:
        await svc.stop()
