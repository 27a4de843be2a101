"""Clocks for the policy engine.

The engine never reads time on its own: every decision takes `now` explicitly. That keeps
the breaker, window and planner pure functions of (state, input, now), so tests drive them
with a `FakeClock` and no sleeps, and the executor decides which clock is authoritative.
"""

from __future__ import annotations

import time
from typing import Protocol, runtime_checkable

__all__ = ["Clock", "MonotonicClock", "FakeClock"]


@runtime_checkable
class Clock(Protocol):
    """Anything with `now() -> float` in monotonic seconds."""

    def now(self) -> float: ...


class MonotonicClock:
    """The production clock: `time.monotonic()`, immune to wall-clock jumps (NTP, DST)."""

    __slots__ = ()

    def now(self) -> float:
        return time.monotonic()

    def __repr__(self) -> str:
        return "MonotonicClock()"


class FakeClock:
    """A clock that only moves when told to, for deterministic tests."""

    __slots__ = ("_now",)

    def __init__(self, start: float = 0.0) -> None:
        self._now = float(start)

    def now(self) -> float:
        return self._now

    def advance(self, dt: float) -> float:
        """Move forward by `dt` seconds (never backwards: monotonic clocks do not)."""
        if dt < 0:
            raise ValueError("a monotonic clock cannot go backwards")
        self._now += dt
        return self._now

    def __repr__(self) -> str:
        return f"FakeClock(now={self._now!r})"
