"""The Anthropic flavour, as seen through the official ``anthropic`` SDK and raw HTTP."""

from __future__ import annotations

import anthropic
import orjson
import pytest

from detour_sim.text import DEFAULT_REPLY

TOOLS = [{"name": "lookup", "description": "look things up",
          "input_schema": {"type": "object", "properties": {"query": {"type": "string"}}}}]
USER = [{"role": "user", "content": "hello"}]


@pytest.fixture
async def client(ant):
    c = anthropic.AsyncAnthropic(base_url=ant.url, api_key="k", max_retries=0, timeout=10)
    yield c
    await c.close()


async def test_message_parses(client, ant):
    raw = await client.messages.with_raw_response.create(
        model="claude-test", max_tokens=100, messages=USER, extra_headers={"x-request-id": "r-1"})
    m = await raw.parse()
    assert isinstance(m, anthropic.types.Message)
    assert m.model == "claude-test" and m.role == "assistant" and m.type == "message"
    assert m.content[0].type == "text" and m.content[0].text == DEFAULT_REPLY
    assert m.stop_reason == "end_turn" and m.usage.output_tokens == 8 and m.usage.input_tokens >= 1
    assert raw.headers["x-request-id"] == "r-1" and raw.headers["request-id"] == "r-1"
    last = (await ant.stats())["lastRequest"]
    creds = [v for k, v in last["headers"].items() if k in ("x-api-key", "authorization")]
    assert creds and set(creds) == {"<redacted>"} and last["authSent"] is True
    assert last["headers"]["anthropic-version"]


async def test_stream_text(client):
    async with client.messages.stream(model="claude-test", max_tokens=100, messages=USER) as s:
        pieces = [t async for t in s.text_stream]
        final = await s.get_final_message()
    assert len(pieces) == 8 and "".join(pieces) == DEFAULT_REPLY
    assert final.content[0].text == DEFAULT_REPLY
    assert final.stop_reason == "end_turn" and final.usage.output_tokens == 8


async def test_stream_raw_event_sequence(ant, helpers):
    resp = await ant.post("/v1/messages", helpers.messages_body(stream=True))
    assert resp.headers["content-type"].startswith("text/event-stream")
    events = await helpers.read_events(resp)
    names = [ev.split(b"\n", 1)[0].removeprefix(b"event: ").decode() for ev in events]
    assert names == (["message_start", "content_block_start", "ping"] + ["content_block_delta"] * 8
                     + ["content_block_stop", "message_delta", "message_stop"])
    for ev in events:  # every event line is followed by a JSON data line of the same type
        name, data = ev.split(b"\n")
        assert orjson.loads(data.removeprefix(b"data: "))["type"] == name.removeprefix(b"event: ").decode()


async def test_tool_use_non_stream_then_tool_result(client):
    m = await client.messages.create(model="c", max_tokens=100, messages=USER, tools=TOOLS)
    assert m.stop_reason == "tool_use"
    block = m.content[0]
    assert block.type == "tool_use" and block.name == "lookup" and block.input == {"query": "hello"}
    follow = USER + [
        {"role": "assistant", "content": [b.model_dump() for b in m.content]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": block.id, "content": "42"}]},
    ]
    m2 = await client.messages.create(model="c", max_tokens=100, messages=follow, tools=TOOLS)
    assert m2.stop_reason == "end_turn" and m2.content[0].text == DEFAULT_REPLY


async def test_tool_use_stream(client):
    async with client.messages.stream(model="c", max_tokens=100, messages=USER, tools=TOOLS) as s:
        final = await s.get_final_message()
    assert final.stop_reason == "tool_use"
    assert final.content[0].type == "tool_use" and final.content[0].input == {"query": "hello"}


@pytest.mark.parametrize("prefix", ["The quick", "The quick bro", "The quick brown fox jumps over the lazy dog."])
async def test_prefill_continuation(client, prefix):
    msgs = USER + [{"role": "assistant", "content": prefix}]
    m = await client.messages.create(model="c", max_tokens=100, messages=msgs)
    assert prefix + m.content[0].text == DEFAULT_REPLY
    async with client.messages.stream(model="c", max_tokens=100, messages=msgs) as s:
        streamed = "".join([t async for t in s.text_stream])
    assert prefix + streamed == DEFAULT_REPLY


async def test_max_tokens_stop_reason(client):
    m = await client.messages.create(model="c", max_tokens=2, messages=USER)
    assert m.stop_reason == "max_tokens" and m.content[0].text == "The quick brown"


@pytest.mark.parametrize("drop", ["model", "max_tokens", "messages"])
async def test_required_fields(ant, helpers, drop):
    body = helpers.messages_body()
    del body[drop]
    resp = await ant.post("/v1/messages", body)
    assert resp.status == 400
    err = await resp.json()
    assert err["type"] == "error" and err["error"]["type"] == "invalid_request_error"
    assert drop in err["error"]["message"]


async def test_anthropic_version_required(ant, helpers):
    resp = await ant.http.post(ant.url + "/v1/messages", data=orjson.dumps(helpers.messages_body()))
    assert resp.status == 400
    assert (await resp.json())["error"]["message"] == "anthropic-version: header is required"


async def test_overloaded_529_maps_to_sdk_error(client, ant):
    await ant.faults({"status": 529, "count": 1})
    with pytest.raises(anthropic.OverloadedError) as ei:
        await client.messages.create(model="c", max_tokens=10, messages=USER)
    assert ei.value.body["error"]["type"] == "overloaded_error"
    assert ei.value.response.headers["request-id"]
    await client.messages.create(model="c", max_tokens=10, messages=USER)  # count exhausted


async def test_inband_error_in_stream(client, ant):
    await ant.faults({"inbandError": {"afterChunks": 3, "type": "overloaded_error"}})
    got = []
    with pytest.raises(anthropic.APIStatusError) as ei:
        async with client.messages.stream(model="c", max_tokens=100, messages=USER) as s:
            async for t in s.text_stream:
                got.append(t)
    assert "".join(got) == "The quick brown fox"
    assert "overloaded_error" in str(ei.value.body)
    assert (await ant.stats())["streamsInbandError"] == 1


async def test_models(client):
    page = await client.models.list()
    assert [m.id for m in page.data] == ["claude-sonnet-4-5", "claude-haiku-4-5"]
