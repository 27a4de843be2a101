"""The OpenAI Agents SDK (`openai-agents`) with its default model (the Responses API) through
Detour: an agent with a function tool runs to completion while the OpenAI target is down and
the Anthropic target serves it (translated both ways), stream and not."""

from __future__ import annotations

import asyncio

import openai
import pytest
from agents import Agent, RunConfig, Runner, function_tool, set_tracing_disabled
from agents.models.default_models import get_default_model

from support import ProxyServer

CANONICAL = "The quick brown fox jumps over the lazy dog."
MODEL = get_default_model()


@pytest.fixture()
def gw(primary, anthropic_sim):
    set_tracing_disabled(True)   # never export traces to api.openai.com
    cfg = {
        "providers": [
            {"name": "openai", "type": "openai", "baseURL": primary.v1, "apiKey": {"value": "sk-openai-SECRET"}},
            {"name": "claude", "type": "anthropic", "baseURL": anthropic_sim.url,
             "apiKey": {"value": "sk-ant-SECRET"}},
        ],
        "routes": [{"name": "agents", "match": {"models": [MODEL]},
                    "targets": [{"provider": "openai", "model": MODEL},
                                {"provider": "claude", "model": "claude-sonnet-4", "priority": 1}],
                    "retry": {"attempts": 1}}],
    }
    with ProxyServer(cfg) as proxy:
        yield proxy, primary, anthropic_sim


def _agent(proxy, calls: list[str]) -> Agent:
    @function_tool
    def search(query: str) -> str:
        """Search the web."""
        calls.append(query)
        return "3 cats"

    from agents import OpenAIResponsesModel
    client = openai.AsyncOpenAI(base_url=proxy.v1, api_key="unused", max_retries=0)
    # the SDK's default model name and default model class (Responses API), pointed at Detour
    return Agent(name="helper", instructions="Use the search tool.", tools=[search],
                 model=OpenAIResponsesModel(model=MODEL, openai_client=client))


def test_agent_runs_with_tool_through_fallback_to_anthropic(gw):
    proxy, primary, claude = gw
    primary.faults(status=503)
    calls: list[str] = []
    result = asyncio.run(Runner.run(_agent(proxy, calls), "find cats", run_config=RunConfig(tracing_disabled=True)))
    assert calls == ["find cats"]
    assert result.final_output == CANONICAL
    # the OpenAI target was tried with the Responses API itself (native forwarding)
    assert claude.requests("/v1/messages") == 2 and primary.requests("/v1/responses") >= 1


def test_agent_streamed_run_with_tool_through_fallback(gw):
    proxy, primary, claude = gw
    primary.faults(status=429)
    calls: list[str] = []

    async def run() -> tuple[str, list[str]]:
        result = Runner.run_streamed(_agent(proxy, calls), "find cats", run_config=RunConfig(tracing_disabled=True))
        kinds = [ev.type async for ev in result.stream_events()]
        return result.final_output, kinds

    final, kinds = asyncio.run(run())
    assert calls == ["find cats"] and final == CANONICAL
    assert "raw_response_event" in kinds
    assert claude.requests("/v1/messages") == 2
