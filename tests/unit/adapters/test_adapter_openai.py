"""OpenAI / OpenAI-compatible / Azure: pass-through requests, continuation modes, stream reading."""

from __future__ import annotations

import copy

import orjson
import pytest
from openai.types.chat import ChatCompletionChunk

from detour_proxy.adapters import (
    AnthropicAdapter, AzureOpenAIAdapter, ContinuationUnsupported, OpenAIAdapter, adapter_for,
)

BODY = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "stream": True,
        "stream_options": {"include_usage": True}}


def test_adapter_for_types(provider):
    assert type(adapter_for(provider("openai"))) is OpenAIAdapter
    assert type(adapter_for(provider("openai-compatible"))) is OpenAIAdapter
    assert type(adapter_for(provider("azure-openai"))) is AzureOpenAIAdapter
    assert type(adapter_for(provider("anthropic"))) is AnthropicAdapter


def test_raw_bytes_forwarded_when_model_and_stream_match(provider):
    a = adapter_for(provider("openai", headers={"OpenAI-Organization": "org-1"}))
    raw = orjson.dumps(BODY) + b"  "  # distinguishable from a re-serialization
    req = a.build_chat(BODY, "gpt-4o-mini", True, "sk-test", raw=raw)
    assert req.body is raw
    assert req.url == "https://api.openai.com/v1/chat/completions" and req.method == "POST"
    assert req.headers == {"Content-Type": "application/json", "OpenAI-Organization": "org-1",
                           "Authorization": "Bearer sk-test"}
    assert "sk-test" not in repr(req)


def test_model_replaced_without_mutating_body(provider):
    a = adapter_for(provider("openai-compatible", baseURL="http://vllm:8000/v1/"))
    before = copy.deepcopy(BODY)
    req = a.build_chat(BODY, "llama-3", True, None, raw=orjson.dumps(BODY))
    assert BODY == before
    assert orjson.loads(req.body) == {**BODY, "model": "llama-3"}
    assert req.url == "http://vllm:8000/v1/chat/completions" and "Authorization" not in req.headers


def test_non_stream_drops_stream_options(provider):
    a = adapter_for(provider("openai"))
    sent = orjson.loads(a.build_chat(BODY, "gpt-4o-mini", False, "k", raw=orjson.dumps(BODY)).body)
    assert "stream" not in sent and "stream_options" not in sent and sent["messages"] == BODY["messages"]


def test_embeddings(provider):
    a = adapter_for(provider("openai"))
    body = {"model": "emb", "input": ["a", "b"]}
    raw = orjson.dumps(body)
    assert a.supports("embeddings")
    assert a.build_embeddings(body, "emb", "k", raw=raw).body is raw
    req = a.build_embeddings(body, "text-embedding-3-small", "k")
    assert req.url == "https://api.openai.com/v1/embeddings"
    assert orjson.loads(req.body) == {"model": "text-embedding-3-small", "input": ["a", "b"]}


@pytest.mark.parametrize("kind,body", [
    ("embeddings", {"model": "emb", "input": ["a", "b"]}),
    ("chat", {"model": "emb", "messages": [{"role": "user", "content": "hi"}]}),
])
def test_executor_forwards_client_bytes(provider, kind, body):
    """The executor hands the client's bytes to the adapter, so a pass-through target sends
    them without re-serializing (the hot path), for embeddings as for chat."""
    from types import SimpleNamespace

    from detour_proxy.engine import OPENAI
    from detour_proxy.engine._attempts import prepare

    prov = SimpleNamespace(adapter=adapter_for(provider("openai")), api_key=lambda: "k")
    tr = SimpleNamespace(provider=prov, target=SimpleNamespace(model="emb"), index=0)
    raw = orjson.dumps(body) + b" "  # distinguishable from a re-serialization
    ctx = SimpleNamespace(kind=kind, body=body, raw=raw, request_id="req-1", requests={}, codec=OPENAI)
    req = prepare(ctx, tr, stream=False)
    assert req.body is raw and req.headers["x-request-id"] == "req-1"


@pytest.mark.parametrize("version,expected", [(None, "2024-10-21"), ("2025-01-01-preview", "2025-01-01-preview")])
def test_azure_url_and_header(provider, version, expected):
    a = adapter_for(provider("azure-openai", baseURL="https://res.openai.azure.com/", apiVersion=version))
    req = a.build_chat(BODY, "my deploy", True, "az-key")
    assert req.url == f"https://res.openai.azure.com/openai/deployments/my%20deploy/chat/completions?api-version={expected}"
    assert req.headers["api-key"] == "az-key" and "Authorization" not in req.headers
    emb = a.build_embeddings({"input": "x"}, "emb-dep", "az-key")
    assert emb.url == f"https://res.openai.azure.com/openai/deployments/emb-dep/embeddings?api-version={expected}"
    assert a.supports("embeddings") and not a.can_continue


def test_passthrough_response(provider):
    raw = b'{"id":"x"}'
    assert adapter_for(provider("openai")).parse_response(200, {}, raw) is raw


# --- continuation ----------------------------------------------------------------------------

SRC = {"model": "m", "messages": [{"role": "user", "content": "write"}], "n": 1, "stream": False}


def cont(provider, mode, src=SRC):
    a = adapter_for(provider("openai-compatible", continuation=mode))
    return a, orjson.loads(a.build_continuation(src, "Once upon", "m2", "k").body)


def test_continuation_prefill(provider):
    a, body = cont(provider, "prefill")
    assert a.can_continue and body["stream"] is True and body["model"] == "m2" and "n" not in body
    assert body["messages"][-1] == {"role": "assistant", "content": "Once upon"}
    assert "continue_final_message" not in body


def test_continuation_vllm(provider):
    _, body = cont(provider, "continue-final-message")
    assert body["messages"][-1] == {"role": "assistant", "content": "Once upon"}
    assert body["continue_final_message"] is True and body["add_generation_prompt"] is False


def test_continuation_prefix(provider):
    _, body = cont(provider, "prefix")
    assert body["messages"][-1] == {"role": "assistant", "content": "Once upon", "prefix": True}


def test_continuation_extends_client_prefill(provider):
    src = {**SRC, "messages": SRC["messages"] + [{"role": "assistant", "content": "Title: "}]}
    before = copy.deepcopy(src)
    _, body = cont(provider, "prefill", src)
    assert body["messages"][1:] == [{"role": "assistant", "content": "Title: Once upon"}]
    assert src == before


def test_continuation_none(provider):
    a = adapter_for(provider("openai"))
    assert a.can_continue is False
    with pytest.raises(ContinuationUnsupported):
        a.build_continuation(SRC, "x", "m", None)


# --- stream decoder --------------------------------------------------------------------------

def chunk(delta=None, finish=None, **extra):
    choice = {"index": 0, "delta": delta or {}, "finish_reason": finish}
    return {"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "g", "choices": [choice], **extra}


def data(doc) -> bytes:
    return b"data: " + (doc if isinstance(doc, bytes) else orjson.dumps(doc)) + b"\n\n"


@pytest.fixture
def dec(provider):
    return lambda: adapter_for(provider("openai")).stream_decoder()


@pytest.mark.parametrize("delta,bearing,text", [
    ({"role": "assistant", "content": ""}, False, ""),
    ({"content": "Hi"}, True, "Hi"),
    ({"refusal": "no"}, True, ""),
    ({"reasoning_content": "think"}, True, ""),
    ({"tool_calls": [{"index": 0, "id": "c", "type": "function", "function": {"name": "f", "arguments": ""}}]}, True, ""),
    ({}, False, ""),
])
def test_content_bearing(dec, delta, bearing, text):
    (ev,) = dec().feed(data(chunk(delta)))
    assert (ev.kind, ev.content_bearing, ev.text) == ("chunk", bearing, text)


def test_stream_passthrough_and_done(dec):
    docs = [chunk({"role": "assistant", "content": ""}), chunk({"content": "Hel"}), chunk({"content": "lo"}),
            chunk(finish="stop"), {"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "g",
                                    "choices": [], "usage": {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3}}]
    wire = b": keep-alive\r\n\r\n" + b"".join(data(d).replace(b"\n", b"\r\n") for d in docs) + b"data: [DONE]\r\n\r\n"
    d = dec()
    events = []
    for i in range(0, len(wire), 5):
        events += d.feed(wire[i:i + 5])
    events += d.close()
    assert [e.kind for e in events] == ["chunk"] * 5 + ["done"]
    assert [e.payload for e in events[:5]] == [orjson.dumps(x) for x in docs]  # bytes kept as sent
    for e in events[:5]:
        ChatCompletionChunk.model_validate_json(e.payload)
    assert "".join(e.text for e in events) == "Hello"


def test_stream_error_line(dec):
    d = dec()
    events = d.feed(data(chunk({"content": "a"})) + data({"error": {"message": "boom", "type": "server_error"}})
                    + data(chunk({"content": "never"})))
    assert [e.kind for e in events] == ["chunk", "error"]
    err = events[1].error
    assert err.status == 500 and err.retryable and "boom" in err.message and err.type == "server_error"
    assert d.close() == []


def test_stream_error_without_type(dec):
    (ev,) = dec().feed(data({"error": {"message": "bad"}}))
    assert ev.kind == "error" and ev.error.type == "stream_error" and ev.error.status == 502


def test_undecodable_chunk(dec):
    (ev,) = dec().feed(data(b"{not json"))
    assert ev.kind == "error" and ev.error.type == "stream_error" and ev.error.retryable


def test_truncated(dec):
    d = dec()
    d.feed(data(chunk({"content": "a"})))
    (ev,) = d.close()
    assert ev.kind == "error" and ev.error.code == "truncated"


def test_finish_reason_without_done_counts_as_done(dec):
    d = dec()
    d.feed(data(chunk({"content": "a"})) + data(chunk(finish="stop")))
    assert [e.kind for e in d.close()] == ["done"]


def test_done_without_trailing_blank_line(dec):
    d = dec()
    assert d.feed(b"data: [DONE]") == []
    assert [e.kind for e in d.close()] == ["done"]
