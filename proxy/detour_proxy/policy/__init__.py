"""Detour's policy engine: pure decisions about where and when to send an LLM call.

Breakers, health windows, client-side rate limits, the retry budget, balancing and
retry/fallback planning (with hedges). Imports
only the stdlib and `detour_proxy.config`, and never reads a clock: every call takes `now`,
so the executor owns time and I/O and tests run on a `FakeClock`. See docs/architecture.md,
"Policy engine API".
"""

from .affinity import affinity_key, affinity_order
from .backoff import backoff_cap, full_jitter, retry_delay
from .balancer import order_targets, weighted_order
from .breaker import Admission, BreakerState, CircuitBreaker
from .budget import RetryBudget
from .clock import Clock, FakeClock, MonotonicClock
from .outcome import CONTEXT_WINDOW, REQUEST_ERROR_STATUSES, Outcome, OutcomeKind, error_class_for
from .planner import GiveUp, RequestPlan, RoutePlanner, Try
from .probes import ProbeClaim, ProbeClaims, probe_due
from .ratelimit import RateLimiter, Reservation, UsageLog, estimate_tokens
from .registry import HealthRegistry, merge_limits
from .target import TargetKey, TargetSnapshot, TargetState
from .window import SlidingWindow

__all__ = [
    "Clock", "MonotonicClock", "FakeClock",
    "Outcome", "OutcomeKind", "REQUEST_ERROR_STATUSES", "CONTEXT_WINDOW", "error_class_for",
    "BreakerState", "Admission", "CircuitBreaker",
    "TargetKey", "TargetState", "TargetSnapshot", "HealthRegistry",
    "RetryBudget", "SlidingWindow",
    "RateLimiter", "Reservation", "UsageLog", "estimate_tokens", "merge_limits",
    "RoutePlanner", "RequestPlan", "Try", "GiveUp",
    "affinity_key", "affinity_order",
    "ProbeClaim", "ProbeClaims", "probe_due",
    "order_targets", "weighted_order", "backoff_cap", "full_jitter", "retry_delay",
]
