"""Property: OpenAI -> Anthropic translation never loses, duplicates or reorders text, images,
tool calls (new and legacy `function_call`) or tool results, carries the sampling parameters
and stops, and always produces a request the strict validator accepts."""

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

# whitespace-only and padded texts are rare in st.text, and they are what Anthropic rejects
text_st = st.one_of(st.text(alphabet=st.characters(codec="utf-8", blacklist_categories=("Cs",)), max_size=12),
                    st.sampled_from(["", " ", "\n\t", " x ", "x", "x \n"]))
word_st = st.text(alphabet="abcdefghij _-.", min_size=1, max_size=8)
TOOL_NAMES = ["weather", "search", "now"]
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
    """An assistant turn with tool calls and the tool messages that answer them (any order,
    sometimes after a user note, as lenient clients send them)."""
    calls = [{"id": f"call_{n}_{i}", "type": "function",
              "function": {"name": draw(st.sampled_from(TOOL_NAMES)), "arguments": draw(args_st)}}
             for i in range(draw(st.integers(1, 3)))]
    msgs = [{"role": "assistant", "content": draw(st.one_of(st.none(), content_st(images=False))),
             "tool_calls": calls}]
    if draw(st.integers(0, 4)) == 0:
        msgs.append({"role": "user", "content": "note"})
    for c in draw(st.permutations(calls)):
        msgs.append({"role": "tool", "tool_call_id": c["id"], "content": draw(content_st(images=True))})
    return msgs


@st.composite
def legacy_round(draw):
    """The deprecated functions API: an assistant function_call and the function message answering it."""
    name = draw(st.sampled_from(TOOL_NAMES))
    return [{"role": "assistant", "content": None, "function_call": {"name": name, "arguments": draw(args_st)}},
            {"role": "function", "name": name, "content": draw(content_st(images=False))}]


@st.composite
def chat_request(draw):
    messages: list[dict] = []
    for n in range(draw(st.integers(0, 6))):
        kind = draw(st.sampled_from(["system", "developer", "user", "user", "assistant", "tools", "legacy"]))
        if kind == "tools":
            messages += draw(tool_round(n))
        elif kind == "legacy":
            messages += draw(legacy_round())
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
    for key, hi in (("temperature", 2.0), ("top_p", 1.0)):
        value = draw(st.one_of(st.none(), st.floats(0.0, hi), st.sampled_from([0, 1])))
        if value is not None:
            body[key] = value
    if draw(st.booleans()):
        body["tools"] = [{"type": "function", "function": {"name": n, "parameters": {"type": "object"}}}
                         for n in TOOL_NAMES]
        body["tool_choice"] = draw(st.sampled_from(["auto", "none", "required",
                                                    {"type": "function", "function": {"name": "now"}}]))
    return body


def parts(content, where: str) -> list[tuple]:
    """What a client content carries, in order: ("text", t) for non-blank text, ("image", url)."""
    if content is None:
        return []
    if isinstance(content, str):
        content = [{"type": "text", "text": content}]
    out = []
    for p in content:
        if p["type"] == "text":
            if p["text"].strip():  # blank text carries nothing (and Anthropic rejects it)
                out.append((where, "text", p["text"]))
        else:
            out.append((where, "image", p["image_url"]["url"]))
    return out


def out_parts(blocks, where: str) -> list[tuple]:
    if blocks is None:
        return []
    if isinstance(blocks, str):
        blocks = [{"type": "text", "text": blocks}]
    out = []
    for b in blocks:
        if b["type"] == "text":
            out.append((where, "text", b["text"]))
        elif b["type"] == "image":
            src = b["source"]
            out.append((where, "image", src.get("url") or f"data:{src['media_type']};base64,{src['data']}"))
        elif b["type"] == "tool_use":
            out.append((where, "tool_use", b["id"], b["name"], b["input"]))
        else:
            assert b["type"] == "tool_result"  # collected separately: they move to the front of a turn
    return out


def expected_input(arguments: str) -> dict:
    parsed = _json(arguments)
    if isinstance(parsed, dict):
        return parsed
    return {"_raw_arguments": arguments} if arguments.strip() else {}


def _json(s: str):
    try:
        return orjson.loads(s)
    except orjson.JSONDecodeError:
        return None


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(body=chat_request(), stream=st.booleans())
def test_translation_keeps_everything_and_validates(anth, anthropic_check, body, stream):
    before = copy.deepcopy(body)
    req = anth.build_chat(body, "claude-x", stream, "k")
    assert body == before
    assert anth.build_chat(body, "claude-x", stream, "k").body == req.body  # stable ids and order
    out = anthropic_check(req.body)
    assert out.get("stream", False) is stream

    # what the client sent, in order (tool results apart: they open the turn that answers)
    system: list[str] = []
    want: list[tuple] = []
    want_results: list[tuple] = []
    legacy_id = None
    for i, m in enumerate(body["messages"]):
        role = m["role"]
        if role in ("system", "developer"):
            system += [t for _, _, t in parts(m["content"], role)]
        elif role in ("user", "assistant"):
            want += parts(m.get("content"), role)
            for tc in m.get("tool_calls") or []:
                fn = tc["function"]
                want.append((role, "tool_use", tc["id"], fn["name"], expected_input(fn["arguments"])))
            if m.get("function_call"):
                legacy_id = f"call_legacy_{i}"  # the documented stable synthetic id
                fc = m["function_call"]
                want.append((role, "tool_use", legacy_id, fc["name"], expected_input(fc["arguments"])))
        else:
            tid = m["tool_call_id"] if role == "tool" else legacy_id
            want_results.append((tid, parts(m["content"], "result")))

    got: list[tuple] = []
    got_results: list[tuple] = []
    for m in out["messages"]:
        got += out_parts(m["content"], m["role"])
        got_results += [(b["tool_use_id"], out_parts(b.get("content"), "result"))
                        for b in m["content"] if b["type"] == "tool_result"]
    last = out["messages"][-1]
    if last["role"] == "assistant" and last["content"][-1]["type"] == "text":
        # a final assistant turn is right-stripped; the stripped whitespace is reported
        assert want[-1][:2] == ("assistant", "text")
        assert want[-1][2] == got[-1][2] + req.prefix_trim and not req.prefix_trim.strip()
        want[-1] = got[-1]
    else:
        assert req.prefix_trim == ""
    assert got == want
    assert got_results == want_results
    assert out.get("system") == ("\n\n".join(system) if system else None)

    stops = body.get("stop")
    stops = [stops] if isinstance(stops, str) else stops or []
    assert out.get("stop_sequences", []) == [s for s in stops if s.strip()]
    if "temperature" in body:
        assert out["temperature"] == min(1.0, body["temperature"])
    if "top_p" in body:
        assert out["top_p"] == body["top_p"]

    used = list(dict.fromkeys(w[3] for w in want if w[1] == "tool_use"))
    if "tools" in body:
        assert [t["name"] for t in out["tools"]] == TOOL_NAMES
    elif used:  # history with tool calls: declared, and not callable now
        assert [t["name"] for t in out["tools"]] == used and out["tool_choice"] == {"type": "none"}
    else:
        assert "tools" not in out and "tool_choice" not in out


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
        text = "".join(b["text"] for b in last["content"][-1:])
        assert (text + req.prefix_trim).endswith(delivered)
