"""Structured output survives a fallback to Anthropic (issue 13: `response_format` was dropped).

The official SDK's `parse` with a pydantic model, plain and streamed, through an OpenAI primary
that fails to the Anthropic simulator; the request Anthropic received carries the schema as a
forced tool, and the answer comes back as JSON content the SDK validates.
"""

from __future__ import annotations

import json
from typing import Literal

import httpx
import openai
import pydantic
import pytest

from detour_proxy.adapters.anthropic_fields import ANSWER_TOOL
from support import ProxyServer


class Step(pydantic.BaseModel):
    explanation: str
    output: str


class MathAnswer(pydantic.BaseModel):
    steps: list[Step]
    final_answer: str
    confidence: Literal["low", "high"]
    attempts: int


@pytest.fixture()
def fallback(primary, anthropic_sim):
    primary.faults(status=503)
    cfg = {
        "providers": [
            {"name": "openai", "type": "openai", "baseURL": primary.v1, "apiKey": {"value": "sk-openai-SECRET"}},
            {"name": "claude", "type": "anthropic", "baseURL": anthropic_sim.url, "apiKey": {"value": "sk-ant-SECRET"}},
        ],
        "routes": [{"name": "chat", "match": {"models": ["gpt-4o"]},
                    "targets": [{"provider": "openai", "model": "gpt-4o"},
                                {"provider": "claude", "model": "claude-sonnet", "priority": 1}],
                    "retry": {"attempts": 1}}],
    }
    with ProxyServer(cfg) as proxy:
        yield proxy, anthropic_sim


def _sent_to_anthropic(sim) -> dict:
    return sim.stats()["lastRequest"]["body"]


def test_sdk_parse_with_a_pydantic_model_through_a_fallback_to_anthropic(fallback):
    proxy, claude = fallback
    client = openai.OpenAI(base_url=proxy.v1, api_key="unused", max_retries=0)
    raw = client.chat.completions.with_raw_response.parse(
        model="gpt-4o", messages=[{"role": "user", "content": "solve 8x + 7 = -23"}], response_format=MathAnswer)
    assert raw.headers["x-detour-target"] == "claude/claude-sonnet"
    completion = raw.parse()
    msg = completion.choices[0].message
    assert isinstance(msg.parsed, MathAnswer)
    assert msg.parsed.steps and msg.parsed.confidence in ("low", "high")
    assert msg.tool_calls in (None, []) and completion.choices[0].finish_reason == "stop"
    sent = _sent_to_anthropic(claude)
    assert sent["tool_choice"] == {"type": "tool", "name": ANSWER_TOOL}
    schema = sent["tools"][-1]["input_schema"]
    assert schema["properties"].keys() == MathAnswer.model_json_schema()["properties"].keys()


def test_streamed_parse_through_a_fallback_to_anthropic(fallback):
    proxy, _ = fallback
    client = openai.OpenAI(base_url=proxy.v1, api_key="unused", max_retries=0)
    with client.chat.completions.stream(model="gpt-4o", messages=[{"role": "user", "content": "solve it"}],
                                        response_format=MathAnswer) as stream:
        final = stream.get_final_completion()
    assert isinstance(final.choices[0].message.parsed, MathAnswer)
    assert final.choices[0].finish_reason == "stop"


def test_json_object_through_a_fallback_to_anthropic(fallback):
    proxy, claude = fallback
    client = openai.OpenAI(base_url=proxy.v1, api_key="unused", max_retries=0)
    out = client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "give json"}],
                                         response_format={"type": "json_object"})
    assert isinstance(json.loads(out.choices[0].message.content), dict)
    assert _sent_to_anthropic(claude)["tool_choice"] == {"type": "tool", "name": ANSWER_TOOL}


def test_a_schema_anthropic_cannot_carry_skips_the_target_with_the_reason(fallback):
    proxy, claude = fallback
    before = claude.requests("/v1/messages")
    r = httpx.post(proxy.v1 + "/chat/completions", timeout=10, json={
        "model": "gpt-4o", "messages": [{"role": "user", "content": "x"}],
        "response_format": {"type": "json_schema", "json_schema": {"name": "list", "schema": {"type": "array"}}}})
    assert r.status_code == 503, r.text
    assert "root must have type object" in r.json()["error"]["message"]
    assert r.headers["x-detour-skipped"] == "claude/claude-sonnet"
    assert claude.requests("/v1/messages") == before, "the target that cannot carry the schema was not called"


@pytest.mark.parametrize("field, value", [("logprobs", True), ("top_logprobs", 2), ("modalities", ["text", "audio"]),
                                          ("audio", {"voice": "alloy", "format": "wav"}),
                                          ("web_search_options", {})])
def test_fields_anthropic_cannot_answer_make_it_ineligible(fallback, field, value):
    proxy, claude = fallback
    before = claude.requests("/v1/messages")
    r = httpx.post(proxy.v1 + "/chat/completions", timeout=10,
                   json={"model": "gpt-4o", "messages": [{"role": "user", "content": "x"}], field: value})
    assert r.status_code == 503 and f"`{field}` is not supported" in r.json()["error"]["message"], r.text
    assert claude.requests("/v1/messages") == before


def test_a_skipped_target_is_named_in_a_header_even_when_another_serves(primary, anthropic_sim):
    """Claude first, OpenAI second: `logprobs` skips Claude, OpenAI answers, and the client is told."""
    cfg = {
        "providers": [
            {"name": "claude", "type": "anthropic", "baseURL": anthropic_sim.url, "apiKey": {"value": "sk-ant-SECRET"}},
            {"name": "openai", "type": "openai", "baseURL": primary.v1, "apiKey": {"value": "sk-openai-SECRET"}},
        ],
        "routes": [{"name": "chat", "match": {"models": ["gpt-4o"]},
                    "targets": [{"provider": "claude", "model": "claude-sonnet"},
                                {"provider": "openai", "model": "gpt-4o", "priority": 1}]}],
    }
    with ProxyServer(cfg) as proxy:
        body = {"model": "gpt-4o", "messages": [{"role": "user", "content": "x"}], "logprobs": True}
        r = httpx.post(proxy.v1 + "/chat/completions", json=body, timeout=10)
        assert r.status_code == 200 and r.headers["x-detour-target"] == "openai/gpt-4o"
        assert r.headers["x-detour-skipped"] == "claude/claude-sonnet"
        with httpx.stream("POST", proxy.v1 + "/chat/completions", json={**body, "stream": True}, timeout=10) as s:
            assert s.status_code == 200 and s.headers["x-detour-skipped"] == "claude/claude-sonnet"
            s.read()
        plain = httpx.post(proxy.v1 + "/chat/completions", json={**body, "logprobs": False}, timeout=10)
        assert plain.headers["x-detour-target"] == "claude/claude-sonnet" and "x-detour-skipped" not in plain.headers
