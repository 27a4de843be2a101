"""Client-side rate limits of one target: requests and tokens per sliding minute.

A target at its limit is not admitted, exactly like an open breaker: `available_at` says when
the window frees, so the planner moves on to the next target instead of sending a request
that would only collect a 429. Counting is conservative by construction, so "at most N in
any sliding minute" holds exactly (it may admit slightly fewer, never more):

- Events are kept in a short log of coalesced entries `[start, last, count]`. An event joins
  the newest entry when it is less than `granularity` after that entry's start; an entry
  leaves the window at `last + window`, i.e. no earlier than any event it holds. Memory is
  bounded by `(window + slack) / granularity` entries whatever the traffic.
- Requests are counted when a target admits an attempt (`note_request`). Tokens are
  reserved before the call from an estimate of the prompt (`reserve`) and corrected from
  the provider's `usage` once known (`Reservation.settle`); the correction is applied to
  the entry that holds the estimate, so it ages out together with it.
- A target admits while requests < limit and tokens < limit (a request is not refused
  because its own estimate would cross the token limit: the limit is a rate, not a size).

Several replicas: each enforces `floor(limit / replicas)` (at least 1). This is an
approximation: it assumes traffic is spread evenly over replicas and that the replica count
is right (the shared-health peer count when known, else `sharedHealth.replicas`).

Pure: every method takes `now`; nothing here reads a clock.
"""

from __future__ import annotations

import math
from collections import deque

from detour_proxy import config

__all__ = ["UsageLog", "RateLimiter", "Reservation", "effective_limit", "estimate_tokens",
           "WINDOW"]

#: The sliding window of `requestsPerMinute`/`tokensPerMinute`.
WINDOW = 60.0
#: Events closer than this (seconds) share one log entry.
GRANULARITY = 0.25


def effective_limit(limit: int | None, replicas: int) -> int | None:
    """This replica's share of a limit: floor(limit / replicas), at least 1."""
    if limit is None:
        return None
    return max(1, limit // max(1, replicas))


def estimate_tokens(size_bytes: int) -> int:
    """Prompt tokens estimated from the request size (~4 bytes per token), at least 1."""
    return max(1, size_bytes // 4)


class UsageLog:
    """A sum of counts over the last `window` seconds, never under-counting.

    Queries need not be monotonic: the planner checks a retry at its planned start
    (`now + delay`) and then other requests at `now`. So an entry is only dropped once it
    has been out of the window for `slack` more seconds; in between, a cursor marks the
    prefix of entries that are expired at the last queried time and moves either way.
    """

    __slots__ = ("window", "granularity", "slack", "_entries", "_sum", "_cut", "_cut_sum",
                 "_horizon", "_next")

    def __init__(self, window: float = WINDOW, granularity: float = GRANULARITY,
                 slack: float | None = None) -> None:
        self.window = float(window)
        self.granularity = float(granularity)
        self.slack = self.window if slack is None else float(slack)
        self._entries: deque[list[float]] = deque()  # [start, last, count]; `last` increases
        self._sum = 0.0        # counts of every entry kept
        self._cut = 0          # entries[:_cut] are out of the window at `_horizon`...
        self._cut_sum = 0.0    # ...and hold this much
        self._horizon = -math.inf
        self._next = math.inf  # the lowest horizon at which `_seek` has anything to move

    def _seek(self, now: float) -> None:
        horizon = now - self.window
        if self._horizon <= horizon < self._next:
            # Fast path (nearly every call, on the request path): time moved forward but no
            # entry leaves the window or the log, so nothing but the horizon changes.
            self._horizon = horizon
            return
        entries = self._entries
        drop = horizon - self.slack
        while entries and entries[0][1] <= drop:
            c = entries.popleft()[2]
            self._sum -= c
            if self._cut > 0:
                self._cut -= 1
                self._cut_sum -= c
        if not entries:
            self._sum = self._cut_sum = 0.0  # no float drift when empty
            self._cut = 0
        cut = self._cut
        while cut < len(entries) and entries[cut][1] <= horizon:
            self._cut_sum += entries[cut][2]
            cut += 1
        while cut > 0 and entries[cut - 1][1] > horizon:
            cut -= 1
            self._cut_sum -= entries[cut][2]
        self._cut = cut
        self._horizon = horizon
        # Next change: the oldest entry is dropped once horizon >= its last + slack, the first
        # entry still in the window expires once horizon >= its last.
        nxt = entries[0][1] + self.slack if entries else math.inf
        if cut < len(entries) and entries[cut][1] < nxt:
            nxt = entries[cut][1]
        self._next = nxt

    def add(self, now: float, count: float) -> list[float]:
        """Count `count` at `now`; returns the entry holding it (for a later correction)."""
        self._seek(now)
        entries = self._entries
        if len(entries) > self._cut and now - entries[-1][0] < self.granularity:
            entry = entries[-1]
            entry[1] = max(entry[1], now)
            entry[2] += count
        else:
            entry = [now, now, count]
            entries.append(entry)
            if now < self._next:   # the new entry may be the next to expire (or to be dropped)
                self._next = now
        self._sum += count
        return entry

    def adjust(self, entry: list[float], delta: float) -> None:
        """Correct a count added earlier; a no-op once its entry was dropped."""
        if delta == 0 or not self._entries or entry[1] < self._entries[0][1]:
            return
        new = max(0.0, entry[2] + delta)
        d = new - entry[2]
        entry[2] = new
        self._sum += d
        if entry[1] <= self._horizon:  # inside the expired prefix
            self._cut_sum += d

    def total(self, now: float) -> float:
        self._seek(now)
        return max(0.0, self._sum - self._cut_sum)

    def free_at(self, now: float, limit: float) -> float:
        """The earliest time at which the total drops below `limit` (`now` if it is already)."""
        self._seek(now)
        excess = self._sum - self._cut_sum - limit
        if excess < 0:
            return now
        entries = self._entries
        for i in range(self._cut, len(entries)):
            excess -= entries[i][2]
            if excess < 0:
                return entries[i][1] + self.window
        return now  # unreachable unless counts are zero

    def __len__(self) -> int:
        return len(self._entries)


class Reservation:
    """Estimated tokens of one attempt; `settle(actual)` corrects them once (later calls no-op)."""

    __slots__ = ("_log", "_entry", "estimate", "settled")

    def __init__(self, log: UsageLog, entry: list[float], estimate: int) -> None:
        self._log = log
        self._entry = entry
        self.estimate = estimate
        self.settled = False

    def settle(self, actual: int | None) -> None:
        if self.settled or actual is None:
            return
        self.settled = True
        self._log.adjust(self._entry, actual - self.estimate)


class RateLimiter:
    """Requests and tokens per sliding minute of one target (this replica's share)."""

    __slots__ = ("limits", "replicas", "rpm", "tpm", "_requests", "_tokens")

    def __init__(self, limits: config.Limits, replicas: int = 1) -> None:
        self._requests = UsageLog()
        self._tokens = UsageLog()
        self.limits = limits
        self.replicas = 1
        self.rpm: int | None = None
        self.tpm: int | None = None
        self.configure(limits, replicas)

    def configure(self, limits: config.Limits, replicas: int = 1) -> None:
        """New limits or replica count; the counts so far are kept."""
        self.limits = limits
        self.replicas = max(1, int(replicas))
        self.rpm = effective_limit(limits.requests_per_minute, self.replicas)
        self.tpm = effective_limit(limits.tokens_per_minute, self.replicas)

    @property
    def counts_tokens(self) -> bool:
        return self.tpm is not None

    def admits(self, now: float) -> bool:
        if self.rpm is not None and self._requests.total(now) >= self.rpm:
            return False
        if self.tpm is not None and self._tokens.total(now) >= self.tpm:
            return False
        return True

    def available_at(self, now: float) -> float:
        at = now
        if self.rpm is not None:
            at = max(at, self._requests.free_at(now, self.rpm))
        if self.tpm is not None:
            at = max(at, self._tokens.free_at(now, self.tpm))
        return at

    def note_request(self, now: float) -> None:
        """An attempt was admitted (sent): count it."""
        if self.rpm is not None:
            self._requests.add(now, 1)

    def reserve(self, tokens: int, now: float) -> Reservation | None:
        """Count `tokens` (an estimate) now; None when no token limit is set."""
        if self.tpm is None:
            return None
        tokens = max(0, int(tokens))
        return Reservation(self._tokens, self._tokens.add(now, tokens), tokens)

    def usage(self, now: float) -> tuple[int, int]:
        """(requests, tokens) counted in the window at `now`."""
        return int(self._requests.total(now)), int(math.ceil(self._tokens.total(now)))

    def __repr__(self) -> str:
        return f"RateLimiter(rpm={self.rpm}, tpm={self.tpm}, replicas={self.replicas})"
