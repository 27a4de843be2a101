"""Brownout: one provider gets 10x slower; the `latency` strategy moves traffic away.

Both simulators answer with a 30 ms latency; then provider A goes to 300 ms (x10) for
BROWNOUT seconds. Expected: A's share of traffic collapses and the client p99 in the second
half of the brownout is back near the healthy baseline, and once A is fast again traffic
returns to it: a latency estimate older than window/6 (2 s here) is re-measured by a single
exploring request, so a brownout costs one slow call per 2 s and a recovery is seen within 2 s.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from harness import ProxyProcess, chat, gateway_config, record_result, run_load, scaled

RATE = scaled(100, 150)
BASE, SLOW = 0.03, 0.3
BASELINE = 3.0
BROWNOUT = scaled(8.0, 30.0)
AFTER = 6.0


@pytest.mark.timeout(scaled(60, 120))
async def test_brownout_soak_latency_routing_moves_traffic_and_p99_recovers(sim_a, sim_b, tmp_path):
    a, b = sim_a, sim_b
    a.faults(latency=BASE)
    b.faults(latency=BASE)
    cfg = gateway_config(a, b, strategy="latency", route={"latencyTolerance": 0.2}, health={"window": "12s"})
    with ProxyProcess(cfg, tmp_path) as proxy:
        marks: dict[str, float] = {}
        t0 = time.monotonic()

        async def scenario() -> None:
            await asyncio.sleep(BASELINE)              # scenario phase: healthy baseline
            await asyncio.to_thread(a.faults, latency=SLOW)
            marks["brownout"] = time.monotonic() - t0
            await asyncio.sleep(BROWNOUT)              # scenario phase: the brownout
            await asyncio.to_thread(a.faults, latency=BASE)
            marks["recovered"] = time.monotonic() - t0

        load, _ = await asyncio.gather(
            run_load(proxy.url, body=lambda i: chat(stream=i % 4 == 0), concurrency=64, rate=RATE,
                     duration=BASELINE + BROWNOUT + AFTER),
            scenario())
        upstream = a.requests() + b.requests()
        proxy.assert_healthy()
    a_label = f"{a.name}/gpt-4o-mini"
    errors = load.errors()
    assert not errors, errors[:5]

    base_t = (0.5, marks["brownout"])                   # skip the first requests (EWMA exploration)
    second_half = (marks["brownout"] + BROWNOUT / 2, marks["recovered"])
    first_s = (marks["brownout"], marks["brownout"] + 1.0)
    base_targets = load.targets(*base_t)
    assert base_targets[a_label] > 0.2 * sum(base_targets.values()), f"healthy: traffic should be shared: {base_targets}"
    late = load.targets(*second_half)
    share_a_late = late[a_label] / max(1, sum(late.values()))
    assert share_a_late <= 0.05, f"A still gets {share_a_late:.1%} of traffic late in the brownout: {late}"
    p99_base = load.pct(0.99, *base_t)
    p99_late = load.pct(0.99, *second_half)
    p99_first = load.pct(0.99, *first_s)
    assert p99_first >= SLOW, "the brownout was not visible at all: the scenario did not test anything"
    assert p99_late <= p99_base * 1.5 + 0.02, f"p99 {p99_late * 1000:.0f} ms late in the brownout vs {p99_base * 1000:.0f} ms before"
    after = load.targets(marks["recovered"] + 3.0)
    share_a_after = after[a_label] / max(1, sum(after.values()))
    assert share_a_after >= 0.2, f"traffic did not return to A after it recovered: {after}"
    record_result("brownout", {
        "load": f"{RATE} req/s offered, 64 concurrent, 25% streamed", "latency_healthy_ms": BASE * 1000,
        "latency_brownout_ms": SLOW * 1000, "brownout_s": BROWNOUT, "client_requests": load.n,
        "client_errors": len(errors), "share_a_baseline": round(base_targets[a_label] / sum(base_targets.values()), 3),
        "share_a_late_brownout": round(share_a_late, 3),
        "share_a_after_recovery": round(share_a_after, 3),
        "p99_ms_baseline": round(p99_base * 1000, 1), "p99_ms_first_second": round(p99_first * 1000, 1),
        "p99_ms_late_brownout": round(p99_late * 1000, 1), "amplification": round(upstream / load.n, 3),
    })
