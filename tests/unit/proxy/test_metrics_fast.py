"""The hot path's bound metric updates (`metrics.adder` / `metrics.observer`) expose exactly
what prometheus_client's own `inc` / `dec` / `observe` expose for the same updates (they use
its internals: this fails if a release changes them)."""

from __future__ import annotations

import math
import random

from prometheus_client import CollectorRegistry, generate_latest

from detour_proxy.metrics import LATENCY_BUCKETS, Metrics, RouteMetrics, TargetMetrics, adder, observer


def _exposition(apply) -> bytes:
    m = Metrics(CollectorRegistry())
    apply(RouteMetrics.bind(m, "chat"), TargetMetrics.bind(m, "chat", "openai", "gpt-4o"))
    # every sample but the `_created` timestamps (when each child was made)
    return b"\n".join(line for line in generate_latest(m.registry).splitlines() if b"_created" not in line)


def test_bound_updates_expose_what_the_public_api_exposes():
    rng = random.Random(5)
    amounts = [rng.choice([0.0, 1e-4, 0.005, 0.0051, 0.3, 7.0, 120.0, 121.0, 1e9, math.inf, math.nan])
               for _ in range(300)] + list(LATENCY_BUCKETS)
    outcomes = [rng.choice(["success", "upstream_error", "client_error", "cancelled", "error"]) for _ in range(300)]
    results = [rng.choice(["success", "http_5xx", "timeout", "stream"]) for _ in range(300)]

    def public(rm: RouteMetrics, tm: TargetMetrics) -> None:
        for a, o, r in zip(amounts, outcomes, results):
            rm.in_flight.inc()
            rm.duration.observe(a)
            rm.outcomes[o].inc()
            tm.attempts[r].inc()
            tm.ttft.observe(a)
            tm.attempt_duration.observe(a)
            tm.prompt_tokens.inc(len(o))
            tm.completion_tokens.inc(len(r))
            if o != "error":
                rm.in_flight.dec()

    def bound(rm: RouteMetrics, tm: TargetMetrics) -> None:
        for a, o, r in zip(amounts, outcomes, results):
            rm.add_in_flight(1)
            rm.observe_duration(a)
            rm.count_outcome[o](1)
            tm.count_attempt[r](1)
            tm.observe_ttft(a)
            tm.observe_attempt_duration(a)
            tm.add_prompt_tokens(len(o))
            tm.add_completion_tokens(len(r))
            if o != "error":
                rm.add_in_flight(-1)

    a, b = _exposition(public), _exposition(bound)
    assert b"detour_request_duration_seconds_bucket" in a and b"detour_in_flight_requests" in a
    assert a == b


def test_without_the_internals_the_public_methods_are_used():
    class Bare:
        def inc(self, amount: float = 1) -> None: ...
        def observe(self, amount: float) -> None: ...

    bare = Bare()
    assert adder(bare) == bare.inc          # type: ignore[arg-type]
    assert observer(bare) == bare.observe   # type: ignore[arg-type]
