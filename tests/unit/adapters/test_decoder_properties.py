"""Property (issue 13): whatever JSON or SSE an upstream sends, every adapter's answer and stream
decoding ends in a clean classification, never an exception past the engine.

Unary: any status and any JSON body (arbitrary, or a valid answer with one part replaced by
arbitrary JSON) through `classify_answer` is one Result; a SUCCESS is an answer whose choices
the openai SDK reads as messages with string-or-null content. Streams: arbitrary SSE (known and
unknown event names, JSON or garbage data, cut at arbitrary byte offsets) through the guarded
decoder yields only chunk/done/error events, nothing after done or error, every error an
UpstreamError, every chunk a JSON object.
"""

from __future__ import annotations

import copy

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from openai._models import construct_type
from openai.types.chat import ChatCompletion

from detour_proxy.adapters import StreamEvent, UpstreamError
from detour_proxy.config import parse_config
from detour_proxy.engine import RequestContext
from detour_proxy.engine._streaming import _decode
from detour_proxy.engine._unary import classify_answer
from detour_proxy.policy import OutcomeKind
from detour_proxy.state import AppState

KINDS = ("openai", "azure-openai", "anthropic")

json_st = st.recursive(
    st.none() | st.booleans() | st.integers(-2**63, 2**63) | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
        st.sampled_from(["choices", "message", "content", "delta", "type", "usage", "index", "text", "error",
                         "tool_calls", "function", "arguments", "name", "id", "input", "stop_reason",
                         "finish_reason", "role", "model", "object", "partial_json", "x"]) | st.text(max_size=5),
        inner, max_size=5),
    max_leaves=20)

OPENAI_ANSWER = {"id": "c", "object": "chat.completion", "created": 1, "model": "m",
                 "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}],
                 "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}
ANTHROPIC_ANSWER = {"id": "m", "type": "message", "role": "assistant", "model": "c", "stop_reason": "end_turn",
                    "content": [{"type": "text", "text": "hi"}], "usage": {"input_tokens": 1, "output_tokens": 1}}


def _paths(doc, prefix=()):
    yield prefix
    if isinstance(doc, dict):
        for k, v in doc.items():
            yield from _paths(v, (*prefix, k))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            yield from _paths(v, (*prefix, i))


@st.composite
def near_valid(draw, base):
    """A valid answer with one subtree replaced by arbitrary JSON (the shapes real proxies break)."""
    doc = copy.deepcopy(base)
    path = draw(st.sampled_from(list(_paths(base))[1:]))
    target = doc
    for p in path[:-1]:
        target = target[p]
    target[path[-1]] = draw(json_st)
    return doc


@pytest.fixture(scope="module")
def engine():
    state = AppState()
    state.install(parse_config({
        "providers": [{"name": k, "type": k, "baseURL": "http://127.0.0.1:9/v1", "apiKey": {"value": "sk-x"},
                       **({"apiVersion": "2024-10-21"} if k == "azure-openai" else {})} for k in KINDS],
        "routes": [{"name": "r", "targets": [{"provider": k, "model": "m", "priority": i} for i, k in enumerate(KINDS)]}],
    }))
    route = state.gateway.router.match("m")
    ctx = RequestContext(request_id="r", route=route, body={"model": "m", "messages": []}, raw=b"", kind="chat",
                         stream=False, started=0.0)
    return state, ctx, route.targets


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(which=st.integers(0, 2), status=st.sampled_from([200, 200, 200, 201, 204, 301, 400, 429, 500, 529]),
       data=st.data())
def test_any_json_answer_is_one_clean_result(engine, which, status, data):
    state, ctx, targets = engine
    tr = targets[which]
    base = ANTHROPIC_ANSWER if tr.provider.config.type.value == "anthropic" else OPENAI_ANSWER
    doc = data.draw(st.one_of(json_st, near_valid(base)))
    raw = orjson.dumps(doc) if data.draw(st.booleans()) else data.draw(st.binary(max_size=40))
    res = classify_answer(state, ctx, tr, status, {}, raw, 0.0, 1.0)
    assert res.outcome.kind in (OutcomeKind.SUCCESS, OutcomeKind.HTTP_ERROR, OutcomeKind.STREAM_ERROR)
    if res.outcome.kind is OutcomeKind.SUCCESS:
        assert status == 200
        completion = construct_type(type_=ChatCompletion, value=orjson.loads(res.body))
        for choice in completion.choices:     # what a client reads
            assert choice.message.content is None or isinstance(choice.message.content, str)
    else:
        assert res.outcome.status is None or res.outcome.status == status or status < 400


EVENT_NAMES = ["message_start", "content_block_start", "content_block_delta", "content_block_stop",
               "message_delta", "message_stop", "ping", "error", "completion", "x"]
CHUNK = {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m",
         "choices": [{"index": 0, "delta": {"content": "hi"}, "finish_reason": None}]}
ANTHROPIC_EVENTS = [
    {"type": "message_start", "message": {"id": "m", "model": "c", "usage": {"input_tokens": 1}}},
    {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
    {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "hi"}},
    {"type": "content_block_start", "index": 1, "content_block": {"type": "tool_use", "id": "t", "name": "f", "input": {}}},
    {"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": "{"}},
    {"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": 1}},
    {"type": "message_stop"},
]


@st.composite
def sse_stream(draw):
    events = []
    for _ in range(draw(st.integers(0, 8))):
        name = draw(st.one_of(st.none(), st.sampled_from(EVENT_NAMES)))
        data = draw(st.one_of(
            json_st.map(lambda v: orjson.dumps(v)),
            near_valid(CHUNK).map(orjson.dumps),
            st.sampled_from(ANTHROPIC_EVENTS).flatmap(lambda e: near_valid(e)).map(orjson.dumps),
            st.sampled_from(ANTHROPIC_EVENTS + [CHUNK]).map(orjson.dumps),
            st.just(b"[DONE]"),
            st.binary(max_size=12).filter(lambda b: b"\n" not in b and b"\r" not in b)))
        events.append((b"event: " + name.encode() + b"\n" if name else b"") + b"data: " + data + b"\n\n")
    if draw(st.booleans()):
        events.append(draw(st.binary(max_size=30)))   # trailing garbage, maybe a cut event
    blob = b"".join(events)
    cuts = sorted(draw(st.lists(st.integers(0, len(blob)), max_size=5)))
    return [blob[a:b] for a, b in zip([0, *cuts], [*cuts, len(blob)]) if b > a]


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(which=st.integers(0, 2), pieces=sse_stream(), include_usage=st.booleans())
def test_any_sse_stream_decodes_to_clean_events(engine, which, pieces, include_usage):
    _, _, targets = engine
    tr = targets[which]
    decoder = tr.provider.adapter.stream_decoder(include_usage=include_usage, model="m")
    events: list[StreamEvent] = []
    for piece in [*pieces, b""]:   # fed like the engine feeds it: until done or an error
        out = _decode(decoder, piece, tr)
        assert isinstance(out, list)
        events.extend(out)
        if any(ev.kind != "chunk" for ev in out):
            break
    ended = False
    for ev in events:
        assert not ended, "an event after done or error"
        assert ev.kind in ("chunk", "done", "error")
        if ev.kind == "error":
            assert isinstance(ev.error, UpstreamError)
        if ev.kind == "chunk":
            assert isinstance(orjson.loads(ev.payload), dict), ev.payload
        ended = ev.kind != "chunk"
    assert ended, "a stream must end in done or error (the end of the bytes was reached)"
