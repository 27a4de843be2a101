"""Several API keys per target: health per (provider, model, key), and key rotation.

A route target whose provider lists N keys is N planner targets (one `TargetState` per key,
`TargetKey.key_index`) in one key group. A key refusal (401/402/403/429) moves the request to
the same target's next key before the route's fallback chain moves on; the refused key is
held back (401/402/403: open for maxCooldown; 429: sidelined until its Retry-After).
"""

from __future__ import annotations

import random

from hypothesis import given, settings, strategies as st
from test_policy_planner import run

from detour_proxy import config
from detour_proxy.policy import (
    BreakerState, FakeClock, HealthRegistry, Outcome, RetryBudget, RoutePlanner, TargetKey, Try,
)

OK = Outcome.success(duration=0.2)


def make(keys_per_target=(3, 1), *, attempts: int = 2, strategy: str = "priority", seed: int = 1,
         max_cooldown: float = 300.0, **route_kw):
    """A route whose target g has keys_per_target[g] keys, expanded per key as the gateway does."""
    targets = [config.Target(provider=f"p{g}", model="m", priority=g) for g in range(len(keys_per_target))]
    expanded, keys, groups = [], [], []
    for g, (t, n) in enumerate(zip(targets, keys_per_target)):
        for k in range(n):
            expanded.append(t)
            keys.append(TargetKey(t.provider, t.model, f"https://{t.provider}.example", k))
            groups.append(g)
    route = config.Route(name="r", strategy=strategy, targets=targets,
                         retry=config.Retry(attempts=attempts), **route_kw)
    route = route.model_copy(update={"targets": expanded})
    clock = FakeClock(100.0)
    reg = HealthRegistry(config.Health(breaker=config.Breaker(max_cooldown=max_cooldown)), clock)
    budget = RetryBudget(config.RetryBudget(), clock)
    return RoutePlanner(route, keys, reg, budget, random.Random(seed), groups=groups), clock




def shape(planner, steps):
    return [(planner.keys[s.index].provider, planner.keys[s.index].key_index, s.reason)
            if isinstance(s, Try) else s.reason for s in steps]


def test_401_then_429_rotate_through_the_keys_before_any_fallback():
    planner, clock = make((3, 1))
    _, steps = run(planner, clock, [Outcome.http(401), Outcome.http(429, retry_after=20), OK])
    assert shape(planner, steps) == [("p0", 0, "first"), ("p0", 1, "rotate"), ("p0", 2, "rotate"), "success"]
    assert planner.budget.stats(clock.now())[1] == 0   # rotation is not a retry: no budget spent


def test_402_and_403_rotate_too_although_no_route_list_names_402():
    for status in (402, 403):
        planner, clock = make((2, 1))
        _, steps = run(planner, clock, [Outcome.http(status), OK])
        assert shape(planner, steps) == [("p0", 0, "first"), ("p0", 1, "rotate"), "success"]


def test_every_key_refused_falls_back_to_the_next_target_without_retrying_a_key():
    planner, clock = make((2, 1), attempts=3)
    _, steps = run(planner, clock, [Outcome.http(429), Outcome.http(401), OK])
    assert shape(planner, steps) == [("p0", 0, "first"), ("p0", 1, "rotate"), ("p1", 0, "fallback"), "success"]


def test_a_model_failure_does_not_walk_the_keys():
    """A 503 or a timeout is the model's: retry as configured, then the next *target*."""
    planner, clock = make((3, 1), attempts=2)
    _, steps = run(planner, clock, [Outcome.http(503), Outcome.http(503), OK])
    assert shape(planner, steps) == [("p0", 0, "first"), ("p0", 0, "retry"), ("p1", 0, "fallback"), "success"]
    planner, clock = make((3, 1), attempts=1)
    _, steps = run(planner, clock, [Outcome.timeout(duration=1.0), OK])
    assert shape(planner, steps) == [("p0", 0, "first"), ("p1", 0, "fallback"), "success"]


def test_a_refused_key_is_held_back_for_the_next_requests():
    planner, clock = make((2, 1), max_cooldown=120.0)
    run(planner, clock, [Outcome.http(401), OK])
    key0 = planner.states[0]
    assert key0.breaker_state(clock.now()) is BreakerState.OPEN
    assert key0.cooldown_until == clock.now() - 0.1 + 120.0   # 401: out for maxCooldown
    # the next request starts on key 1 at once; the model's other key keeps it available
    _, steps = run(planner, clock, [OK])
    assert shape(planner, steps) == [("p0", 1, "first"), "success"]
    clock.advance(120.0)
    assert key0.breaker_state(clock.now()) is BreakerState.HALF_OPEN


def test_429_sidelines_the_key_for_its_retry_after_only():
    planner, clock = make((2, 1))
    run(planner, clock, [Outcome.http(429, retry_after=7.0), OK])
    key0 = planner.states[0]
    assert key0.breaker_state(clock.now()) is BreakerState.CLOSED
    assert not key0.admits(clock.now())
    assert key0.rate_limited(clock.now())
    clock.advance(7.0)
    assert key0.admits(clock.now())
    # 429 without Retry-After: a short default hold, so the next request does not hit it again at once
    planner, clock = make((2, 1))
    run(planner, clock, [Outcome.http(429), OK])
    assert not planner.states[0].admits(clock.now())
    clock.advance(1.0)
    assert planner.states[0].admits(clock.now())


def test_health_is_per_key_and_per_model():
    """Each (provider, model, key) has its own state; a single-key target is key 0."""
    planner, _ = make((3, 1))
    assert len({id(s) for s in planner.states}) == 4
    assert [k.key_index for k in planner.keys] == [0, 1, 2, 0]
    reg = planner.registry
    assert reg.get(TargetKey("p0", "m", "https://p0.example", 2)) is planner.states[2]
    assert TargetKey("p", "m", "u") == TargetKey("p", "m", "u", 0)


def test_strategies_order_targets_not_keys():
    """Keys of a target stay together, in key order, whatever the strategy draws."""
    for strategy in ("priority", "weighted", "latency", "least-busy"):
        for seed in range(20):
            planner, clock = make((3, 2), strategy=strategy, seed=seed)
            plan = planner.begin(clock.now())
            groups = [planner.keys[i].provider for i in plan.order]
            assert groups in (["p0"] * 3 + ["p1"] * 2, ["p1"] * 2 + ["p0"] * 3), (strategy, seed)
            for p in ("p0", "p1"):
                ks = [planner.keys[i].key_index for i in plan.order if planner.keys[i].provider == p]
                assert ks == sorted(ks)


def test_a_target_with_every_key_out_is_skipped_and_the_next_one_serves():
    planner, clock = make((2, 1))
    for i in (0, 1):
        planner.states[i].key_refused(Outcome.http(401), clock.now())
    _, steps = run(planner, clock, [OK])
    assert shape(planner, steps) == [("p1", 0, "first"), "success"]


def test_single_key_routes_are_unchanged_a_401_is_not_rotated():
    planner, clock = make((1, 1))
    assert planner.key_groups is None
    _, steps = run(planner, clock, [Outcome.http(401), OK])
    assert shape(planner, steps) == [("p0", 0, "first"), ("p1", 0, "fallback"), "success"]
    assert planner.states[0].breaker_state(clock.now()) is BreakerState.CLOSED


OUTCOMES = st.sampled_from([OK, Outcome.http(401), Outcome.http(402), Outcome.http(403), Outcome.http(429),
                            Outcome.http(429, retry_after=3.0), Outcome.http(503), Outcome.http(400),
                            Outcome.timeout(duration=1.0), Outcome.connect_error()])


@settings(max_examples=150, deadline=None)
@given(keys=st.lists(st.integers(1, 3), min_size=1, max_size=3), outcomes=st.lists(OUTCOMES, min_size=20, max_size=20),
       attempts=st.integers(1, 3))
def test_rotation_invariants(keys, outcomes, attempts):
    """Whatever the providers answer: a rotation always follows a key refusal on the same target
    and lands on an untried key; a key is never retried after refusing; after a non-key failure
    no sibling key is tried; the plan ends; every slot is freed."""
    planner, clock = make(tuple(keys), attempts=attempts)
    plan, steps = run(planner, clock, outcomes)
    tries = [s for s in steps if isinstance(s, Try)]
    assert len(tries) <= sum(keys) * attempts
    for n, t in enumerate(tries[1:], start=1):
        prev, out = tries[n - 1], plan.attempts[n - 1][1]
        same_group = planner.keys[t.index].provider == planner.keys[prev.index].provider
        if t.reason == "rotate":
            assert same_group and t.index != prev.index and out.status in (401, 402, 403, 429)
            assert t.index not in [x.index for x in tries[:n]]
        elif same_group:
            assert t.index == prev.index and t.reason == "retry"
            assert out.status not in (401, 402, 403, 429) or keys[int(planner.keys[t.index].provider[1:])] == 1
    assert all(s.in_flight == 0 for s in planner.states)


def test_a_hedge_goes_to_another_target_never_to_a_sibling_key():
    planner, clock = make((3, 1), hedge=config.Hedge(after=1.0))
    plan = planner.begin(clock.now())
    first = plan.next(clock.now())
    clock.advance(1.0)
    h = plan.hedge(clock.now())
    assert (planner.keys[first.index].provider, planner.keys[h.index].provider) == ("p0", "p1")
    plan.record(OK, clock.now(), index=h.index)
    plan.abandon(clock.now(), index=first.index)
    assert all(s.in_flight == 0 for s in planner.states)


def test_affinity_ranks_targets_and_keeps_their_keys_in_order():
    """Prompt-cache affinity picks a target (rendezvous over targets, not keys); its keys follow
    in key order, and a refused first key moves the session to the same target's next key."""
    seen = set()
    for session in range(30):
        planner, clock = make((3, 3), strategy="weighted", affinity=config.Affinity())
        plan = planner.begin(clock.now(), affinity=f"session:{session}")
        provs = [planner.keys[i].provider for i in plan.order]
        assert provs in (["p0"] * 3 + ["p1"] * 3, ["p1"] * 3 + ["p0"] * 3)
        assert [planner.keys[i].key_index for i in plan.order] == [0, 1, 2, 0, 1, 2]
        seen.add(provs[0])
        # the same key ranks the same on another replica (a fresh planner)
        again, c2 = make((3, 3), strategy="weighted", affinity=config.Affinity(), seed=99)
        assert again.begin(c2.now(), affinity=f"session:{session}").order == plan.order
    assert seen == {"p0", "p1"}


def test_limits_are_per_key():
    """`limits` hold per (model, key): two keys at 1 request a minute serve two requests a minute."""
    planner, clock = make((2, 1))
    lim = config.Limits(requests_per_minute=1)
    planner.registry.set_limits({k: lim for k in planner.keys})
    served = []
    for _ in range(3):
        _, steps = run(planner, clock, [OK])
        served.append(shape(planner, steps)[0])
    assert served == [("p0", 0, "first"), ("p0", 1, "first"), ("p1", 0, "first")]
