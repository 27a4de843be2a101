"""The active probe's request on the wire of every provider type: a completion limit each API (and
its reasoning models) accepts, in that API's own field, never a 1-token limit; and how an answer
is judged (engine.probe)."""

from __future__ import annotations

from types import SimpleNamespace

import orjson
import pytest

from detour_proxy.adapters import adapter_for
from detour_proxy.adapters.bedrock import AwsKey
from detour_proxy.config import ActiveProbes, ConfigError, parse_config
from detour_proxy.engine.probe import judge, probe_body
from detour_proxy.policy import OutcomeKind

PROVIDERS = [
    ({"type": "openai", "baseURL": "https://api.openai.com/v1"}, "o4-mini"),
    ({"type": "azure-openai", "baseURL": "https://r.openai.azure.com", "apiVersion": "2024-10-21"}, "o3-mini"),
    ({"type": "openai-compatible", "baseURL": "http://vllm:8000/v1"}, "deepseek-r1"),
    ({"type": "anthropic", "baseURL": "https://api.anthropic.com"}, "claude-sonnet-4-5"),
    ({"type": "gemini", "baseURL": "https://generativelanguage.googleapis.com"}, "gemini-2.5-pro"),
    ({"type": "vertex", "baseURL": "https://us-east5-aiplatform.googleapis.com", "project": "p",
      "location": "us-east5"}, "claude-sonnet-4-5"),
    ({"type": "vertex", "baseURL": "https://us-east5-aiplatform.googleapis.com", "project": "p",
      "location": "us-east5"}, "gemini-2.5-flash"),
    ({"type": "bedrock", "region": "us-east-1"}, "us.anthropic.claude-sonnet-4-5-v1:0"),
]


def provider(spec: dict):
    cfg = parse_config({"providers": [{"name": "p", **spec}], "routes": [{"name": "r", "targets": [{"provider": "p", "model": "m"}]}]})
    return cfg.providers[0]


def limit(body: dict) -> tuple[str, object]:
    """(field, value) of the completion limit in a provider request body, wherever the API puts it."""
    for name in ("max_completion_tokens", "max_tokens"):
        if name in body:
            return name, body[name]
    if "maxOutputTokens" in body.get("generationConfig", {}):
        return "maxOutputTokens", body["generationConfig"]["maxOutputTokens"]
    if "maxTokens" in body.get("inferenceConfig", {}):
        return "maxTokens", body["inferenceConfig"]["maxTokens"]
    return "", None


EXPECTED = {"openai": "max_completion_tokens", "azure-openai": "max_completion_tokens",
            "openai-compatible": "max_completion_tokens", "anthropic": "max_tokens", "gemini": "maxOutputTokens",
            "bedrock": "maxTokens"}


@pytest.mark.parametrize(("spec", "model"), PROVIDERS, ids=[f"{s['type']}-{m}" for s, m in PROVIDERS])
def test_each_provider_type_gets_the_limit_in_its_own_field(spec, model):
    p = provider(spec)
    key = AwsKey.of("AKIAEXAMPLE", "secret") if spec["type"] == "bedrock" else "k"
    req = adapter_for(p).build_chat(probe_body(ActiveProbes(), model), model, False, key)
    body = orjson.loads(req.body)
    field, value = limit(body)
    expected = EXPECTED.get(spec["type"]) or ("max_tokens" if model.startswith("claude") else "maxOutputTokens")
    assert (field, value) == (expected, 16)
    if field == "max_completion_tokens":   # OpenAI's reasoning models refuse max_tokens
        assert "max_tokens" not in body
    assert b"Reply with OK." in req.body and not body.get("stream")


def test_a_limit_below_8_is_refused_in_the_config():
    spec = {"name": "p", "baseURL": "https://api.openai.com/v1", "activeProbes": {"enabled": True, "maxTokens": 1}}
    with pytest.raises(ConfigError, match=r"providers\[0\]\.activeProbes\.maxTokens: .* greater than or equal to 8"):
        parse_config({"providers": [spec], "routes": [{"name": "r", "targets": [{"provider": "p", "model": "m"}]}]})
    assert ActiveProbes().enabled is False


def target(spec: dict):
    p = provider(spec)
    return SimpleNamespace(provider=SimpleNamespace(adapter=adapter_for(p), api_key=lambda: "sk-probe-SECRET"),
                           label="p/m")


def test_any_wellformed_200_is_up_and_errors_are_the_providers():
    tr = target({"type": "openai", "baseURL": "https://api.openai.com/v1"})
    cut = {"id": "c", "object": "chat.completion", "created": 1, "model": "o4-mini",
           "choices": [{"index": 0, "message": {"role": "assistant", "content": ""}, "finish_reason": "length"}]}
    assert judge(tr, 200, {}, orjson.dumps(cut), 0.0, 0.4).kind is OutcomeKind.SUCCESS   # reasoning used the limit
    down = judge(tr, 503, {"retry-after": "7"}, b'{"error": {"message": "overloaded", "type": "server_error"}}', 0.0, 0.1)
    assert (down.kind, down.status, down.retry_after, down.counts_against_target) == (OutcomeKind.HTTP_ERROR, 503, 7.0, True)
    refused = judge(tr, 400, {}, b'{"error": {"message": "bad", "type": "invalid_request_error"}}', 0.0, 0.1)
    assert not refused.counts_against_target          # the probe's own fault: judged like a client's 400
    garbage = judge(tr, 200, {}, b"<html>", 0.0, 0.1)
    assert garbage.kind is OutcomeKind.STREAM_ERROR and garbage.error_class == "malformed"
