"""Soak: many requests with ~10% injected faults on the primary and a healthy fallback.

CI scale: 5,000 requests; DETOUR_SOAK=1: 100,000. Expected: no error reaches a client (a
healthy target always exists), the proxy's RSS grows < 10% between the end of a warm-up and
the end of the run, and no connections or asyncio tasks are leaked (measured with the proxy
idle, before and after).
"""

from __future__ import annotations

import asyncio
import time

import pytest

from harness import ProxyProcess, chat, gateway_config, record_result, run_load, scaled, sim_port

REQUESTS = scaled(5_000, 100_000)
WARMUP = scaled(1_000, 5_000)
CONCURRENCY = 32
# Three rules of 3.5% each (tried in order, each on what the previous ones left): ~10.1%.
FAULTS = [{"status": 503, "rate": 0.035, "seed": 1}, {"reset": True, "rate": 0.035, "seed": 2},
          {"malformed": "body", "rate": 0.035, "seed": 3}]


async def wait_idle(proxy: ProxyProcess, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while proxy.metrics().get("detour_in_flight_requests") != 0 or proxy.connections()["client"] > 0:
        assert time.monotonic() < deadline, f"proxy not idle after {timeout}s: {proxy.connections()}"
        await asyncio.sleep(0.05)   # bounded poll of a gauge


@pytest.mark.timeout(scaled(120, 1200))
async def test_soak_faults_no_client_errors_no_leaks(sim_a, sim_b, tmp_path):
    primary, fallback = sim_a, sim_b
    ports = {sim_port(primary), sim_port(fallback)}
    cfg = gateway_config(primary, fallback, timeouts={"connect": "1s", "firstToken": "2s", "streamIdle": "2s",
                                                      "total": "5s"})
    with ProxyProcess(cfg, tmp_path) as proxy:
        primary.admin.put("/_sim/faults", json=FAULTS).raise_for_status()
        body = lambda i: chat(text=f"soak {i % 97}", stream=i % 4 == 0)  # noqa: E731
        warm = await run_load(proxy.url, body=body, concurrency=CONCURRENCY, requests=WARMUP)
        await wait_idle(proxy)
        rss0 = proxy.rss()
        tasks0 = proxy.introspect()["tasks"]
        conns0 = proxy.connections(ports)
        up0 = primary.requests() + fallback.requests()
        p0 = primary.stats()
        injected0, primary0 = p0["faultsInjected"], p0["requests"].get("/v1/chat/completions", 0)

        rss_series: list[int] = []

        def progress(done: int) -> None:
            if done % 1000 == 0:
                rss_series.append(proxy.rss())

        load = await run_load(proxy.url, body=body, concurrency=CONCURRENCY, requests=REQUESTS,
                              on_progress=progress, hard_cap=scaled(100, 1100))
        await wait_idle(proxy)
        rss1 = proxy.rss()
        intro = proxy.introspect()
        tasks1 = intro["tasks"]
        conns1 = proxy.connections(ports)
        p_stats, f_stats = primary.stats(), fallback.stats()
        upstream = p_stats["total"] + f_stats["total"] - up0
        injected = p_stats["faultsInjected"] - injected0
        primary_total = p_stats["requests"].get("/v1/chat/completions", 0) - primary0
        for s in (p_stats, f_stats):
            assert s["inFlight"] == 0, s
        m = proxy.metrics()
        proxy.assert_healthy()

    errors = load.errors() + warm.errors()
    assert load.n == REQUESTS
    assert not errors, f"{len(errors)} client-visible errors, e.g. {errors[:5]}"
    growth = (rss1 - rss0) / rss0
    assert growth < 0.10, f"RSS grew {growth:.1%}: {rss0 / 2**20:.1f} -> {rss1 / 2**20:.1f} MiB"
    assert tasks1 <= tasks0 + 2, f"asyncio tasks {tasks0} -> {tasks1}: {intro['task_names']}"
    assert conns1["client"] == 0
    # Upstream keep-alive connections are pooled: bounded by the concurrency, not the request count.
    assert conns1["upstream"] <= 2 * CONCURRENCY + 2, conns1
    share = injected / max(1, primary_total)
    assert 0.05 < share < 0.15, f"injected fault share {share:.1%}: the scenario is not what it claims"
    record_result("soak", {
        "client_requests": load.n, "warmup_requests": warm.n, "concurrency": CONCURRENCY,
        "rps": round(load.rps(), 1), "wall_s": round(load.wall, 1), "streamed_share": 0.25,
        "faults_injected": injected, "fault_share_of_primary_requests": round(share, 4),
        "faults_per_client_request": round(injected / load.n, 4),
        "client_errors": len(errors), "upstream_requests": upstream,
        "amplification": round(upstream / load.n, 4),
        "fallbacks": int(m.get("detour_fallbacks_total")),
        "breaker_opens": int(m.get("detour_breaker_transitions_total", to="open")),
        "rss_mib_after_warmup": round(rss0 / 2**20, 1), "rss_mib_end": round(rss1 / 2**20, 1),
        "rss_mib_max": round(max(rss_series or [rss1]) / 2**20, 1), "rss_growth": round(growth, 4),
        "tasks_after_warmup": tasks0, "tasks_end": tasks1,
        "upstream_conns_after_warmup": conns0["upstream"], "upstream_conns_end": conns1["upstream"],
        "client_conns_end": conns1["client"],
        "p50_ms": round(1000 * load.pct(0.5), 1), "p99_ms": round(1000 * load.pct(0.99), 1),
    })
