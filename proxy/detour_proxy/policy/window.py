"""Sliding-window counters in time buckets.

A per-call log would be exact but grows with traffic; a fixed window forgets everything at
once and lets a breaker flap at the boundary. Buckets are the usual middle ground (Envoy,
resilience4j): the window is split into `buckets` slices, each slice keeps a few integer
counters, and a total is the sum of the slices still inside the window. Memory is bounded
by `buckets`, and the window's effective length is between (buckets-1)/buckets and 1 times
`length`.
"""

from __future__ import annotations

import math
from collections import deque

__all__ = ["SlidingWindow"]


class SlidingWindow:
    """`fields` integer counters over the last `length` seconds.

    Time comes in as `now` on every call. Time is expected to be monotonic; a `now` older
    than the newest bucket is counted into that bucket (callers may pass a slightly future
    time for a planned attempt, and a count must never be lost because of it).
    """

    __slots__ = ("length", "buckets", "fields", "_width", "_slices", "_sums")

    def __init__(self, length: float, buckets: int = 10, fields: int = 3) -> None:
        if buckets < 1 or fields < 1:
            raise ValueError("buckets and fields must be positive")
        self.length = float(length)
        self.buckets = buckets
        self.fields = fields
        # A zero-length window still needs a bucket width; it then only sees "right now".
        self._width = self.length / buckets if self.length > 0 else 1e-9
        self._slices: deque[list[int]] = deque()  # [bucket_index, counter...]
        # The counters summed over every slice held: `totals` (every request asks) then only
        # deducts the slices that fell out of the window since the last `add` pruned (usually none).
        self._sums = [0] * fields

    def _index(self, now: float) -> int:
        return math.floor(now / self._width)

    def _prune(self, index: int) -> None:
        oldest = index - self.buckets
        slices = self._slices
        sums = self._sums
        while slices and slices[0][0] <= oldest:
            gone = slices.popleft()
            for i in range(self.fields):
                sums[i] -= gone[i + 1]

    def add(self, now: float, *counts: int) -> None:
        """Add `counts` (one per field; missing fields add 0) at time `now`."""
        if len(counts) > self.fields:
            raise ValueError(f"at most {self.fields} counters")
        index = math.floor(now / self._width)
        slices = self._slices
        if not slices or slices[-1][0] < index:
            slices.append([index] + [0] * self.fields)
            self._prune(index)
        target = slices[-1]
        sums = self._sums
        i = 0
        for c in counts:
            i += 1
            target[i] += c
            sums[i - 1] += c

    def totals(self, now: float) -> tuple[int, ...]:
        """The sum of each counter over the buckets still inside the window at `now`."""
        oldest = math.floor(now / self._width) - self.buckets
        slices = self._slices
        if not slices or slices[0][0] > oldest:
            return tuple(self._sums)
        sums = list(self._sums)
        for s in slices:   # the oldest slices are out of the window at `now`: deduct them
            if s[0] > oldest:
                break
            for i in range(self.fields):
                sums[i] -= s[i + 1]
        return tuple(sums)

    def reset(self) -> None:
        self._slices.clear()
        self._sums = [0] * self.fields

    def __repr__(self) -> str:
        return f"SlidingWindow(length={self.length}, buckets={self.buckets}, slices={len(self._slices)})"
