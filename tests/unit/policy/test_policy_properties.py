"""Properties that must hold under any sequence of outcomes and time advances."""

from __future__ import annotations

import itertools
import math
import random

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from detour_proxy import config
from detour_proxy.policy import (
    BreakerState, FakeClock, GiveUp, HealthRegistry, Outcome, RetryBudget, RoutePlanner, TargetKey, Try,
)

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

outcomes = st.one_of(
    st.just(Outcome.success(duration=0.2)),
    st.builds(lambda d, t: Outcome.success(duration=d, ttft=t),
              st.floats(0, 20), st.one_of(st.none(), st.floats(0, 20))),
    st.sampled_from([500, 502, 503, 504, 400, 401, 404, 422, 409]).map(Outcome.http),
    st.builds(lambda s, ra: Outcome.http(s, retry_after=ra), st.sampled_from([429, 503]),
              st.floats(0, 400)),
    st.just(Outcome.connect_error()),
    st.builds(lambda d: Outcome.timeout(duration=d), st.one_of(st.none(), st.floats(0, 60))),
    st.just(Outcome.stream_error()),
)


@st.composite
def healths(draw):
    cooldown = draw(st.floats(0.5, 30))
    slow = draw(st.one_of(st.none(), st.builds(
        lambda t, r: config.SlowCall(threshold=t, ratio=r), st.floats(0.1, 10), st.floats(0.1, 1.0))))
    return config.Health(
        window=draw(st.floats(1, 120)),
        slow_call=slow,
        breaker=config.Breaker(
            failure_ratio=draw(st.floats(0.05, 1.0)), min_requests=draw(st.integers(1, 10)),
            consecutive_failures=draw(st.integers(1, 6)), cooldown=cooldown,
            max_cooldown=cooldown * draw(st.floats(1, 10)), half_open_probes=draw(st.integers(1, 3)),
        ),
    )


ops = st.one_of(
    st.tuples(st.just("advance"), st.floats(0, 200)),
    st.tuples(st.just("acquire")),
    st.tuples(st.just("force")),
    st.tuples(st.just("record"), outcomes, st.booleans()),
    st.tuples(st.just("release"), st.booleans()),
    st.tuples(st.just("import"), st.floats(-50, 2000)),
    st.tuples(st.just("sideline"), st.floats(-5, 100)),
)


@SETTINGS
@given(health=healths(), script=st.lists(ops, max_size=80))
@example(health=config.Health(breaker=config.Breaker(cooldown=5.0, max_cooldown=100.0)),
         script=[("import", 500.0), ("force",), ("record", Outcome.http(503), True)])
@example(health=config.Health(breaker=config.Breaker(consecutive_failures=1, cooldown=5.0)),
         script=[("import", 50.0), ("force",), ("record", Outcome.success(), True), ("acquire",),
                 ("record", Outcome.http(503), True)])
def test_cooldown_never_shrinks(health, script):
    clock = FakeClock(10.0)
    transitions = []
    reg = HealthRegistry(health, clock, lambda k, old, new: transitions.append((old, new)))
    s = reg.state(TargetKey("p", "m", "u"))
    tickets = []
    prev = -math.inf
    max_cd = health.breaker.max_cooldown
    for op in script:
        now = clock.now()
        kind = op[0]
        if kind == "advance":
            clock.advance(op[1])
        elif kind == "acquire":
            t = s.acquire(now)
            if t is not None:
                tickets.append(t)
        elif kind == "force":
            tickets.append(s.force_acquire(now))
        elif kind == "record" and tickets:
            t = tickets.pop(0)
            s.record(op[1], now, t if op[2] else None)
        elif kind == "release" and tickets:
            t = tickets.pop(0)
            s.release(now, t if op[1] else None)
        elif kind == "import":
            s.import_open(now + op[1], now)
        elif kind == "sideline":
            s.sideline(now + op[1])
        now = clock.now()
        cur = s.cooldown_until if s.cooldown_until is not None else -math.inf
        assert cur >= prev, f"cooldown shrank from {prev} to {cur} after {op}"
        prev = cur
        assert cur <= now + max_cd + 1e-6  # nothing opens a target for longer than maxCooldown
        state = s.breaker_state(now)
        if state is BreakerState.OPEN:
            assert not s.admits(now) and s.available_at(now) >= cur
        assert s.in_flight == len(tickets)
        assert s.breaker.probes_in_flight <= len(tickets)
    # transitions are a valid chain and never repeat a state
    for (a, b), (c, _) in zip(transitions, transitions[1:]):
        assert a is not b and b is c


def _planner(health, n, attempts, strategy, budget_settings, seed, budget_cls=RetryBudget):
    route = config.Route(
        name="r", strategy=strategy, timeout=10.0,
        targets=[config.Target(provider=f"p{i}", model="m", priority=i % 2, weight=i % 3)
                 for i in range(n)],
        retry=config.Retry(attempts=attempts, backoff=config.Backoff(initial=0.2, max=2.0),
                           max_retry_after=5.0))
    clock = FakeClock(0.0)
    reg = HealthRegistry(health, clock)
    budget = budget_cls(budget_settings, clock)
    keys = [TargetKey(t.provider, t.model, "u") for t in route.targets]
    return RoutePlanner(route, keys, reg, budget, random.Random(seed)), clock


class CheckedBudget(RetryBudget):
    """Asserts the budget invariant at every successful spend and counts spends."""

    spent = 0

    def try_spend(self, now):
        ok = super().try_spend(now)
        if ok:
            self.spent += 1
            _, retries = self.stats(now)
            assert retries <= self.allowed(now) + 1e-9
        return ok


requests = st.lists(st.tuples(st.floats(0, 5), st.one_of(st.none(), st.floats(0, 12))),
                    min_size=1, max_size=25)


@SETTINGS
@given(health=healths(), n=st.integers(1, 4), attempts=st.integers(1, 4),
       strategy=st.sampled_from(["priority", "weighted", "latency", "least-busy"]),
       ratio=st.floats(0, 1), floor=st.floats(0, 0.5), seed=st.integers(0, 2**16),
       reqs=requests, data=st.data())
def test_planner_invariants(health, n, attempts, strategy, ratio, floor, seed, reqs, data):
    """Retries never exceed the budget; no Try starts at or after the deadline; a request
    makes at most targets x attempts tries, at most `attempts` per target, one pass each.

    Deadline and budget are checked against values this test computes itself (the deadline
    it passed to `begin()`, or begin time + route timeout; request and retry times it saw),
    not against what the plan or the budget report about themselves."""
    window = 10.0
    budget_settings = config.RetryBudget(ratio=ratio, min_per_second=floor, window=window)
    planner, clock = _planner(health, n, attempts, strategy, budget_settings, seed, CheckedBudget)
    # The budget counts in 10 buckets, so its window spans between 9/10 and all of `window`:
    # retries over the last (window - one bucket) <= ratio x requests over the last `window`
    # + minPerSecond x window must hold at every retry (tiny slack for float bucket edges).
    short = window - window / 10
    request_times: list[float] = []
    retry_times: list[float] = []
    retries = 0
    for gap, timeout in reqs:
        clock.advance(gap)
        began = clock.now()
        deadline = began + (planner.route.timeout if timeout is None else timeout)
        plan = planner.begin(began, deadline=None if timeout is None else deadline)
        request_times.append(began)
        seq: list[int] = []
        while True:
            step = plan.next(clock.now())
            if isinstance(step, GiveUp):
                break
            assert isinstance(step, Try) and step.delay >= 0
            assert clock.now() + step.delay < deadline, "an attempt would start at/after the deadline"
            assert step.reason != "forced" or not seq
            retries += step.reason == "retry"
            if step.reason == "retry":
                t = clock.now()                 # the budget is spent when the retry is decided
                retry_times.append(t)
                recent_retries = sum(1 for u in retry_times if u > t - short + 1e-6)
                recent_requests = sum(1 for u in request_times if u > t - window - 1e-6)
                assert recent_retries <= ratio * recent_requests + floor * window + 1e-9, (
                    f"{recent_retries} retries vs {recent_requests} requests at t={t}")
            assert (step.reason == "retry") == bool(seq and seq[-1] == step.index)
            seq.append(step.index)
            assert step.attempt == seq.count(step.index) <= attempts
            clock.advance(step.delay)
            clock.advance(data.draw(st.floats(0, 4), label="attempt time"))
            if data.draw(st.integers(0, 9), label="abandon") == 0:
                plan.abandon(clock.now())
            else:
                plan.record(data.draw(outcomes, label="outcome"), clock.now())
        assert len(seq) <= n * attempts
        runs = [i for j, i in enumerate(seq) if j == 0 or seq[j - 1] != i]
        assert len(runs) == len(set(runs)), f"ping-pong: {seq}"
        assert all(planner.registry.state(k).in_flight == 0 for k in planner.keys)
    assert retries == planner.budget.spent


@settings(max_examples=50, deadline=None)
@given(seed=st.integers(0, 2**16), script=st.lists(outcomes, min_size=1, max_size=30),
       strategy=st.sampled_from(["priority", "weighted", "latency", "least-busy"]))
def test_same_seed_same_decisions(seed, script, strategy):
    def trace():
        health = config.Health(breaker=config.Breaker(consecutive_failures=2, cooldown=1.0))
        planner, clock = _planner(health, 3, 2, strategy, config.RetryBudget(), seed)
        out, feed = [], itertools.cycle(script)
        for _ in range(10):
            plan = planner.begin(clock.now())
            while not isinstance(step := plan.next(clock.now()), GiveUp):
                out.append((step.index, step.reason, step.delay))
                clock.advance(step.delay + 0.3)
                plan.record(next(feed), clock.now())
            out.append(step.reason)
        return out

    assert trace() == trace()
