"""429 storms with Retry-After.

1. With a healthy fallback: the rate-limited primary is sidelined for its Retry-After, so it
   sees a handful of requests per Retry-After period however hard clients push; clients see
   no error, and a retry that went back to the primary waited at least the Retry-After.
2. With no fallback and no Retry-After (a pure retry storm): retries are the only
   amplification, and the process-wide retry budget caps them (report upstream attempts per
   client request). With a Retry-After Detour holds requests back itself until it has passed
   (tests/integration/test_usage_routing.py).
"""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest

from harness import ProxyProcess, chat, gateway_config, record_result, run_load, scaled

RATE = scaled(100, 150)
STORM = scaled(8.0, 30.0)
RETRY_AFTER = 1.0


@pytest.mark.timeout(scaled(60, 120))
async def test_429_storm_soak_respects_retry_after_with_fallback(sim_a, sim_b, tmp_path):
    primary, fallback = sim_a, sim_b
    cfg = gateway_config(primary, fallback, retry={"attempts": 2, "backoff": {"initial": "10ms", "max": "50ms"},
                                                   "respectRetryAfter": True, "maxRetryAfter": "5s"})
    with ProxyProcess(cfg, tmp_path) as proxy:
        # The storm is on before the first request, for exactly STORM seconds of load.
        primary.faults(status=429, retryAfter=str(int(RETRY_AFTER)))
        t0 = time.monotonic()
        load = await run_load(proxy.url, body=lambda i: chat(stream=i % 4 == 0), concurrency=64, rate=RATE,
                              duration=STORM)
        storm_hits = primary.requests()
        storm_s = time.monotonic() - t0
        primary.clear()
        proxy.assert_healthy()
        m = proxy.metrics()

    errors = load.errors()
    assert not errors, f"{len(errors)} client-visible errors, e.g. {errors[:5]}"
    # What Retry-After allows: after each 429 the primary may be asked again once the
    # Retry-After has passed. Per Retry-After period that is one fresh request plus the honoured
    # retry of the request that got the 429. Requests admitted in the same instant the
    # sideline ends race each other; allow 2 extra requests over the storm for that.
    periods = storm_s / RETRY_AFTER + 1
    allowed = 2 * periods + 2
    assert storm_hits <= allowed, f"primary got {storm_hits} requests in {storm_s:.1f}s (Retry-After allows ~{allowed:.0f})"
    assert storm_hits >= 2, "the primary should still be asked after each Retry-After (it may have recovered)"
    # A retry that returned to the primary waited out the Retry-After.
    retried_on_primary = [s for s in load.samples if s.target.startswith(primary.name) and s.attempts >= 2]
    assert all(s.latency >= RETRY_AFTER for s in retried_on_primary), retried_on_primary[:3]
    record_result("429_storm_with_fallback", {
        "load": f"{RATE} req/s offered, 64 concurrent, 25% streamed", "storm_s": round(storm_s, 1),
        "retry_after_s": RETRY_AFTER, "client_requests": load.n, "client_errors": len(errors),
        "primary_hits": storm_hits, "primary_hits_per_s": round(storm_hits / storm_s, 2),
        "fallback_hits": int(m.get("detour_upstream_attempts_total", provider=fallback.name)),
        "attempts_per_request": round((storm_hits + m.get("detour_upstream_attempts_total", provider=fallback.name))
                                      / load.n, 3),
        "p99_ms": round(1000 * load.pct(0.99), 1),
    })


@pytest.mark.timeout(scaled(60, 120))
async def test_429_storm_soak_retry_budget_caps_amplification_without_fallback(sim_a, tmp_path):
    only = sim_a
    duration = scaled(5.0, 30.0)
    budget = {"ratio": 0.2, "minPerSecond": 1, "window": "10s"}
    # A pure retry storm: 429s without Retry-After (with one, Detour would hold requests back
    # itself for that long, sending nothing, and the budget would have nothing to cap). 3 tries
    # per request: without a budget every request would cost 3.
    cfg = gateway_config(only, retry={"attempts": 3, "backoff": {"initial": "5ms", "max": "20ms"},
                                      "respectRetryAfter": True, "maxRetryAfter": "5s"},
                         retry_budget=budget, breaker={"consecutiveFailures": 10**6, "minRequests": 10**6})
    with ProxyProcess(cfg, tmp_path) as proxy:
        only.faults(status=429)
        load = await run_load(proxy.url, body=lambda i: chat(), concurrency=32, rate=RATE, duration=duration)
        upstream = only.requests()
        proxy.assert_healthy()
        m = proxy.metrics()
        # Clients get a clean 429 in the OpenAI error format, saying what was tried.
        r = await asyncio.to_thread(httpx.post, proxy.url + "/v1/chat/completions", json=chat(),
                                    timeout=10)
        assert r.status_code == 429 and r.json()["error"]["code"] == "all_targets_failed"

    n = load.n
    assert {s.status for s in load.samples} == {429}, "no healthy target: every client gets the 429, cleanly"
    rejections = m.get("detour_retry_budget_rejections_total")
    assert rejections > 0, "the budget never had to refuse a retry: the scenario did not test it"
    # The budget: retries <= ratio x requests + minPerSecond x window (over any 10 s window; the
    # run is shorter than or as long as a few windows, so count one window per 10 s started).
    windows = int(duration // 10) + 1
    max_retries = budget["ratio"] * n + budget["minPerSecond"] * 10 * windows
    amplification = upstream / n
    assert upstream - n <= max_retries, f"{upstream - n} retries for {n} requests (budget {max_retries:.0f})"
    assert amplification <= 1 + budget["ratio"] + budget["minPerSecond"] * 10 * windows / n + 0.01
    record_result("429_storm_no_fallback_budget", {
        "load": f"{RATE} req/s offered, 32 concurrent", "duration_s": duration, "client_requests": n,
        "client_errors": n, "client_status": 429, "upstream_requests": upstream,
        "attempts_per_request": round(amplification, 3), "budget_rejections": int(rejections),
        "without_budget_would_be": 3.0,
    })
