"""RequestPlan.hedge: duplicates of a slow attempt, bounded by maxExtra and the retry budget;
slow calls (brownouts) open the breaker and move traffic."""

from __future__ import annotations

import random

import pytest

from detour_proxy import config
from detour_proxy.policy import (
    BreakerState, FakeClock, GiveUp, HealthRegistry, Outcome, RetryBudget, RoutePlanner, TargetKey, Try,
)


def make(n=3, hedge=None, budget=None, health=None):
    route = config.Route(name="r", targets=[config.Target(provider=f"p{i}", model="m", priority=i)
                                            for i in range(n)],
                         hedge=config.Hedge(**hedge) if hedge else None)
    clock = FakeClock(100.0)
    reg = HealthRegistry(health or config.Health(), clock)
    keys = [TargetKey(t.provider, "m", "u") for t in route.targets]
    b = RetryBudget(config.RetryBudget(**(budget or {})), clock)
    return RoutePlanner(route, keys, reg, b, random.Random(1)), clock, reg, keys


def test_hedge_goes_to_the_next_target_and_the_winner_ends_the_request():
    p, clock, reg, keys = make(hedge={"after": 1.0, "maxExtra": 1})
    plan = p.begin(clock.now())
    first = plan.next(clock.now())
    assert (first.index, first.reason) == (0, "first")
    clock.advance(1.0)
    h = plan.hedge(clock.now())
    assert isinstance(h, Try) and (h.index, h.reason) == (1, "hedge")
    assert plan.in_flight == [0, 1]
    assert plan.hedge(clock.now()) is None                # maxExtra 1
    with pytest.raises(RuntimeError):
        plan.next(clock.now())                           # attempts still in flight
    plan.record(Outcome.success(duration=0.2), clock.now(), index=1)
    plan.abandon(clock.now(), index=0)                    # the loser: counts nothing
    assert reg.state(keys[0]).window_stats(clock.now()) == (0, 0, 0)
    assert all(reg.state(k).in_flight == 0 for k in keys)
    step = plan.next(clock.now())
    assert isinstance(step, GiveUp) and step.reason == "success"
    assert p.budget.stats(clock.now()) == (1, 1)          # the hedge spent the retry budget


def test_hedge_refused_by_the_retry_budget():
    p, clock, _, _ = make(hedge={"after": 1.0, "maxExtra": 2}, budget={"ratio": 0.0, "minPerSecond": 0.0})
    plan = p.begin(clock.now())
    plan.next(clock.now())
    assert plan.hedge(clock.now()) is None
    assert plan.budget_denied == 1


def test_hedge_skips_open_targets_and_needs_a_route_that_opts_in():
    p, clock, reg, keys = make(hedge={"after": 1.0, "maxExtra": 2})
    reg.state(keys[1]).breaker.trip(clock.now())
    plan = p.begin(clock.now())
    plan.next(clock.now())
    h = plan.hedge(clock.now())
    assert h.index == 2
    assert plan.hedge(clock.now()) is None                # nothing left to hedge to
    p2, clock2, _, _ = make(hedge=None)
    plan2 = p2.begin(clock2.now())
    plan2.next(clock2.now())
    assert plan2.hedge(clock2.now()) is None


def test_all_attempts_of_a_race_fail_then_the_planner_goes_on():
    p, clock, _, _ = make(n=3, hedge={"after": 1.0, "maxExtra": 1})
    plan = p.begin(clock.now())
    plan.next(clock.now())
    plan.hedge(clock.now())
    plan.record(Outcome.http(503), clock.now(), index=0)
    plan.record(Outcome.http(503), clock.now(), index=1)
    step = plan.next(clock.now())
    # the last recorded (p1) is retried first; p2 stays as fallback; p0 is not retried after p1
    assert isinstance(step, Try) and (step.index, step.reason) == (1, "retry")


def test_slow_calls_open_the_breaker_without_a_single_failure():
    health = config.Health(breaker=config.Breaker(minRequests=4, failureRatio=0.5, cooldown=30),
                           slow_call=config.SlowCall(threshold=10.0, ratio=0.5))
    p, clock, reg, keys = make(n=2, health=health)
    served = []
    for latency in (1.0, 1.0, 12.0, 12.0, 12.0, 12.0):
        plan = p.begin(clock.now())
        step = plan.next(clock.now())
        served.append(step.index)
        clock.advance(latency)
        plan.record(Outcome.success(duration=latency), clock.now())
    # 2 fast + 2 slow: 50% slow with minRequests 4 -> open; the rest goes to p1
    assert served == [0, 0, 0, 0, 1, 1]
    st = reg.state(keys[0])
    assert st.breaker_state(clock.now()) is BreakerState.OPEN
    assert st.window_stats(clock.now())[1] == 0          # no failures at all
    # a slow probe after the cooldown keeps it open (a brownout must not flap)
    clock.advance(30)
    plan = p.begin(clock.now())
    step = plan.next(clock.now())
    assert step.index == 0
    plan.record(Outcome.success(duration=12.0), clock.now())
    assert st.breaker_state(clock.now()) is BreakerState.OPEN
    # streams are judged by time to first token, not by the length of the answer
    assert Outcome.success(duration=60.0, ttft=0.5).latency == 0.5
