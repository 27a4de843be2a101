"""The OpenAI flavour's Responses API, as the official `openai` SDK sees it (typed objects and
events validated against the SDK's models), with the stream faults applied between deltas."""

from __future__ import annotations

import json

import openai
import pytest
from openai.types.responses import Response, ResponseStreamEvent
from pydantic import TypeAdapter

from detour_sim.text import DEFAULT_REPLY

TOOL = {"type": "function", "name": "search", "parameters": {"type": "object", "properties": {}}}
EVENTS = TypeAdapter(ResponseStreamEvent)


@pytest.fixture
async def client(oai):
    c = openai.AsyncOpenAI(base_url=oai.url + "/v1", api_key="x", max_retries=0, timeout=10)
    yield c
    await c.close()


async def test_response_object_validates(client):
    raw = await client.responses.with_raw_response.create(model="gpt-test", input="hi")
    resp = Response.model_validate(json.loads(raw.content))
    assert resp.output_text == DEFAULT_REPLY and resp.status == "completed" and resp.model == "gpt-test"
    assert resp.usage.total_tokens == resp.usage.input_tokens + resp.usage.output_tokens
    short = await client.responses.create(model="m", input="hi", max_output_tokens=2)
    assert short.status == "incomplete" and short.incomplete_details.reason == "max_output_tokens"


async def test_stream_events_validate_and_tool_arguments_arrive_in_pieces(client, oai):
    async with client.responses.stream(model="m", input="hi") as stream:
        events = [EVENTS.validate_python(e.model_dump(warnings=False)) async for e in stream]
        final = await stream.get_final_response()
    assert events[0].type == "response.created" and events[-1].type == "response.completed"
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert final.output_text == DEFAULT_REPLY
    async with client.responses.stream(model="m", input="find cats", tools=[TOOL]) as stream:
        deltas = [e.delta async for e in stream if e.type == "response.function_call_arguments.delta"]
        final = await stream.get_final_response()
    assert len(deltas) > 1 and json.loads("".join(deltas)) == {"query": "find cats"}
    assert final.output[0].type == "function_call" and final.output[0].name == "search"
    after = await client.responses.create(model="m", tools=[TOOL], input=[
        {"role": "user", "content": "find cats"},
        {"type": "function_call", "call_id": "c1", "name": "search", "arguments": "{}"},
        {"type": "function_call_output", "call_id": "c1", "output": "3 cats"}])
    assert after.output_text == DEFAULT_REPLY
    assert (await oai.stats())["requests"]["/v1/responses"] == 3


async def test_faults_apply_to_responses(client, oai):
    await oai.faults({"status": 429, "retryAfter": "1", "count": 1})
    with pytest.raises(openai.RateLimitError):
        await client.responses.create(model="m", input="hi")
    await oai.faults({"inbandError": {"afterChunks": 2}})
    async with client.responses.stream(model="m", input="hi") as stream:
        kinds = [e.type async for e in stream]
        with pytest.raises(RuntimeError):
            await stream.get_final_response()
    assert kinds[-1] == "response.failed" and "response.completed" not in kinds
    assert kinds.count("response.output_text.delta") == 2
    await oai.faults({"cutAfterChunks": 3})
    async with client.responses.stream(model="m", input="hi") as stream:
        kinds = [e.type async for e in stream]
    assert kinds.count("response.output_text.delta") == 3 and "response.completed" not in kinds
    assert (await oai.stats())["streamsCut"] == 1
