"""Anthropic responses and recorded event streams -> OpenAI completions and chunks."""

from __future__ import annotations

import orjson
import pytest
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from detour_proxy.adapters import adapter_for
from detour_proxy.adapters.anthropic_response import AnthropicStreamDecoder


@pytest.fixture
def anth(provider):
    return adapter_for(provider("anthropic"))


def test_text_response(anth):
    raw = orjson.dumps({
        "id": "msg_01", "type": "message", "role": "assistant", "model": "claude-sonnet",
        "content": [{"type": "text", "text": "Hello"}, {"type": "text", "text": " world"}],
        "stop_reason": "end_turn", "stop_sequence": None,
        "usage": {"input_tokens": 10, "output_tokens": 3, "cache_read_input_tokens": 4,
                  "cache_creation_input_tokens": 1},
    })
    c = ChatCompletion.model_validate_json(anth.parse_response(200, {}, raw))
    assert c.id == "msg_01" and c.model == "claude-sonnet" and c.object == "chat.completion"
    assert c.created > 1_600_000_000
    ch = c.choices[0]
    assert ch.message.content == "Hello world" and ch.message.role == "assistant"
    assert ch.message.tool_calls is None and ch.finish_reason == "stop"
    assert c.usage.prompt_tokens == 15 and c.usage.completion_tokens == 3 and c.usage.total_tokens == 18
    assert c.usage.prompt_tokens_details.cached_tokens == 4


def test_tool_use_response(anth):
    raw = orjson.dumps({
        "id": "msg_02", "type": "message", "role": "assistant", "model": "claude",
        "content": [{"type": "thinking", "thinking": "hmm", "signature": "s"},
                    {"type": "text", "text": "Checking."},
                    {"type": "tool_use", "id": "toolu_1", "name": "weather", "input": {"city": "Paris"}},
                    {"type": "tool_use", "id": "toolu_2", "name": "now", "input": {}}],
        "stop_reason": "tool_use", "usage": {"input_tokens": 5, "output_tokens": 7},
    })
    c = ChatCompletion.model_validate_json(anth.parse_response(200, {}, raw))
    ch = c.choices[0]
    assert ch.finish_reason == "tool_calls" and ch.message.content == "Checking."
    assert [(t.id, t.type, t.function.name, orjson.loads(t.function.arguments)) for t in ch.message.tool_calls] == [
        ("toolu_1", "function", "weather", {"city": "Paris"}), ("toolu_2", "function", "now", {})]
    assert orjson.loads(anth.parse_response(200, {}, raw))["choices"][0]["message"]["reasoning_content"] == "hmm"
    assert c.usage.total_tokens == 12


@pytest.mark.parametrize("raw", [b"not json", b"[1]", b'{"content": "x"}'])
def test_unparseable_response_raises_value_error(anth, raw):
    with pytest.raises(ValueError):
        anth.parse_response(200, {}, raw)


@pytest.mark.parametrize("reason,finish", [
    ("end_turn", "stop"), ("stop_sequence", "stop"), ("max_tokens", "length"), ("tool_use", "tool_calls"),
    ("refusal", "content_filter"), (None, "stop"),
])
def test_finish_reasons(anth, reason, finish):
    raw = orjson.dumps({"id": "m", "type": "message", "role": "assistant", "model": "c", "stop_reason": reason,
                        "content": [], "usage": {"input_tokens": 1, "output_tokens": 0}})
    c = ChatCompletion.model_validate_json(anth.parse_response(200, {}, raw))
    assert c.choices[0].finish_reason == finish and c.choices[0].message.content is None


# --- streams ---------------------------------------------------------------------------------

def sse(*events: tuple[str, dict]) -> bytes:
    return b"".join(b"event: " + n.encode() + b"\ndata: " + orjson.dumps(d) + b"\n\n" for n, d in events)


START = ("message_start", {"type": "message_start", "message": {
    "id": "msg_s1", "type": "message", "role": "assistant", "model": "claude-s", "content": [],
    "stop_reason": None, "usage": {"input_tokens": 12, "output_tokens": 1, "cache_read_input_tokens": 2}}})
PING = ("ping", {"type": "ping"})


def text_block(index: int, *parts: str) -> list[tuple[str, dict]]:
    evs = [("content_block_start", {"type": "content_block_start", "index": index,
                                    "content_block": {"type": "text", "text": ""}})]
    evs += [("content_block_delta", {"type": "content_block_delta", "index": index,
                                     "delta": {"type": "text_delta", "text": p}}) for p in parts]
    return evs + [("content_block_stop", {"type": "content_block_stop", "index": index})]


def end(reason: str = "end_turn", out_tokens: int = 9) -> list[tuple[str, dict]]:
    return [("message_delta", {"type": "message_delta", "delta": {"stop_reason": reason, "stop_sequence": None},
                               "usage": {"output_tokens": out_tokens}}),
            ("message_stop", {"type": "message_stop"})]


def run(decoder, data: bytes, step: int = 7):
    events = []
    for i in range(0, len(data), step):  # arbitrary read boundaries
        events += decoder.feed(data[i:i + step])
    return events + decoder.close()


def chunks(events):
    return [ChatCompletionChunk.model_validate_json(e.payload) for e in events if e.kind == "chunk"]


def test_text_stream(anth):
    data = sse(START, PING, *text_block(0, "Hel", "lo", " there"), *end())
    events = run(anth.stream_decoder(), data)
    assert [e.kind for e in events][-1] == "done" and events.count(events[-1]) == 1
    cs = chunks(events)
    assert {(c.id, c.model, c.created) for c in cs} == {("msg_s1", "claude-s", cs[0].created)}
    assert cs[0].choices[0].delta.role == "assistant" and not events[0].content_bearing
    assert "".join(c.choices[0].delta.content or "" for c in cs) == "Hello there"
    assert "".join(e.text for e in events) == "Hello there"
    assert [e.content_bearing for e in events if e.text] == [True, True, True]
    assert cs[-1].choices[0].finish_reason == "stop" and not events[-2].content_bearing
    assert all(c.usage is None for c in cs)  # the client did not ask for usage


def test_include_usage(anth):
    data = sse(START, *text_block(0, "x"), *end(out_tokens=9))
    events = run(anth.stream_decoder(include_usage=True), data)
    cs = chunks(events)
    last = cs[-1]
    assert last.choices == [] and events[-1].kind == "done"
    assert (last.usage.prompt_tokens, last.usage.completion_tokens, last.usage.total_tokens) == (14, 9, 23)


def test_tool_use_stream(anth):
    data = sse(START, *text_block(0, "Let me check."),
               ("content_block_start", {"type": "content_block_start", "index": 1, "content_block": {
                   "type": "tool_use", "id": "toolu_9", "name": "weather", "input": {}}}),
               ("content_block_delta", {"type": "content_block_delta", "index": 1,
                                        "delta": {"type": "input_json_delta", "partial_json": ""}}),
               ("content_block_delta", {"type": "content_block_delta", "index": 1,
                                        "delta": {"type": "input_json_delta", "partial_json": '{"city": '}}),
               ("content_block_delta", {"type": "content_block_delta", "index": 1,
                                        "delta": {"type": "input_json_delta", "partial_json": '"Paris"}'}}),
               ("content_block_stop", {"type": "content_block_stop", "index": 1}),
               ("content_block_start", {"type": "content_block_start", "index": 2, "content_block": {
                   "type": "tool_use", "id": "toolu_10", "name": "now", "input": {}}}),
               ("content_block_stop", {"type": "content_block_stop", "index": 2}),
               *end("tool_use"))
    events = run(anth.stream_decoder(), data, step=13)
    cs = chunks(events)
    calls: dict[int, dict] = {}
    for c in cs:
        for tc in c.choices[0].delta.tool_calls or []:
            slot = calls.setdefault(tc.index, {"id": None, "name": None, "args": ""})
            if tc.id:
                slot["id"], slot["name"] = tc.id, tc.function.name
            slot["args"] += tc.function.arguments or ""
    assert calls == {0: {"id": "toolu_9", "name": "weather", "args": '{"city": "Paris"}'},
                     1: {"id": "toolu_10", "name": "now", "args": ""}}
    tool_events = [e for e in events if e.kind == "chunk" and b'"tool_calls":[' in e.payload]
    assert tool_events and all(e.content_bearing for e in tool_events)
    assert cs[-1].choices[0].finish_reason == "tool_calls" and events[-1].kind == "done"


def test_error_before_first_delta(anth):
    data = sse(START, ("error", {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}))
    events = run(anth.stream_decoder(), data)
    assert [e.kind for e in events] == ["chunk", "error"]
    assert not any(e.content_bearing for e in events)
    err = events[-1].error
    assert err.status == 529 and err.retryable and err.type == "overloaded_error"
    assert "Overloaded" in err.message
    assert orjson.loads(events[-1].payload)["error"]["type"] == "overloaded_error"


def test_error_mid_stream_stops_decoding(anth):
    data = sse(START, *text_block(0, "partial"), ("error", {"type": "error", "error": {
        "type": "api_error", "message": "Internal server error"}}), *text_block(1, "ignored"), *end())
    events = run(anth.stream_decoder(), data)
    assert [e.kind for e in events][-1] == "error" and sum(e.kind == "error" for e in events) == 1
    assert "".join(e.text for e in events) == "partial"
    assert events[-1].error.status == 500 and events[-1].error.retryable


def test_truncated_stream(anth):
    decoder = anth.stream_decoder()
    events = decoder.feed(sse(START, *text_block(0, "cut")))
    assert [e.kind for e in events] == ["chunk", "chunk"]
    tail = decoder.close()
    assert [e.kind for e in tail] == ["error"] and tail[0].error.code == "truncated"
    assert decoder.feed(b"data: {}\n\n") == [] and decoder.close() == []


def test_undecodable_event(anth):
    events = run(anth.stream_decoder(), b"event: message_start\ndata: {nope\n\n")
    assert [e.kind for e in events] == ["error"] and events[0].error.type == "stream_error"


def test_events_before_message_start_use_fallback_identity():
    d = AnthropicStreamDecoder(model="claude-req", created=123)
    events = d.feed(sse(*text_block(0, "hi")))
    c = ChatCompletionChunk.model_validate_json(events[0].payload)
    assert (c.model, c.created, c.choices[0].delta.content) == ("claude-req", 123, "hi")


@pytest.mark.parametrize("trim,parts,expected", [
    (" ", [" world"], "world"),                 # model repeats the trimmed space
    (" ", ["world"], "world"),                  # model does not
    ("\n\n", ["\n", "\nNext"], "Next"),           # repeated across two deltas
    (" ", ["\n\nNext"], "\n\nNext"),             # different whitespace is kept
    ("", [" world"], " world"),                  # no trim: untouched
    (" ", ["  two"], " two"),                    # more than was trimmed: the extra stays
])
def test_continuation_prefix_trim(trim, parts, expected):
    d = AnthropicStreamDecoder(prefix_trim=trim)
    events = run(d, sse(START, *text_block(0, *parts), *end()))
    assert "".join(e.text for e in events) == expected
    assert "".join(c.choices[0].delta.content or "" for c in chunks(events)) == expected
