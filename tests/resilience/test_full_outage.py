"""Every target down, then back (issue 13: a full outage was hammered, not shed).

Both providers answer 503 for OUTAGE seconds under a steady RATE req/s. Expected: once the
breakers are open the dead providers see at most `halfOpenProbes` attempts per target per
cooldown (the cooldown doubles per failed probe, up to maxCooldown), clients get a fast 503 with
a truthful, bounded Retry-After instead of waiting on dead upstreams, and when the providers
recover traffic flows again within one (max) cooldown plus a probe.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from harness import ProxyProcess, chat, gateway_config, record_result, run_load, scaled

RATE = 50
CONCURRENCY = 16
WARMUP = 1.0
OUTAGE = scaled(6.0, 20.0)
SETTLE = 1.0           # the breakers open within this (consecutiveFailures at RATE req/s)
COOLDOWN, MAX_COOLDOWN = 1.0, 3.0
PROBES = 1
BREAKER = {"consecutiveFailures": 5, "failureRatio": 0.5, "minRequests": 10, "cooldown": "1s",
           "maxCooldown": "3s", "halfOpenProbes": PROBES}


@pytest.mark.timeout(scaled(90, 180))
async def test_every_target_down_is_shed_and_traffic_returns_after_recovery(sim_a, sim_b, tmp_path):
    sims = (sim_a, sim_b)
    with ProxyProcess(gateway_config(*sims, breaker=BREAKER), tmp_path) as proxy:
        stop = asyncio.Event()
        marks: dict[str, float] = {}
        counts: list[tuple[float, int]] = []   # (seconds since the load began, upstream attempts so far)
        t0 = time.monotonic()

        async def upstream_attempts() -> int:
            return sum(await asyncio.gather(*(asyncio.to_thread(s.requests) for s in sims)))

        async def sample_attempts() -> None:
            while not stop.is_set():
                counts.append((time.monotonic() - t0, await upstream_attempts()))
                await asyncio.sleep(0.1)

        def attempts_between(a: float, b: float) -> int:
            first = next(c for t, c in counts if t >= a)
            last = next(c for t, c in reversed(counts) if t <= b)
            return last - first

        async def scenario() -> None:
            await asyncio.sleep(WARMUP)
            marks["outage_start"] = time.monotonic() - t0
            await asyncio.gather(*(asyncio.to_thread(s.faults, status=503) for s in sims))
            await asyncio.sleep(OUTAGE)
            marks["outage_end"] = time.monotonic() - t0
            await asyncio.gather(*(asyncio.to_thread(s.clear) for s in sims))
            await asyncio.sleep(MAX_COOLDOWN + 3.0)   # recovery phase (the load is measured, not awaited)
            stop.set()

        sampler = asyncio.create_task(sample_attempts())
        try:
            load, _ = await asyncio.gather(
                run_load(proxy.url, body=lambda i: chat(stream=i % 4 == 0), concurrency=CONCURRENCY, rate=RATE,
                         duration=WARMUP + OUTAGE + MAX_COOLDOWN + 10, stop=stop),
                scenario())
        finally:
            stop.set()
            await sampler
        proxy.assert_healthy()

    # During the outage, once the breakers are open: at most halfOpenProbes per target per cooldown.
    open_from, open_to = marks["outage_start"] + SETTLE, marks["outage_end"]
    shed_attempts = attempts_between(open_from, open_to)
    span = open_to - open_from
    bound = len(sims) * PROBES * (span / COOLDOWN + 1)
    attempts_per_s = shed_attempts / span
    assert shed_attempts <= bound, f"{shed_attempts} upstream attempts in {span:.1f}s of full outage (bound {bound:.0f})"

    during = [s for s in load.samples if open_from <= s.t < open_to]
    assert len(during) >= RATE * span * 0.8, "the load did not keep up"
    shed = [s for s in during if s.status == 503]
    assert len(shed) >= len(during) * 0.8, f"{len(shed)} of {len(during)} requests were shed with 503"
    # Shed without an attempt: Retry-After says when the next probe may go (probes that failed
    # answer with what the provider said).
    unsent = [s for s in shed if s.attempts == 0 and not s.stream]
    assert unsent and all(s.retry_after and 1 <= int(s.retry_after) <= MAX_COOLDOWN + 1 for s in unsent), \
        sorted({s.retry_after for s in unsent})
    shed_p99 = sorted(s.latency for s in shed)[int(0.99 * (len(shed) - 1))]
    assert shed_p99 < 0.5, f"shed requests waited {shed_p99:.3f}s (p99) on dead upstreams"

    # After recovery: the first request served again, and steady success after that.
    back = [s for s in load.samples if s.status == 200 and s.t + s.latency > marks["outage_end"]]
    assert back, "no request was served after the providers recovered"
    time_to_traffic = min(s.t + s.latency for s in back) - marks["outage_end"]
    assert time_to_traffic <= MAX_COOLDOWN + 1.0, f"traffic returned {time_to_traffic:.2f}s after recovery"
    settled = marks["outage_end"] + time_to_traffic + 1.0
    late = [s for s in load.samples if s.t >= settled]
    assert late and not [s for s in late if s.error], f"errors after recovery: {[s for s in late if s.error][:5]}"

    record_result("full_outage", {
        "load": f"{RATE} req/s offered, {CONCURRENCY} concurrent, 25% streamed, {len(sims)} targets",
        "outage_s": OUTAGE, "breaker": BREAKER,
        "upstream_attempts_per_s_while_open": round(attempts_per_s, 2),
        "upstream_attempts_bound_per_s": round(bound / span, 2),
        "client_requests_while_open": len(during), "shed_503": len(shed),
        "shed_503_without_an_attempt": len([s for s in shed if s.attempts == 0]),
        "shed_p99_ms": round(1000 * shed_p99, 1),
        "time_to_traffic_s": round(time_to_traffic, 2),
    })
