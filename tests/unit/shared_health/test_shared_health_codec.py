"""The annotation format and the merge rules of shared health, on fake clocks (no I/O)."""

from __future__ import annotations

import hashlib

import orjson
import pytest

from detour_proxy import config
from detour_proxy.policy import BreakerState, FakeClock, HealthRegistry, Outcome, TargetKey
from detour_proxy.cluster.health_codec import (CodecError, PeerTable, decode, encode, endpoint_id,
                                              format_time, identity, merge_into, parse_time,
                                              plan_imports)

WALL0 = 1_800_000_000.0           # wall clock at the start of every test
A = TargetKey("primary", "gpt-4o-mini", "https://primary.example/v1")
B = TargetKey("secondary", "llama-3-8b", "https://secondary.example/v1")


def registry(clock: FakeClock, cooldown: float = 30.0, max_cooldown: float = 300.0) -> HealthRegistry:
    health = config.Health(breaker=config.Breaker(consecutive_failures=1, cooldown=cooldown,
                                                  max_cooldown=max_cooldown))
    reg = HealthRegistry(health, clock)
    reg.state(A)
    reg.state(B)
    return reg


def peer_doc(pod: str = "pod-2", *, updated: float = WALL0, heartbeat: float = 1.0,
             targets: list[dict] | None = None) -> str:
    return orjson.dumps({"version": 1, "pod": pod, "updated": format_time(updated),
                         "heartbeatSeconds": heartbeat, "targets": targets or []}).decode()


def open_entry(key: TargetKey, until: float, **extra) -> dict:
    return {"provider": key.provider, "model": key.model, "endpoint": endpoint_id(key.base_url),
            "state": "open", "openUntil": format_time(until), **extra}


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(1000.0)


class Wall:
    """A wall clock moved together with the FakeClock (same offset), for readable tests."""

    def __init__(self, clock: FakeClock, skew: float = 0.0) -> None:
        self.clock, self.skew = clock, skew

    def __call__(self) -> float:
        return WALL0 + (self.clock.now() - 1000.0) + self.skew


def test_endpoint_is_first_8_hex_of_sha256_of_base_url():
    assert endpoint_id(A.base_url) == hashlib.sha256(A.base_url.encode()).hexdigest()[:8]
    assert identity(*A) == ("primary", "gpt-4o-mini", endpoint_id(A.base_url))


def test_times_round_trip_in_utc_with_milliseconds():
    assert format_time(WALL0 + 0.25).endswith(".250Z")
    assert parse_time(format_time(WALL0 + 0.25)) == pytest.approx(WALL0 + 0.25, abs=1e-3)
    assert parse_time("2026-11-25T15:00:00Z") == parse_time("2026-11-25T16:00:00+01:00")
    assert parse_time("yesterday") is None and parse_time(None) is None


def test_encode_maps_monotonic_deadlines_to_wall_clock_and_decodes_back(clock):
    reg = registry(clock, cooldown=30.0)
    reg.state(A).record(Outcome.http(503), clock.now())        # opens: 1 consecutive failure
    text = encode("pod-1", reg.snapshot(clock.now()), wall_now=WALL0, mono_now=clock.now(), heartbeat=10)
    raw = orjson.loads(text)
    assert raw["pod"] == "pod-1" and raw["version"] == 1 and raw["heartbeatSeconds"] == 10
    entry = next(t for t in raw["targets"] if t["provider"] == "primary")
    assert entry["state"] == "open" and entry["lastError"] == "http_503"
    assert entry["endpoint"] == endpoint_id(A.base_url)
    assert "imported" not in entry and "openUntil" not in next(t for t in raw["targets"] if t["provider"] == "secondary")
    doc = decode(text)
    e = next(t for t in doc.targets if t.provider == "primary")
    assert e.open_until == pytest.approx(WALL0 + 30.0, abs=1e-3)
    assert e.failure_ratio == 1.0 and e.requests == 1 and not e.imported
    assert doc.updated == pytest.approx(WALL0, abs=1e-3) and doc.heartbeat == 10


@pytest.mark.parametrize("text", ["nope", "[]", '{"version": 2, "updated": "2026-01-01T00:00:00Z", "heartbeatSeconds": 1}',
                                  '{"version": 1, "heartbeatSeconds": 1}',
                                  '{"version": 1, "updated": "2026-01-01T00:00:00Z", "heartbeatSeconds": 0}'])
def test_decode_rejects_what_is_not_a_v1_document(text):
    with pytest.raises(CodecError):
        decode(text)


def test_decode_skips_bad_entries_and_ignores_unknown_fields():
    doc = decode(peer_doc(targets=[{"provider": "x"}, "junk", open_entry(A, WALL0 + 5, future="ok")]))
    assert [t.provider for t in doc.targets] == ["primary"]


def test_future_deadline_is_imported_and_blocks_the_target_until_then(clock):
    reg = registry(clock)
    merged, reason = merge_into(reg, decode(peer_doc(targets=[open_entry(A, WALL0 + 20)])),
                                own_pod="pod-1", wall_now=WALL0, mono_now=clock.now())
    assert (merged, reason) == (1, None)
    st = reg.get(A)
    assert st.breaker_state(clock.now()) is BreakerState.OPEN and not st.admits(clock.now())
    assert st.snapshot(clock.now()).imported
    assert reg.get(B).admits(clock.now()), "only the reported target is affected"
    clock.advance(19.9)
    assert not st.admits(clock.now())
    clock.advance(0.2)
    assert st.breaker_state(clock.now()) is BreakerState.HALF_OPEN, "after the deadline a local probe decides"


def test_imported_deadline_is_bounded_to_max_cooldown(clock):
    reg = registry(clock, cooldown=10.0, max_cooldown=60.0)
    doc = decode(peer_doc(targets=[open_entry(A, WALL0 + 3600)]))
    plan, _ = plan_imports(doc, own_pod="pod-1", wall_now=WALL0, local={identity(*A): A}, max_cooldown=60.0)
    assert plan == [(A, 60.0)]
    merge_into(reg, doc, own_pod="pod-1", wall_now=WALL0, mono_now=clock.now())
    assert reg.get(A).cooldown_until == pytest.approx(clock.now() + 60.0)


def test_past_deadline_closed_and_half_open_entries_are_not_imported(clock):
    reg = registry(clock)
    targets = [open_entry(A, WALL0 - 0.001),
               {"provider": B.provider, "model": B.model, "endpoint": endpoint_id(B.base_url), "state": "half-open"}]
    merged, reason = merge_into(reg, decode(peer_doc(targets=targets)), own_pod="pod-1",
                                wall_now=WALL0, mono_now=clock.now())
    assert (merged, reason) == (0, None)
    assert reg.get(A).admits(clock.now()) and reg.get(B).admits(clock.now())


def test_stale_heartbeat_is_ignored_and_fresh_one_is_not(clock):
    wall = Wall(clock)
    # Published at WALL0 with a 1 s heartbeat, a 60 s cooldown announced.
    doc = decode(peer_doc(updated=WALL0, heartbeat=1.0, targets=[open_entry(A, WALL0 + 60)]))
    table = PeerTable()
    table.update("pod-2", "raw", doc)
    fresh_reg, stale_reg = registry(clock), registry(clock)
    clock.advance(2.99)  # within 3 heartbeats: imported
    assert merge_into(fresh_reg, doc, own_pod="pod-1", wall_now=wall(), mono_now=clock.now()) == (1, None)
    assert table.fresh(wall()) == ["pod-2"]
    clock.advance(0.02)  # 3.01 s: older than 3 heartbeats
    merged, reason = merge_into(stale_reg, doc, own_pod="pod-1", wall_now=wall(), mono_now=clock.now())
    assert (merged, reason) == (0, "stale")
    assert stale_reg.get(A).admits(clock.now())
    assert table.fresh(wall()) == []


def test_own_pod_is_ignored_even_when_named_only_by_the_pod_object(clock):
    reg = registry(clock)
    doc = decode(peer_doc(pod="someone-else", targets=[open_entry(A, WALL0 + 20)]))
    assert merge_into(reg, doc, own_pod="pod-1", wall_now=WALL0, mono_now=clock.now(),
                      pod_name="pod-1") == (0, "own")
    assert merge_into(reg, decode(peer_doc(pod="pod-1", targets=[open_entry(A, WALL0 + 20)])),
                      own_pod="pod-1", wall_now=WALL0, mono_now=clock.now()) == (0, "own")
    assert reg.get(A).admits(clock.now())


def test_imported_entries_are_never_re_imported(clock):
    reg = registry(clock)
    doc = decode(peer_doc(targets=[open_entry(A, WALL0 + 20, imported=True)]))
    assert merge_into(reg, doc, own_pod="pod-1", wall_now=WALL0, mono_now=clock.now()) == (0, None)
    # ...and what we imported is published flagged, so peers do not import it back.
    merge_into(reg, decode(peer_doc(targets=[open_entry(A, WALL0 + 20)])), own_pod="pod-1",
               wall_now=WALL0, mono_now=clock.now())
    ours = decode(encode("pod-1", reg.snapshot(clock.now()), wall_now=WALL0, mono_now=clock.now(), heartbeat=1))
    entry = next(t for t in ours.targets if t.provider == "primary")
    assert entry.state == "open" and entry.imported
    assert plan_imports(ours, own_pod="pod-3", wall_now=WALL0, local={identity(*A): A}, max_cooldown=300) == ([], None)


def test_skew_a_peer_clock_ahead_cannot_stretch_the_cooldown_it_announced(clock):
    # The peer's clock runs 100 s ahead: it published "updated = our now + 100" and a 10 s cooldown.
    doc = decode(peer_doc(updated=WALL0 + 100, targets=[open_entry(A, WALL0 + 110)]))
    plan, reason = plan_imports(doc, own_pod="pod-1", wall_now=WALL0, local={identity(*A): A}, max_cooldown=300)
    assert reason is None
    assert plan == [(A, pytest.approx(10.0))], "bounded by openUntil - updated, not 110 s"
    # A peer clock behind ours by more than 3 heartbeats looks stale: local health only.
    behind = decode(peer_doc(updated=WALL0 - 100, targets=[open_entry(A, WALL0 - 90)]))
    assert plan_imports(behind, own_pod="pod-1", wall_now=WALL0, local={identity(*A): A}, max_cooldown=300) == ([], "stale")


def test_peer_news_never_shortens_a_local_cooldown(clock):
    reg = registry(clock, cooldown=30.0)
    reg.state(A).record(Outcome.http(503), clock.now())       # local open until +30
    until = reg.get(A).cooldown_until
    # A peer says open until +5 (it opened earlier), and another says closed.
    merge_into(reg, decode(peer_doc(targets=[open_entry(A, WALL0 + 5)])), own_pod="pod-1",
               wall_now=WALL0, mono_now=clock.now())
    closed = {"provider": A.provider, "model": A.model, "endpoint": endpoint_id(A.base_url), "state": "closed"}
    merge_into(reg, decode(peer_doc(pod="pod-3", targets=[closed])), own_pod="pod-1",
               wall_now=WALL0, mono_now=clock.now())
    assert reg.get(A).cooldown_until == until
    assert reg.get(A).breaker_state(clock.now()) is BreakerState.OPEN
    assert not reg.get(A).snapshot(clock.now()).imported, "still our own failure: published as such"


def test_targets_we_do_not_serve_or_with_another_endpoint_are_skipped(clock):
    reg = registry(clock)
    other = {"provider": A.provider, "model": A.model, "endpoint": endpoint_id("https://elsewhere/v1"),
             "state": "open", "openUntil": format_time(WALL0 + 20)}
    unknown = open_entry(TargetKey("nobody", "m", "https://x/v1"), WALL0 + 20)
    assert merge_into(reg, decode(peer_doc(targets=[other, unknown])), own_pod="pod-1",
                      wall_now=WALL0, mono_now=clock.now()) == (0, None)
    assert reg.get(A).admits(clock.now())


def test_peer_table_tracks_changes_and_gone_pods():
    t = PeerTable()
    doc = decode(peer_doc())
    assert t.changed("pod-2", "x")
    t.update("pod-2", "x", doc)
    assert not t.changed("pod-2", "x") and t.changed("pod-2", "y")
    t.update("pod-3", "z", doc)
    t.retain(["pod-3"])                 # pod-2 is gone from the listing
    assert t.pods() == ["pod-3"]
    t.remove("pod-3")
    assert t.pods() == [] and t.fresh(WALL0) == []


def test_health_is_shared_per_api_key_by_index_never_by_key(clock):
    """A provider with several keys publishes one entry per (model, key) with the key's index; a
    peer imports the open key only, not the model's other keys (which keep serving)."""
    k0, k1 = A, A._replace(key_index=1)
    pub = registry(clock)
    pub.state(k1).record(Outcome.http(401), clock.now())          # key 1 refused: open
    text = encode("pod-2", pub.snapshot(clock.now()), wall_now=WALL0, mono_now=clock.now(), heartbeat=1.0)
    entries = {(t["provider"], t.get("key", 0)): t for t in orjson.loads(text)["targets"]}
    assert entries[("primary", 1)]["state"] == "open" and entries[("primary", 0)]["state"] == "closed"
    assert "key" not in entries[("primary", 0)]                    # index 0 is the default (and old readers' view)
    doc = decode(text)
    assert {(e.provider, e.key) for e in doc.targets} == {("primary", 0), ("primary", 1), ("secondary", 0)}
    assert identity(*k1) == ("primary", "gpt-4o-mini", endpoint_id(A.base_url), 1)
    sub = registry(clock)
    sub.state(k1)
    assert merge_into(sub, doc, own_pod="pod-1", wall_now=WALL0, mono_now=clock.now()) == (1, None)
    assert sub.get(k1).breaker_state(clock.now()) is BreakerState.OPEN
    assert sub.get(k0).breaker_state(clock.now()) is BreakerState.CLOSED
    # a malformed key index is skipped, not imported into key 0
    bad = decode(peer_doc(targets=[{**open_entry(A, WALL0 + 20), "key": "1"}, {**open_entry(A, WALL0 + 20), "key": -1}]))
    assert bad.targets == ()
