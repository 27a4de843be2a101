"""Per-target health: what the balancer and planner ask before sending anything.

A `TargetState` combines everything known about one provider/model/endpoint: the sliding
window of requests/failures/slow calls, the circuit breaker, an EWMA of latency, the number
of attempts in flight, a sideline (a rate-limit reset the provider told us about), the open
state imported from peer replicas, and the last error. `registry.HealthRegistry` owns one
per `TargetKey` and survives config reloads, so a reload does not forget that a target is down.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

from detour_proxy import config

from .breaker import Admission, BreakerState, CircuitBreaker
from .outcome import Outcome, OutcomeKind
from .ratelimit import RateLimiter, Reservation
from .window import SlidingWindow

__all__ = ["TargetKey", "TargetSnapshot", "TargetState", "EWMA_ALPHA", "SIDELINE_STATUSES",
           "TransitionCallback", "DEFAULT_QUOTA_RESET", "KEY_STATUSES", "KEY_AUTH_STATUSES"]

#: Weight of the newest sample in the latency EWMA: reacts within a few calls, smooths noise.
EWMA_ALPHA = 0.3
#: A latency estimate older than this share of the health window is stale: the balancer treats
#: the target as unmeasured (explores it again) and the next sample replaces, not blends, the
#: old value. Without this, a target pushed out of the latency band by a brownout would never
#: be sent another request and so could never be seen to recover.
LATENCY_STALE_FRACTION = 1 / 6
#: Sideline length when a provider reports an exhausted budget without a reset time.
DEFAULT_QUOTA_RESET = 1.0
#: Statuses whose Retry-After means "leave me alone until then" even if the breaker stays closed.
SIDELINE_STATUSES = frozenset({429, 503})
#: Statuses that judge a provider *key*, not the model behind it: a target with several keys
#: moves the request to its next key on these (`RequestPlan`), and holds the refused key back
#: (`TargetState.key_refused`): unauthorized, payment required, forbidden, rate limited.
KEY_STATUSES = frozenset({401, 402, 403, 429})
#: Of those, the ones a wait does not fix (a revoked key, an unpaid account): the key is out
#: for `maxCooldown`; a 429 only until its Retry-After.
KEY_AUTH_STATUSES = frozenset({401, 402, 403})

TransitionCallback = Callable[["TargetKey", BreakerState, BreakerState], None]


class TargetKey(NamedTuple):
    """Identity of a target across reloads: the same provider/model/endpoint keeps its health.

    `key_index` is the position of the API key in the provider's `apiKeys` (0 for a provider
    with one key or none): with several keys, each (provider, model, key) has its own health,
    so one refused key does not take the model down. The index, never the key, is published."""

    provider: str
    model: str
    base_url: str
    key_index: int = 0


@dataclass(frozen=True, slots=True)
class TargetSnapshot:
    """What the shared-health publisher and the operator status need about one target.

    Times are on the engine's (monotonic) clock; the publisher converts them to wall time.
    `open_until` is set only while the breaker is OPEN. `imported` is True when the current
    open period was learned from a peer only, so a publisher can avoid echoing it back.
    """

    key: TargetKey
    state: BreakerState
    open_until: float | None
    failure_ratio: float
    requests: int
    failures: int
    slow: int
    last_error: str | None
    last_error_at: float | None
    in_flight: int
    ewma_latency: float | None
    sideline_until: float | None
    imported: bool


class TargetState:
    """Health and admission of one target. Every method takes `now`; nothing reads a clock."""

    __slots__ = ("key", "health", "_window", "_breaker", "_consecutive", "in_flight",
                 "ewma_latency", "_latency_at", "_sideline_until", "_sideline_rate", "last_error", "limiter",
                 "last_attempt")

    def __init__(self, key: TargetKey, health: config.Health,
                 on_transition: TransitionCallback | None = None) -> None:
        self.key = key
        self.health = health
        self._window = SlidingWindow(health.window, fields=3)  # requests, failures, slow
        notify = None
        if on_transition is not None:
            def notify(old: BreakerState, new: BreakerState) -> None:
                on_transition(key, old, new)
        self._breaker = CircuitBreaker(health.breaker, notify)
        self._consecutive = 0
        self.in_flight = 0
        self.ewma_latency: float | None = None
        self._latency_at = -math.inf
        self._sideline_until = -math.inf
        self._sideline_rate = True     # the current sideline is a rate limit (429, quota headers)
        self.last_error: tuple[str, float] | None = None
        #: Client-side rate limits (`Target.limits`); None = unlimited (the usual case).
        self.limiter: RateLimiter | None = None
        #: When the last attempt (client request or active probe) was admitted: an active probe
        #: goes only to a target idle for its interval (`policy.probes.probe_due`).
        self.last_attempt = -math.inf

    def set_limits(self, limits: config.Limits | None, replicas: int = 1) -> None:
        """Apply `Target.limits` (this replica enforces limit / replicas); counts survive
        reloads. None, or limits with neither field set, removes the limiter."""
        if limits is None or (limits.requests_per_minute is None and limits.tokens_per_minute is None):
            self.limiter = None
        elif self.limiter is None:
            self.limiter = RateLimiter(limits, replicas)
        else:
            self.limiter.configure(limits, replicas)

    def update_settings(self, health: config.Health) -> None:
        """Apply new health settings; keeps the breaker state, resets the window only if its
        length changed (old buckets would mean something else)."""
        if health.window != self.health.window:
            self._window = SlidingWindow(health.window, fields=3)
        self.health = health
        self._breaker.settings = health.breaker

    # -- read ------------------------------------------------------------------------------
    def breaker_state(self, now: float) -> BreakerState:
        return self._breaker.state(now)

    @property
    def cooldown_until(self) -> float | None:
        """End of the latest open period (None if never opened). Never decreases."""
        u = self._breaker.cooldown_until
        return None if u == -math.inf else u

    @property
    def sideline_until(self) -> float | None:
        return None if self._sideline_until == -math.inf else self._sideline_until

    @property
    def consecutive_failures(self) -> int:
        return self._consecutive

    @property
    def breaker(self) -> CircuitBreaker:
        return self._breaker

    def window_stats(self, now: float) -> tuple[int, int, int]:
        r, f, s = self._window.totals(now)
        return r, f, s

    def admits(self, now: float) -> bool:
        """Would `try_acquire(now)` succeed? Takes nothing."""
        return (now >= self._sideline_until and self._breaker.admits(now)
                and (self.limiter is None or self.limiter.admits(now)))

    def available_at(self, now: float) -> float:
        """When this target will next admit: `now` if it does, the end of the cooldown or
        sideline, or +inf when half-open with every probe slot taken (unknown). While OPEN
        with a failed probe this period, that is the cooldown's end: the next probe."""
        st = self._breaker.state(now)
        at = now
        if st is BreakerState.OPEN:
            at = max(at, self._breaker.cooldown_until)
        elif st is BreakerState.HALF_OPEN and not self._breaker.admits(now):
            return math.inf
        if self.limiter is not None:
            at = max(at, self.limiter.available_at(now))
        return max(at, self._sideline_until)

    def forceable(self, now: float) -> bool:
        """May the planner force an attempt here when nothing admits? Only when the breaker is
        all that holds the target back: a cooldown is our own estimate and one probe is worth
        more than failing without trying, but a sideline (the provider's reset time or
        Retry-After) or this target's own `limits` are a "not before X" that forcing would
        break, collecting exactly the 429 they exist to avoid."""
        return (now >= self._sideline_until and (self.limiter is None or self.limiter.admits(now))
                and self._breaker.forceable(now))

    def held_by_breaker(self, now: float) -> bool:
        """Is the breaker (open, or half-open with its probes out) what holds this target back?"""
        return (self._breaker.state(now) is not BreakerState.CLOSED and now >= self._sideline_until
                and (self.limiter is None or self.limiter.admits(now)))

    def rate_limited(self, now: float) -> bool:
        """Is a rate limit what holds this target back: its own `limits`, or a sideline from a
        429 or quota headers (not from a 503's Retry-After)? Decides whether a request that no
        target can take is answered 429 (slow down) or 503 (unavailable)."""
        if self.limiter is not None and not self.limiter.admits(now):
            return True
        return now < self._sideline_until and self._sideline_rate

    # -- admission ---------------------------------------------------------------------------
    def acquire(self, now: float) -> Admission | None:
        """Admit one attempt: a ticket (pass it to `record`/`release`) or None."""
        if now < self._sideline_until:
            return None
        lim = self.limiter
        if lim is not None and not lim.admits(now):
            return None
        ticket = self._breaker.acquire(now)
        if ticket is not None:
            self.in_flight += 1
            self.last_attempt = now
            if lim is not None:
                lim.note_request(now)
        return ticket

    def try_acquire(self, now: float) -> bool:
        """Admission as a bool (half-open: takes a probe slot); increments `in_flight`."""
        return self.acquire(now) is not None

    def force_acquire(self, now: float) -> Admission:
        """Admit bypassing the breaker (the planner's `forced` try). The planner only forces a
        `forceable` target, so sideline and limits are not bypassed; the request is counted."""
        self.in_flight += 1
        self.last_attempt = now
        if self.limiter is not None:
            self.limiter.note_request(now)
        return self._breaker.force(now)

    # -- token accounting (rate limits) -----------------------------------------------------
    def reserve(self, tokens: int, now: float) -> Reservation | None:
        """Count an attempt's estimated tokens against `tokensPerMinute` before it is sent;
        None (nothing to settle) when the target has no token limit."""
        lim = self.limiter
        return lim.reserve(tokens, now) if lim is not None else None

    @staticmethod
    def settle(reservation: Reservation | None, actual: int | None) -> None:
        """Correct a reservation with the tokens the provider reported (`usage`)."""
        if reservation is not None:
            reservation.settle(actual)

    def _ticket(self, ticket: Admission | None) -> Admission | None:
        # Without a ticket (bool API), an outcome seen while probes are out is taken as a probe's.
        if ticket is None and self._breaker.probes_in_flight > 0:
            return Admission("probe", self._breaker.epoch)
        return ticket

    def release(self, now: float, ticket: Admission | None = None) -> None:
        """An admitted attempt was abandoned without an outcome: free it, count nothing."""
        self._breaker.state(now)
        self.in_flight = max(0, self.in_flight - 1)
        self._breaker.release(self._ticket(ticket))

    # -- outcomes ----------------------------------------------------------------------------
    def _is_slow(self, outcome: Outcome) -> bool:
        rule = self.health.slow_call
        latency = outcome.latency
        return rule is not None and latency is not None and latency > rule.threshold

    def _observe_latency(self, latency: float | None, now: float) -> None:
        if latency is None:
            return
        e = self.latency_estimate(now)
        self.ewma_latency = latency if e is None else EWMA_ALPHA * latency + (1 - EWMA_ALPHA) * e
        self._latency_at = now

    def latency_estimate(self, now: float) -> float | None:
        """The EWMA of latency, or None when there is no sample or the last one is stale."""
        if now - self._latency_at > self.health.window * LATENCY_STALE_FRACTION:
            return None
        return self.ewma_latency

    def _should_trip(self, now: float) -> bool:
        b = self.health.breaker
        if self._consecutive >= b.consecutive_failures:
            return True
        requests, failures, slow = self._window.totals(now)
        if requests < b.min_requests:
            return False
        eps = 1e-9
        if failures + eps >= b.failure_ratio * requests:
            return True
        rule = self.health.slow_call
        return rule is not None and slow + eps >= rule.ratio * requests

    def record(self, outcome: Outcome, now: float, ticket: Admission | None = None) -> None:
        """The attempt ended with `outcome`: release it and update window, EWMA and breaker.

        Rules: request-caused errors (400/413/422) count for nothing. A probe success closes
        the breaker (a slow probe, with a slow-call rule, is a failed probe: a brownout must
        not flap back to full traffic); a probe failure re-opens with a doubled cooldown. In
        CLOSED, a failure or slow call may trip the breaker. A 429/503 with Retry-After
        sidelines the target, and a Retry-After while the breaker is open lengthens the
        cooldown. Retry-After is honoured up to `maxCooldown` so one bogus header cannot take
        a target out for a day.
        """
        state = self._breaker.state(now)
        ticket = self._ticket(ticket)
        probe = self._breaker.is_probe(ticket)
        self.in_flight = max(0, self.in_flight - 1)
        self._breaker.release(ticket)
        if not outcome.ok and not outcome.counts_against_target:
            return
        slow = self._is_slow(outcome)
        if outcome.ok:
            self._window.add(now, 1, 0, int(slow))
            self._consecutive = 0
            self._observe_latency(outcome.latency, now)
            if probe:
                if slow:
                    self._breaker.probe_failed(now)
                else:
                    self._close()
            elif state is BreakerState.CLOSED and self._should_trip(now):
                # Thresholds are judged on every counted call (as resilience4j does): the call
                # that brings the window to minRequests may be the one that reveals the ratio.
                self._breaker.trip(now)
            return

        self._window.add(now, 1, 1, int(slow))
        self._consecutive += 1
        self.last_error = (outcome.error_class, now)
        if outcome.kind is OutcomeKind.TIMEOUT:
            # A timeout is a latency signal too; a fast 503 is not (it would flatter the target).
            self._observe_latency(outcome.latency, now)
        hold = None
        if outcome.retry_after is not None and outcome.retry_after > 0:
            hold = now + min(outcome.retry_after, self.health.breaker.max_cooldown)
            if outcome.status in SIDELINE_STATUSES:
                self.sideline(hold, rate_limit=outcome.status == 429)
        if probe:
            self._breaker.probe_failed(now, hold)
        elif state is BreakerState.CLOSED:
            if self._should_trip(now):
                self._breaker.trip(now, hold)
        elif state is BreakerState.OPEN and hold is not None:
            self._breaker.extend(hold)

    def _close(self) -> None:
        self._window.reset()
        self._consecutive = 0
        self._breaker.close()

    def sideline(self, until: float, rate_limit: bool = True) -> None:
        """Do not admit before `until` (a rate-limit reset, or a 503's Retry-After with
        `rate_limit=False`); not a breaker state. Only lengthens; the latest cause is kept."""
        if until > self._sideline_until:
            self._sideline_until = until
            self._sideline_rate = rate_limit

    def key_refused(self, outcome: Outcome, now: float) -> None:
        """The provider refused this target's *key* (`KEY_STATUSES`; called by the planner for
        targets whose provider has several keys, after `record`): hold the key back so the
        next requests start on another key. 401/402/403 open its breaker for `maxCooldown` (a
        revoked key or an unpaid account does not heal in seconds; open, not sidelined, so
        peers import it and the roll-up counts it); a 429 sidelines it until its Retry-After
        (`DEFAULT_QUOTA_RESET` when none is given), at most `maxCooldown`."""
        max_cd = self.health.breaker.max_cooldown
        if outcome.status in KEY_AUTH_STATUSES:
            until = now + max_cd
            if self._breaker.state(now) is BreakerState.OPEN:
                self._breaker.extend(until)
            else:
                self._breaker.trip(now, until)
        elif outcome.status == 429:
            wait = outcome.retry_after if outcome.retry_after is not None and outcome.retry_after > 0 \
                else DEFAULT_QUOTA_RESET
            self.sideline(now + min(wait, max_cd))

    def key_renewed(self, now: float) -> None:
        """This target's API key was replaced (its key file changed): what the old key earned
        (a refusal's open breaker or sideline, failures in the window) says nothing about the new
        one, which is used from the next request on."""
        del now
        self._window.reset()
        self._consecutive = 0
        self._sideline_until = -math.inf
        self._breaker.close()

    def quota_exhausted(self, resets: list[float | None], now: float) -> float:
        """The provider's rate-limit headers say a budget (requests or tokens) is used up;
        `resets` are the seconds until each exhausted budget resets (None: not given). The
        target is sidelined until the latest of them (a call before then would still hit
        one), 1 s when none is given, never longer than `maxCooldown`. Returns the end."""
        wait = max(DEFAULT_QUOTA_RESET if r is None else r for r in resets)
        until = now + min(max(0.0, wait), self.health.breaker.max_cooldown)
        self.sideline(until)
        return until

    def drop_import(self, now: float) -> bool:
        """The peer whose report opened this breaker is gone: close it again if that report is
        all that holds it open (still OPEN, open period flagged imported: no local failure,
        probe or Retry-After has touched it since). Returns whether it was closed."""
        if self._breaker.state(now) is BreakerState.OPEN and self._breaker.imported:
            self._breaker.close()
            return True
        return False

    def import_open(self, until: float, now: float) -> bool:
        """A peer's open breaker: open until min(until, now + maxCooldown); never shortens."""
        return self._breaker.import_open(until, now)

    def snapshot(self, now: float) -> TargetSnapshot:
        st = self._breaker.state(now)
        requests, failures, slow = self._window.totals(now)
        err = self.last_error
        return TargetSnapshot(
            key=self.key, state=st,
            open_until=self._breaker.cooldown_until if st is BreakerState.OPEN else None,
            failure_ratio=(failures / requests) if requests else 0.0,
            requests=requests, failures=failures, slow=slow,
            last_error=err[0] if err else None, last_error_at=err[1] if err else None,
            in_flight=self.in_flight, ewma_latency=self.ewma_latency,
            sideline_until=self._sideline_until if self._sideline_until > now else None,
            imported=st is BreakerState.OPEN and self._breaker.imported,
        )

    def __repr__(self) -> str:
        return (f"TargetState({self.key.provider}/{self.key.model}#{self.key.key_index}, {self._breaker!r}, "
                f"in_flight={self.in_flight}, ewma={self.ewma_latency})")
