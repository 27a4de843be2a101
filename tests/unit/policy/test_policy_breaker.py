"""The breaker state machine, driven through TargetState with explicit times."""

from __future__ import annotations

import pytest

from detour_proxy.policy import BreakerState, Outcome

OK = Outcome.success(duration=0.2)
E503 = Outcome.http(503)
CLOSED, OPEN, HALF = BreakerState.CLOSED, BreakerState.OPEN, BreakerState.HALF_OPEN


def feed(st, seq: str, now: float) -> None:
    """Record a sequence of outcomes: 's' success, 'f' 503, 'b' 400 (request's fault)."""
    for c in seq:
        assert st.try_acquire(now)
        st.record({"s": OK, "f": E503, "b": Outcome.http(400)}[c], now)


@pytest.mark.parametrize(
    ("seq", "expected"),
    [
        ("sfsfsfsfs", CLOSED),     # 4/9 and only 9 requests (< minRequests)
        ("sfsfsfsfsf", OPEN),      # 5/10 = failureRatio with minRequests
        ("ssssssfsfsf", CLOSED),   # 4/11 < 0.5
        ("fffffffff", CLOSED),     # 100% but 9 < minRequests (consecutive limit is 100)
        ("ffffffffff", OPEN),      # 10/10
        ("fffffffffs", OPEN),      # 9/10: the 10th call (a success) reveals the ratio
        ("bbbbbbbbbbbbbbbbbbbb", CLOSED),  # 400s never count
    ],
)
def test_closed_to_open_by_ratio(make_state, clock, seq, expected):
    st, _ = make_state(failure_ratio=0.5, min_requests=10, consecutive_failures=100)
    feed(st, seq, clock.now())
    assert st.breaker_state(clock.now()) is expected


@pytest.mark.parametrize(
    ("seq", "expected"),
    [("ff", CLOSED), ("fff", OPEN), ("ffsff", CLOSED), ("ffbf", OPEN)],  # 400 is neutral
)
def test_closed_to_open_by_consecutive_failures(make_state, clock, seq, expected):
    st, _ = make_state(consecutive_failures=3, min_requests=100)
    feed(st, seq, clock.now())
    assert st.breaker_state(clock.now()) is expected


def test_request_errors_neither_count_nor_open(make_state, clock):
    st, log = make_state(consecutive_failures=1, min_requests=1)
    feed(st, "b" * 20, clock.now())
    assert st.window_stats(clock.now()) == (0, 0, 0)
    assert st.consecutive_failures == 0 and st.last_error is None and log == []
    assert st.in_flight == 0


@pytest.mark.parametrize(
    ("calls", "expected"),
    [
        ([(0.5, 9.0)] * 4, CLOSED),           # ttft under threshold: long answers are not slow
        ([(None, 2.0)] * 4, OPEN),            # no ttft: duration is judged
        ([(2.0, 2.0), (0.1, 0.1)] * 2, OPEN),  # 2/4 slow = ratio
        ([(2.0, 2.0)] * 3, CLOSED),           # 3 < minRequests
        ([(2.0, 2.0)] + [(0.1, 0.1)] * 3, CLOSED),
    ],
)
def test_closed_to_open_by_slow_calls(make_state, clock, calls, expected):
    st, _ = make_state(slow_call={"threshold": 1.0, "ratio": 0.5}, min_requests=4)
    for ttft, duration in calls:
        assert st.try_acquire(clock.now())
        st.record(Outcome.success(duration=duration, ttft=ttft), clock.now())
    assert st.breaker_state(clock.now()) is expected


def test_slow_calls_ignored_without_rule(make_state, clock):
    st, _ = make_state(min_requests=4)
    for _ in range(10):
        assert st.try_acquire(clock.now())
        st.record(Outcome.success(duration=100.0), clock.now())
    assert st.breaker_state(clock.now()) is CLOSED
    assert st.window_stats(clock.now()) == (10, 0, 0)


def test_failures_leave_the_window(make_state, clock):
    st, _ = make_state(window=60.0, min_requests=5, consecutive_failures=100, failure_ratio=0.5)
    feed(st, "ffff", clock.now())
    clock.advance(61.0)
    feed(st, "s", clock.now())
    feed(st, "f", clock.now())  # would be 5/6 if the old failures still counted
    assert st.window_stats(clock.now()) == (2, 1, 0)
    assert st.breaker_state(clock.now()) is CLOSED


def test_open_is_skipped_until_cooldown_then_half_open(make_state, clock):
    st, log = make_state(consecutive_failures=1, cooldown=30.0)
    t0 = clock.now()
    feed(st, "f", t0)
    assert st.cooldown_until == t0 + 30.0
    assert not st.try_acquire(t0 + 29.9) and not st.admits(t0 + 29.9)
    assert st.in_flight == 0
    assert st.available_at(t0 + 10) == t0 + 30.0
    assert log == [("closed", "open")]
    assert st.breaker_state(t0 + 30.0) is HALF
    assert st.breaker_state(t0 + 31.0) is HALF
    assert log == [("closed", "open"), ("open", "half-open")]  # fired once, when observed


@pytest.mark.parametrize("probes", [1, 2, 3])
def test_half_open_admits_at_most_probe_slots(make_state, clock, probes):
    st, _ = make_state(consecutive_failures=1, cooldown=10.0, half_open_probes=probes)
    feed(st, "f", clock.now())
    clock.advance(10.0)
    now = clock.now()
    assert [st.try_acquire(now) for _ in range(probes + 2)] == [True] * probes + [False, False]
    assert st.in_flight == probes
    assert st.available_at(now) == float("inf")
    st.release(now)  # an abandoned probe frees its slot and counts nothing
    assert st.in_flight == probes - 1
    assert st.breaker_state(now) is HALF and st.window_stats(now) == (1, 1, 0)
    assert st.try_acquire(now) and not st.try_acquire(now)


def test_probe_success_closes_and_resets(make_state, clock):
    st, log = make_state(consecutive_failures=2, cooldown=10.0, max_cooldown=100.0)
    feed(st, "ff", clock.now())
    clock.advance(10.0)
    assert st.try_acquire(clock.now())
    st.record(Outcome.http(503), clock.now())   # failed probe: cooldown doubles to 20
    clock.advance(20.0)
    assert st.try_acquire(clock.now())
    st.record(OK, clock.now())
    assert st.breaker_state(clock.now()) is CLOSED
    assert st.window_stats(clock.now()) == (0, 0, 0) and st.consecutive_failures == 0
    assert log[-1] == ("half-open", "closed")
    # the doubling is forgotten: the next trip uses the base cooldown again
    t = clock.now()
    feed(st, "f", t)
    assert st.breaker_state(t) is CLOSED  # consecutive counter was reset (needs 2)
    feed(st, "f", t)
    assert st.cooldown_until == t + 10.0


def test_probe_failure_doubles_cooldown_up_to_max(make_state, clock):
    st, log = make_state(consecutive_failures=1, cooldown=10.0, max_cooldown=35.0)
    feed(st, "f", clock.now())
    got = [st.cooldown_until - clock.now()]
    for _ in range(4):
        clock.advance(st.cooldown_until - clock.now())
        assert st.try_acquire(clock.now())
        st.record(E503, clock.now())
        assert st.breaker_state(clock.now()) is OPEN
        got.append(st.cooldown_until - clock.now())
    assert got == [10.0, 20.0, 35.0, 35.0, 35.0]
    assert log[:4] == [("closed", "open"), ("open", "half-open"), ("half-open", "open"),
                       ("open", "half-open")]


def test_slow_probe_counts_as_failed_probe(make_state, clock):
    st, _ = make_state(consecutive_failures=1, cooldown=10.0, slow_call={"threshold": 1.0, "ratio": 0.9})
    feed(st, "f", clock.now())
    clock.advance(10.0)
    assert st.try_acquire(clock.now())
    st.record(Outcome.success(duration=5.0), clock.now())
    assert st.breaker_state(clock.now()) is OPEN
    assert st.cooldown_until == clock.now() + 20.0


def test_retry_after_lengthens_cooldown_when_opening(make_state, clock):
    st, _ = make_state(consecutive_failures=1, cooldown=10.0, max_cooldown=300.0)
    t = clock.now()
    assert st.try_acquire(t)
    st.record(Outcome.http(503, retry_after=45.0), t)
    assert st.breaker_state(t) is OPEN
    assert st.cooldown_until == t + 45.0
    assert st.available_at(t) == t + 45.0


def test_retry_after_is_bounded_by_max_cooldown(make_state, clock):
    st, _ = make_state(consecutive_failures=1, cooldown=10.0, max_cooldown=60.0)
    t = clock.now()
    assert st.try_acquire(t)
    st.record(Outcome.http(429, retry_after=86400.0), t)
    assert st.cooldown_until == t + 60.0
    assert st.sideline_until == t + 60.0


def test_retry_after_sidelines_without_opening(make_state, clock):
    st, log = make_state(consecutive_failures=5, min_requests=100)
    t = clock.now()
    assert st.try_acquire(t)
    st.record(Outcome.http(429, retry_after=3.0), t)
    assert st.breaker_state(t) is CLOSED and log == []
    assert not st.try_acquire(t + 2.9)
    assert st.available_at(t + 1.0) == t + 3.0
    assert st.try_acquire(t + 3.0)


@pytest.mark.parametrize("status", [500, 502, 504])
def test_retry_after_on_other_statuses_does_not_sideline(make_state, clock, status):
    st, _ = make_state(consecutive_failures=5)
    t = clock.now()
    assert st.try_acquire(t)
    st.record(Outcome.http(status, retry_after=3.0), t)
    assert st.try_acquire(t)


def test_repeated_failure_never_shortens_cooldown(make_state, clock):
    st, _ = make_state(consecutive_failures=1, cooldown=10.0, max_cooldown=300.0)
    t = clock.now()
    assert st.try_acquire(t)
    st.record(Outcome.http(503, retry_after=120.0), t)
    until = st.cooldown_until
    # late results of attempts admitted before the breaker opened
    st.in_flight = 3
    for dt in (1.0, 2.0, 3.0):
        st.record(E503, t + dt)
    assert st.cooldown_until == until
    # a later Retry-After while open lengthens it
    st.record(Outcome.http(503, retry_after=200.0), t + 5.0)
    assert st.cooldown_until == t + 205.0


def test_late_success_while_open_does_not_close(make_state, clock):
    st, _ = make_state(consecutive_failures=1, cooldown=10.0)
    t = clock.now()
    assert st.try_acquire(t) and st.try_acquire(t)
    st.record(E503, t)
    st.record(OK, t + 1)  # admitted while closed: not a probe
    assert st.breaker_state(t + 1) is OPEN


def test_forced_attempt_success_closes_open_breaker(make_state, clock):
    st, log = make_state(consecutive_failures=1, cooldown=30.0)
    t = clock.now()
    feed(st, "f", t)
    ticket = st.force_acquire(t + 1)
    assert st.in_flight == 1 and ticket.kind == "forced"
    st.record(OK, t + 2, ticket)
    assert st.breaker_state(t + 2) is CLOSED and st.in_flight == 0
    assert log == [("closed", "open"), ("open", "closed")]


def test_stale_probe_cannot_close_a_reopened_breaker(make_state, clock):
    st, _ = make_state(consecutive_failures=1, cooldown=10.0, half_open_probes=2)
    t = clock.now()
    feed(st, "f", t)
    a = st.acquire(t + 10)
    b = st.acquire(t + 10)
    assert a.kind == b.kind == "probe"
    st.record(E503, t + 11, a)         # reopens (epoch changes)
    st.record(OK, t + 12, b)           # the other probe was admitted in the old epoch
    assert st.breaker_state(t + 12) is OPEN
    assert st.in_flight == 0


def test_import_open_is_bounded_and_never_shortens(make_state, clock):
    st, log = make_state(consecutive_failures=1, cooldown=10.0, max_cooldown=100.0)
    t = clock.now()
    assert not st.import_open(t - 1.0, t)           # already over
    assert st.breaker_state(t) is CLOSED
    assert st.import_open(t + 1000.0, t)            # bounded to maxCooldown
    assert st.breaker_state(t) is OPEN and st.cooldown_until == t + 100.0
    assert log == [("closed", "open")]
    assert st.snapshot(t).imported
    assert not st.import_open(t + 50.0, t + 1)      # shorter than local: ignored
    assert st.cooldown_until == t + 100.0
    assert st.import_open(t + 150.0, t + 60.0)      # longer: extends
    assert st.cooldown_until == t + 150.0
    # a local open is never marked imported
    st2, _ = make_state(consecutive_failures=1)
    feed(st2, "f", t)
    assert not st2.snapshot(t).imported


def test_import_open_reopens_half_open(make_state, clock):
    st, log = make_state(consecutive_failures=1, cooldown=10.0)
    t = clock.now()
    feed(st, "f", t)
    assert st.breaker_state(t + 10) is HALF
    assert st.import_open(t + 40, t + 10)
    assert st.breaker_state(t + 10) is OPEN and log[-1] == ("half-open", "open")


def test_snapshot_reports_what_shared_health_publishes(make_state, clock):
    st, _ = make_state(failure_ratio=0.5, min_requests=4, consecutive_failures=100, cooldown=30.0)
    t = clock.now()
    snap = st.snapshot(t)
    assert (snap.state, snap.open_until, snap.requests, snap.failure_ratio, snap.last_error) == (
        CLOSED, None, 0, 0.0, None)
    feed(st, "ss", t)
    feed(st, "f", t + 1)
    assert st.try_acquire(t + 2)
    st.record(Outcome.timeout(duration=5.0), t + 2)
    snap = st.snapshot(t + 3)
    assert snap.state is OPEN and snap.open_until == t + 32.0
    assert snap.requests == 4 and snap.failures == 2 and snap.failure_ratio == 0.5
    assert (snap.last_error, snap.last_error_at) == ("timeout", t + 2)
    assert snap.key == st.key


def test_ewma_latency(make_state, clock):
    st, _ = make_state(consecutive_failures=100, min_requests=100)
    t = clock.now()
    assert st.ewma_latency is None
    for o in (Outcome.success(duration=10.0, ttft=1.0), Outcome.success(duration=2.0),
              Outcome.http(503, duration=0.01), Outcome.timeout(duration=30.0)):
        assert st.try_acquire(t)
        st.record(o, t)
    # 1.0 -> 0.3*2 + 0.7*1 = 1.3 -> (503 ignored) -> 0.3*30 + 0.7*1.3 = 9.91
    assert st.ewma_latency == pytest.approx(9.91)


def test_in_flight_counts_admissions(make_state, clock):
    st, _ = make_state()
    t = clock.now()
    for _ in range(3):
        assert st.try_acquire(t)
    assert st.in_flight == 3
    st.record(OK, t)
    st.release(t)
    assert st.in_flight == 1
    st.release(t)
    st.release(t)  # never negative
    assert st.in_flight == 0


def test_registry_creates_retains_and_updates(make_health, key):
    from detour_proxy.policy import HealthRegistry, TargetKey

    events = []
    reg = HealthRegistry(make_health(consecutive_failures=1), on_transition=lambda *a: events.append(a))
    other = TargetKey("backup", "m", "https://b")
    assert reg.state(key) is reg.state(key)
    reg.state(other)
    assert {k for k, _ in reg.items()} == {key, other}
    reg.retain([key])
    assert [k for k, _ in reg.items()] == [key]
    reg.update_settings(make_health(consecutive_failures=2))
    st = reg.state(key)
    assert st.try_acquire(0.0)
    st.record(E503, 0.0)
    assert st.breaker_state(0.0) is CLOSED  # needs 2 now
    assert st.try_acquire(0.0)
    st.record(E503, 0.0)
    assert events == [(key, CLOSED, OPEN)]
    assert [s.key for s in reg.snapshot(0.0)] == [key]


def test_failed_forced_attempt_never_shortens_a_long_cooldown(make_state, clock):
    st, _ = make_state(consecutive_failures=1, cooldown=5.0, max_cooldown=100.0)
    t = clock.now()
    assert st.import_open(t + 90.0, t)
    ticket = st.force_acquire(t + 1)
    st.record(E503, t + 2, ticket)  # judged as a failed probe: doubled cooldown is only 10 s
    assert st.breaker_state(t + 2) is OPEN
    assert st.cooldown_until == t + 90.0
