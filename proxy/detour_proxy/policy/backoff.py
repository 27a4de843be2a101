"""Backoff between retries of the same target.

Full jitter (AWS architecture blog, "Exponential Backoff And Jitter"): the wait is uniform in
[0, cap] with cap = min(max, initial * multiplier^(n-1)). It spreads synchronized retries
from many clients far better than "exponential + small jitter". A provider's Retry-After is a
floor on top of that, when the route respects it, and a reason to fall back instead of
waiting when it is longer than `maxRetryAfter`.
"""

from __future__ import annotations

import random

from detour_proxy import config

__all__ = ["backoff_cap", "full_jitter", "retry_delay"]


def backoff_cap(backoff: config.Backoff, retry_number: int) -> float:
    """The jitter cap before retry `retry_number` (1 = the first retry)."""
    n = max(1, retry_number)
    return min(backoff.max, backoff.initial * backoff.multiplier ** (n - 1))


def full_jitter(backoff: config.Backoff, retry_number: int, rng: random.Random) -> float:
    return rng.uniform(0.0, backoff_cap(backoff, retry_number))


def retry_delay(retry: config.Retry, retry_number: int, retry_after: float | None,
                rng: random.Random) -> float | None:
    """The wait before retry `retry_number`, or None when the provider asks for longer than
    `maxRetryAfter` (then the caller falls back rather than retrying this target)."""
    delay = full_jitter(retry.backoff, retry_number, rng)
    if retry.respect_retry_after and retry_after is not None:
        if retry_after > retry.max_retry_after:
            return None
        delay = max(delay, retry_after)
    return delay
