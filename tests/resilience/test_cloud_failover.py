"""Claude on every cloud (issue 16): Anthropic's API goes down, then the same Claude model on
Vertex AI runs out of quota, and clients see no error at all.

One route serves `claude-sonnet-4-5` from Anthropic first, the same model on Vertex AI second
(service-account credentials whose tokens the simulator issues) and Gemini last. Steady load
(a quarter streamed) runs through four phases: healthy; Anthropic overloaded (529) -> Vertex
serves; Vertex exhausted too (429 RESOURCE_EXHAUSTED) -> Gemini serves; both heal -> the
breakers close and traffic returns to Anthropic. Expected: 0 client-visible errors, each
provider served in its phase, and the failed providers saw a bounded number of requests.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from harness import ProxyProcess, chat, record_result, run_load, scaled, wait_for_metric
from support import Sim

RATE = scaled(60, 120)
CONCURRENCY = 16
PHASE = scaled(1.5, 10.0)
MODEL = "claude-sonnet-4-5"
VERTEX_PATHS = ["/v1/projects/sim-project/locations/us-east5/publishers/anthropic/*"]


@pytest.fixture(scope="module")
def clouds():
    sims = {"anthropic": Sim("res-cloud-ant", "anthropic"), "google": Sim("res-cloud-google", "google")}
    yield sims
    for s in sims.values():
        s.stop()


def _config(ant: Sim, google: Sim, sa_file: str) -> dict:
    return {
        "providers": [
            {"name": "anthropic", "type": "anthropic", "baseURL": ant.url, "apiKey": {"value": "sk-ant-SECRET"}},
            {"name": "vertex", "type": "vertex", "baseURL": google.url, "project": "sim-project",
             "location": "us-east5", "credentialsFile": sa_file},
            {"name": "gemini", "type": "gemini", "baseURL": google.url, "apiKey": {"value": "AIza-gemini-SECRET"}},
        ],
        "routes": [{
            "name": "claude", "match": {"models": [MODEL]},
            "targets": [{"provider": "anthropic", "model": MODEL, "priority": 0},
                        {"provider": "vertex", "model": f"{MODEL}@20250929", "priority": 1},
                        {"provider": "gemini", "model": "gemini-2.5-flash", "priority": 2}],
            "retry": {"attempts": 2, "backoff": {"initial": "10ms", "max": "50ms"}}, "timeout": "10s",
        }],
        "health": {"window": "60s", "breaker": {"failureRatio": 0.5, "minRequests": 10, "consecutiveFailures": 5,
                                                "cooldown": "1s", "maxCooldown": "3s", "halfOpenProbes": 1}},
        "retryBudget": {"ratio": 0.2, "minPerSecond": 5},
    }


@pytest.mark.timeout(scaled(90, 240))
async def test_anthropic_then_vertex_outage_zero_client_errors(clouds, tmp_path):
    ant, google = clouds["anthropic"], clouds["google"]
    for s in (ant, google):
        s.reset()
    sa = tmp_path / "sa.json"
    sa.write_text(google.admin.get("/_sim/google/service-account").text)
    with ProxyProcess(_config(ant, google, str(sa)), tmp_path) as proxy:
        await asyncio.to_thread(google.wait, "tokensIssued", 1)   # the first token is fetched at start
        stop = asyncio.Event()
        marks: dict[str, float] = {}

        hits: dict[str, int] = {}

        def count(sim: Sim, prefix: str) -> int:
            return sum(v for k, v in sim.stats()["requests"].items() if k.startswith(prefix))

        async def scenario() -> None:
            await asyncio.sleep(PHASE)                                       # healthy
            hits["ant_before"] = await asyncio.to_thread(count, ant, "/v1/messages")
            marks["anthropic_down"] = time.monotonic() - t0
            await asyncio.to_thread(ant.faults, status=529, errorType="overloaded_error")
            await asyncio.sleep(PHASE)                                       # Vertex serves
            marks["vertex_down"] = time.monotonic() - t0
            hits["vertex_before"] = await asyncio.to_thread(count, google, "/v1/projects/")
            await asyncio.to_thread(google.faults, status=429, errorType="RESOURCE_EXHAUSTED", paths=VERTEX_PATHS)
            await asyncio.sleep(PHASE)                                       # Gemini serves
            marks["healed"] = time.monotonic() - t0
            hits["vertex_outage"] = await asyncio.to_thread(count, google, "/v1/projects/") - hits["vertex_before"]
            hits["ant_outage"] = await asyncio.to_thread(count, ant, "/v1/messages") - hits["ant_before"]
            await asyncio.to_thread(google.clear)
            await asyncio.to_thread(ant.clear)
            # Event, not a sleep: Anthropic's breaker closes once a probe after its cooldown succeeds.
            await asyncio.to_thread(wait_for_metric, proxy, "detour_breaker_state", lambda v: v == 0, 10.0,
                                    provider="anthropic")
            marks["closed"] = time.monotonic() - t0
            await asyncio.sleep(1.0)                                          # traffic back on Anthropic
            stop.set()

        t0 = time.monotonic()
        load, _ = await asyncio.gather(
            run_load(proxy.url, body=lambda i: chat(MODEL, stream=i % 4 == 0), concurrency=CONCURRENCY,
                     rate=RATE, duration=4 * PHASE + 20, stop=stop),
            scenario())
        proxy.assert_healthy()
        m = proxy.metrics()

    errors = load.errors()
    assert not errors, f"{len(errors)} client-visible errors, e.g. {errors[:5]}"
    phases = {
        "healthy": load.targets(0.3, marks["anthropic_down"]),
        "anthropic_down": load.targets(marks["anthropic_down"] + 0.5, marks["vertex_down"]),
        "vertex_down": load.targets(marks["vertex_down"] + 0.5, marks["healed"]),
        "healed": load.targets(marks["closed"] + 0.3, float("inf")),
    }
    vertex, gemini, anthropic = f"vertex/{MODEL}@20250929", "gemini/gemini-2.5-flash", f"anthropic/{MODEL}"
    assert set(phases["healthy"]) == {anthropic}, phases
    assert set(phases["anthropic_down"]) == {vertex}, phases
    assert set(phases["vertex_down"]) == {gemini}, phases
    assert set(phases["healed"]) == {anthropic}, phases
    # The breakers kept the failing providers' share small: a few (and their retries) to open the
    # breaker, then one probe per cooldown (1 s doubling to 3 s), out of RATE x phase requests.
    offered = RATE * PHASE
    assert hits["ant_outage"] < 0.1 * 2 * offered, hits
    assert hits["vertex_outage"] < 0.15 * offered, hits
    assert m.get("detour_breaker_transitions_total", provider="anthropic", to="open") >= 1
    assert m.get("detour_breaker_transitions_total", provider="vertex", to="open") >= 1
    record_result("claude_on_every_cloud", {
        **load.summary(), "phase_s": PHASE,
        "targets_by_phase": {k: dict(v) for k, v in phases.items()},
        "anthropic_requests_while_down": hits["ant_outage"], "vertex_requests_while_down": hits["vertex_outage"],
        "tokens_issued": google.stats()["tokensIssued"],
    })
