"""Claude on every cloud, AWS included (issue 16): Anthropic's API goes down, then the same
Claude model on AWS Bedrock is throttled, and clients see no error at all.

One route serves `claude-sonnet-4-5` from Anthropic first, the same model on Bedrock second
(Converse / ConverseStream, every request SigV4-signed with credentials from the AWS chain --
here web identity through the simulator's STS, as IRSA does -- and the signature checked by
the simulator) and on Vertex AI last. Steady load (a quarter streamed) runs through four
phases: healthy; Anthropic overloaded (529) -> Bedrock serves; Bedrock throttled
(ThrottlingException 429) -> Vertex serves; all heal -> the breakers close and traffic returns to
Anthropic. Expected: 0 client-visible errors, each provider served in its phase, and the failed
providers saw a bounded number of requests.
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
BEDROCK_MODEL = "anthropic.claude-sonnet-4-5-v1:0"


@pytest.fixture(scope="module")
def clouds():
    sims = {"anthropic": Sim("res-aws-ant", "anthropic"), "bedrock": Sim("res-aws-bedrock", "bedrock"),
            "google": Sim("res-aws-google", "google")}
    yield sims
    for s in sims.values():
        s.stop()


def _config(ant: Sim, bedrock: Sim, google: Sim, sa_file: str) -> dict:
    return {
        "providers": [
            {"name": "anthropic", "type": "anthropic", "baseURL": ant.url, "apiKey": {"value": "sk-ant-SECRET"}},
            {"name": "bedrock", "type": "bedrock", "region": "us-east-1", "baseURL": bedrock.url},
            {"name": "vertex", "type": "vertex", "baseURL": google.url, "project": "sim-project",
             "location": "us-east5", "credentialsFile": sa_file},
        ],
        "routes": [{
            "name": "claude", "match": {"models": [MODEL]},
            "targets": [{"provider": "anthropic", "model": MODEL, "priority": 0},
                        {"provider": "bedrock", "model": BEDROCK_MODEL, "priority": 1},
                        {"provider": "vertex", "model": f"{MODEL}@20250929", "priority": 2}],
            "retry": {"attempts": 2, "backoff": {"initial": "10ms", "max": "50ms"}}, "timeout": "10s",
        }],
        "health": {"window": "60s", "breaker": {"failureRatio": 0.5, "minRequests": 10, "consecutiveFailures": 5,
                                                "cooldown": "1s", "maxCooldown": "3s", "halfOpenProbes": 1}},
        "retryBudget": {"ratio": 0.2, "minPerSecond": 5},
    }


@pytest.mark.timeout(scaled(90, 240))
async def test_anthropic_then_bedrock_outage_zero_client_errors(clouds, tmp_path, monkeypatch):
    ant, bedrock, google = clouds["anthropic"], clouds["bedrock"], clouds["google"]
    for s in (ant, bedrock, google):
        s.reset()
    sa = tmp_path / "sa.json"
    sa.write_text(google.admin.get("/_sim/google/service-account").text)
    token = tmp_path / "web-identity-token"
    token.write_text("projected-service-account-token")
    env = {"AWS_WEB_IDENTITY_TOKEN_FILE": str(token), "AWS_ROLE_ARN": "arn:aws:iam::123456789012:role/detour",
           "AWS_ENDPOINT_URL_STS": bedrock.url + "/sts", "AWS_REGION": "us-east-1",
           "AWS_CONFIG_FILE": str(tmp_path / "none"), "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "none"),
           "AWS_EC2_METADATA_DISABLED": "true"}
    for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(k, raising=False)   # the proxy process inherits the environment
    with ProxyProcess(_config(ant, bedrock, google, str(sa)), tmp_path, env=env) as proxy:
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
            await asyncio.sleep(PHASE)                                       # Bedrock serves
            marks["bedrock_down"] = time.monotonic() - t0
            hits["bedrock_before"] = await asyncio.to_thread(count, bedrock, "/model/")
            await asyncio.to_thread(bedrock.faults, status=429, errorType="ThrottlingException")
            await asyncio.sleep(PHASE)                                       # Vertex serves
            marks["healed"] = time.monotonic() - t0
            hits["bedrock_outage"] = await asyncio.to_thread(count, bedrock, "/model/") - hits["bedrock_before"]
            hits["ant_outage"] = await asyncio.to_thread(count, ant, "/v1/messages") - hits["ant_before"]
            await asyncio.to_thread(bedrock.clear)
            await asyncio.to_thread(ant.clear)
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
        "anthropic_down": load.targets(marks["anthropic_down"] + 0.5, marks["bedrock_down"]),
        "bedrock_down": load.targets(marks["bedrock_down"] + 0.5, marks["healed"]),
        "healed": load.targets(marks["closed"] + 0.3, float("inf")),
    }
    bedrock_t, vertex, anthropic = f"bedrock/{BEDROCK_MODEL}", f"vertex/{MODEL}@20250929", f"anthropic/{MODEL}"
    assert set(phases["healthy"]) == {anthropic}, phases
    assert set(phases["anthropic_down"]) == {bedrock_t}, phases
    assert set(phases["bedrock_down"]) == {vertex}, phases
    assert set(phases["healed"]) == {anthropic}, phases
    offered = RATE * PHASE
    assert hits["ant_outage"] < 0.1 * 2 * offered, hits
    assert hits["bedrock_outage"] < 0.15 * offered, hits
    assert m.get("detour_breaker_transitions_total", provider="bedrock", to="open") >= 1
    sts = bedrock.admin.get("/_sim/bedrock").json()["stsCalls"]
    assert sts >= 1
    record_result("claude_on_aws_and_google", {
        **load.summary(), "phase_s": PHASE,
        "targets_by_phase": {k: dict(v) for k, v in phases.items()},
        "anthropic_requests_while_down": hits["ant_outage"], "bedrock_requests_while_down": hits["bedrock_outage"],
        "sts_calls": sts,
    })
