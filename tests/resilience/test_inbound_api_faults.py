"""Outage, 429 storm and mid-stream cut on POST /v1/responses and POST /v1/messages: with a
healthy target of the other provider type, 0 client-visible errors. Streams are judged the way
the SDKs judge them: a Responses stream must end with `response.completed` (no
`response.failed`), a Messages stream with `message_stop` (no `error` event)."""

from __future__ import annotations

import asyncio
import json

import aiohttp
import pytest

from harness import ProxyProcess
from support import Sim

CANONICAL = "The quick brown fox jumps over the lazy dog."
N = 24   # requests per scenario and endpoint, half of them streamed


@pytest.fixture(scope="module")
def pair():
    sims = {"openai": Sim("res-inb-openai"), "anthropic": Sim("res-inb-ant", "anthropic")}
    yield sims
    for s in sims.values():
        s.stop()


def _config(oai: Sim, ant: Sim) -> dict:
    breaker = {"failureRatio": 0.5, "minRequests": 10, "consecutiveFailures": 5, "cooldown": "1s",
               "maxCooldown": "3s", "halfOpenProbes": 1}
    route = {"retry": {"attempts": 2, "backoff": {"initial": "10ms", "max": "50ms"}, "maxRetryAfter": "100ms"},
             "timeout": "10s", "streamFailover": "continue"}
    return {
        "providers": [
            {"name": "oai", "type": "openai", "baseURL": oai.v1, "apiKey": {"value": "sk-oai-SECRET"},
             "continuation": "prefill"},
            {"name": "ant", "type": "anthropic", "baseURL": ant.url, "apiKey": {"value": "sk-ant-SECRET"},
             "continuation": "prefill"},
        ],
        "routes": [
            {"name": "responses", "match": {"models": ["gpt-4o"]}, **route,
             "targets": [{"provider": "oai", "model": "gpt-4o"},
                         {"provider": "ant", "model": "claude-sonnet-4", "priority": 1}]},
            {"name": "messages", "match": {"models": ["claude-sonnet-4"]}, **route,
             "targets": [{"provider": "ant", "model": "claude-sonnet-4"},
                         {"provider": "oai", "model": "gpt-4o", "priority": 1}]},
        ],
        "health": {"window": "60s", "breaker": breaker},
        "retryBudget": {"ratio": 0.2, "minPerSecond": 5},
    }


def _judge(path: str, stream: bool, status: int, raw: bytes) -> str:
    """'' when an SDK would have returned the whole canonical answer, else why not."""
    if status != 200:
        return f"http_{status}"
    if not stream:
        doc = json.loads(raw)
        text = (doc["output"][0]["content"][0]["text"] if path == "/v1/responses" else doc["content"][0]["text"])
        return "" if text == CANONICAL else f"text {text!r}"
    events = [json.loads(line[6:]) for line in raw.decode().splitlines() if line.startswith("data: ")]
    kinds = [e["type"] for e in events]
    if path == "/v1/responses":
        text = "".join(e["delta"] for e in events if e["type"] == "response.output_text.delta")
        ok = kinds[-1] == "response.completed" and "response.failed" not in kinds
    else:
        text = "".join(e["delta"]["text"] for e in events if e["type"] == "content_block_delta")
        ok = kinds[-1] == "message_stop" and "error" not in kinds
    return "" if ok and text == CANONICAL else f"stream ended {kinds[-1]} with {text!r}"


async def _load(url: str, path: str) -> list[str]:
    model = "gpt-4o" if path == "/v1/responses" else "claude-sonnet-4"

    async def one(session: aiohttp.ClientSession, i: int) -> str:
        stream = i % 2 == 0
        body = ({"model": model, "input": "hi", "stream": stream} if path == "/v1/responses" else
                {"model": model, "max_tokens": 64, "messages": [{"role": "user", "content": "hi"}], "stream": stream})
        async with session.post(url + path, json=body, headers={"anthropic-version": "2023-06-01"}) as resp:
            return _judge(path, stream, resp.status, await resp.read())

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20)) as session:
        sem = asyncio.Semaphore(8)

        async def bounded(i: int) -> str:
            async with sem:
                return await one(session, i)
        return list(await asyncio.gather(*(bounded(i) for i in range(N))))


SCENARIOS = {
    "outage": {"status": 503},
    "429_storm": {"status": 429, "retryAfter": "1"},
    "mid_stream_cut": {"cutAfterChunks": 3},
    "mid_stream_reset": {"resetAfterChunks": 2},
}


@pytest.mark.timeout(120)
@pytest.mark.parametrize("path", ["/v1/responses", "/v1/messages"])
async def test_inbound_endpoints_have_no_client_visible_errors_while_a_healthy_target_exists(pair, path, tmp_path):
    oai, ant = pair["openai"], pair["anthropic"]
    primary, fallback = (oai, ant) if path == "/v1/responses" else (ant, oai)
    for name, fault in SCENARIOS.items():   # a fresh proxy per scenario: no breaker state carried over
        oai.reset()
        ant.reset()
        primary.faults(**fault)
        with ProxyProcess(_config(oai, ant), tmp_path, name=name) as proxy:
            verdicts = await _load(proxy.url, path)
            proxy.assert_healthy()
        bad = [v for v in verdicts if v]
        assert not bad, (name, len(bad), bad[:3])
        assert primary.stats()["faultsInjected"] > 0, name   # the fault really hit the primary
        assert fallback.stats()["total"] > 0, name           # and the other provider type served
