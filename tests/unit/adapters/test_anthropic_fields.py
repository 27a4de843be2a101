"""Every OpenAI request field on an Anthropic target: translated, dropped with a reason, or the
target is ineligible (issue 13: `response_format` was dropped silently). docs/adapters.md is
checked against the same lists."""

from __future__ import annotations

import re
from pathlib import Path

import orjson
import pytest

from detour_proxy.adapters.anthropic_fields import ANSWER_TOOL, DROPPED, INELIGIBLE, TRANSLATED
from detour_proxy.adapters.anthropic_request import to_anthropic
from detour_proxy.adapters.anthropic_response import AnthropicStreamDecoder, from_anthropic
from detour_proxy.adapters.base import UnsupportedRequest

DOC = Path(__file__).resolve().parents[3] / "docs" / "adapters.md"
BASE = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
SCHEMA = {"type": "object", "properties": {"answer": {"type": "string"}}, "required": ["answer"],
          "additionalProperties": False}


def translate(**fields):
    return to_anthropic({**BASE, **fields}, "claude", False, 1024)[0]


def test_the_docs_table_lists_exactly_the_known_fields():
    section = DOC.read_text().split("## OpenAI chat request -> Anthropic Messages")[1].split("\n## ")[0]
    rows = re.findall(r"^\| (`[^|]+`[^|]*) \| (\w[\w ]*?)[:|]", section, re.M)
    doc: dict[str, str] = {}
    for names, verdict in rows:
        for name in re.findall(r"`(\w+)`", names):
            doc[name] = verdict.strip()
    assert {f for f, v in doc.items() if v == "dropped"} == set(DROPPED)
    assert {f for f, v in doc.items() if v == "target ineligible"} == set(INELIGIBLE) | {"n", "functions", "function_call"}
    assert {f for f, v in doc.items() if v == "translated"} == set(TRANSLATED)


@pytest.mark.parametrize("field", sorted(DROPPED))
def test_dropped_fields_are_not_sent_and_the_request_is_served(field):
    out = translate(**{field: {"k": "v"} if field in ("metadata", "logit_bias", "prediction") else 0.5})
    assert field not in out and out["messages"] == [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]


@pytest.mark.parametrize("field", sorted(INELIGIBLE))
def test_ineligible_fields_raise_with_the_field_named(field):
    value = {"logprobs": True, "top_logprobs": 3, "audio": {"voice": "x"}, "modalities": ["audio"],
             "web_search_options": {}}[field]
    with pytest.raises(UnsupportedRequest, match=f"`{field}`"):
        translate(**{field: value})


def test_harmless_values_of_ineligible_fields_are_served():
    assert translate(logprobs=False, top_logprobs=0, modalities=["text"])


def test_json_schema_is_a_forced_tool_carrying_the_schema():
    out = translate(response_format={"type": "json_schema", "json_schema": {"name": "a", "schema": SCHEMA, "strict": True}})
    assert out["tools"] == [{"name": ANSWER_TOOL, "description": out["tools"][0]["description"], "input_schema": SCHEMA}]
    assert out["tool_choice"] == {"type": "tool", "name": ANSWER_TOOL}


def test_json_object_is_a_forced_tool_with_a_permissive_schema():
    out = translate(response_format={"type": "json_object"})
    assert out["tools"][0]["input_schema"] == {"type": "object", "additionalProperties": True}
    assert out["tool_choice"] == {"type": "tool", "name": ANSWER_TOOL}
    assert "tools" not in translate(response_format={"type": "text"})


def test_with_the_requests_own_tools_the_model_may_call_one_or_answer():
    tools = [{"type": "function", "function": {"name": "search", "parameters": SCHEMA}}]
    rf = {"type": "json_schema", "json_schema": {"name": "a", "schema": SCHEMA}}
    out = translate(tools=tools, response_format=rf)
    assert [t["name"] for t in out["tools"]] == ["search", ANSWER_TOOL] and out["tool_choice"] == {"type": "any"}
    assert translate(tools=tools, response_format=rf, tool_choice="none")["tool_choice"] == {"type": "tool", "name": ANSWER_TOOL}
    forced = {"type": "function", "function": {"name": "search"}}
    assert translate(tools=tools, response_format=rf, tool_choice=forced)["tool_choice"] == {"type": "tool", "name": "search"}


@pytest.mark.parametrize("rf, why", [
    ({"type": "json_schema", "json_schema": {"name": "a", "schema": {"type": "array"}}}, "root must have type object"),
    ({"type": "grammar"}, "not supported"),
])
def test_formats_anthropic_cannot_carry_make_it_ineligible(rf, why):
    with pytest.raises(UnsupportedRequest, match=why):
        translate(response_format=rf)


def test_the_reserved_tool_name_is_refused():
    with pytest.raises(UnsupportedRequest, match="reserved"):
        translate(tools=[{"type": "function", "function": {"name": ANSWER_TOOL}}])


def test_the_answer_tools_input_comes_back_as_content():
    raw = orjson.dumps({"id": "msg_1", "type": "message", "role": "assistant", "model": "claude",
                        "content": [{"type": "tool_use", "id": "t", "name": ANSWER_TOOL, "input": {"answer": "42"}}],
                        "stop_reason": "tool_use", "usage": {"input_tokens": 3, "output_tokens": 4}})
    choice = orjson.loads(from_anthropic(raw))["choices"][0]
    assert orjson.loads(choice["message"]["content"]) == {"answer": "42"}
    assert "tool_calls" not in choice["message"] and choice["finish_reason"] == "stop"


def test_the_answer_tools_streamed_input_comes_back_as_content_deltas():
    def ev(doc):
        return b"event: " + doc["type"].encode() + b"\ndata: " + orjson.dumps(doc) + b"\n\n"
    d = AnthropicStreamDecoder()
    events = d.feed(b"".join([
        ev({"type": "message_start", "message": {"id": "m", "model": "c", "usage": {"input_tokens": 1}}}),
        ev({"type": "content_block_start", "index": 0,
            "content_block": {"type": "tool_use", "id": "t", "name": ANSWER_TOOL, "input": {}}}),
        ev({"type": "content_block_delta", "index": 0, "delta": {"type": "input_json_delta", "partial_json": '{"answer"'}}),
        ev({"type": "content_block_delta", "index": 0, "delta": {"type": "input_json_delta", "partial_json": ': "42"}'}}),
        ev({"type": "message_delta", "delta": {"stop_reason": "tool_use"}, "usage": {"output_tokens": 5}}),
        ev({"type": "message_stop"}),
    ]))
    chunks = [orjson.loads(e.payload) for e in events if e.kind == "chunk"]
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks)
    assert orjson.loads(text) == {"answer": "42"}
    assert not any("tool_calls" in c["choices"][0]["delta"] for c in chunks)
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
