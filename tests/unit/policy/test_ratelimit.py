"""Client-side rate limits: sliding-minute counters, admission like an open breaker, tokens with
estimate + correction, the per-replica split, and the planner moving on to the fallback."""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from detour_proxy import config
from detour_proxy.policy import (
    FakeClock, GiveUp, HealthRegistry, Outcome, RateLimiter, RetryBudget, RoutePlanner, TargetKey, Try,
    UsageLog, estimate_tokens, merge_limits,
)
from detour_proxy.policy.ratelimit import effective_limit

OK = Outcome.success(duration=0.05)
RPM60 = config.Limits(requests_per_minute=60)


def planner(limits: config.Limits | None = RPM60, replicas: int | None = None, peers: int | None = None):
    route = config.Route(name="r", targets=[
        config.Target(provider="primary", model="m", priority=0, limits=limits),
        config.Target(provider="fallback", model="m", priority=1)])
    clock = FakeClock(1000.0)
    reg = HealthRegistry(config.Health(), clock)
    keys = [TargetKey(t.provider, t.model, f"https://{t.provider}.example") for t in route.targets]
    reg.set_limits({keys[0]: limits} if limits else {}, replicas)
    if peers is not None:
        reg.set_peer_count(peers)
    budget = RetryBudget(config.RetryBudget(), clock)
    return RoutePlanner(route, keys, reg, budget, random.Random(1)), clock, reg, keys


def serve(p: RoutePlanner, clock: FakeClock) -> str:
    plan = p.begin(clock.now())
    step = plan.next(clock.now())
    assert isinstance(step, Try)
    plan.record(OK, clock.now())
    assert isinstance(plan.next(clock.now()), GiveUp)
    return step.key.provider


def test_60_rpm_admits_60_in_a_minute_and_the_rest_go_to_the_fallback():
    p, clock, reg, keys = planner()
    sent = [serve(p, clock) for _ in range(100)]
    assert sent.count("primary") == 60 and sent.count("fallback") == 40
    assert sent[:60] == ["primary"] * 60          # the primary is used until its limit...
    st_ = reg.state(keys[0])
    assert not st_.admits(clock.now())            # ...then skipped like an open breaker
    assert st_.available_at(clock.now()) == clock.now() + 60
    assert reg.state(keys[0]).in_flight == 0
    clock.advance(59.9)
    assert serve(p, clock) == "fallback"
    clock.advance(0.1)
    assert serve(p, clock) == "primary"           # the window freed


def test_spread_traffic_never_exceeds_the_limit_in_any_sliding_minute():
    p, clock, _, _ = planner()
    times = []
    for _ in range(600):                          # 5 minutes at 2 req/s
        if serve(p, clock) == "primary":
            times.append(clock.now())
        clock.advance(0.5)
    j = 0
    for i, t in enumerate(times):
        while times[j] <= t - 60:
            j += 1
        assert i - j + 1 <= 60, f"{i - j + 1} primary requests in the minute ending {t}"
    assert len(times) >= 5 * 60 - 10              # and the limit is used, not wasted


@settings(max_examples=60, deadline=None)
@given(gaps=st.lists(st.floats(min_value=0, max_value=3), min_size=1, max_size=300),
       limit=st.integers(min_value=1, max_value=20))
def test_property_at_most_limit_in_any_window(gaps, limit):
    lim = RateLimiter(config.Limits(requests_per_minute=limit))
    now, admitted = 0.0, []
    for g in gaps:
        now += g
        if lim.admits(now):
            lim.note_request(now)
            admitted.append(now)
        else:
            assert lim.available_at(now) > now
    for i, t in enumerate(admitted):
        assert sum(1 for u in admitted[: i + 1] if u > t - 60) <= limit


def test_available_at_names_when_the_window_frees():
    lim = RateLimiter(config.Limits(requests_per_minute=3))
    for t in (0.0, 10.0, 20.0):
        lim.note_request(t)
    assert not lim.admits(30.0)
    assert lim.available_at(30.0) == 60.0          # the request at t=0 leaves the window
    assert lim.admits(60.0)


def test_token_limit_with_estimate_and_correction():
    lim = RateLimiter(config.Limits(tokens_per_minute=1000))
    assert estimate_tokens(4000) == 1000 and estimate_tokens(0) == 1
    r1 = lim.reserve(600, 0.0)
    assert lim.usage(0.0)[1] == 600 and lim.admits(0.0)
    r2 = lim.reserve(600, 1.0)                     # a request is not refused for its own size
    assert not lim.admits(1.0)                    # 1200 >= 1000: at the limit
    r1.settle(100)                                # the provider's usage says 100
    r2.settle(150)
    assert lim.usage(2.0)[1] == 250 and lim.admits(2.0)
    r1.settle(999999)                             # settling twice is a no-op
    assert lim.usage(2.0)[1] == 250
    r3 = lim.reserve(100, 30.0)
    r3.settle(2000)                               # under-estimated: corrected upwards
    assert not lim.admits(31.0)
    assert lim.available_at(31.0) == 90.0          # when r3 (the entry that holds 2000) leaves
    assert lim.admits(90.0)


def test_a_correction_after_the_estimate_left_the_window_is_ignored():
    log = UsageLog(window=60.0)
    entry = log.add(0.0, 500)
    log.add(100.0, 10)
    log.adjust(entry, -500)                       # aged out: must not subtract from the new total
    assert log.total(100.0) == 10


def test_usage_log_memory_is_bounded_under_heavy_traffic():
    log = UsageLog(window=60.0, granularity=0.25)
    t = 0.0
    for _ in range(100_000):
        log.add(t, 1)
        t += 0.001
    assert len(log) <= (60 + 60) / 0.25 + 2        # window + slack
    assert log.total(t) >= 60_000 - 1              # nothing younger than a minute was dropped


def test_a_query_at_a_planned_future_time_does_not_lose_counts_for_now():
    # the planner checks a retry at its planned start (now + delay), then other requests at now
    lim = RateLimiter(config.Limits(requests_per_minute=2))
    lim.note_request(0.0)
    lim.note_request(50.0)
    assert lim.admits(65.0)                        # at t=65 the first one is out...
    assert not lim.admits(55.0)                    # ...but at t=55 both still count
    assert lim.available_at(55.0) == 60.0
    log = UsageLog(window=60.0)
    e = log.add(0.0, 10)
    log.add(30.0, 5)
    assert log.total(61.0) == 5
    log.adjust(e, -4)                              # a late correction of an expired entry
    assert log.total(61.0) == 5 and log.total(59.0) == 11


def test_replicas_split_limits():
    assert effective_limit(60, 3) == 20 and effective_limit(100, 3) == 33
    assert effective_limit(2, 5) == 1             # never 0: a target stays usable
    assert effective_limit(None, 3) is None
    # from sharedHealth.replicas
    p, clock, reg, keys = planner(replicas=3)
    sent = [serve(p, clock) for _ in range(30)]
    assert sent.count("primary") == 20
    # a peer count seen through shared health wins over the config, and re-splits live
    reg.set_peer_count(2)
    assert reg.replicas == 2 and reg.state(keys[0]).limiter.rpm == 30
    sent = [serve(p, clock) for _ in range(30)]
    assert sent.count("primary") == 10            # 20 already counted, 30 allowed
    reg.set_peer_count(None)
    assert reg.replicas == 3
    # neither: 1
    _, _, reg1, keys1 = planner()
    assert reg1.replicas == 1 and reg1.state(keys1[0]).limiter.rpm == 60


def test_limits_survive_reload_and_are_removed_with_the_config():
    p, clock, reg, keys = planner()
    for _ in range(60):
        serve(p, clock)
    reg.set_limits({keys[0]: config.Limits(requests_per_minute=60, tokens_per_minute=10**6)})
    assert not reg.state(keys[0]).admits(clock.now())   # counts kept across a reload
    reg.set_limits({})
    assert reg.state(keys[0]).limiter is None and reg.state(keys[0]).admits(clock.now())


def test_merge_limits_takes_the_stricter_field():
    a = config.Limits(requests_per_minute=60)
    b = config.Limits(requests_per_minute=100, tokens_per_minute=5000)
    m = merge_limits(a, b)
    assert (m.requests_per_minute, m.tokens_per_minute) == (60, 5000)
    assert merge_limits(None, a) is a and merge_limits(a, None) is a


def limited_route(n: int, limits: config.Limits, clock: FakeClock):
    route = config.Route(name="r", targets=[config.Target(provider=f"p{i}", model="m", priority=i,
                                                          limits=limits) for i in range(n)])
    reg = HealthRegistry(config.Health(), clock)
    keys = [TargetKey(t.provider, "m", "u") for t in route.targets]
    reg.set_limits({k: limits for k in keys})
    return RoutePlanner(route, keys, reg, RetryBudget(config.RetryBudget(), clock), random.Random(1)), reg


def test_every_target_limited_gives_up_saying_when_the_soonest_frees():
    # Unlike open breakers, limits are never forced: the request would only collect a 429.
    clock = FakeClock(0.0)
    p, reg = limited_route(2, config.Limits(requests_per_minute=1), clock)
    assert serve(p, clock) == "p0"
    clock.advance(1)
    assert serve(p, clock) == "p1"
    clock.advance(1)
    plan = p.begin(clock.now())
    assert plan.next(clock.now()) == GiveUp("unavailable", None, 58.0, rate_limited=True)   # p0 frees first (t=60)
    assert plan.next(clock.now()).reason == "unavailable"               # final
    assert [reg.state(k).limiter.usage(clock.now())[0] for k in p.keys] == [1, 1]   # nothing sent
    assert all(reg.state(k).in_flight == 0 for k in p.keys)


def test_single_target_60_rpm_serves_exactly_60_and_refuses_the_rest_until_the_window_frees():
    clock = FakeClock(1000.0)
    p, reg = limited_route(1, RPM60, clock)
    steps = []
    for _ in range(100):                          # a burst: all at the same instant
        plan = p.begin(clock.now())
        step = plan.next(clock.now())
        steps.append(step)
        if isinstance(step, Try):
            plan.record(OK, clock.now())
    assert [s.reason for s in steps] == ["first"] * 60 + ["unavailable"] * 40
    assert {s.retry_after for s in steps[60:]} == {60.0}
    assert reg.state(p.keys[0]).limiter.usage(clock.now())[0] == 60    # the provider saw 60
    clock.advance(30)
    assert p.begin(clock.now()).next(clock.now()) == GiveUp("unavailable", None, 30.0, rate_limited=True)
    clock.advance(30)
    assert serve(p, clock) == "p0"


def test_an_open_breaker_is_forced_but_a_limited_target_is_not():
    clock = FakeClock(0.0)
    route = config.Route(name="r", targets=[
        config.Target(provider="limited", model="m", priority=0, limits=config.Limits(requests_per_minute=1)),
        config.Target(provider="open", model="m", priority=1)])
    reg = HealthRegistry(config.Health(), clock)
    keys = [TargetKey(t.provider, "m", "u") for t in route.targets]
    reg.set_limits({keys[0]: route.targets[0].limits})
    p = RoutePlanner(route, keys, reg, RetryBudget(config.RetryBudget(), clock), random.Random(1))
    assert serve(p, clock) == "limited"
    reg.state(keys[1]).import_open(clock.now() + 120, clock.now())   # opens after the limit frees
    step = p.begin(clock.now()).next(clock.now())
    assert (step.key.provider, step.reason) == ("open", "forced")
    assert reg.state(keys[0]).limiter.usage(clock.now())[0] == 1


def test_no_limits_no_limiter():
    _, _, reg, keys = planner(limits=None)
    assert reg.state(keys[0]).limiter is None
    assert reg.state(keys[0]).reserve(100, 0.0) is None
