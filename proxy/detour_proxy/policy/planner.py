"""The planner: what to do next for one client request.

`RoutePlanner` is built once per route per config; `begin()` starts a `RequestPlan` for one
request. The executor loops: `step = plan.next(now)`; on a `Try` it sleeps `delay`, sends,
then calls exactly one of `plan.record(outcome, now)` / `plan.abandon(now)`; on a `GiveUp` it
answers the client (with `last` when there is one). The planner does no I/O and reads no
clock, so every decision is reproducible from (config, health, seeded rng, times).

Decision rules, in order, after an attempt:
1. success -> GiveUp('success'). A status neither retried nor falling back (a 400 the request
   caused) -> GiveUp('not_retryable'): another target would refuse it too. An outcome marked
   `retryable` (its provider documents the status as transient, e.g. Anthropic's 529) falls
   back even when the route's lists do not name it.
2. No attempt starts at or after the deadline -> GiveUp('deadline').
3. Retry the same target (retry codes, connect errors, timeouts) while its tries <
   `retry.attempts`, its wait (full jitter, at least an acceptable Retry-After) fits before
   the deadline, it admits at the planned start, and the retry budget has room.
4. Otherwise fall back: the next target in the order, not yet tried, eligible and admitting.
   Each target gets one pass per request (no ping-pong between two failing targets).
5. Nothing left -> GiveUp('exhausted') (or 'deadline' if the deadline is what stopped a retry).
Targets whose provider has several API keys (`policy.keygroups`): a key refusal (401, 402,
403, 429) goes first to the same target's next untried key that admits (reason `rotate`,
no retry budget spent, the refused key held back by `TargetState.key_refused`); with every
key out the request falls back, never retrying a refused key. Rule 4 skips the other keys
of a target already tried: a 503 or a timeout is the model's, and another key would not help.
The first attempt of a request, when no target admits at all, is `forced` onto the *open
breaker* whose cooldown ends soonest, as one of its `halfOpenProbes` probes, and only until
a probe of that open period failed (then the target waits out its cooldown): a cooldown is Detour's own guess about a failing
provider, and failing fast with no attempt is worse than one probe. A target held back by
its own `limits` or by a provider's sideline (remaining budget 0, or a 429/503 Retry-After)
is never forced: the provider said "not before X", and sending anyway would only collect the
429 the limit exists to avoid. When nothing admits and nothing is forceable the request gets
GiveUp('unavailable') with `retry_after`, the seconds until the soonest target frees, and
`rate_limited` when every target is held back by a rate limit (the executor answers 429 then,
else 503, with a `Retry-After` header).

Hedging (routes with `hedge`): while a Try is in flight the executor may ask `hedge(now)` for
a duplicate on the next untried admissible target; it spends the retry budget, counts as
that target's pass, and at most `hedge.maxExtra` are handed out per request. Every attempt
in flight is reported with `record`/`abandon(now, index=...)` before the next `next()`.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from detour_proxy import config

from .affinity import affinity_order
from .backoff import retry_delay
from .balancer import order_targets, priority_tiers, tiers_order
from .breaker import Admission
from .budget import RetryBudget
from .keygroups import KeyGroups
from .outcome import CONTEXT_WINDOW, Outcome, OutcomeKind
from .registry import HealthRegistry
from .target import TargetKey

__all__ = ["RoutePlanner", "RequestPlan", "Try", "GiveUp"]

Eligible = Callable[[int], bool]
#: Retry-After hint (s) when every target is half-open with its probes out.
PROBES_OUT_RETRY_AFTER = 1.0
_RETRY_KINDS = (OutcomeKind.CONNECT_ERROR, OutcomeKind.TIMEOUT)
_FALLBACK_KINDS = (OutcomeKind.CONNECT_ERROR, OutcomeKind.TIMEOUT, OutcomeKind.STREAM_ERROR)
_set = object.__setattr__


@dataclass(frozen=True, slots=True)
class Try:
    """Send attempt number `attempt` (per target, 1-based) to target `index` after `delay`
    seconds. reason: first | retry | fallback | forced | hedge | rotate (the same route target
    with its next API key after a key refusal). The target is already acquired."""

    index: int
    key: TargetKey
    delay: float
    attempt: int
    reason: str

    # Written out: the generated frozen __init__ costs twice as much (one Try per attempt).
    def __init__(self, index: int, key: TargetKey, delay: float, attempt: int, reason: str) -> None:
        _set(self, "index", index)
        _set(self, "key", key)
        _set(self, "delay", delay)
        _set(self, "attempt", attempt)
        _set(self, "reason", reason)


@dataclass(frozen=True, slots=True)
class GiveUp:
    """Stop. reason: success | not_retryable | exhausted | deadline | unavailable; `last` is the
    last outcome. `retry_after` (reason 'unavailable' only): seconds until the soonest target
    of the request admits again, None when unknown (a half-open target with its probes out).
    `rate_limited` (reason 'unavailable' only): every target was held back by a rate limit
    (its `limits`, a 429 or quota headers), so the client should slow down (429), not see 503.
    `breaker_open` (reason 'unavailable' only): every target was held back by its circuit
    breaker (open with its probe spent, or its probes out), so the message can say so."""

    reason: str
    last: Outcome | None
    retry_after: float | None = None
    rate_limited: bool = False
    breaker_open: bool = False


@dataclass(slots=True)
class _Pending:
    index: int
    ticket: Admission


class RoutePlanner:
    """Plans requests on one route. `keys[i]` identifies `route.targets[i]`.

    The target states are resolved from the registry once, here, and held: a reload that
    drops a target (`HealthRegistry.retain`) must not see it re-created by a request that was
    still in flight on the old config (a ghost the shared-health publisher would announce).
    It also spares the hot path a dict lookup per state access.

    `groups` (targets expanded per API key, see `policy.keygroups`): `groups[i]` is the route
    target that planner target `i` is a key of; `route.targets[i]` then repeats that target
    once per key. None (the usual case): every target is its own group."""

    def __init__(self, route: config.Route, keys: Sequence[TargetKey], registry: HealthRegistry,
                 budget: RetryBudget, rng: random.Random | None = None,
                 groups: Sequence[int] | None = None) -> None:
        if len(keys) != len(route.targets):
            raise ValueError(f"route {route.name!r}: {len(route.targets)} targets but {len(keys)} keys")
        self.route = route
        self.keys = list(keys)
        self.registry = registry
        self.states = [registry.state(k) for k in self.keys]
        self.budget = budget
        self.rng = rng if rng is not None else random.Random()
        self.key_groups = KeyGroups(route, self.keys, groups, self.states) \
            if groups is not None and KeyGroups.needed(groups) else None
        # What `begin()` needs that only the config decides, computed once: the targets it
        # orders when no `eligible` narrows them, and for `priority` their tiers and weights.
        targets = route.targets
        self._base = [i for i in range(len(targets)) if not targets[i].overflow_only]
        self._has_overflow = len(self._base) < len(targets)
        self._tiers = (priority_tiers(route, self._base) if route.strategy is config.Strategy.priority
                       else None)
        self._weights = [t.weight for t in targets]

    def begin(self, now: float, deadline: float | None = None,
              eligible: Eligible | None = None, affinity: str | None = None) -> RequestPlan:
        """Start a request: records it in the retry budget and fixes the visiting order.
        `affinity` (a prompt-cache affinity key, routes with `affinity`): the best tier's
        admitting targets are ranked for it by rendezvous hashing (`policy.affinity`)."""
        self.budget.record_request(now)
        if deadline is None:
            deadline = now + self.route.timeout
        targets = self.route.targets
        kg = self.key_groups
        if kg is None:
            if eligible is None:
                cands = self._base
                if self._tiers is not None:   # priority over every target: the tiers are the config's
                    order = tiers_order(self._tiers, self._weights, self.rng)
                else:
                    order = order_targets(self.route, self.states, now, self.rng, cands)
            else:
                cands = [i for i in range(len(targets)) if eligible(i) and not targets[i].overflow_only]
                order = order_targets(self.route, self.states, now, self.rng, cands)
            if affinity is not None and self.route.affinity is not None:
                order = affinity_order(self.route, self.keys, self.states, now, affinity, order)
        else:   # order the route's targets (groups), then each one's keys in key order
            order = kg.order(now, self.rng, eligible, affinity)
        plan = RequestPlan(self, order, deadline)
        if self._has_overflow:   # overflowOnly targets: only after a context-window refusal
            plan.overflow = [i for i in range(len(targets)) if targets[i].overflow_only
                             and (eligible is None or eligible(i))]
        return plan


class RequestPlan:
    """The retry/fallback state of one request. Not thread-safe; one per request."""

    def __init__(self, planner: RoutePlanner, order: list[int], deadline: float) -> None:
        self._p = planner
        self.order = order
        self.deadline = deadline
        self.attempts: list[tuple[TargetKey, Outcome]] = []
        self.budget_denied = 0
        self.tries = 0                   # Try steps handed out
        self._tried: dict[int, int] = {}  # index -> tries on it
        self._current: int | None = None
        self._last: Outcome | None = None
        self._pending: _Pending | None = None
        self._hedges: dict[int, _Pending] = {}  # index -> hedge attempt in flight
        self.hedged = 0                          # hedges handed out (bounded by hedge.maxExtra)
        self._forced = False
        self._result: GiveUp | None = None
        self.overflow: list[int] = []   # overflowOnly targets, visited only by `_larger_context`
        self._kg = planner.key_groups
        self._groups_tried: set[int] = set()   # with key groups: route targets tried (any key)

    # -- executor callbacks --------------------------------------------------------------
    def record(self, outcome: Outcome, now: float, index: int | None = None) -> None:
        """Report the outcome of the pending Try (or, with `index`, of the attempt in flight
        on that target: the main Try or a hedge). The last recorded attempt is the one the
        next decision (retry it / fall back) is about."""
        pend = self._take_pending(index)
        state = self._p.states[pend.index]
        state.record(outcome, now, pend.ticket)
        if self._kg is not None and self._kg.refusal(pend.index, outcome):
            state.key_refused(outcome, now)
        self.attempts.append((self._p.keys[pend.index], outcome))
        self._last = outcome
        self._current = pend.index

    def abandon(self, now: float, index: int | None = None) -> None:
        """The attempt was cancelled (client gone, hedge lost): free it, count nothing.
        A later `next()` moves on to the next target."""
        pend = self._take_pending(index)
        self._p.states[pend.index].release(now, pend.ticket)
        if self._last is None or not self._last.ok:  # a race's loser does not undo its winner
            self._last = None

    def _take_pending(self, index: int | None = None) -> _Pending:
        if index is not None and index in self._hedges and (
                self._pending is None or self._pending.index != index):
            return self._hedges.pop(index)
        if self._pending is None or (index is not None and self._pending.index != index):
            raise RuntimeError("no attempt in flight: record()/abandon() follow a Try")
        pend, self._pending = self._pending, None
        return pend

    @property
    def in_flight(self) -> list[int]:
        """Targets with an attempt in flight (the pending Try first, then hedges)."""
        out = [self._pending.index] if self._pending is not None else []
        return out + list(self._hedges)

    def hedge(self, now: float, eligible: Eligible | None = None) -> Try | None:
        """A duplicate of the attempt in flight on the next target in the order that was not
        tried yet, is eligible and admits at `now`; None if there is none, the route allows no
        more (`hedge.maxExtra`), the deadline passed or the retry budget refuses (hedges add
        load like retries do, so they spend it). The hedge is acquired; report it with
        `record(outcome, now, index=try.index)` or `abandon(now, index=try.index)`."""
        if self._pending is None and not self._hedges:
            raise RuntimeError("hedge() duplicates an attempt in flight")
        p = self._p
        spec = p.route.hedge
        if spec is None or self.hedged >= spec.max_extra or self._result is not None \
                or now >= self.deadline:
            return None
        ok = (lambda i: True) if eligible is None else eligible
        busy = set(self.in_flight)
        kg = self._kg
        busy_groups = {kg.group_of[b] for b in busy} if kg is not None else set()
        for i in self.order:
            if i in self._tried or i in busy or not ok(i):
                continue
            if kg is not None and (kg.group_of[i] in self._groups_tried or kg.group_of[i] in busy_groups):
                continue
            state = p.states[i]
            if not state.admits(now):
                continue
            if not p.budget.try_spend(now):
                self.budget_denied += 1
                return None
            ticket = state.acquire(now)
            assert ticket is not None  # admits() just said so
            self._tried[i] = self._tried.get(i, 0) + 1
            if kg is not None:
                self._groups_tried.add(kg.group_of[i])
            self._hedges[i] = _Pending(i, ticket)
            self.tries += 1
            self.hedged += 1
            return Try(i, p.keys[i], 0.0, self._tried[i], "hedge")
        return None

    def continue_after_cut(self, now: float) -> None:
        """A stream broke after delivering tokens and may be continued elsewhere: the
        continuation gets a fresh deadline (`route.timeout` from now), since the original
        bounded the time to a first token, not the whole answer."""
        self.deadline = max(self.deadline, now + self._p.route.timeout)

    @property
    def done(self) -> GiveUp | None:
        return self._result

    # -- deciding ------------------------------------------------------------------------
    def _try(self, index: int, ticket: Admission, delay: float, reason: str) -> Try:
        n = self._tried.get(index, 0) + 1
        self._tried[index] = n
        if self._kg is not None:
            self._groups_tried.add(self._kg.group_of[index])
        self._current = index
        self._pending = _Pending(index, ticket)
        self.tries += 1
        return Try(index, self._p.keys[index], delay, n, reason)

    def _give_up(self, reason: str, last: Outcome | None, retry_after: float | None = None,
                 rate_limited: bool = False, breaker_open: bool = False) -> GiveUp:
        self._result = GiveUp(reason, last, retry_after, rate_limited, breaker_open)
        return self._result

    def _first_blocked(self, now: float, cands: list[int]) -> Try | GiveUp:
        """No candidate admits a first attempt: force the open breaker that frees soonest, or,
        when every candidate is held back by its limits or a sideline, give up with the time
        until the soonest one frees. Off the common path (runs only when nothing admits)."""
        states = self._p.states
        pos = {i: n for n, i in enumerate(self.order)}
        forceable = [i for i in cands if states[i].forceable(now)]
        if forceable:
            best = min(forceable, key=lambda i: (states[i].available_at(now), pos[i]))
            self._forced = True
            return self._try(best, states[best].force_acquire(now), 0.0, "forced")
        soonest = min(states[i].available_at(now) for i in cands)
        # +inf: half-open with every probe out; the next probe goes when one ends, and a probe
        # is an ordinary attempt (seconds), so one second is the honest hint.
        wait = soonest - now if soonest != math.inf else PROBES_OUT_RETRY_AFTER
        return self._give_up("unavailable", None, wait, all(states[i].rate_limited(now) for i in cands),
                             all(states[i].held_by_breaker(now) for i in cands))

    def _larger_context(self, now: float, ok: Eligible, last: Outcome) -> Try | GiveUp:
        """The prompt is too long for the current target: the next untried, eligible,
        admitting target in the order (then the `overflowOnly` targets) whose `contextWindow`
        is larger (any, when the failed target's size is not configured); none left -> the
        400 is the answer. Never a retry of the same target: it would refuse the same prompt
        again."""
        p = self._p
        cur = self._current
        have = p.route.targets[cur].context_window if cur is not None else None
        if now >= self.deadline:
            return self._give_up("deadline", last)
        for i in self.order + self.overflow:
            size = p.route.targets[i].context_window
            if i in self._tried or not ok(i) or (have is not None and (size is None or size <= have)) \
                    or self._group_tried(i):
                continue
            ticket = p.states[i].acquire(now)
            if ticket is not None:
                return self._try(i, ticket, 0.0, "fallback")
        return self._give_up("not_retryable", last)

    def _group_tried(self, index: int) -> bool:
        """With key groups: was another key of `index`'s route target tried already?"""
        kg = self._kg
        return kg is not None and kg.group_of[index] in self._groups_tried

    def next(self, now: float, eligible: Eligible | None = None) -> Try | GiveUp:
        """The next step. `eligible` narrows the targets for this step only (e.g. targets
        able to continue a partly streamed answer)."""
        if self._pending is not None or self._hedges:
            raise RuntimeError("record() or abandon() the previous Try before next()")
        if self._result is not None:
            return self._result
        p = self._p
        ok = (lambda i: True) if eligible is None else eligible
        states = p.states

        if self.tries == 0:
            if now >= self.deadline:
                return self._give_up("deadline", None)
            for i in self.order:
                if ok(i):
                    ticket = states[i].acquire(now)
                    if ticket is not None:
                        return self._try(i, ticket, 0.0, "first")
            cands = [i for i in self.order if ok(i)]
            if not cands or self._forced:
                return self._give_up("exhausted", None)
            return self._first_blocked(now, cands)

        last = self._last
        route = p.route
        cur = self._current
        keys_out = False   # a key refusal with no other key left: fall back, do not retry it
        if last is not None:
            if last.ok:
                return self._give_up("success", last)
            if last.error_class == CONTEXT_WINDOW:
                return self._larger_context(now, ok, last)
            kg = self._kg
            if kg is not None and cur is not None and kg.refusal(cur, last):
                if now >= self.deadline:
                    return self._give_up("deadline", last)
                found = kg.next_key(cur, self._tried, ok, states, now)
                if found is not None:
                    return self._try(found[0], found[1], 0.0, "rotate")
                keys_out = True
            elif last.kind is OutcomeKind.HTTP_ERROR and not (
                    last.status in route.retry.on_status_codes
                    or last.status in route.fallback_on_status_codes or last.retryable):
                return self._give_up("not_retryable", last)
        if now >= self.deadline:
            return self._give_up("deadline", last)

        blocked_by_deadline = False
        if (not keys_out and last is not None and cur is not None and ok(cur)
                and (last.kind in _RETRY_KINDS
                     or (last.kind is OutcomeKind.HTTP_ERROR and last.status in route.retry.on_status_codes))
                and self._tried.get(cur, 0) < route.retry.attempts):
            delay = retry_delay(route.retry, self._tried[cur], last.retry_after, p.rng)
            if delay is not None:
                start = now + delay
                state = states[cur]
                if start >= self.deadline:
                    blocked_by_deadline = True
                elif state.admits(start):
                    if p.budget.try_spend(now):
                        ticket = state.acquire(start)
                        assert ticket is not None  # admits() just said so; nothing ran since
                        return self._try(cur, ticket, delay, "retry")
                    self.budget_denied += 1

        for i in self.order:
            if i not in self._tried and ok(i) and not self._group_tried(i):
                ticket = states[i].acquire(now)
                if ticket is not None:
                    return self._try(i, ticket, 0.0, "fallback")
        # Every attempt failed: when each target is now held by its breaker (a failed probe),
        # say when the soonest one admits again, so the client's Retry-After is true.
        wait = None
        if last is not None and self.order and all(states[i].held_by_breaker(now) for i in self.order):
            soonest = min(states[i].available_at(now) for i in self.order)
            wait = soonest - now if soonest != math.inf else PROBES_OUT_RETRY_AFTER
        return self._give_up("deadline" if blocked_by_deadline else "exhausted", last, wait)
