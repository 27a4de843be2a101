"""Provider outage under steady load, with one healthy fallback.

The primary answers 503 to everything for OUTAGE seconds (10 s in CI, 30 s under
DETOUR_SOAK=1) while clients send a steady RATE req/s. Expected: no client-visible error,
the breaker opens within its thresholds (so the primary sees a bounded number of requests),
half-open probes start only after the cooldown, and once the primary heals the breaker
closes and traffic returns to it.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from harness import (MetricTimeline, ProxyProcess, chat, gateway_config, record_result, run_load, scaled,
                     wait_for_metric)

RATE = scaled(100, 150)
CONCURRENCY = 32
WARMUP = 1.5
OUTAGE = scaled(10.0, 30.0)
BREAKER = {"consecutiveFailures": 5, "failureRatio": 0.5, "minRequests": 10, "cooldown": "1s",
           "maxCooldown": "3s", "halfOpenProbes": 1}
COOLDOWN, MAX_COOLDOWN = 1.0, 3.0


@pytest.mark.timeout(scaled(90, 180))
async def test_outage_soak_zero_client_errors_breaker_opens_probes_and_traffic_returns(sim_a, sim_b, tmp_path):
    primary, fallback = sim_a, sim_b
    label = {"provider": primary.name}
    with ProxyProcess(gateway_config(primary, fallback, breaker=BREAKER), tmp_path) as proxy:
        timeline = MetricTimeline(proxy.url, {
            "state": ("detour_breaker_state", label),
            "opened": ("detour_breaker_transitions_total", {**label, "to": "open"}),
            "half_open": ("detour_breaker_transitions_total", {**label, "to": "half-open"}),
            "closed": ("detour_breaker_transitions_total", {**label, "to": "closed"}),
        })
        stop = asyncio.Event()
        marks: dict[str, float] = {}
        hits: dict[str, int] = {}

        async def scenario() -> None:
            await asyncio.sleep(WARMUP)                     # scenario phase: healthy warm-up
            hits["before"] = await asyncio.to_thread(primary.requests)
            fallback_before = await asyncio.to_thread(fallback.requests)
            marks["outage_start"] = time.monotonic() - timeline.t0
            await asyncio.to_thread(primary.faults, status=503)
            await asyncio.sleep(OUTAGE)                     # scenario phase: the outage itself
            await asyncio.to_thread(primary.clear)
            marks["outage_end"] = time.monotonic() - timeline.t0
            hits["outage"] = await asyncio.to_thread(primary.requests) - hits["before"]
            hits["fallback_outage"] = await asyncio.to_thread(fallback.requests) - fallback_before
            # Event, not a sleep: the breaker closes once a probe after the cooldown succeeds.
            await asyncio.to_thread(wait_for_metric, proxy, "detour_breaker_state", lambda v: v == 0,
                                    MAX_COOLDOWN + 3.0, **label)
            marks["closed"] = time.monotonic() - timeline.t0
            marks["healed_window_start"] = marks["closed"] + 0.2
            await asyncio.sleep(2.0)                        # scenario phase: traffic after healing
            stop.set()

        poller = asyncio.create_task(timeline.run())
        timeline.t0 = time.monotonic()   # the load's clock starts in the same loop tick
        try:
            load, _ = await asyncio.gather(
                run_load(proxy.url, body=lambda i: chat(stream=i % 4 == 0), concurrency=CONCURRENCY, rate=RATE,
                         duration=WARMUP + OUTAGE + MAX_COOLDOWN + 10, stop=stop),
                scenario())
        finally:
            poller.cancel()
        proxy.assert_healthy()
        m = proxy.metrics()

    errors = load.errors()
    assert not errors, f"{len(errors)} client-visible errors, e.g. {errors[:5]}"

    t_open = timeline.first_time("opened", lambda v: v >= 1)
    assert t_open is not None, "the breaker never opened"
    assert marks["outage_start"] <= t_open + 0.06 and t_open - marks["outage_start"] < 1.0, \
        f"breaker opened {t_open - marks['outage_start']:.3f}s after the outage began"
    t_half = timeline.first_time("half_open", lambda v: v >= 1)
    assert t_half is not None, "no half-open probe during the outage"
    # Probing starts only after the cooldown (poll granularity 50 ms on both marks).
    assert t_half - t_open >= COOLDOWN - 0.06, f"probe {t_half - t_open:.3f}s after opening, cooldown {COOLDOWN}s"
    probes = int(m.get("detour_breaker_transitions_total", to="half-open", **label))
    opens = int(m.get("detour_breaker_transitions_total", to="open", **label))
    assert probes >= 2 and opens >= 2, "the breaker should keep probing (and re-opening) through the outage"
    # Every open period lasts at least COOLDOWN: an upper bound on probes in the outage.
    assert probes <= OUTAGE / COOLDOWN + 1

    # Upstream hits on the dead primary are bounded by the thresholds, not by the load:
    # `consecutiveFailures` to open, plus requests already admitted when it opened (at most
    # the client concurrency), plus one request per half-open probe slot.
    bound = BREAKER["consecutiveFailures"] + CONCURRENCY + probes * BREAKER["halfOpenProbes"]
    outage_requests = len([s for s in load.samples if marks["outage_start"] <= s.t < marks["outage_end"]])
    assert hits["outage"] <= bound, f"primary saw {hits['outage']} requests during the outage (bound {bound})"
    assert hits["outage"] < outage_requests / 10

    # After healing: the breaker closed and every request that started afterwards went to the primary.
    assert int(m.get("detour_breaker_transitions_total", to="closed", **label)) >= 1
    assert m.get("detour_breaker_state", **label) == 0
    healed = load.targets(marks["healed_window_start"])
    assert sum(healed.values()) >= RATE  # ~2 s of traffic after closing
    assert set(healed) == {f"{primary.name}/gpt-4o-mini"}, f"after healing: {healed}"
    assert m.get("detour_forced_attempts_total") == 0

    record_result("outage", {
        "load": f"{RATE} req/s offered, {CONCURRENCY} concurrent, 25% streamed",
        "outage_s": OUTAGE, "client_requests": load.n,
        "client_requests_during_outage": outage_requests,
        "client_errors": len(errors), "primary_hits_during_outage": hits["outage"],
        "fallback_hits_during_outage": hits["fallback_outage"],
        "amplification_during_outage": round((hits["outage"] + hits["fallback_outage"]) / max(1, outage_requests), 3),
        "breaker_open_after_s": round(t_open - marks["outage_start"], 3),
        "first_probe_after_open_s": round(t_half - t_open, 3), "probes": probes, "opens": opens,
        "closed_after_heal_s": round(marks["closed"] - marks["outage_end"], 3),
        "p99_ms": round(1000 * load.pct(0.99), 1), **{k: v for k, v in load.summary().items() if k in ("rps",)},
    })
