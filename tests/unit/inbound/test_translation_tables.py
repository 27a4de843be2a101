"""Every row of docs/inbound.md's translation tables, checked (the case id is the row id),
with the official SDKs' types as oracles for what Detour sends back."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Callable

import orjson
import pytest
from anthropic.types import Message, RawMessageStreamEvent
from openai.types.responses import Response, ResponseStreamEvent
from pydantic import TypeAdapter

from detour_proxy.adapters.anthropic import AnthropicAdapter
from detour_proxy.adapters.anthropic_request import to_anthropic
from detour_proxy.errors import ClientError
from detour_proxy.inbound import MessagesCodec, ResponsesCodec
from detour_proxy.inbound.messages import anthropic_status, error_type

DOC = Path(__file__).parents[3] / "docs" / "inbound.md"
IMG = "data:image/png;base64,iVBORw0KGgo="


_codecs: list[Any] = []


def responses(**body: Any) -> dict[str, Any]:
    codec = ResponsesCodec()
    _codecs.append(codec)
    return codec.parse(orjson.dumps({"model": "m", **body}), "responses")


def messages(**body: Any) -> dict[str, Any]:
    body = {"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}], **body}
    codec = MessagesCodec()
    _codecs.append(codec)
    return codec.parse(orjson.dumps(body), "messages")


def refused(fn: Callable[..., Any], **body: Any) -> str:
    """Not translatable: the request is accepted, but only a target speaking the client's
    format natively may take it (`untranslatable` makes every other target ineligible)."""
    fn(**body)
    why = _codecs[-1].untranslatable
    assert why, "expected the request to be marked untranslatable"
    return str(why)


def completion(content: str | None = "Hello", tool_calls: list | None = None, finish: str = "stop") -> bytes:
    msg: dict[str, Any] = {"role": "assistant", "content": content}
    if tool_calls:
        msg["tool_calls"] = tool_calls
    return orjson.dumps({"id": "c1", "object": "chat.completion", "created": 1, "model": "m",
                         "choices": [{"index": 0, "message": msg, "finish_reason": finish}],
                         "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}})


CALL = {"id": "call_1", "type": "function", "function": {"name": "search", "arguments": '{"q":"x"}'}}


def chunk(delta: dict[str, Any] | None = None, finish: str | None = None, usage: bool = False) -> bytes:
    doc: dict[str, Any] = {"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "m",
                           "choices": [] if usage else [{"index": 0, "delta": delta or {}, "finish_reason": finish}]}
    if usage:
        doc["usage"] = {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}
    return orjson.dumps(doc)


STREAM = [chunk({"role": "assistant", "content": ""}), chunk({"content": "Hel"}), chunk({"content": "lo"}),
          chunk({"tool_calls": [{"index": 0, "id": "call_1", "type": "function",
                                 "function": {"name": "search", "arguments": ""}}]}),
          chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"q":'}}]}),
          chunk({"tool_calls": [{"index": 0, "function": {"arguments": '"x"}'}}]}),
          chunk(finish="tool_calls"), chunk(usage=True)]


def sse(raw: bytes) -> list[dict[str, Any]]:
    events = []
    for block in raw.decode().split("\n\n"):
        lines = dict(line.split(": ", 1) for line in block.splitlines() if ": " in line)
        if "data" in lines:
            doc = orjson.loads(lines["data"])
            assert lines["event"] == doc["type"]
            events.append(doc)
    return events


RESP_EVENTS = TypeAdapter(ResponseStreamEvent)
MSG_EVENTS = TypeAdapter(RawMessageStreamEvent)


def responses_stream(codec: ResponsesCodec, payloads: list[bytes], end: bytes | None = None) -> list[Any]:
    raw = codec.chunks(payloads[:3]) + codec.chunks(payloads[3:]) + (codec.done() if end is None else end)
    return [RESP_EVENTS.validate_python(e) for e in sse(raw)]


def messages_stream(codec: MessagesCodec, payloads: list[bytes], end: bytes | None = None) -> list[Any]:
    raw = codec.chunks(payloads) + (codec.done() if end is None else end)
    return sse(raw)


def answer_response(body: bytes, **request: Any) -> Response:
    codec = ResponsesCodec()
    codec.parse(orjson.dumps({"model": "m", "input": "x", **request}), "responses")
    return Response.model_validate(orjson.loads(codec.answer(body)))


def answer_message(body: bytes) -> Message:
    codec = MessagesCodec()
    codec.parse(orjson.dumps({"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "x"}]}),
                "messages")
    return Message.model_validate(orjson.loads(codec.answer(body)))


# -- each row: a function that fails if the row is not true ----------------------------------

def r_instructions():
    assert responses(instructions="Be brief.", input="hi")["messages"][0] == {"role": "system", "content": "Be brief."}


def r_input_string():
    assert responses(input="hi")["messages"] == [{"role": "user", "content": "hi"}]


def r_input_message():
    out = responses(input=[{"role": "developer", "content": "d"},
                           {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "q"}]},
                           {"role": "assistant", "content": [{"type": "output_text", "text": "a"},
                                                             {"type": "output_text", "text": "b"}]}])
    assert out["messages"] == [{"role": "developer", "content": "d"},
                               {"role": "user", "content": [{"type": "text", "text": "q"}]},
                               {"role": "assistant", "content": "ab"}]


def r_input_image():
    out = responses(input=[{"role": "user", "content": [{"type": "input_image", "image_url": IMG, "detail": "low"}]}])
    assert out["messages"][0]["content"] == [{"type": "image_url", "image_url": {"url": IMG, "detail": "low"}}]
    refused(responses, input=[{"role": "user", "content": [{"type": "input_image", "file_id": "file_1"}]}])


def r_function_call():
    out = responses(input=[{"role": "user", "content": "q"},
                           {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{}"},
                           {"type": "function_call", "call_id": "c2", "name": "g", "arguments": '{"a":1}'}])
    assert out["messages"][1] == {"role": "assistant", "content": None, "tool_calls": [
        {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}},
        {"id": "c2", "type": "function", "function": {"name": "g", "arguments": '{"a":1}'}}]}


def r_function_output():
    out = responses(input=[{"role": "user", "content": "q"},
                           {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{}"},
                           {"type": "function_call_output", "call_id": "c1", "output": "42"}])
    assert out["messages"][-1] == {"role": "tool", "tool_call_id": "c1", "content": "42"}


def r_reasoning_item():
    out = responses(input=[{"role": "user", "content": "q"}, {"type": "reasoning", "id": "rs_1", "summary": []}])
    assert out["messages"] == [{"role": "user", "content": "q"}]


def r_tools():
    tool = {"type": "function", "name": "f", "description": "d", "parameters": {"type": "object"}, "strict": True}
    assert responses(input="q", tools=[tool])["tools"] == [{"type": "function", "function": {
        "name": "f", "description": "d", "parameters": {"type": "object"}, "strict": True}}]


def r_tool_choice():
    assert responses(input="q", tool_choice="required")["tool_choice"] == "required"
    assert responses(input="q", tool_choice={"type": "function", "name": "f"})["tool_choice"] == {
        "type": "function", "function": {"name": "f"}}


def r_json_schema():
    fmt = {"type": "json_schema", "name": "out", "schema": {"type": "object"}, "strict": True}
    chat = responses(input="q", text={"format": fmt})
    assert chat["response_format"] == {
        "type": "json_schema", "json_schema": {"name": "out", "schema": {"type": "object"}, "strict": True}}
    anthropic_request, _ = to_anthropic(chat, "claude", False, 100)   # the Anthropic adapter: a forced tool
    assert anthropic_request["tools"][0]["input_schema"] == {"type": "object"}
    assert anthropic_request["tool_choice"] == {"type": "tool", "name": anthropic_request["tools"][0]["name"]}


def r_max_output():
    assert responses(input="q", max_output_tokens=7)["max_completion_tokens"] == 7


def r_sampling():
    out = responses(input="q", temperature=0.5, top_p=0.9, parallel_tool_calls=False, user="u", service_tier="flex")
    assert (out["temperature"], out["top_p"], out["parallel_tool_calls"], out["user"], out["service_tier"]) == (
        0.5, 0.9, False, "u", "flex")


def r_reasoning():
    assert responses(input="q", reasoning={"effort": "low"})["reasoning_effort"] == "low"


def r_metadata():
    assert responses(input="q", metadata={"team": "a"})["metadata"] == {"team": "a"}


def r_stream():
    out = responses(input="q", stream=True)
    assert out["stream"] is True and out["stream_options"] == {"include_usage": True}


def r_dropped():
    out = responses(input="q", include=["x"], truncation="auto", stream_options={"include_obfuscation": False},
                    text={"verbosity": "low"})
    assert set(out) == {"model", "messages"}


def r_stateful():
    for extra in ({"previous_response_id": "resp_1"}, {"conversation": "conv_1"}, {"prompt": {"id": "p"}},
                  {"store": True}, {"background": True}):
        assert "cannot be translated" in refused(responses, input="q", **extra)
    assert responses(input="q", store=False)["messages"]


def r_server_tools():
    for tool in ("web_search", "file_search", "code_interpreter", "computer_use_preview", "mcp", "image_generation"):
        assert "server-side tool" in refused(responses, input="q", tools=[{"type": tool}])
    refused(responses, input=[{"type": "item_reference", "id": "msg_1"}])


def ra_text():
    resp = answer_response(completion("Hello"))
    assert resp.output_text == "Hello" and resp.output[0].type == "message"


def ra_tool_calls():
    resp = answer_response(completion(None, [CALL], "tool_calls"))
    call = resp.output[0]
    assert (call.type, call.call_id, call.name, call.arguments) == ("function_call", "call_1", "search", '{"q":"x"}')


def ra_finish():
    assert answer_response(completion("a")).status == "completed"
    assert answer_response(completion(None, [CALL], "tool_calls")).status == "completed"


def ra_length():
    resp = answer_response(completion("a", finish="length"), max_output_tokens=1)
    assert resp.status == "incomplete" and resp.incomplete_details.reason == "max_output_tokens"
    assert answer_response(completion("a", finish="content_filter")).incomplete_details.reason == "content_filter"
    events = responses_stream(ResponsesCodec(), [chunk({"content": "a"}), chunk(finish="length")])
    assert events[-1].type == "response.incomplete"


def ra_usage():
    usage = answer_response(completion()).usage
    assert (usage.input_tokens, usage.output_tokens, usage.total_tokens) == (3, 2, 5)


def ra_stream():
    codec = ResponsesCodec()
    codec.parse(b'{"model":"m","input":"x","stream":true}', "responses")
    events = responses_stream(codec, STREAM)
    assert [e.type for e in events] == [
        "response.created", "response.in_progress", "response.output_item.added", "response.content_part.added",
        "response.output_text.delta", "response.output_text.delta", "response.output_text.done",
        "response.content_part.done", "response.output_item.done", "response.output_item.added",
        "response.function_call_arguments.delta", "response.function_call_arguments.delta",
        "response.function_call_arguments.done", "response.output_item.done", "response.completed"]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    final = events[-1].response
    assert final.output_text == "Hello" and final.output[1].arguments == '{"q":"x"}'
    assert [e.output_index for e in events if e.type == "response.output_item.added"] == [0, 1]
    assert final.usage.total_tokens == 5


def ra_stream_failed():
    codec = ResponsesCodec()
    events = responses_stream(codec, STREAM[:3], codec.stream_error({"message": "cut after 2 chunks"}))
    assert events[-1].type == "response.failed" and events[-1].response.error.message == "cut after 2 chunks"
    assert "response.completed" not in [e.type for e in events]


def ra_errors():
    codec = ResponsesCodec()
    doc = orjson.loads(codec.error("nope", "invalid_request_error", "model_not_found"))
    assert doc == {"error": {"message": "nope", "type": "invalid_request_error", "param": None,
                             "code": "model_not_found"}}
    assert codec.client_status(503) == 503


def m_system():
    assert messages(system="S")["messages"][0] == {"role": "system", "content": "S"}
    assert messages(system=[{"type": "text", "text": "A"}, {"type": "text", "text": "B"}])["messages"][0] == {
        "role": "system", "content": "A\n\nB"}


def m_text():
    out = messages(messages=[{"role": "user", "content": [{"type": "text", "text": "q"}]},
                             {"role": "assistant", "content": "a"}])
    assert out["messages"] == [{"role": "user", "content": [{"type": "text", "text": "q"}]},
                               {"role": "assistant", "content": "a"}]


def m_image():
    b64 = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}}
    url = {"type": "image", "source": {"type": "url", "url": "https://example.invalid/cat.png"}}
    out = messages(messages=[{"role": "user", "content": [b64, url]}])
    assert out["messages"][0]["content"] == [{"type": "image_url", "image_url": {"url": IMG}},
                                             {"type": "image_url", "image_url": {"url": "https://example.invalid/cat.png"}}]
    refused(messages, messages=[{"role": "user", "content": [{"type": "image", "source": {"type": "file",
                                                                                          "file_id": "f"}}]}])


def m_tool_use():
    out = messages(messages=[{"role": "user", "content": "q"}, {"role": "assistant", "content": [
        {"type": "text", "text": "Let me look."},
        {"type": "tool_use", "id": "toolu_1", "name": "f", "input": {"a": 1}}]}])
    assert out["messages"][1] == {"role": "assistant", "content": "Let me look.", "tool_calls": [
        {"id": "toolu_1", "type": "function", "function": {"name": "f", "arguments": '{"a":1}'}}]}


def m_tool_result():
    out = messages(messages=[{"role": "user", "content": "q"},
                             {"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": "f", "input": {}}]},
                             {"role": "user", "content": [{"type": "text", "text": "and?"},
                                                          {"type": "tool_result", "tool_use_id": "t1",
                                                           "content": [{"type": "text", "text": "boom"}],
                                                           "is_error": True}]}])
    assert out["messages"][2:] == [{"role": "tool", "tool_call_id": "t1", "content": "Error: boom"},
                                   {"role": "user", "content": [{"type": "text", "text": "and?"}]}]


def m_thinking():
    out = messages(messages=[{"role": "user", "content": "q"}, {"role": "assistant", "content": [
        {"type": "thinking", "thinking": "hmm", "signature": "sig"}, {"type": "text", "text": "a"}]}])
    assert out["messages"][1] == {"role": "assistant", "content": "a"}


def m_max_tokens():
    assert messages(max_tokens=9)["max_tokens"] == 9
    with pytest.raises(ClientError) as info:
        messages(max_tokens=None)
    assert info.value.status == 400 and info.value.param == "max_tokens"


def m_stop():
    assert messages(stop_sequences=["END"])["stop"] == ["END"]


def m_sampling():
    out = messages(temperature=0.2, top_p=0.5)
    assert (out["temperature"], out["top_p"]) == (0.2, 0.5)


def m_metadata():
    out = messages(metadata={"user_id": "u1"})
    assert out["user"] == "u1" and out["metadata"] == {"user_id": "u1"}


def m_tools():
    tool = {"name": "f", "description": "d", "input_schema": {"type": "object", "properties": {}}}
    assert messages(tools=[tool])["tools"] == [{"type": "function", "function": {
        "name": "f", "parameters": {"type": "object", "properties": {}}, "description": "d"}}]


def m_tool_choice():
    tools = [{"name": "f", "input_schema": {"type": "object"}}]
    assert [messages(tools=tools, tool_choice={"type": t})["tool_choice"] for t in ("auto", "any", "none")] == [
        "auto", "required", "none"]
    out = messages(tools=tools, tool_choice={"type": "tool", "name": "f", "disable_parallel_tool_use": True})
    assert out["tool_choice"] == {"type": "function", "function": {"name": "f"}} and out["parallel_tool_calls"] is False


def m_dropped():
    out = messages(top_k=5, thinking={"type": "enabled", "budget_tokens": 1024}, service_tier="auto")
    assert set(out) == {"model", "messages", "max_tokens"}


def m_cache_control():
    sys_blocks = [{"type": "text", "text": "S", "cache_control": {"type": "ephemeral"}}]
    out = messages(system=sys_blocks, messages=[{"role": "user", "content": [
        {"type": "text", "text": "q", "cache_control": {"type": "ephemeral", "ttl": "1h"}}]}])
    assert out["messages"] == [{"role": "system", "content": "S"},
                               {"role": "user", "content": [{"type": "text", "text": "q"}]}]
    assert b"cache_control" not in orjson.dumps(out)
    assert _codecs[-1].untranslatable is None   # dropped, not a reason to skip the target


def m_server_tools():
    for t in ("web_search_20250305", "bash_20250124", "text_editor_20250124", "computer_20250124",
              "code_execution_20250522"):
        refused(messages, tools=[{"type": t, "name": "x"}])
    refused(messages, messages=[{"role": "user", "content": [{"type": "document", "source": {}}]}])
    refused(messages, container="c1")
    refused(messages, mcp_servers=[{"url": "https://example.invalid"}])


def m_headers():
    # The endpoint turns x-api-key into the bearer key clientAuth checks, and builds every
    # upstream request from the canonical body: tests/integration/test_inbound_apis.py checks
    # both end to end; here: the canonical body carries no header or key at all.
    out = messages()
    assert set(out) == {"model", "messages", "max_tokens"}
    codec = MessagesCodec()
    codec.beta = "tools-2024-04-04"
    anthropic_target = AnthropicAdapter.__new__(AnthropicAdapter)
    assert codec.upstream_headers(anthropic_target) == {"anthropic-beta": "tools-2024-04-04"}
    assert codec.upstream_headers(object()) == {}


def ma_text():
    assert answer_message(completion("Hello")).content[0].text == "Hello"


def ma_tool_calls():
    block = answer_message(completion(None, [CALL], "tool_calls")).content[0]
    assert (block.type, block.id, block.name, block.input) == ("tool_use", "call_1", "search", {"q": "x"})


def ma_stop():
    assert [answer_message(completion("a", finish=f)).stop_reason for f in ("stop", "length", "content_filter")] == [
        "end_turn", "max_tokens", "refusal"]
    assert answer_message(completion(None, [CALL], "tool_calls")).stop_reason == "tool_use"


def ma_usage():
    usage = answer_message(completion()).usage
    assert (usage.input_tokens, usage.output_tokens) == (3, 2)


def ma_stream():
    events = messages_stream(MessagesCodec(), STREAM)
    for e in events:
        MSG_EVENTS.validate_python(e) if e["type"] != "ping" else None
    assert [e["type"] for e in events] == [
        "message_start", "ping", "content_block_start", "content_block_delta", "content_block_delta",
        "content_block_stop", "content_block_start", "content_block_delta", "content_block_delta",
        "content_block_stop", "message_delta", "message_stop"]
    assert events[6]["content_block"] == {"type": "tool_use", "id": "call_1", "name": "search", "input": {}}
    assert "".join(e["delta"].get("partial_json", "") for e in events if e["type"] == "content_block_delta") == \
        '{"q":"x"}'
    assert events[-2]["delta"]["stop_reason"] == "tool_use" and events[-2]["usage"]["output_tokens"] == 2


def ma_stream_error():
    codec = MessagesCodec()
    events = messages_stream(codec, STREAM[:3], codec.stream_error({"message": "provider overloaded"}))
    assert events[-1] == {"type": "error", "error": {"type": "overloaded_error", "message": "provider overloaded"}}
    assert "message_stop" not in [e["type"] for e in events]


def ma_errors():
    assert [anthropic_status(s) for s in (400, 401, 404, 429, 500, 502, 503, 504, 529)] == [
        400, 401, 404, 429, 500, 500, 529, 504, 529]
    assert [error_type(s) for s in (400, 401, 404, 429, 500, 529)] == [
        "invalid_request_error", "authentication_error", "not_found_error", "rate_limit_error", "api_error",
        "overloaded_error"]
    codec = MessagesCodec()
    status = codec.client_status(503)
    assert orjson.loads(codec.reply_body(status, codec.error("down", "upstream_error"))) == {
        "type": "error", "error": {"type": "overloaded_error", "message": "down"}}


ROWS = {name.replace("_", "-"): fn for name, fn in dict(globals()).items()
        if re.fullmatch(r"(r|ra|m|ma)_[a-z_]+", name) and callable(fn)}


@pytest.mark.parametrize("row", sorted(ROWS))
def test_translation_row(row):
    ROWS[row]()


def test_every_documented_row_is_tested():
    documented = set(re.findall(r"^\| ((?:r|ra|m|ma)-[a-z-]+) \|", DOC.read_text(), re.M))
    assert documented and documented == set(ROWS)
