"""Prompt-cache affinity (issue 16): rendezvous hashing over the best tier's healthy targets,
and the context-window fallback rule of the planner. Fake clock, no I/O."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from detour_proxy import config
from detour_proxy.policy import (
    CONTEXT_WINDOW, FakeClock, GiveUp, HealthRegistry, Outcome, OutcomeKind, RetryBudget, RoutePlanner, TargetKey,
    Try, affinity_key,
)

OK = Outcome.success(duration=0.2)
DOWN = Outcome.http(503, duration=0.1)
BREAKER = {"consecutiveFailures": 1, "cooldown": 10.0, "maxCooldown": 10.0}


def route(n: int = 4, strategy: str = "weighted", weights: list[int] | None = None,
          priorities: list[int] | None = None, windows: list[int | None] | None = None,
          affinity: bool = True, hidden: list[str] | None = None) -> config.Route:
    return config.Route(
        name="r", strategy=strategy, affinity=config.Affinity() if affinity else None,
        hiddenFailures=hidden or [],
        targets=[config.Target(provider=f"p{i}", model="m", weight=(weights or [1] * n)[i],
                               priority=(priorities or [0] * n)[i],
                               contextWindow=(windows or [None] * n)[i]) for i in range(n)])


def replica(r: config.Route, seed: int) -> tuple[RoutePlanner, FakeClock]:
    """One proxy replica: its own registry, budget, rng (nothing shared with the others)."""
    clock = FakeClock(100.0)
    reg = HealthRegistry(config.Health(breaker=config.Breaker(**BREAKER)), clock)
    budget = RetryBudget(config.RetryBudget(minPerSecond=1000), clock)
    keys = [TargetKey(t.provider, t.model, f"https://{t.provider}.example") for t in r.targets]
    return RoutePlanner(r, keys, reg, budget, random.Random(seed)), clock


def first(planner: RoutePlanner, clock: FakeClock, key: str | None, outcome: Outcome = OK) -> int:
    plan = planner.begin(clock.now(), affinity=key)
    step = plan.next(clock.now())
    assert isinstance(step, Try)
    plan.record(outcome, clock.now())
    return step.index


def test_same_key_same_target_on_independent_replicas():
    r = route()
    replicas = [replica(r, seed) for seed in (1, 2, 3)]
    for s in range(200):
        picks = {first(p, c, f"session:{s}") for p, c in replicas}
        assert len(picks) == 1, f"session {s} split across replicas: {picks}"


def test_without_affinity_a_session_is_spread():
    p, c = replica(route(affinity=False), 7)
    picks = {first(p, c, "session:1") for _ in range(40)}
    assert len(picks) > 1   # the control: the weighted strategy alone scatters a session


def test_failed_target_moves_only_its_keys_and_they_return_after_recovery():
    r = route()
    p, clock = replica(r, 1)
    before = {s: first(p, clock, f"s{s}") for s in range(400)}
    victim = before[0]
    # The victim fails (one failure opens its breaker here): its sessions fail over...
    plan = p.begin(clock.now(), affinity="s0")
    step = plan.next(clock.now())
    assert isinstance(step, Try) and step.index == victim
    plan.record(DOWN, clock.now())
    nxt = plan.next(clock.now())
    assert isinstance(nxt, Try) and nxt.index != victim and nxt.reason == "fallback"
    plan.record(OK, clock.now())
    during = {s: first(p, clock, f"s{s}") for s in range(400)}
    moved = {s for s in before if before[s] != during[s]}
    assert moved == {s for s in before if before[s] == victim}, "only the failed target's keys move"
    # ...to their next-ranked target, the same one on every replica.
    other, oclock = replica(r, 99)
    st = other.states[victim]
    st.record(DOWN, oclock.now(), st.acquire(oclock.now()))
    assert {s: first(other, oclock, f"s{s}") for s in range(400)} == during
    # After the cooldown a probe succeeds and every key comes home.
    clock.advance(11.0)
    assert first(p, clock, "s0") == victim
    assert {s: first(p, clock, f"s{s}") for s in range(400)} == before


def test_keys_are_balanced_and_weights_respected():
    p, c = replica(route(), 1)
    counts = Counter(first(p, c, f"k{s}") for s in range(4000))
    assert all(900 <= counts[i] <= 1100 for i in range(4)), counts
    p, c = replica(route(n=2, weights=[3, 1]), 1)
    counts = Counter(first(p, c, f"k{s}") for s in range(4000))
    assert 2800 <= counts[0] <= 3200, counts   # weight 3 of 4: 3000 expected


def test_priority_affinity_stays_in_the_best_tier():
    r = route(n=4, strategy="priority", priorities=[0, 0, 1, 1])
    p, c = replica(r, 1)
    picks = Counter(first(p, c, f"k{s}") for s in range(400))
    assert set(picks) == {0, 1}, picks   # the lower tier serves only when the best tier cannot


def test_no_key_no_change():
    p, c = replica(route(n=2, strategy="priority", priorities=[0, 1]), 1)
    assert {first(p, c, None) for _ in range(20)} == {0}


def test_affinity_key_sources_in_order():
    aff = config.Affinity()
    body = {"messages": [{"role": "system", "content": "S"}, {"role": "user", "content": "u"}],
            "user": "alice", "prompt_cache_key": "pck"}
    assert affinity_key(aff, [(b"x-detour-session", b"abc")], body) == "session:abc"
    assert affinity_key(aff, [], body) == "prompt-cache-key:pck"
    assert affinity_key(aff, [], {**body, "prompt_cache_key": None}) == "user:alice"
    a = affinity_key(aff, [], {"messages": body["messages"] + [{"role": "user", "content": "turn 2"}]})
    b = affinity_key(aff, [], {"messages": body["messages"]})
    assert a == b and a.startswith("prefix:")   # later turns share the conversation's prefix
    custom = config.Affinity(sources=["header"], header="X-Tenant")
    assert affinity_key(custom, [(b"x-tenant", b"t1")], body) == "header:t1"
    assert affinity_key(custom, [], body) is None


def test_context_window_moves_to_a_larger_target_and_counts_against_nobody():
    r = route(n=3, strategy="priority", priorities=[0, 1, 2], windows=[8000, 4000, 128000], affinity=False,
              hidden=["context-window"])
    p, clock = replica(r, 1)
    too_long = Outcome(OutcomeKind.HTTP_ERROR, status=400, error_class=CONTEXT_WINDOW)
    plan = p.begin(clock.now())
    s1 = plan.next(clock.now())
    assert isinstance(s1, Try) and s1.index == 0
    plan.record(too_long, clock.now())
    s2 = plan.next(clock.now())
    assert isinstance(s2, Try) and s2.index == 2, "the 4k target is skipped: it is smaller"
    plan.record(OK, clock.now())
    assert p.states[0].window_stats(clock.now())[1] == 0   # no failure counted on the 8k target
    # Nothing larger left: the 400 is the answer.
    plan = p.begin(clock.now())
    s = plan.next(clock.now())
    plan.record(too_long, clock.now())
    s = plan.next(clock.now())
    assert isinstance(s, Try) and s.index == 2
    plan.record(too_long, clock.now())
    end = plan.next(clock.now())
    assert isinstance(end, GiveUp) and end.reason == "not_retryable"


def test_overflow_only_target_serves_only_too_long_prompts():
    r = config.Route(name="r", hiddenFailures=["context-window"], targets=[
        config.Target(provider="p0", model="m", contextWindow=8000),
        config.Target(provider="p1", model="m", priority=1, contextWindow=8000),
        config.Target(provider="big", model="m", priority=2, contextWindow=1000000, overflowOnly=True)])
    p, clock = replica(r, 1)
    # An outage of both regular targets does not reach the overflow target...
    plan = p.begin(clock.now())
    seen = []
    while isinstance(step := plan.next(clock.now()), Try):
        seen.append(step.index)
        plan.record(DOWN, clock.now())
    assert seen == [0, 1] and step.reason == "exhausted"
    # ...a prompt too long for them does.
    clock.advance(60.0)
    plan = p.begin(clock.now())
    s = plan.next(clock.now())
    plan.record(Outcome(OutcomeKind.HTTP_ERROR, status=400, error_class=CONTEXT_WINDOW), clock.now())
    s = plan.next(clock.now())
    assert isinstance(s, Try) and s.index == 2


def test_overflow_only_needs_context_window_and_a_regular_target():
    big = {"provider": "big", "model": "m", "overflowOnly": True}
    with pytest.raises(ValueError, match="hiddenFailures"):
        config.Route(name="r", targets=[{"provider": "p", "model": "m"}, big])
    with pytest.raises(ValueError, match="not overflowOnly"):
        config.Route(name="r", hiddenFailures=["context-window"], targets=[big])
