"""Ordering strategies: in which order a request visits a route's targets.

The order is computed once, when a request begins; admission is re-checked each time the
planner moves on, so an order can name a target that turns out to be open. Randomness comes
only from the injected `random.Random`, so a seeded run is reproducible.

- priority: ascending `priority`; ties broken by a weighted random draw.
- weighted: weighted random order without replacement (a weight-0 target is a last resort).
- latency: the targets whose EWMA is within `latencyTolerance` of the best share traffic
  (weighted random among them), so the fastest target is not herded onto; targets with no
  EWMA yet join that band, to be explored. The rest follow by EWMA.
- least-busy: power of two choices on `in_flight` among admissible targets (near-optimal
  balance without the herding of "always the least busy"); the rest by `in_flight`.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Protocol, cast

from detour_proxy import config

__all__ = ["weighted_order", "order_targets", "Rankable", "priority_tiers", "tiers_order"]


class Rankable(Protocol):
    """What ordering needs of a target: a `TargetState`, or a `keygroups.KeyGroup` (a target
    with several API keys, ranked by its best key)."""

    @property
    def in_flight(self) -> int: ...
    def admits(self, now: float) -> bool: ...
    def latency_estimate(self, now: float) -> float | None: ...


def weighted_order(indices: Sequence[int], weights: Sequence[int], rng: random.Random) -> list[int]:
    """`indices` in weighted random order without replacement (`weights` parallel to the
    route's targets). Weight-0 targets come last, in their given order."""
    pool = [i for i in indices if weights[i] > 0]
    zero = [i for i in indices if weights[i] <= 0]
    out: list[int] = []
    total = sum(weights[i] for i in pool)
    while pool:
        if len(pool) == 1:
            out.append(pool.pop())
            break
        r = rng.random() * total
        acc = 0.0
        pick = len(pool) - 1
        for j, i in enumerate(pool):
            acc += weights[i]
            if r < acc:
                pick = j
                break
        i = pool.pop(pick)
        total -= weights[i]
        out.append(i)
    return out + zero


def priority_tiers(route: config.Route, cands: Sequence[int]) -> list[list[int]]:
    """`cands` grouped by ascending `priority` (each tier in the given order)."""
    targets = route.targets
    return [[i for i in cands if targets[i].priority == prio]
            for prio in sorted({targets[i].priority for i in cands})]


def tiers_order(tiers: Sequence[Sequence[int]], weights: Sequence[int], rng: random.Random) -> list[int]:
    """The priority order: tier after tier, each in weighted random order. A tier of one
    target draws nothing (as in `weighted_order`), so it costs no call."""
    out: list[int] = []
    for tier in tiers:
        if len(tier) == 1:
            out.append(tier[0])
        else:
            out.extend(weighted_order(tier, weights, rng))
    return out


def _priority(route: config.Route, cands: list[int], rng: random.Random) -> list[int]:
    return tiers_order(priority_tiers(route, cands), [t.weight for t in route.targets], rng)


def _latency(route: config.Route, states: Sequence[Rankable], cands: list[int],
             now: float, rng: random.Random) -> list[int]:
    weights = [t.weight for t in route.targets]
    # Unmeasured or stale estimates count as best, so they are explored (see LATENCY_STALE_FRACTION).
    est = {i: states[i].latency_estimate(now) for i in cands}

    def by_ewma(idx: list[int]) -> list[int]:
        return sorted(idx, key=lambda i: (est[i] is not None, est[i] or 0.0, i))

    admissible = [i for i in cands if states[i].admits(now)]
    rest = [i for i in cands if i not in admissible]
    pool = admissible or cands
    if not admissible:
        rest = []
    known = [i for i in pool if est[i] is not None]
    # Exploration is one request at a time: an unmeasured target with a request in flight waits
    # for that sample instead of taking a share of traffic (a brownout costs one slow call).
    unknown = [i for i in pool if est[i] is None and states[i].in_flight == 0]
    probing = [i for i in pool if est[i] is None and states[i].in_flight > 0]
    band = list(unknown)
    if known:
        best = min(cast(float, est[i]) for i in known)
        limit = best * (1.0 + route.latency_tolerance)
        band += [i for i in known if est[i] <= limit]  # type: ignore[operator]
    band.sort()
    if not band:
        band, probing = probing, []
    slower = [i for i in known if i not in band]
    return weighted_order(band, weights, rng) + by_ewma(slower) + probing + by_ewma(rest)


def _least_busy(route: config.Route, states: Sequence[Rankable], cands: list[int],
                now: float, rng: random.Random) -> list[int]:
    admissible = [i for i in cands if states[i].admits(now)]
    if not admissible:
        admissible = list(cands)
    pool = [i for i in admissible if route.targets[i].weight > 0] or admissible
    first: list[int] = []
    if len(pool) >= 2:
        a, b = rng.sample(pool, 2)
        first = [b if states[b].in_flight < states[a].in_flight else a]
    elif pool:
        first = [pool[0]]
    busy = lambda i: (route.targets[i].weight <= 0, states[i].in_flight, i)  # noqa: E731
    others = sorted((i for i in admissible if i not in first), key=busy)
    closed = sorted((i for i in cands if i not in admissible), key=busy)
    return first + others + closed


def order_targets(route: config.Route, states: Sequence[Rankable], now: float,
                  rng: random.Random, candidates: Sequence[int] | None = None) -> list[int]:
    """The visiting order of `candidates` (default: all targets) under `route.strategy`.
    `states[i]` is the state of `route.targets[i]`."""
    cands = list(range(len(route.targets))) if candidates is None else list(candidates)
    strategy = route.strategy
    if strategy is config.Strategy.priority:
        return _priority(route, cands, rng)
    if strategy is config.Strategy.weighted:
        return weighted_order(cands, [t.weight for t in route.targets], rng)
    if strategy is config.Strategy.latency:
        return _latency(route, states, cands, now, rng)
    if strategy is config.Strategy.least_busy:
        return _least_busy(route, states, cands, now, rng)
    raise ValueError(f"unknown strategy {strategy!r}")
