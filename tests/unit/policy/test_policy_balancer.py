"""Ordering strategies, checked as distributions over a seeded RNG."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from detour_proxy import config
from detour_proxy.policy import HealthRegistry, Outcome, TargetKey, order_targets, weighted_order

N = 4000


def route(strategy: str, *targets: dict, tolerance: float = 0.2) -> config.Route:
    return config.Route(name="r", strategy=strategy, latency_tolerance=tolerance,
                        targets=[config.Target(provider=f"p{i}", model="m", **t) for i, t in enumerate(targets)])


def states(r: config.Route, health: config.Health | None = None):
    reg = HealthRegistry(health or config.Health())
    return [reg.state(TargetKey(t.provider, t.model, f"https://{t.provider}")) for t in r.targets]


def firsts(r, sts, seed=7, n=N, now=0.0):
    rng = random.Random(seed)
    return Counter(order_targets(r, sts, now, rng)[0] for _ in range(n))


def test_weighted_order_is_a_permutation_and_zero_is_last():
    rng = random.Random(1)
    for _ in range(200):
        out = weighted_order([0, 1, 2, 3], [0, 3, 1, 2], rng)
        assert sorted(out) == [0, 1, 2, 3] and out[-1] == 0


def test_priority_ascending_with_weighted_ties():
    r = route("priority", {"priority": 1}, {"priority": 0, "weight": 3}, {"priority": 0, "weight": 1},
              {"priority": 2})
    sts = states(r)
    rng = random.Random(3)
    orders = [order_targets(r, sts, 0.0, rng) for _ in range(N)]
    assert all(o[2:] == [0, 3] for o in orders)
    share = sum(o[0] == 1 for o in orders) / N
    assert share == pytest.approx(0.75, abs=0.03)


def test_weighted_distribution_follows_weights():
    r = route("weighted", {"weight": 1}, {"weight": 2}, {"weight": 7}, {"weight": 0})
    c = firsts(r, states(r))
    assert c[3] == 0
    for i, w in enumerate((0.1, 0.2, 0.7)):
        assert c[i] / N == pytest.approx(w, abs=0.03)
    rng = random.Random(5)
    assert all(order_targets(r, states(r), 0.0, rng)[-1] == 3 for _ in range(100))


def _set_ewma(sts, values, at: float = 0.0):
    """Give each target one latency sample at time `at` (None: never measured)."""
    for st, v in zip(sts, values):
        if v is not None:
            assert st.try_acquire(at)
            st.record(Outcome.success(duration=v), at)


def test_latency_band_shares_traffic():
    r = route("latency", {}, {}, {}, tolerance=0.2)
    sts = states(r)
    _set_ewma(sts, [1.0, 1.15, 3.0])
    c = firsts(r, sts)
    assert c[2] == 0
    assert c[0] / N == pytest.approx(0.5, abs=0.03) and c[1] / N == pytest.approx(0.5, abs=0.03)
    rng = random.Random(1)
    assert all(order_targets(r, sts, 0.0, rng)[2] == 2 for _ in range(100))


def test_latency_outside_band_follows_by_ewma_and_tolerance_zero_herds():
    r = route("latency", {}, {}, {}, {}, tolerance=0.0)
    sts = states(r)
    _set_ewma(sts, [5.0, 1.0, 3.0, 2.0])
    rng = random.Random(2)
    assert {tuple(order_targets(r, sts, 0.0, rng)) for _ in range(50)} == {(1, 3, 2, 0)}


def test_latency_unknown_targets_are_explored():
    r = route("latency", {}, {}, {})
    sts = states(r)
    _set_ewma(sts, [1.0, None, 9.0])
    c = firsts(r, sts)
    assert c[1] / N == pytest.approx(0.5, abs=0.03) and c[2] == 0


def test_latency_band_ignores_targets_that_do_not_admit():
    r = route("latency", {}, {}, {})
    sts = states(r, config.Health(breaker=config.Breaker(consecutive_failures=1)))
    _set_ewma(sts, [1.0, 2.0, 2.2])
    assert sts[0].try_acquire(0.0)
    sts[0].record(Outcome.http(503), 0.0)  # opens: the fastest target is out
    c = firsts(r, sts, now=1.0)
    assert c[0] == 0
    assert c[1] / N == pytest.approx(0.5, abs=0.03)
    rng = random.Random(4)
    assert all(order_targets(r, sts, 1.0, rng)[-1] == 0 for _ in range(50))


def test_latency_stale_estimates_are_explored_again_and_refreshed_not_blended():
    """A target pushed out of the band by a brownout is retried once its estimate is stale."""
    r = route("latency", {}, {})
    sts = states(r)                     # health window 60 s: estimates are stale after 10 s
    _set_ewma(sts, [0.03, 3.0])
    assert firsts(r, sts, now=5.0)[1] == 0
    _set_ewma(sts[:1], [0.03], at=9.0)  # the fast target keeps being measured; the slow one is not
    c = firsts(r, sts, now=12.0)
    assert c[1] / N == pytest.approx(0.5, abs=0.03)
    assert sts[1].try_acquire(12.0)      # one exploring request in flight: no more until it answers
    assert firsts(r, sts, now=12.0)[1] == 0
    sts[1].release(12.0)
    _set_ewma(sts[1:], [0.03], at=12.0)  # the recovered target's first new sample replaces 3.0
    assert sts[1].latency_estimate(12.0) == pytest.approx(0.03)


def test_least_busy_power_of_two_prefers_less_busy():
    r = route("least-busy", {}, {}, {})
    sts = states(r)
    for st, n in zip(sts, (0, 5, 10)):
        st.in_flight = n
    c = firsts(r, sts)
    # p2c: the least busy wins whenever sampled (2/3), the middle one when paired with the busiest
    assert c[0] / N == pytest.approx(2 / 3, abs=0.03)
    assert c[1] / N == pytest.approx(1 / 3, abs=0.03)
    assert c[2] == 0
    rng = random.Random(9)
    for _ in range(100):
        o = order_targets(r, sts, 0.0, rng)
        assert o[1:] == sorted(o[1:], key=lambda i: sts[i].in_flight)


def test_least_busy_skips_targets_that_do_not_admit():
    r = route("least-busy", {}, {}, {})
    sts = states(r, config.Health(breaker=config.Breaker(consecutive_failures=1)))
    assert sts[0].try_acquire(0.0)
    sts[0].record(Outcome.http(503), 0.0)
    sts[1].in_flight = 4
    rng = random.Random(2)
    orders = [order_targets(r, sts, 1.0, rng) for _ in range(200)]
    # with two admissible targets p2c always compares both: the idle one leads, the open one is last
    assert all(o == [2, 1, 0] for o in orders)


@pytest.mark.parametrize("strategy", ["priority", "weighted", "latency", "least-busy"])
def test_candidates_and_determinism(strategy):
    r = route(strategy, {"weight": 2}, {"priority": 1}, {"weight": 5}, {})
    sts = states(r)
    a = [order_targets(r, sts, 0.0, rng, [0, 2, 3]) for rng in [random.Random(11)] for _ in range(20)]
    b = [order_targets(r, sts, 0.0, rng, [0, 2, 3]) for rng in [random.Random(11)] for _ in range(20)]
    assert a == b
    assert all(sorted(o) == [0, 2, 3] for o in a)
    assert len({tuple(o) for o in a}) > 1  # it does vary


def _priority_by_definition(r: config.Route, cands: list[int], rng: random.Random) -> list[int]:
    """Ascending priority, each tier in weighted random order (a tier of one draws nothing)."""
    weights = [t.weight for t in r.targets]
    out: list[int] = []
    for prio in sorted({r.targets[i].priority for i in cands}):
        out.extend(weighted_order([i for i in cands if r.targets[i].priority == prio], weights, rng))
    return out


@pytest.mark.parametrize("seed", range(40))
def test_planner_priority_order_is_the_strategy_order_for_the_same_draws(seed):
    """RoutePlanner.begin() orders a priority route from tiers computed once per config; with
    the same seed it gives exactly the order (and consumes exactly the draws) the strategy
    defines, overflowOnly targets left out."""
    from detour_proxy.policy import RetryBudget, RoutePlanner
    gen = random.Random(seed)
    n = gen.randint(1, 7)
    r = config.Route(name="r", strategy="priority", hiddenFailures=["context-window"], targets=[
        config.Target(provider=f"p{i}", model="m", priority=gen.randint(0, 2), weight=gen.randint(0, 3),
                      contextWindow=1000 * (i + 1), overflowOnly=(i > 0 and gen.random() < 0.2))
        for i in range(n)])
    keys = [TargetKey(t.provider, t.model, f"https://{t.provider}") for t in r.targets]
    reg = HealthRegistry(config.Health())
    planner = RoutePlanner(r, keys, reg, RetryBudget(config.RetryBudget()), rng=random.Random(seed))
    ref = random.Random(seed)
    cands = [i for i in range(n) if not r.targets[i].overflow_only]
    for _ in range(5):
        assert planner.begin(0.0).order == _priority_by_definition(r, cands, ref)
    assert planner.rng.random() == ref.random()   # the same number of draws was taken
