"""Property: OpenAI -> Anthropic translation never loses text, tool calls or tool results, and
always produces a request the strict validator accepts."""

from __future__ import annotations

import copy

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from detour_proxy.adapters import adapter_for


@pytest.fixture(scope="module")
def anth(provider):
    return adapter_for(provider("anthropic"))

text_st = st.text(alphabet=st.characters(codec="utf-8", blacklist_categories=("Cs",)), max_size=12)
word_st = st.text(alphabet="abcdefghij _-.", min_size=1, max_size=8)
IMAGES = [{"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
          {"type": "image_url", "image_url": {"url": "data:image/webp;base64,UklGRg=="}},
          {"type": "image_url", "image_url": {"url": "https://example.com/a.jpg"}}]


def content_st(images: bool):
    part = st.builds(lambda t: {"type": "text", "text": t}, text_st)
    if images:
        part = st.one_of(part, st.sampled_from(IMAGES))
    return st.one_of(text_st, st.lists(part, max_size=3))


args_st = st.one_of(
    st.dictionaries(word_st, st.one_of(st.integers(-2**53, 2**53), text_st, st.booleans()), max_size=3).map(
        lambda d: orjson.dumps(d).decode()),
    st.sampled_from(["", "{oops", "[1, 2]", '"str"']),
)


@st.composite
def tool_round(draw, n: int):
    """An assistant turn with tool calls and the tool messages that answer them."""
    calls = [{"id": f"call_{n}_{i}", "type": "function",
              "function": {"name": draw(st.sampled_from(["weather", "search", "now"])), "arguments": draw(args_st)}}
             for i in range(draw(st.integers(1, 3)))]
    content = draw(st.one_of(st.none(), text_st))
    msgs = [{"role": "assistant", "content": content, "tool_calls": calls}]
    for c in draw(st.permutations(calls)):
        msgs.append({"role": "tool", "tool_call_id": c["id"], "content": draw(content_st(images=False))})
    return msgs


@st.composite
def chat_request(draw):
    messages: list[dict] = []
    for n in range(draw(st.integers(0, 6))):
        kind = draw(st.sampled_from(["system", "developer", "user", "user", "assistant", "tools"]))
        if kind == "tools":
            messages += draw(tool_round(n))
        elif kind in ("system", "developer"):
            messages.append({"role": kind, "content": draw(content_st(images=False))})
        else:
            messages.append({"role": kind, "content": draw(content_st(images=kind == "user"))})
    # the conversation has something to answer; sometimes it ends in a client prefill
    messages.append({"role": "user", "content": draw(text_st.filter(lambda s: s.strip()))})
    if draw(st.booleans()):
        messages.append({"role": "assistant", "content": draw(text_st)})
    body: dict = {"model": "client-model", "messages": messages}
    stop = draw(st.one_of(st.none(), text_st, st.lists(text_st, max_size=3)))
    if stop is not None:
        body["stop"] = stop
    if draw(st.booleans()):
        body["tools"] = [{"type": "function", "function": {"name": n, "parameters": {"type": "object"}}}
                         for n in ("weather", "search", "now")]
        body["tool_choice"] = draw(st.sampled_from(["auto", "none", "required",
                                                    {"type": "function", "function": {"name": "now"}}]))
    return body


def texts(content) -> list[str]:
    if isinstance(content, str):
        return [content]
    return [p["text"] for p in content or [] if p.get("type") == "text"]


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(body=chat_request(), stream=st.booleans())
def test_translation_keeps_everything_and_validates(anth, anthropic_check, body, stream):
    before = copy.deepcopy(body)
    req = anth.build_chat(body, "claude-x", stream, "k")
    assert body == before
    out = anthropic_check(req.body)
    assert out.get("stream", False) is stream

    system = out.get("system", "")
    blocks = [(m["role"], b) for m in out["messages"] for b in m["content"]]
    out_texts = [(r, b["text"]) for r, b in blocks if b["type"] == "text"]
    uses = {b["id"]: b for _, b in blocks if b["type"] == "tool_use"}
    results = {b["tool_use_id"]: b for _, b in blocks if b["type"] == "tool_result"}
    final_assistant_trim = req.prefix_trim

    for m in body["messages"]:
        role = m["role"]
        for t in texts(m.get("content")):
            if not t.strip():
                continue  # blank text carries nothing (and Anthropic rejects it)
            if role in ("system", "developer"):
                assert t in system
            elif role == "tool":
                r = results[m["tool_call_id"]]
                got = r["content"] if isinstance(r.get("content"), str) else "\n".join(texts(r.get("content")))
                assert t in got
            else:
                assert (role, t) in out_texts or (role == "assistant" and (role, t.rstrip()) in out_texts
                                                  and t.endswith(final_assistant_trim)), (role, t)
        for tc in m.get("tool_calls") or []:
            use = uses[tc["id"]]
            assert use["name"] == tc["function"]["name"]
            raw = tc["function"]["arguments"]
            parsed = _json(raw)
            if isinstance(parsed, dict):
                assert use["input"] == parsed
            elif raw.strip():  # not an object: kept verbatim for the model to see
                assert use["input"] == {"_raw_arguments": raw}
            else:
                assert use["input"] == {}
        if role == "tool":
            assert m["tool_call_id"] in results

    images = [p["image_url"]["url"] for m in body["messages"] if m["role"] == "user" and isinstance(m["content"], list)
              for p in m["content"] if p["type"] == "image_url"]
    got = [b["source"].get("url") or f"data:{b['source']['media_type']};base64,{b['source']['data']}"
           for _, b in blocks if b["type"] == "image"]
    assert got == images

    stops = body.get("stop")
    stops = [stops] if isinstance(stops, str) else stops or []
    assert out.get("stop_sequences", []) == [s for s in stops if s]


def _json(s: str):
    try:
        return orjson.loads(s)
    except orjson.JSONDecodeError:
        return None


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(body=chat_request(), delivered=text_st)
def test_continuation_always_validates(anth, anthropic_check, body, delivered):
    req = anth.build_continuation(body, delivered, "claude-x", None)
    out = anthropic_check(req.body)
    assert out["stream"] is True
    # what the client already has == what the request prefills + what was trimmed
    last = out["messages"][-1]
    if delivered.strip():
        assert last["role"] == "assistant"
        assert (texts(last["content"])[-1] + req.prefix_trim).endswith(delivered)
