"""Several API keys per target: the planner's view of a route whose providers list `apiKeys`.

The executor expands a route target whose provider has N keys into N planner targets, one per
key, adjacent and in key order, each with its own `TargetState` (`TargetKey.key_index`): a
key's breaker, window, sideline and `limits` are its own. `KeyGroups` maps those indices back
to their route target (the *group*) so that:

- the strategy orders groups, not keys (`ordered`): keys are not load-balanced against the
  route's other targets; a group is ranked by its best key (`KeyGroup`), and its keys follow
  in key order, so the first key that admits serves;
- a key refusal (`target.KEY_STATUSES`) moves the request to the group's next untried key
  before anything else (`RequestPlan` reason `rotate`), and only when every key is out does
  the request fall back to another target;
- any other failure (a 503, a timeout) is the model's, not the key's: the request falls back
  to the next *group*, never to a sibling key (which would fail the same way).

Pure, like the rest of `policy`; a route whose providers have one key each has no `KeyGroups`
(the planner's hot path does not change).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Container, Sequence

from detour_proxy import config

from .affinity import affinity_order
from .balancer import order_targets
from .breaker import Admission
from .outcome import Outcome, OutcomeKind
from .target import KEY_STATUSES, TargetKey, TargetState

__all__ = ["KeyGroup", "KeyGroups"]


class KeyGroup:
    """A route target with several keys, as the balancer and affinity see it: it admits when
    any key admits, its latency is its best key's, its load the sum of its keys'."""

    __slots__ = ("states",)

    def __init__(self, states: Sequence[TargetState]) -> None:
        self.states = list(states)

    def admits(self, now: float) -> bool:
        return any(s.admits(now) for s in self.states)

    def latency_estimate(self, now: float) -> float | None:
        est = [e for s in self.states if (e := s.latency_estimate(now)) is not None]
        return min(est) if est else None

    @property
    def in_flight(self) -> int:
        return sum(s.in_flight for s in self.states)


class KeyGroups:
    """Index bookkeeping of a route whose targets were expanded per key.

    `groups[i]` is the route target (group) of planner target `i`; members of a group are
    adjacent and in key order. `route` is the expanded route (one target entry per key)."""

    __slots__ = ("group_of", "members", "route", "keys", "views")

    def __init__(self, route: config.Route, keys: Sequence[TargetKey], groups: Sequence[int],
                 states: Sequence[TargetState]) -> None:
        if len(groups) != len(keys):
            raise ValueError(f"route {route.name!r}: {len(keys)} keys but {len(groups)} groups")
        self.group_of = list(groups)
        members: list[list[int]] = []
        for i, g in enumerate(groups):
            if g == len(members):
                members.append([i])
            elif g == len(members) - 1:
                members[g].append(i)
            else:
                raise ValueError(f"route {route.name!r}: key groups must be adjacent and numbered in order")
        self.members = members
        #: the route as configured (one target per group), for the strategy and affinity
        self.route = route.model_copy(update={"targets": [route.targets[m[0]] for m in members]})
        self.keys = [keys[m[0]] for m in members]
        self.views = [KeyGroup([states[i] for i in m]) for m in members]

    @staticmethod
    def needed(groups: Sequence[int] | None) -> bool:
        """Does any group hold more than one key?"""
        return groups is not None and len(set(groups)) < len(groups)

    def size(self, index: int) -> int:
        return len(self.members[self.group_of[index]])

    def siblings(self, index: int) -> list[int]:
        """The planner targets of `index`'s group, in key order (`index` included)."""
        return self.members[self.group_of[index]]

    def expand(self, group_order: Sequence[int]) -> list[int]:
        """Planner targets in the groups' order, each group's keys in key order."""
        return [i for g in group_order for i in self.members[g]]

    def order(self, now: float, rng: random.Random, eligible: Callable[[int], bool] | None,
              affinity: str | None) -> list[int]:
        """A request's visiting order: the strategy (and prompt-cache affinity) ranks the route's
        targets by their `KeyGroup` view, and each target's keys follow in key order."""
        targets = self.route.targets
        cands = [g for g, m in enumerate(self.members)
                 if (eligible is None or eligible(m[0])) and not targets[g].overflow_only]
        gorder = order_targets(self.route, self.views, now, rng, cands)
        if affinity is not None and self.route.affinity is not None:
            gorder = affinity_order(self.route, self.keys, self.views, now, affinity, gorder)
        return self.expand(gorder)

    def refusal(self, index: int, outcome: Outcome) -> bool:
        """Did the provider refuse planner target `index`'s *key* (and has its target another)?"""
        return outcome.kind is OutcomeKind.HTTP_ERROR and outcome.status in KEY_STATUSES and self.size(index) > 1

    def next_key(self, cur: int, tried: Container[int], ok: Callable[[int], bool],
                 states: Sequence[TargetState], now: float) -> tuple[int, Admission] | None:
        """After a key refusal on `cur`: the next untried, eligible key of the same target that
        admits (keys after `cur` first, then the ones before it), acquired; None if none is left."""
        sib = self.siblings(cur)
        at = sib.index(cur)
        for i in sib[at + 1:] + sib[:at]:
            if i not in tried and ok(i):
                ticket = states[i].acquire(now)
                if ticket is not None:
                    return i, ticket
        return None
