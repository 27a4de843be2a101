"""The process-wide retry budget.

Retries are what turn a provider brownout into an outage: with 3 attempts per target every
failing request triples the load on a provider that is already struggling. The budget (as in
Finagle and Envoy) caps retries at `ratio` x the requests seen over `window`, plus a floor of
`minPerSecond` x `window` so that low traffic can still retry. Fallbacks to another target do
not spend it: they move load away from the failing target instead of adding to it.
"""

from __future__ import annotations

from detour_proxy import config

from .window import SlidingWindow

__all__ = ["RetryBudget"]


class RetryBudget:
    """`record_request(now)` for every client request; `try_spend(now)` before every retry."""

    def __init__(self, settings: config.RetryBudget, clock: object | None = None,
                 buckets: int = 10) -> None:
        self.settings = settings
        self.clock = clock  # kept for callers; the budget only uses the `now` it is given
        self._buckets = buckets
        self._window = SlidingWindow(settings.window, buckets=buckets, fields=2)  # requests, retries

    def update_settings(self, settings: config.RetryBudget) -> None:
        if settings.window != self.settings.window:
            self._window = SlidingWindow(settings.window, buckets=self._buckets, fields=2)
        self.settings = settings

    def record_request(self, now: float) -> None:
        self._window.add(now, 1, 0)

    def allowed(self, now: float) -> float:
        """How many retries the window may hold at `now`."""
        s = self.settings
        requests, _ = self._window.totals(now)
        return s.ratio * requests + s.min_per_second * s.window

    def stats(self, now: float) -> tuple[int, int]:
        """(requests, retries) in the window at `now`."""
        r, t = self._window.totals(now)
        return r, t

    def try_spend(self, now: float) -> bool:
        """Spend one retry if the window still has room; False (and nothing spent) if not."""
        _, retries = self._window.totals(now)
        if retries + 1 > self.allowed(now) + 1e-9:
            return False
        self._window.add(now, 0, 1)
        return True
