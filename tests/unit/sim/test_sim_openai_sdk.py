"""The OpenAI flavour, as seen through the official ``openai`` SDK and raw HTTP."""

from __future__ import annotations

import base64
import struct

import openai
import pytest
from openai.types import CreateEmbeddingResponse
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from detour_sim.text import DEFAULT_REPLY

TOOLS = [{"type": "function", "function": {"name": "search", "description": "web search",
                                            "parameters": {"type": "object", "properties": {}}}}]


@pytest.fixture
async def client(oai):
    c = openai.AsyncOpenAI(base_url=oai.url + "/v1", api_key="x", max_retries=0, timeout=10)
    yield c
    await c.close()


async def test_chat_completion_parses(client, oai):
    r = await client.chat.completions.create(
        model="gpt-test", messages=[{"role": "user", "content": "hi"}],
        extra_headers={"x-request-id": "rid-123"},
    )
    assert isinstance(r, ChatCompletion)
    assert r.model == "gpt-test" and r.id.startswith("chatcmpl-")
    assert r.choices[0].message.content == DEFAULT_REPLY
    assert r.choices[0].message.role == "assistant"
    assert r.choices[0].finish_reason == "stop"
    assert r.usage.completion_tokens == 8
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
    raw = await client.chat.completions.with_raw_response.create(
        model="m", messages=[{"role": "user", "content": "hi"}], extra_headers={"x-request-id": "rid-456"})
    assert raw.headers["x-request-id"] == "rid-456"
    assert raw.headers["x-detour-sim"] == "oai"
    stats = await oai.stats()
    assert stats["requestIds"] == ["rid-123", "rid-456"]
    last = stats["lastRequest"]
    assert last["path"] == "/v1/chat/completions"
    assert last["headers"]["authorization"] == "<redacted>" and last["authSent"] is True
    assert last["headers"]["x-request-id"] == "rid-456"
    assert last["body"]["model"] == "m"


async def test_stream_chunks_and_usage(client):
    stream = await client.chat.completions.create(
        model="gpt-test", messages=[{"role": "user", "content": "hi"}], stream=True,
        stream_options={"include_usage": True},
    )
    chunks = [c async for c in stream]
    assert all(isinstance(c, ChatCompletionChunk) for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    content = [c.choices[0].delta.content for c in chunks[1:] if c.choices and c.choices[0].delta.content]
    assert len(content) == 8 and "".join(content) == DEFAULT_REPLY
    finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finish == ["stop"]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 8
    assert len({c.id for c in chunks}) == 1


async def test_stream_without_usage_has_no_usage_chunk(client):
    stream = await client.chat.completions.create(
        model="gpt-test", messages=[{"role": "user", "content": "hi"}], stream=True)
    chunks = [c async for c in stream]
    assert all(c.choices for c in chunks) and all(c.usage is None for c in chunks)


async def test_tool_call_non_stream_and_tool_result(client):
    msgs = [{"role": "user", "content": "weather in Paris"}]
    r = await client.chat.completions.create(model="m", messages=msgs, tools=TOOLS)
    assert r.choices[0].finish_reason == "tool_calls"
    call = r.choices[0].message.tool_calls[0]
    assert call.function.name == "search" and call.type == "function"
    assert call.function.arguments == '{"query":"weather in Paris"}'
    msgs += [r.choices[0].message.model_dump(exclude_none=True),
             {"role": "tool", "tool_call_id": call.id, "content": "sunny"}]
    r2 = await client.chat.completions.create(model="m", messages=msgs, tools=TOOLS)
    assert r2.choices[0].finish_reason == "stop"
    assert r2.choices[0].message.content == DEFAULT_REPLY and not r2.choices[0].message.tool_calls


async def test_tool_call_stream(client):
    stream = await client.chat.completions.create(
        model="m", messages=[{"role": "user", "content": "weather in Paris"}], tools=TOOLS, stream=True)
    chunks = [c async for c in stream]
    first = chunks[0].choices[0].delta.tool_calls[0]
    assert first.id and first.function.name == "search"
    args = "".join(c.choices[0].delta.tool_calls[0].function.arguments
                   for c in chunks if c.choices and c.choices[0].delta.tool_calls)
    assert args == '{"query":"weather in Paris"}'
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


@pytest.mark.parametrize("prefix", ["The quick", "The quick brown", "The quick bro", "", "Not canonical"])
@pytest.mark.parametrize("stream", [False, True])
async def test_continuation_returns_remainder(client, prefix, stream):
    msgs = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": prefix}]
    if stream:
        s = await client.chat.completions.create(model="m", messages=msgs, stream=True)
        text = "".join([c.choices[0].delta.content or "" async for c in s if c.choices])
    else:
        r = await client.chat.completions.create(model="m", messages=msgs)
        text = r.choices[0].message.content
    if DEFAULT_REPLY.startswith(prefix):
        assert prefix + text == DEFAULT_REPLY
    else:
        assert text == DEFAULT_REPLY


async def test_continuation_flags_and_full_prefix(client):
    msgs = [{"role": "user", "content": "hi"},
            {"role": "assistant", "content": [{"type": "text", "text": "The quick brown fox"}], "prefix": True}]
    r = await client.chat.completions.create(model="m", messages=msgs, extra_body={"continue_final_message": True})
    assert r.choices[0].message.content == " jumps over the lazy dog."
    msgs[-1]["content"] = DEFAULT_REPLY
    r = await client.chat.completions.create(model="m", messages=msgs)
    assert r.choices[0].message.content == "" and r.usage.completion_tokens == 0


async def test_max_tokens_gives_length(client):
    r = await client.chat.completions.create(model="m", messages=[{"role": "user", "content": "x"}], max_tokens=3)
    assert r.choices[0].finish_reason == "length" and r.choices[0].message.content == "The quick brown fox"


async def test_embeddings_float_and_base64(client):
    r = await client.embeddings.create(model="emb", input=["a", "b", "a"], encoding_format="float")
    assert isinstance(r, CreateEmbeddingResponse) and len(r.data) == 3
    a, b, a2 = (d.embedding for d in r.data)
    assert len(a) == 64 and a == a2 and a != b
    assert abs(sum(v * v for v in a) - 1.0) < 1e-9
    assert r.usage.prompt_tokens == 3
    r64 = await client.embeddings.create(model="emb", input="a")  # SDK default: base64
    assert r64.data[0].embedding == pytest.approx(a, abs=1e-6)
    r4 = await client.embeddings.create(model="emb", input="a", dimensions=4, encoding_format="base64")
    vec = struct.unpack("<4f", base64.b64decode(r4.data[0].embedding))  # explicit base64 stays raw
    assert abs(sum(v * v for v in vec) - 1.0) < 1e-5


async def test_embeddings_raw_base64_is_float32(oai):
    resp = await oai.post("/v1/embeddings", {"model": "e", "input": [1, 2, 3], "encoding_format": "base64"})
    body = await resp.json()
    vec = struct.unpack("<64f", base64.b64decode(body["data"][0]["embedding"]))
    assert len(vec) == 64


async def test_models(client):
    models = [m.id async for m in client.models.list()]
    assert "gpt-4o-mini" in models


async def test_validation_errors(client, oai):
    with pytest.raises(openai.BadRequestError) as ei:
        await client.chat.completions.create(model="m", messages=[])
    assert ei.value.body["type"] == "invalid_request_error"
    resp = await oai.http.post(oai.url + "/v1/chat/completions", data=b"{not json")
    assert resp.status == 400
    resp = await oai.http.get(oai.url + "/v1/unknown")
    assert resp.status == 404 and "error" in await resp.json()
