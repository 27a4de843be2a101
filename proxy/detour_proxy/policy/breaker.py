"""The per-target circuit breaker state machine.

CLOSED admits everything. OPEN admits nothing until `cooldown_until`; the move to HALF_OPEN is
computed lazily from `now` (no timers), and announced the first time it is observed.
HALF_OPEN admits at most `halfOpenProbes` concurrent real requests as probes: one probe
success closes the breaker, one probe failure re-opens it with a doubled cooldown (capped at
`maxCooldown`).

*When* to trip is decided by the caller (`TargetState`, which owns the statistics); this class
only knows the transitions and the cooldown arithmetic. Its one invariant: `cooldown_until`
never decreases. Every change goes through `max()`, so a later, shorter cooldown (a repeated
failure, a peer's report, a Retry-After) can never shorten the time a target is left alone.

Admissions are handed out as `Admission` tickets carrying the breaker's epoch (bumped whenever
it opens or closes), so the result of a probe admitted before the breaker re-opened or closed
is recognised as stale and cannot close a breaker it knows nothing about.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from enum import Enum
from typing import NamedTuple

from detour_proxy import config

__all__ = ["BreakerState", "Admission", "CircuitBreaker"]


class BreakerState(str, Enum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half-open"


class Admission(NamedTuple):
    """How an attempt was let in: `normal` (closed), `probe` (half-open slot) or `forced`
    (bypassed admission because nothing else was available; it is judged like a probe)."""

    kind: str
    epoch: int


class CircuitBreaker:
    __slots__ = ("settings", "_state", "_until", "_level", "_probes", "_epoch", "_imported",
                 "_notify", "_force_spent")

    def __init__(self, settings: config.Breaker,
                 on_transition: Callable[[BreakerState, BreakerState], None] | None = None) -> None:
        self.settings = settings
        self._state = BreakerState.CLOSED
        self._until = -math.inf   # never decreases
        self._level = 0           # failed probes since the last close: cooldown = base * 2**level
        self._probes = 0          # probe/forced admissions in flight in this epoch
        self._epoch = 0
        self._imported = False    # the current open period came from a peer only
        self._notify = on_transition
        self._force_spent = False  # a probe of this open period failed: no forcing until it ends

    # -- observation -------------------------------------------------------------------
    def state(self, now: float) -> BreakerState:
        """The state at `now`; performs (and announces) the lazy OPEN -> HALF_OPEN move."""
        if self._state is BreakerState.OPEN and now >= self._until:
            self._set(BreakerState.HALF_OPEN)
        return self._state

    @property
    def cooldown_until(self) -> float:
        """End of the latest open period (-inf if never opened). Never decreases."""
        return self._until

    @property
    def epoch(self) -> int:
        return self._epoch

    @property
    def probes_in_flight(self) -> int:
        return self._probes

    @property
    def level(self) -> int:
        return self._level

    @property
    def imported(self) -> bool:
        return self._imported

    def admits(self, now: float) -> bool:
        """Would `acquire(now)` succeed? (No slot is taken.)"""
        st = self.state(now)
        if st is BreakerState.CLOSED:
            return True
        if st is BreakerState.HALF_OPEN:
            return self._probes < self.settings.half_open_probes
        return False

    # -- admission ---------------------------------------------------------------------
    def acquire(self, now: float) -> Admission | None:
        st = self.state(now)
        if st is BreakerState.CLOSED:
            return Admission("normal", self._epoch)
        if st is BreakerState.HALF_OPEN and self._probes < self.settings.half_open_probes:
            self._probes += 1
            return Admission("probe", self._epoch)
        return None

    def forceable(self, now: float) -> bool:
        """May an attempt be forced past an OPEN breaker now? Only as one of its
        `halfOpenProbes` probes (a free probe slot), and only while no probe of this open
        period has failed: after one has, the provider is known to be down until the cooldown
        ends, and forcing every request (a full outage makes every request "forced") would
        hammer it. Half-open has its own probe slots (`acquire`); closed admits anyway."""
        st = self.state(now)
        if st is BreakerState.OPEN:
            return not self._force_spent and self._probes < self.settings.half_open_probes
        return st is BreakerState.CLOSED or self._probes < self.settings.half_open_probes

    def force(self, now: float) -> Admission:
        """Admit past the breaker (check `forceable` first); outside CLOSED the attempt is
        judged as a probe and holds a probe slot."""
        if self.state(now) is BreakerState.CLOSED:
            return Admission("normal", self._epoch)
        self._probes += 1
        return Admission("forced", self._epoch)

    def is_probe(self, ticket: Admission | None) -> bool:
        """Does this ticket hold a live probe slot (same epoch, breaker not closed)?"""
        return (ticket is not None and ticket.kind != "normal" and ticket.epoch == self._epoch
                and self._state is not BreakerState.CLOSED)

    def release(self, ticket: Admission | None) -> bool:
        """Free the probe slot of `ticket` if it still holds one; True if it did."""
        if self.is_probe(ticket) and self._probes > 0:
            self._probes -= 1
            return True
        return False

    # -- transitions -------------------------------------------------------------------
    def _set(self, new: BreakerState) -> None:
        old = self._state
        if old is new:
            return
        self._state = new
        if self._notify is not None:
            self._notify(old, new)

    def _cooldown(self) -> float:
        s = self.settings
        return min(s.max_cooldown, s.cooldown * (2.0 ** self._level))

    def _open(self, until: float, imported: bool = False, new_period: bool = False) -> None:
        if self._state is not BreakerState.OPEN or new_period:
            self._epoch += 1
            self._probes = 0
            self._imported = imported
            self._force_spent = new_period
        else:
            self._imported = self._imported and imported
        self._until = max(self._until, until)
        self._set(BreakerState.OPEN)

    def trip(self, now: float, at_least_until: float | None = None) -> None:
        """Open from CLOSED (thresholds reached) with the base cooldown."""
        self._level = 0
        self._open(max(now + self._cooldown(), at_least_until if at_least_until is not None else -math.inf))

    def probe_failed(self, now: float, at_least_until: float | None = None) -> None:
        """A probe (half-open, or forced while open) failed: re-open with the next, doubled
        cooldown (capped at maxCooldown) as a new open period. The other probes still out
        belong to the old period: their failures are stale and double nothing, so the
        cooldown doubles once per failed probe round, not once per request. No attempt is
        forced in the new period: the next probe waits for its end."""
        self._level += 1
        self._open(max(now + self._cooldown(), at_least_until if at_least_until is not None else -math.inf),
                   new_period=True)

    def extend(self, until: float) -> None:
        """Lengthen the current open period (e.g. a Retry-After seen while open)."""
        if self._state is BreakerState.OPEN and until > self._until:
            self._until = until
            self._imported = False

    def close(self) -> None:
        """A probe succeeded: back to CLOSED and forget the doubling."""
        if self._state is BreakerState.CLOSED:
            return
        self._level = 0
        self._probes = 0
        self._epoch += 1
        self._imported = False
        self._force_spent = False
        self._set(BreakerState.CLOSED)

    def import_open(self, until: float, now: float) -> bool:
        """A peer reports this target open until `until`: open locally until
        min(until, now + maxCooldown), never shortening a local cooldown. True if it changed."""
        bounded = min(until, now + self.settings.max_cooldown)
        st = self.state(now)
        if bounded <= now or (st is BreakerState.OPEN and bounded <= self._until):
            return False
        self._open(bounded, imported=True)
        return True

    def __repr__(self) -> str:
        return (f"CircuitBreaker(state={self._state.value}, until={self._until}, "
                f"level={self._level}, probes={self._probes})")
