"""The bedrock adapter (issue 16): Converse requests, answers, errors, and the ConverseStream
event-stream decoder under any split or cut of its bytes."""

from __future__ import annotations

import orjson
import pytest
from botocore.eventstream import EventStreamBuffer
from hypothesis import given, settings
from hypothesis import strategies as st

from detour_proxy.adapters import UnsupportedRequest, adapter_for
from detour_proxy.adapters.base import StreamEvent, TargetUnavailable
from detour_proxy.adapters.bedrock import AwsKey
from detour_proxy.adapters.bedrock_response import ConverseStreamDecoder
from detour_proxy.adapters.bedrock_stream import EventStreamError, EventStreamParser, encode_message
from detour_proxy.config import Provider
from detour_sim.bedrock_api import event as sim_event, exception_event

TEXTS = ["The quick", " brown", " fox", " jumps", " over", " the", " lazy", " dog."]
MODEL = "anthropic.claude-sonnet-4-5-v1:0"
KEY = AwsKey.of("AKIDTEST", "test-secret", "tok")


def adapter(**kw):
    return adapter_for(Provider(name="br", type="bedrock", region="us-west-2", **kw))


def converse(body, **kw):
    return orjson.loads(adapter(**kw).build_chat(body, MODEL, False, KEY).body)


def stream_blob(tool: bool = False) -> tuple[bytes, int]:
    """A complete ConverseStream and the offset where its messageStop event ends."""
    parts = [sim_event("messageStart", {"role": "assistant"})]
    if tool:
        parts.append(sim_event("contentBlockStart", {"contentBlockIndex": 0, "start": {
            "toolUse": {"toolUseId": "tu_1", "name": "search"}}}))
        parts += [sim_event("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"toolUse": {"input": p}}})
                  for p in ['{"que', 'ry": "f', 'ox"}']]
    else:
        parts += [sim_event("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": t}}) for t in TEXTS]
    parts.append(sim_event("contentBlockStop", {"contentBlockIndex": 0}))
    parts.append(sim_event("messageStop", {"stopReason": "tool_use" if tool else "end_turn"}))
    stop_end = sum(map(len, parts))
    parts.append(sim_event("metadata", {"usage": {"inputTokens": 3, "outputTokens": 8, "totalTokens": 11},
                                        "metrics": {"latencyMs": 5}}))
    return b"".join(parts), stop_end


def split(blob: bytes, cuts: list[int]) -> list[bytes]:
    cuts = sorted({c for c in cuts if 0 < c < len(blob)})
    return [blob[a:b] for a, b in zip([0, *cuts], [*cuts, len(blob)])]


def run(pieces: list[bytes], include_usage: bool = False) -> list[StreamEvent]:
    d = ConverseStreamDecoder(include_usage=include_usage, model=MODEL)
    out: list[StreamEvent] = []
    for p in pieces:
        out += d.feed(p)
    return out + d.close()


def summary(events):
    text, args, finish = "", "", None
    for ev in events:
        if ev.kind == "chunk":
            for ch in orjson.loads(ev.payload)["choices"]:
                text += ch["delta"].get("content") or ""
                args += "".join(c["function"].get("arguments") or "" for c in ch["delta"].get("tool_calls") or [])
                finish = ch.get("finish_reason") or finish
    return text, args, finish, [ev.kind for ev in events if ev.kind != "chunk"]


# -- the event stream ---------------------------------------------------------------------

def test_the_simulators_frames_are_what_botocore_parses():
    blob, _ = stream_blob()
    buf = EventStreamBuffer()
    buf.add_data(blob + exception_event("throttlingException", "slow down"))
    msgs = list(buf)
    assert [m.headers[":event-type"] for m in msgs[:-1]][:2] == ["messageStart", "contentBlockDelta"]
    assert msgs[-1].headers[":exception-type"] == "throttlingException"
    assert EventStreamParser().feed(blob)[1].headers[":event-type"] == "contentBlockDelta"
    assert encode_message({":event-type": "x"}, b"{}") == sim_event.__globals__["encode_event"]({":event-type": "x"}, b"{}")


def test_a_corrupted_frame_is_a_malformed_stream():
    blob = bytearray(stream_blob()[0])
    blob[40] ^= 0xFF
    with pytest.raises(EventStreamError):
        EventStreamParser().feed(bytes(blob))
    events = run([bytes(blob)])
    assert events[-1].kind == "error" and events[-1].error.status == 502


@settings(max_examples=200, deadline=None)
@given(cuts=st.lists(st.integers(0, 3000), max_size=12), tool=st.booleans(), usage=st.booleans())
def test_any_split_of_a_converse_stream_decodes_the_same(cuts, tool, usage):
    blob, _ = stream_blob(tool)
    whole = summary(run([blob], usage))
    pieces = run(split(blob, cuts), usage)
    assert summary(pieces) == whole
    text, args, finish, ends = whole
    assert ends == ["done"]
    if tool:
        assert (text, orjson.loads(args), finish) == ("", {"query": "fox"}, "tool_calls")
    else:
        assert (text, finish) == ("".join(TEXTS), "stop")
    if usage:
        assert orjson.loads(pieces[-2].payload)["usage"]["total_tokens"] == 11


@settings(max_examples=200, deadline=None)
@given(data=st.data())
def test_a_cut_converse_stream_never_ends_as_complete(data):
    blob, stop_end = stream_blob()
    cut = data.draw(st.integers(0, len(blob) - 1))
    text, _, _, ends = summary(run(split(blob[:cut], data.draw(st.lists(st.integers(0, cut), max_size=4)))))
    assert "".join(TEXTS).startswith(text)
    if cut >= stop_end:
        assert ends == ["done"]        # messageStop arrived: only the usage metadata is missing
    else:
        assert ends == ["error"]


@settings(max_examples=200, deadline=None)
@given(frames=st.lists(st.tuples(st.sampled_from(["event", "exception", "error", "x"]),
                                 st.sampled_from(["messageStart", "contentBlockDelta", "contentBlockStart",
                                                  "messageStop", "metadata", "throttlingException", "zzz"]),
                                 st.binary(max_size=30) | st.builds(orjson.dumps, st.dictionaries(
                                     st.sampled_from(["delta", "text", "toolUse", "start", "usage", "stopReason",
                                                      "contentBlockIndex", "input"]),
                                     st.none() | st.text(max_size=4) | st.integers(-2, 3), max_size=3))),
                       max_size=6),
       cuts=st.lists(st.integers(0, 400), max_size=4), garbage=st.binary(max_size=20))
def test_any_frames_decode_to_clean_events(frames, cuts, garbage):
    blob = b"".join(encode_message({":message-type": m, ":event-type": e, ":exception-type": e}, p)
                    for m, e, p in frames) + garbage
    events = run(split(blob, cuts))
    kinds = [ev.kind for ev in events]
    assert kinds and kinds[-1] in ("done", "error") and all(k == "chunk" for k in kinds[:-1])


@pytest.mark.parametrize("name, status", [("throttlingException", 429), ("modelStreamErrorException", 424),
                                          ("serviceUnavailableException", 503), ("internalServerException", 500),
                                          ("validationException", 400)])
def test_stream_exceptions_carry_their_status(name, status):
    events = run([sim_event("messageStart", {"role": "assistant"}) + exception_event(name, "boom")])
    assert events[-1].kind == "error" and events[-1].error.status == status and name in events[-1].error.message


# -- requests -------------------------------------------------------------------------------

def test_the_url_region_and_signature():
    a = adapter()
    req = a.build_chat({"messages": [{"role": "user", "content": "hi"}]}, MODEL, True, KEY)
    assert req.url == "https://bedrock-runtime.us-west-2.amazonaws.com/model/anthropic.claude-sonnet-4-5-v1%3A0/converse-stream"
    auth = req.headers["Authorization"]
    assert auth.startswith("AWS4-HMAC-SHA256 Credential=AKIDTEST/") and "/us-west-2/bedrock/aws4_request" in auth
    assert req.headers["X-Amz-Security-Token"] == "tok" and "test-secret" not in repr(req) + auth
    assert "***" in repr(req)
    bearer = a.build_chat({"messages": [{"role": "user", "content": "hi"}]}, MODEL, False, "brk-key")
    assert bearer.headers["Authorization"] == "Bearer brk-key"
    with pytest.raises(TargetUnavailable):
        a.build_chat({"messages": [{"role": "user", "content": "hi"}]}, MODEL, False, None)


def test_sampling_stop_and_system_travel_in_converse_fields():
    doc = converse({"messages": [{"role": "developer", "content": "Be brief."}, {"role": "user", "content": "hi"}],
                    "max_completion_tokens": 50, "temperature": 1.5, "top_p": 0.5, "stop": "END",
                    "seed": 3, "user": "u1"})
    assert doc == {"messages": [{"role": "user", "content": [{"text": "hi"}]}], "system": [{"text": "Be brief."}],
                   "inferenceConfig": {"maxTokens": 50, "temperature": 1.0, "topP": 0.5, "stopSequences": ["END"]}}


def test_tools_tool_choice_and_structured_output():
    tool = {"type": "function", "function": {"name": "f", "description": "d", "parameters": {"type": "object"}}}
    msgs = [{"role": "user", "content": "hi"}]
    doc = converse({"messages": msgs, "tools": [tool], "tool_choice": {"type": "function", "function": {"name": "f"}}})
    assert doc["toolConfig"] == {"tools": [{"toolSpec": {"name": "f", "description": "d",
                                                         "inputSchema": {"json": {"type": "object"}}}}],
                                 "toolChoice": {"tool": {"name": "f"}}}
    assert converse({"messages": msgs, "tools": [tool], "tool_choice": "required"})["toolConfig"]["toolChoice"] == {"any": {}}
    assert "toolConfig" not in converse({"messages": msgs, "tools": [tool], "tool_choice": "none"})
    schema = {"type": "json_schema", "json_schema": {"name": "a", "schema": {"type": "object"}}}
    tc = converse({"messages": msgs, "response_format": schema})["toolConfig"]
    assert tc["toolChoice"] == {"tool": {"name": "detour_structured_output"}}
    history = [*msgs, {"role": "assistant", "tool_calls": [{"id": "c", "type": "function",
                                                            "function": {"name": "f", "arguments": "{}"}}]},
               {"role": "tool", "tool_call_id": "c", "content": "r"}]
    with pytest.raises(UnsupportedRequest, match="tool_choice none"):
        converse({"messages": history, "tools": [tool], "tool_choice": "none"})
    with pytest.raises(UnsupportedRequest, match="tool_choice none"):
        converse({"messages": history})


@pytest.mark.parametrize("part, why", [
    ({"type": "image_url", "image_url": {"url": "https://example.com/a.png"}}, "bytes"),
    ({"type": "image_url", "image_url": {"url": "data:image/tiff;base64,AAAA"}}, "tiff"),
    ({"type": "input_audio", "input_audio": {"data": "AA", "format": "wav"}}, "not supported"),
])
def test_what_converse_cannot_take_makes_the_target_ineligible(part, why):
    with pytest.raises(UnsupportedRequest, match=why):
        converse({"messages": [{"role": "user", "content": [part]}]})
    with pytest.raises(UnsupportedRequest, match="logprobs"):
        converse({"messages": [{"role": "user", "content": "hi"}], "logprobs": True})


def test_continuation_prefills_claude_only():
    a = adapter()
    req = a.build_continuation({"messages": [{"role": "user", "content": "hi"}]}, "The quick ", MODEL, KEY)
    doc = orjson.loads(req.body)
    assert doc["messages"][-1] == {"role": "assistant", "content": [{"text": "The quick"}]} and req.prefix_trim == " "
    with pytest.raises(UnsupportedRequest):
        a.build_continuation({"messages": [{"role": "user", "content": "hi"}]}, "x", "meta.llama3-70b", KEY)


# -- answers and errors ----------------------------------------------------------------------

def test_an_answer_with_text_reasoning_and_a_tool_call():
    raw = orjson.dumps({"output": {"message": {"role": "assistant", "content": [
        {"reasoningContent": {"reasoningText": {"text": "hmm"}}}, {"text": "ok"},
        {"toolUse": {"toolUseId": "tu1", "name": "f", "input": {"a": 1}}}]}},
        "stopReason": "tool_use", "usage": {"inputTokens": 5, "outputTokens": 2, "cacheReadInputTokens": 4}})
    doc = orjson.loads(adapter().parse_response(200, {}, raw))
    msg = doc["choices"][0]["message"]
    assert (msg["content"], msg["reasoning_content"], doc["choices"][0]["finish_reason"]) == ("ok", "hmm", "tool_calls")
    assert msg["tool_calls"][0]["function"] == {"name": "f", "arguments": '{"a":1}'}
    assert doc["usage"] == {"prompt_tokens": 9, "completion_tokens": 2, "total_tokens": 11,
                            "prompt_tokens_details": {"cached_tokens": 4}}
    filtered = orjson.dumps({"output": {"message": {"content": []}}, "stopReason": "guardrail_intervened"})
    assert orjson.loads(adapter().parse_response(200, {}, filtered))["choices"][0]["finish_reason"] == "content_filter"


@pytest.mark.parametrize("status, name, expect, transient", [
    (429, "ThrottlingException", 429, True), (503, "ServiceUnavailableException", 503, True),
    (500, "InternalServerException", 500, True), (408, "ModelTimeoutException", 408, True),
    (424, "ModelErrorException", 424, True), (429, "ModelNotReadyException", 429, True),
    (400, "ServiceQuotaExceededException", 429, True), (400, "ValidationException", 400, False),
    (403, "AccessDeniedException", 403, False), (404, "ResourceNotFoundException", 404, False),
])
def test_bedrock_errors_are_classified(status, name, expect, transient):
    a = adapter()
    err = a.parse_error(status, {"x-amzn-ErrorType": f"{name}:http://internal.amazon.com/coral/com.amazon.bedrock/"},
                        orjson.dumps({"message": "why test-secret"}), api_key=KEY)
    assert err.status == expect and err.code == name and name in err.message
    assert "test-secret" not in err.message
    assert (err.status in a.transient_statuses) is transient
