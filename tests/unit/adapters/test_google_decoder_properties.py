"""Properties of the Gemini and Vertex stream decoders (issue 16): network reads may split a
stream anywhere, and a stream may be cut anywhere.

- Any split of a complete stream decodes to the same text, tool calls and finish, then `done`.
- A stream cut before its finishing chunk is complete never ends in `done`: it ends in an error
  event (truncated or undecodable), so a client never sees a cut answer presented as complete.
- The Vertex decoder tells Claude's stream from Gemini's under any split, before the first byte
  of either is decoded.
- Arbitrary bytes and JSON through either decoder yield only chunk/done/error events, nothing
  after the end, and answers of any shape through `classify_answer` one clean result.
"""

from __future__ import annotations

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from detour_proxy.adapters import StreamEvent, adapter_for
from detour_proxy.adapters.gemini_response import GeminiStreamDecoder
from detour_proxy.config import Provider, parse_config
from detour_proxy.engine import RequestContext
from detour_proxy.engine._streaming import _decode
from detour_proxy.engine._unary import classify_answer
from detour_proxy.policy import OutcomeKind
from detour_proxy.state import AppState

TEXTS = ["The quick", " brown", " fox", " jumps", " over", " the", " lazy", " dog."]


def _sse(doc) -> bytes:
    return b"data: " + orjson.dumps(doc) + b"\r\n\r\n"


def gemini_stream(tool: bool = False) -> tuple[bytes, int]:
    """A complete stream and the offset where its finishing event's JSON ends."""
    chunks = [_sse({"candidates": [{"content": {"role": "model", "parts": [{"text": t}]}}], "responseId": "r"})
              for t in TEXTS]
    if tool:
        chunks.append(_sse({"candidates": [{"content": {"role": "model", "parts": [
            {"functionCall": {"name": "search", "args": {"query": "fox"}}}]}}]}))
    last = _sse({"candidates": [{"content": {"role": "model", "parts": [{"text": ""}]}, "finishReason": "STOP"}],
                 "usageMetadata": {"promptTokenCount": 3, "candidatesTokenCount": 8, "totalTokenCount": 11}})
    blob = b"".join(chunks) + last
    return blob, len(blob) - 4


def claude_stream() -> bytes:
    def ev(name, data):
        return b"event: " + name.encode() + b"\ndata: " + orjson.dumps({"type": name, **data}) + b"\n\n"
    return (ev("message_start", {"message": {"id": "msg_1", "model": "claude", "usage": {"input_tokens": 3}}})
            + ev("content_block_start", {"index": 0, "content_block": {"type": "text", "text": ""}})
            + b"".join(ev("content_block_delta", {"index": 0, "delta": {"type": "text_delta", "text": t}}) for t in TEXTS)
            + ev("content_block_stop", {"index": 0})
            + ev("message_delta", {"delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": 8}})
            + ev("message_stop", {}))


def split(blob: bytes, cuts: list[int]) -> list[bytes]:
    cuts = sorted({c for c in cuts if 0 < c < len(blob)})
    return [blob[a:b] for a, b in zip([0, *cuts], [*cuts, len(blob)])]


def run(decoder, pieces: list[bytes]) -> list[StreamEvent]:
    out: list[StreamEvent] = []
    for p in pieces:
        out += decoder.feed(p)
    return out + decoder.close()


def summary(events: list[StreamEvent]):
    text, calls, finish = "", [], None
    for ev in events:
        if ev.kind != "chunk":
            continue
        doc = orjson.loads(ev.payload)
        for ch in doc["choices"]:
            text += ch["delta"].get("content") or ""
            calls += [(c["function"]["name"], c["function"]["arguments"]) for c in ch["delta"].get("tool_calls") or []]
            finish = ch.get("finish_reason") or finish
    return text, calls, finish, [ev.kind for ev in events if ev.kind != "chunk"]


def vertex_adapter():
    return adapter_for(Provider(name="vx", type="vertex", baseURL="https://x", project="p", location="l"))


@settings(max_examples=200, deadline=None)
@given(cuts=st.lists(st.integers(0, 2000), max_size=12), tool=st.booleans(), usage=st.booleans())
def test_any_split_of_a_gemini_stream_decodes_the_same(cuts, tool, usage):
    blob, _ = gemini_stream(tool)
    whole = run(GeminiStreamDecoder(include_usage=usage), [blob])
    pieces = run(GeminiStreamDecoder(include_usage=usage), split(blob, cuts))
    text, calls, finish, ends = summary(pieces)
    assert summary(whole) == (text, calls, finish, ends)
    assert text == "".join(TEXTS) and ends == ["done"]
    assert finish == ("tool_calls" if tool else "stop")
    assert calls == ([("search", '{"query":"fox"}')] if tool else [])
    if usage:
        assert orjson.loads(pieces[-2].payload)["usage"]["total_tokens"] == 11


@settings(max_examples=200, deadline=None)
@given(data=st.data())
def test_a_cut_gemini_stream_never_ends_as_complete(data):
    blob, complete_at = gemini_stream()
    cut = data.draw(st.integers(0, len(blob) - 1))
    events = run(GeminiStreamDecoder(), split(blob[:cut], data.draw(st.lists(st.integers(0, cut), max_size=4))))
    text, _, _, ends = summary(events)
    assert "".join(TEXTS).startswith(text)
    if cut >= complete_at:
        assert ends == ["done"]
    else:
        assert ends == ["error"] and events[-1].error.code in ("truncated", "bad_event") and events[-1].error.status == 502


@settings(max_examples=200, deadline=None)
@given(claude=st.booleans(), cuts=st.lists(st.integers(0, 3000), max_size=12), lead=st.sampled_from([b"", b": ping\n\n", b"\n"]))
def test_the_vertex_decoder_tells_claude_from_gemini_under_any_split(claude, cuts, lead):
    blob = lead + (claude_stream() if claude else gemini_stream()[0])
    text, _, finish, ends = summary(run(vertex_adapter().stream_decoder(), split(blob, cuts)))
    assert (text, finish, ends) == ("".join(TEXTS), "stop", ["done"])


@settings(max_examples=100, deadline=None)
@given(claude=st.booleans(), data=st.data())
def test_a_cut_vertex_stream_never_ends_as_complete(claude, data):
    blob = claude_stream() if claude else gemini_stream()[0]
    cut = data.draw(st.integers(0, len(blob) - 40))   # well before the end of the last event
    _, _, _, ends = summary(run(vertex_adapter().stream_decoder(), [blob[:cut]]))
    assert ends == ["error"]


json_st = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 5) | st.text(max_size=6),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
        st.sampled_from(["candidates", "content", "parts", "text", "functionCall", "name", "args", "finishReason",
                         "usageMetadata", "promptFeedback", "blockReason", "error", "code", "status", "thought",
                         "type", "message", "delta"]), inner, max_size=4),
    max_leaves=15)


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    missing = str(tmp_path_factory.mktemp("g") / "missing.json")   # no token: never reaches the network
    state = AppState()
    state.install(parse_config({
        "providers": [{"name": "gem", "type": "gemini", "baseURL": "http://127.0.0.1:9", "apiKey": {"value": "k"}},
                      {"name": "vx", "type": "vertex", "baseURL": "http://127.0.0.1:9", "project": "p",
                       "location": "l", "credentialsFile": missing}],
        "routes": [{"name": "r", "targets": [{"provider": "gem", "model": "gemini-x"},
                                             {"provider": "vx", "model": "gemini-y", "priority": 1}]}],
    }))
    route = state.gateway.router.match("m")
    ctx = RequestContext(request_id="r", route=route, body={"model": "m", "messages": []}, raw=b"", kind="chat",
                         stream=False, started=0.0)
    return state, ctx, route.targets


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(which=st.integers(0, 1), status=st.sampled_from([200, 200, 200, 204, 400, 429, 500, 503]), doc=json_st,
       raw=st.booleans())
def test_any_answer_is_one_clean_result(engine, which, status, doc, raw):
    state, ctx, targets = engine
    body = orjson.dumps(doc) if raw else orjson.dumps({"candidates": [{"content": {"parts": doc}}]})
    res = classify_answer(state, ctx, targets[which], status, {}, body, 0.0, 1.0)
    assert res.outcome.kind in (OutcomeKind.SUCCESS, OutcomeKind.HTTP_ERROR, OutcomeKind.STREAM_ERROR)
    if res.outcome.kind is OutcomeKind.SUCCESS:
        assert status == 200 and isinstance(orjson.loads(res.body)["choices"][0]["message"], dict)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(which=st.integers(0, 1), docs=st.lists(json_st | st.binary(max_size=10), max_size=6),
       cuts=st.lists(st.integers(0, 400), max_size=4), event=st.booleans())
def test_any_stream_decodes_to_clean_events(engine, which, docs, cuts, event):
    _, _, targets = engine
    tr = targets[which]
    blob = b"".join((b"event: x\n" if event else b"") + b"data: "
                    + (d.replace(b"\n", b"") if isinstance(d, bytes) else orjson.dumps(d)) + b"\n\n" for d in docs)
    decoder = tr.provider.adapter.stream_decoder(include_usage=True)
    events: list[StreamEvent] = []
    for piece in [*split(blob, cuts), b""]:
        out = _decode(decoder, piece, tr)
        events.extend(out)
        if any(ev.kind != "chunk" for ev in out):
            break
    kinds = [ev.kind for ev in events]
    assert kinds and kinds[-1] in ("done", "error") and all(k == "chunk" for k in kinds[:-1])
    for ev in events:
        if ev.kind == "chunk":
            assert isinstance(orjson.loads(ev.payload), dict)
