"""Planner scenarios: what a request does on each kind of failure."""

from __future__ import annotations

import random

import pytest

from detour_proxy import config
from detour_proxy.policy import (
    BreakerState, FakeClock, GiveUp, HealthRegistry, Outcome, RetryBudget, RoutePlanner, TargetKey, Try,
)

OK = Outcome.success(duration=0.3)


def make(n: int = 2, *, attempts: int = 2, timeout: float = 60.0, strategy: str = "priority",
         breaker: dict | None = None, budget: dict | None = None, seed: int = 1, **route_kw):
    retry = route_kw.pop("retry", {})
    r = config.Route(
        name="r", strategy=strategy, timeout=timeout,
        targets=[config.Target(provider=f"p{i}", model="m", priority=i) for i in range(n)],
        retry=config.Retry(attempts=attempts, **retry), **route_kw)
    clock = FakeClock(100.0)
    reg = HealthRegistry(config.Health(breaker=config.Breaker(**(breaker or {}))), clock)
    b = RetryBudget(config.RetryBudget(**(budget or {})), clock)
    keys = [TargetKey(t.provider, t.model, f"https://{t.provider}.example") for t in r.targets]
    return RoutePlanner(r, keys, reg, b, random.Random(seed)), clock


def run(planner, clock, outcomes, **begin_kw):
    """Drive one request: outcomes[i] answers the i-th Try. Returns (plan, steps)."""
    plan = planner.begin(clock.now(), **begin_kw)
    steps = []
    feed = iter(outcomes)
    while True:
        step = plan.next(clock.now())
        steps.append(step)
        if isinstance(step, GiveUp):
            return plan, steps
        clock.advance(step.delay)
        clock.advance(0.1)  # the attempt itself
        plan.record(next(feed), clock.now())


def shape(steps):
    return [(s.index, s.reason, s.attempt) if isinstance(s, Try) else s.reason for s in steps]


def test_primary_503_twice_then_fallback_succeeds():
    planner, clock = make(attempts=2)
    plan, steps = run(planner, clock, [Outcome.http(503), Outcome.http(503), OK])
    assert shape(steps) == [(0, "first", 1), (0, "retry", 2), (1, "fallback", 1), "success"]
    assert 0 <= steps[1].delay < 0.1  # full jitter in [0, initial]
    assert steps[0].delay == 0 and steps[2].delay == 0
    assert steps[-1].last is OK
    assert [k.provider for k, _ in plan.attempts] == ["p0", "p0", "p1"]
    assert planner.budget.stats(clock.now()) == (1, 1)  # one request, one retry (fallback is free)
    assert all(planner.registry.state(k).in_flight == 0 for k in planner.keys)


def test_backoff_grows_and_is_capped():
    planner, clock = make(n=1, attempts=6, retry={"backoff": {"initial": 1.0, "max": 3.0, "multiplier": 2.0}},
                          breaker={"consecutive_failures": 10_000, "min_requests": 10_000},
                          budget={"min_per_second": 1000.0})
    caps = [1.0, 2.0, 3.0, 3.0, 3.0]
    for seed in range(30):
        planner.rng.seed(seed)
        _, steps = run(planner, clock, [Outcome.http(502)] * 6)
        delays = [s.delay for s in steps if isinstance(s, Try) and s.reason == "retry"]
        assert len(delays) == 5
        assert all(0 <= d < c for d, c in zip(delays, caps))


def test_400_is_returned_as_is():
    planner, clock = make()
    bad = Outcome.http(400, message="invalid model parameter")
    plan, steps = run(planner, clock, [bad])
    assert shape(steps) == [(0, "first", 1), "not_retryable"]
    assert steps[-1].last is bad
    st = planner.registry.state(planner.keys[0])
    assert st.window_stats(clock.now()) == (0, 0, 0)


@pytest.mark.parametrize("status", [409, 418, 451])
def test_unlisted_statuses_are_not_retried(status):
    planner, clock = make()
    _, steps = run(planner, clock, [Outcome.http(status)])
    assert shape(steps)[-1] == "not_retryable" and len(steps) == 2


def test_429_retry_after_is_respected_on_the_same_target():
    planner, clock = make(attempts=2)
    t0 = clock.now()
    plan = planner.begin(t0)
    first = plan.next(t0)
    plan.record(Outcome.http(429, retry_after=3.0), t0 + 0.1)
    # meanwhile the target is sidelined: another request goes straight to the backup
    other = planner.begin(t0 + 0.2)
    o = other.next(t0 + 0.2)
    assert (o.index, o.reason) == (1, "first")
    other.abandon(t0 + 0.2)
    step = plan.next(t0 + 0.1)
    assert (step.index, step.reason, step.attempt) == (first.index, "retry", 2)
    assert 3.0 <= step.delay < 3.1


@pytest.mark.parametrize("status", [429, 500])  # 429 also sidelines the target; 500 does not
def test_retry_after_longer_than_max_falls_back_immediately(status):
    planner, clock = make(attempts=3)
    _, steps = run(planner, clock, [Outcome.http(status, retry_after=60.0), OK])
    assert shape(steps) == [(0, "first", 1), (1, "fallback", 1), "success"]
    assert steps[1].delay == 0


def test_retry_after_ignored_when_not_respected():
    planner, clock = make(attempts=2, retry={"respect_retry_after": False})
    _, steps = run(planner, clock, [Outcome.http(500, retry_after=5.0), OK])
    assert shape(steps)[1] == (0, "retry", 2) and steps[1].delay < 0.1


def test_all_open_forces_the_soonest_once():
    planner, clock = make(n=3, breaker={"consecutive_failures": 1, "cooldown": 30.0})
    sts = [planner.registry.state(k) for k in planner.keys]
    now = clock.now()
    for st, until in zip(sts, (now + 50, now + 20, now + 40)):
        st.import_open(until, now)
    plan = planner.begin(now)
    step = plan.next(now)
    assert (step.index, step.reason, step.delay, step.attempt) == (1, "forced", 0.0, 1)
    assert sts[1].in_flight == 1
    plan.record(Outcome.http(503), now + 0.5)
    give_up = plan.next(now + 0.5)
    assert (give_up.reason, give_up.last) == ("exhausted", Outcome.http(503))
    # every target is held by its breaker: the hint is when the soonest one admits again
    assert give_up.retry_after == min(st.available_at(now + 0.5) for st in sts) - (now + 0.5) == 39.5
    assert sts[1].in_flight == 0


def test_forced_success_closes_the_target():
    planner, clock = make(n=1, breaker={"consecutive_failures": 1, "cooldown": 30.0})
    st = planner.registry.state(planner.keys[0])
    st.import_open(clock.now() + 30, clock.now())
    _, steps = run(planner, clock, [OK])
    assert shape(steps) == [(0, "forced", 1), "success"]
    assert st.breaker_state(clock.now()) is BreakerState.CLOSED


def test_a_sidelined_target_is_not_forced_and_the_request_learns_when_it_frees():
    # remaining-requests 0 with a 5 s reset: the provider said "not before then"
    planner, clock = make(n=1)
    st = planner.registry.state(planner.keys[0])
    st.sideline(clock.now() + 5.0)
    plan, steps = run(planner, clock, [])
    assert steps == [GiveUp("unavailable", None, 5.0, rate_limited=True)]
    assert st.in_flight == 0 and st.window_stats(clock.now()) == (0, 0, 0)
    clock.advance(5.0)
    assert shape(run(planner, clock, [OK])[1]) == [(0, "first", 1), "success"]


def test_a_429_retry_after_sideline_is_not_forced_even_with_the_breaker_open():
    planner, clock = make(n=1, attempts=1, breaker={"consecutive_failures": 1, "cooldown": 5.0})
    limited = Outcome.http(429, retry_after=30.0)
    _, steps = run(planner, clock, [limited])
    assert steps[-1] == GiveUp("exhausted", limited)
    st = planner.registry.state(planner.keys[0])
    assert st.breaker_state(clock.now()) is BreakerState.OPEN     # open *and* sidelined for 30 s
    _, steps = run(planner, clock, [])
    assert steps == [GiveUp("unavailable", None, 30.0, rate_limited=True)]
    clock.advance(30.0)                                            # the provider's reset: a probe
    assert shape(run(planner, clock, [OK])[1]) == [(0, "first", 1), "success"]


def test_a_503_retry_after_sideline_gives_up_as_unavailable_not_rate_limited():
    # "come back in 10 s" from a 503 is an outage, not a quota: the client should see 503, not 429
    planner, clock = make(n=2, attempts=1)
    down = Outcome.http(503, retry_after=10.0)
    run(planner, clock, [down, down])
    _, (g,) = run(planner, clock, [])
    assert (g.reason, g.rate_limited) == ("unavailable", False) and 9.5 < g.retry_after <= 10.0


def test_a_route_is_rate_limited_only_when_every_target_is():
    planner, clock = make(n=2, attempts=1)
    run(planner, clock, [Outcome.http(429, retry_after=10.0), Outcome.http(503, retry_after=20.0)])
    _, (g,) = run(planner, clock, [])    # one target rate-limited, the other down: unavailable
    assert (g.reason, g.rate_limited) == ("unavailable", False) and 9.5 < g.retry_after <= 10.0


def test_a_reload_that_drops_a_target_does_not_see_it_resurrected_by_a_request_in_flight():
    planner, clock = make(n=2)
    reg = planner.registry
    plan = planner.begin(clock.now())
    step = plan.next(clock.now())
    assert step.key == planner.keys[0]
    reg.retain([])                                  # the new config names neither target
    clock.advance(0.1)
    plan.record(Outcome.http(503), clock.now())     # the old request finishes on the old target
    plan.next(clock.now())
    plan.record(OK, clock.now())
    assert planner.keys[0] not in reg and planner.keys[1] not in reg and len(reg) == 0
    assert [s.key for s in reg.snapshot(clock.now())] == []   # nothing for shared health to publish


def test_open_primary_is_skipped_without_cost():
    planner, clock = make(breaker={"consecutive_failures": 1})
    planner.registry.state(planner.keys[0]).import_open(clock.now() + 30, clock.now())
    _, steps = run(planner, clock, [OK])
    assert shape(steps) == [(1, "first", 1), "success"]


def test_deadline_stops_a_retry_that_would_not_fit():
    planner, clock = make(n=1, attempts=3, timeout=2.0)
    t0 = clock.now()
    plan = planner.begin(t0)
    plan.next(t0)
    plan.record(Outcome.http(503, retry_after=1.95), t0 + 0.1)
    assert plan.next(t0 + 0.1) == GiveUp("deadline", Outcome.http(503, retry_after=1.95))


def test_deadline_falls_back_when_retry_does_not_fit():
    planner, clock = make(n=2, attempts=3, timeout=2.0)
    t0 = clock.now()
    plan = planner.begin(t0)
    plan.next(t0)
    plan.record(Outcome.http(503, retry_after=1.95), t0 + 0.1)
    step = plan.next(t0 + 0.1)
    assert (step.index, step.reason) == (1, "fallback")


def test_no_attempt_at_or_after_deadline():
    planner, clock = make(timeout=5.0)
    t0 = clock.now()
    plan = planner.begin(t0)
    plan.next(t0)
    plan.record(Outcome.timeout(duration=5.0), t0 + 5.0)
    assert plan.next(t0 + 5.0).reason == "deadline"
    late = planner.begin(t0, deadline=t0)
    assert late.next(t0) == GiveUp("deadline", None)


def test_budget_denial_falls_back_and_is_counted():
    planner, clock = make(attempts=3, budget={"ratio": 0.0, "min_per_second": 0.0})
    plan, steps = run(planner, clock, [Outcome.http(503), Outcome.http(503)])
    assert shape(steps) == [(0, "first", 1), (1, "fallback", 1), "exhausted"]
    assert plan.budget_denied == 2


def test_each_target_gets_one_pass():
    planner, clock = make(n=3, attempts=1, breaker={"consecutive_failures": 100})
    plan, steps = run(planner, clock, [Outcome.http(503)] * 3)
    assert shape(steps) == [(0, "first", 1), (1, "fallback", 1), (2, "fallback", 1), "exhausted"]


def test_connect_error_retries_and_stream_error_falls_back():
    planner, clock = make(attempts=2)
    _, steps = run(planner, clock, [Outcome.connect_error(), Outcome.stream_error(), OK])
    assert shape(steps) == [(0, "first", 1), (0, "retry", 2), (1, "fallback", 1), "success"]


def test_fallback_only_status_does_not_retry():
    planner, clock = make(attempts=3)
    _, steps = run(planner, clock, [Outcome.http(401), OK])
    assert shape(steps) == [(0, "first", 1), (1, "fallback", 1), "success"]


def test_retry_only_status_falls_back_when_exhausted():
    planner, clock = make(attempts=2, fallback_on_status_codes=[], retry={"on_status_codes": [500]})
    _, steps = run(planner, clock, [Outcome.http(500), Outcome.http(500), OK])
    assert shape(steps) == [(0, "first", 1), (0, "retry", 2), (1, "fallback", 1), "success"]


def test_no_retry_when_the_failure_opened_the_breaker():
    planner, clock = make(attempts=3, breaker={"consecutive_failures": 1})
    _, steps = run(planner, clock, [Outcome.http(503), OK])
    assert shape(steps) == [(0, "first", 1), (1, "fallback", 1), "success"]


def test_eligible_filters_at_begin_and_per_step():
    planner, clock = make(n=3, attempts=1)
    _, steps = run(planner, clock, [OK], eligible=lambda i: i != 0)
    assert shape(steps) == [(1, "first", 1), "success"]
    plan = planner.begin(clock.now())
    s = plan.next(clock.now())
    plan.record(Outcome.stream_error(), clock.now())
    s2 = plan.next(clock.now(), eligible=lambda i: i == 2)
    assert (s.index, s2.index, s2.reason) == (0, 2, "fallback")
    plan.abandon(clock.now())
    nothing = planner.begin(clock.now(), eligible=lambda i: False)
    assert nothing.next(clock.now()) == GiveUp("exhausted", None)


def test_abandon_frees_the_target_and_moves_on():
    planner, clock = make()
    plan = planner.begin(clock.now())
    s = plan.next(clock.now())
    st = planner.registry.state(s.key)
    assert st.in_flight == 1
    plan.abandon(clock.now())
    assert st.in_flight == 0 and plan.attempts == []
    assert plan.next(clock.now()).index == 1


def test_protocol_misuse_is_loud():
    planner, clock = make()
    plan = planner.begin(clock.now())
    with pytest.raises(RuntimeError):
        plan.record(OK, clock.now())
    plan.next(clock.now())
    with pytest.raises(RuntimeError):
        plan.next(clock.now())
    plan.record(OK, clock.now())
    assert plan.next(clock.now()) is plan.next(clock.now())  # a GiveUp is final


def test_keys_must_match_targets():
    planner, _ = make()
    with pytest.raises(ValueError):
        RoutePlanner(planner.route, planner.keys[:1], planner.registry, planner.budget)


@pytest.mark.parametrize("strategy", ["priority", "weighted", "latency", "least-busy"])
def test_seeded_runs_are_deterministic(strategy):
    outs = [Outcome.http(503), Outcome.timeout(duration=1.0), Outcome.http(429, retry_after=0.5), OK]

    def trace():
        planner, clock = make(n=3, attempts=2, strategy=strategy, seed=42)
        res = []
        for _ in range(20):
            _, steps = run(planner, clock, outs)
            res.append([(s.index, s.reason, s.delay) if isinstance(s, Try) else s.reason for s in steps])
        return res

    assert trace() == trace()
