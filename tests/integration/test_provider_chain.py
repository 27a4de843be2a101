"""OpenAI -> Azure OpenAI -> Anthropic: the chain users write, end to end with the official SDK."""

from __future__ import annotations

import json

import openai
import pytest

from support import ProxyServer

CANONICAL = "The quick brown fox jumps over the lazy dog."
TOOLS = [{"type": "function", "function": {"name": "search", "description": "Search the web",
                                           "parameters": {"type": "object",
                                                          "properties": {"query": {"type": "string"}}}}}]


@pytest.fixture()
def chain(primary, azure, anthropic_sim):
    primary.faults(status=503)
    azure.faults(status=429, retryAfter="30")
    cfg = {
        "providers": [
            {"name": "openai", "type": "openai", "baseURL": primary.v1, "apiKey": {"value": "sk-openai-SECRET"}},
            {"name": "azure", "type": "azure-openai", "baseURL": azure.url, "apiVersion": "2024-10-21",
             "apiKey": {"value": "azure-SECRET"}},
            {"name": "claude", "type": "anthropic", "baseURL": anthropic_sim.url,
             "apiKey": {"value": "sk-ant-SECRET"}},
        ],
        "routes": [{
            "name": "chat", "match": {"models": ["gpt-4o"]},
            "targets": [{"provider": "openai", "model": "gpt-4o"},
                        {"provider": "azure", "model": "gpt4o-deployment", "priority": 1},
                        {"provider": "claude", "model": "claude-3-5-sonnet-latest", "priority": 2}],
            "retry": {"attempts": 2, "backoff": {"initial": "10ms", "max": "20ms"}, "maxRetryAfter": "5s"},
        }],
    }
    with ProxyServer(cfg) as proxy:
        yield proxy, primary, azure, anthropic_sim


def sdk(proxy) -> openai.OpenAI:
    return openai.OpenAI(base_url=proxy.v1, api_key="unused", max_retries=0)


def test_plain_chat_falls_through_to_anthropic(chain):
    proxy, primary, azure, claude = chain
    raw = sdk(proxy).chat.completions.with_raw_response.create(
        model="gpt-4o", messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}])
    completion = raw.parse()
    assert raw.headers["x-detour-target"] == "claude/claude-3-5-sonnet-latest"
    assert completion.choices[0].message.content == CANONICAL
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage.total_tokens == completion.usage.prompt_tokens + completion.usage.completion_tokens > 0
    # the primary was really tried (and retried: a 503 is worth a second attempt)...
    assert primary.requests("/v1/chat/completions") == 2
    # ...and Azure got a well-formed deployment request, api-version included (its sim
    # answers the injected 429 before it would check that itself). Its Retry-After (30 s)
    # exceeds maxRetryAfter: no retry there, straight on.
    assert azure.requests("/openai/deployments/gpt4o-deployment/chat/completions") == 1
    to_azure = azure.stats()["lastRequest"]
    assert to_azure["path"] == "/openai/deployments/gpt4o-deployment/chat/completions"
    assert to_azure["query"] == {"api-version": "2024-10-21"}
    assert to_azure["headers"]["api-key"] == "<redacted>" and "authorization" not in to_azure["headers"]
    sent = claude.stats()["lastRequest"]
    assert sent["body"]["system"] == "Be brief."
    assert sent["body"]["max_tokens"] == 4096
    assert sent["headers"]["anthropic-version"]


def test_tool_calls_round_trip_through_anthropic(chain):
    proxy, *_ = chain
    c = sdk(proxy)
    raw = c.chat.completions.with_raw_response.create(model="gpt-4o", tools=TOOLS,
                                                      messages=[{"role": "user", "content": "weather in Oslo"}])
    assert raw.headers["x-detour-target"] == "claude/claude-3-5-sonnet-latest"
    choice = raw.parse().choices[0]
    assert choice.finish_reason == "tool_calls"
    call = choice.message.tool_calls[0]
    assert call.function.name == "search"
    assert json.loads(call.function.arguments) == {"query": "weather in Oslo"}
    raw = c.chat.completions.with_raw_response.create(model="gpt-4o", tools=TOOLS, messages=[
        {"role": "user", "content": "weather in Oslo"},
        {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
        {"role": "tool", "tool_call_id": call.id, "content": "Sunny, 21C"},
    ])
    assert raw.headers["x-detour-target"] == "claude/claude-3-5-sonnet-latest"
    assert raw.parse().choices[0].message.content == CANONICAL


def test_streaming_falls_through_to_anthropic(chain):
    proxy, *_ = chain
    with sdk(proxy).chat.completions.with_streaming_response.create(
            model="gpt-4o", stream=True, stream_options={"include_usage": True},
            messages=[{"role": "user", "content": "hi"}]) as resp:
        assert resp.headers["x-detour-target"] == "claude/claude-3-5-sonnet-latest"
        chunks = list(resp.parse())
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    assert text == CANONICAL
    finish = [ch.choices[0].finish_reason for ch in chunks if ch.choices and ch.choices[0].finish_reason]
    assert finish == ["stop"]
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0


def test_streaming_tool_call_through_anthropic(chain):
    proxy, *_ = chain
    calls: dict[int, dict] = {}
    with sdk(proxy).chat.completions.with_streaming_response.create(
            model="gpt-4o", stream=True, tools=TOOLS, messages=[{"role": "user", "content": "news"}]) as resp:
        assert resp.headers["x-detour-target"] == "claude/claude-3-5-sonnet-latest"
        for ch in resp.parse():
            for tc in (ch.choices[0].delta.tool_calls or []) if ch.choices else []:
                slot = calls.setdefault(tc.index, {"name": "", "args": ""})
                if tc.function and tc.function.name:
                    slot["name"] = tc.function.name
                if tc.function and tc.function.arguments:
                    slot["args"] += tc.function.arguments
    assert calls[0]["name"] == "search"
    assert json.loads(calls[0]["args"]) == {"query": "news"}


def test_embeddings_skip_anthropic_with_a_clear_reason(anthropic_sim):
    cfg = {
        "providers": [{"name": "claude", "type": "anthropic", "baseURL": anthropic_sim.url,
                       "apiKey": {"value": "k"}}],
        "routes": [{"name": "emb", "match": {"models": ["text-embedding-3-small"]},
                    "targets": [{"provider": "claude", "model": "claude-3-5-haiku-latest"}]}],
    }
    with ProxyServer(cfg) as proxy:
        with pytest.raises(openai.BadRequestError) as exc:
            sdk(proxy).embeddings.create(model="text-embedding-3-small", input="x")
    assert "embeddings" in str(exc.value)
    assert anthropic_sim.stats()["total"] == 0


def test_provider_keys_never_reach_the_client(chain):
    proxy, primary, azure, claude = chain
    primary.faults(status=401)
    azure.faults(status=401)
    claude.faults(status=401)
    with pytest.raises(openai.APIStatusError) as exc:
        sdk(proxy).chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
    assert "SECRET" not in exc.value.response.text
    assert azure.stats()["lastRequest"]["headers"]["api-key"] == "<redacted>"
