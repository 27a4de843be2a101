"""OpenAI chat requests -> Anthropic Messages requests (checked by the strict validator)."""

from __future__ import annotations

import copy

import orjson
import pytest
from pydantic import ValidationError

from detour_proxy.adapters import ContinuationUnsupported, UnsupportedRequest, adapter_for

PNG = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg=="


@pytest.fixture
def anth(provider):
    return adapter_for(provider("anthropic", apiVersion=None, headers={"x-extra": "1"}, maxTokensDefault=777))


def build(anth, body, stream=False, model="claude-x"):
    req = anth.build_chat(body, model, stream, "sk-ant-secret")
    return orjson.loads(req.body), req


def test_url_headers_and_defaults(anth, anthropic_check):
    body, req = build(anth, {"model": "alias", "messages": [{"role": "user", "content": "hi"}]})
    assert req.method == "POST" and req.url == "https://api.anthropic.com/v1/messages"
    assert req.headers["x-api-key"] == "sk-ant-secret"
    assert req.headers["anthropic-version"] == "2023-06-01"
    assert req.headers["x-extra"] == "1" and req.headers["Content-Type"] == "application/json"
    assert "Authorization" not in req.headers
    assert "sk-ant-secret" not in repr(req)
    assert body == {"model": "claude-x", "max_tokens": 777,
                    "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]}
    anthropic_check(body)


@pytest.mark.parametrize("base", ["https://api.anthropic.com", "https://api.anthropic.com/",
                                  "https://api.anthropic.com/v1", "https://api.anthropic.com/v1/"])
def test_base_url_with_or_without_v1(provider, base):
    a = adapter_for(provider("anthropic", baseURL=base, apiVersion="2099-01-01"))
    req = a.build_chat({"messages": [{"role": "user", "content": "x"}]}, "m", False, None)
    assert req.url == "https://api.anthropic.com/v1/messages"
    assert req.headers["anthropic-version"] == "2099-01-01"
    assert "x-api-key" not in req.headers


def test_system_developer_merge_and_params(anth, anthropic_check):
    src = {
        "model": "claude-x",
        "messages": [
            {"role": "system", "content": "You are terse."},
            {"role": "developer", "content": [{"type": "text", "text": "Use metric."}]},
            {"role": "user", "content": "a"},
            {"role": "user", "content": [{"type": "text", "text": "b"}]},
            {"role": "assistant", "content": "c"},
            {"role": "user", "content": "d"},
        ],
        "max_completion_tokens": 50, "max_tokens": 10, "temperature": 1.7, "top_p": 0.9,
        "stop": "END", "user": "u-42", "stream": True,
        "stream_options": {"include_usage": True}, "seed": 3,
    }
    frozen = copy.deepcopy(src)
    body, _ = build(anth, src, stream=True)
    assert src == frozen, "client body must not be mutated"
    anthropic_check(body)
    assert body["system"] == "You are terse.\n\nUse metric."
    assert [m["role"] for m in body["messages"]] == ["user", "assistant", "user"]
    assert [b["text"] for b in body["messages"][0]["content"]] == ["a", "b"]
    assert body["max_tokens"] == 50 and body["temperature"] == 1.0 and body["top_p"] == 0.9
    assert body["stop_sequences"] == ["END"] and body["stream"] is True
    assert body["metadata"] == {"user_id": "u-42"}
    assert "seed" not in body and "stream_options" not in body


def test_stop_list_and_max_tokens(anth, anthropic_check):
    body, _ = build(anth, {"messages": [{"role": "user", "content": "x"}], "stop": ["a", "", "b"], "max_tokens": 9})
    anthropic_check(body)
    assert body["stop_sequences"] == ["a", "b"] and body["max_tokens"] == 9 and "stream" not in body


def test_images(anth, anthropic_check):
    body, _ = build(anth, {"messages": [{"role": "user", "content": [
        {"type": "text", "text": "what is this"},
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}},
        {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg", "detail": "high"}},
    ]}]})
    anthropic_check(body)
    blocks = body["messages"][0]["content"]
    assert blocks[1] == {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG}}
    assert blocks[2] == {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.jpg"}}


def test_tools_tool_calls_and_results(anth, anthropic_check):
    src = {
        "messages": [
            {"role": "user", "content": "weather in Paris and Rome?"},
            {"role": "assistant", "content": None, "tool_calls": [
                {"id": "call_1", "type": "function", "function": {"name": "weather", "arguments": '{"city": "Paris"}'}},
                {"id": "call_2", "type": "function", "function": {"name": "weather", "arguments": "{not json"}},
                {"id": "call_3", "type": "function", "function": {"name": "now", "arguments": ""}},
            ]},
            {"role": "tool", "tool_call_id": "call_1", "content": "18C"},
            {"role": "tool", "tool_call_id": "call_2", "content": [{"type": "text", "text": "21C"}, {"type": "text", "text": "sunny"}]},
            {"role": "tool", "tool_call_id": "call_3", "content": ""},
            {"role": "user", "content": "thanks"},
        ],
        "tools": [
            {"type": "function", "function": {"name": "weather", "description": "Weather by city",
                                              "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}},
            {"type": "function", "function": {"name": "now"}},
        ],
        "tool_choice": "required", "parallel_tool_calls": False,
    }
    body, _ = build(anth, src)
    anthropic_check(body)
    assert body["tools"] == [
        {"name": "weather", "description": "Weather by city",
         "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}}},
        {"name": "now", "input_schema": {"type": "object", "properties": {}}},
    ]
    assert body["tool_choice"] == {"type": "any", "disable_parallel_tool_use": True}
    uses = body["messages"][1]["content"]
    assert uses == [
        {"type": "tool_use", "id": "call_1", "name": "weather", "input": {"city": "Paris"}},
        {"type": "tool_use", "id": "call_2", "name": "weather", "input": {"_raw_arguments": "{not json"}},
        {"type": "tool_use", "id": "call_3", "name": "now", "input": {}},
    ]
    results = body["messages"][2]
    assert results["role"] == "user"
    assert results["content"] == [
        {"type": "tool_result", "tool_use_id": "call_1", "content": "18C"},
        {"type": "tool_result", "tool_use_id": "call_2",
         "content": [{"type": "text", "text": "21C"}, {"type": "text", "text": "sunny"}]},
        {"type": "tool_result", "tool_use_id": "call_3"},
        {"type": "text", "text": "thanks"},
    ]


@pytest.mark.parametrize("choice,expected", [
    ("auto", {"type": "auto"}), ("none", {"type": "none"}), ("required", {"type": "any"}),
    ({"type": "function", "function": {"name": "f"}}, {"type": "tool", "name": "f"}),
    (None, None),
])
def test_tool_choice(anth, anthropic_check, choice, expected):
    src = {"messages": [{"role": "user", "content": "x"}],
           "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]}
    if choice is not None:
        src["tool_choice"] = choice
    body, _ = build(anth, src)
    anthropic_check(body)
    assert body.get("tool_choice") == expected


def test_final_assistant_prefill_is_rstripped(anth, anthropic_check):
    body, req = build(anth, {"messages": [{"role": "user", "content": "count"},
                                          {"role": "assistant", "content": "1, 2, \n"}]})
    anthropic_check(body)
    assert body["messages"][-1]["content"] == [{"type": "text", "text": "1, 2,"}]
    assert req.prefix_trim == " \n"


def test_continuation_appends_prefill(anth, anthropic_check):
    src = {"messages": [{"role": "user", "content": "story"}], "stream": False, "max_tokens": 100}
    req = anth.build_continuation(src, "Once upon a time ", "claude-x", "k")
    body = orjson.loads(req.body)
    anthropic_check(body)
    assert body["stream"] is True
    assert body["messages"][-1] == {"role": "assistant", "content": [{"type": "text", "text": "Once upon a time"}]}
    assert req.prefix_trim == " "
    # whitespace-only delivered text: no (invalid) empty assistant turn, all of it is trimmed
    req2 = anth.build_continuation(src, "\n\n", "claude-x", "k")
    body2 = anthropic_check(req2.body)
    assert body2["messages"][-1]["role"] == "user" and req2.prefix_trim == "\n\n"


def test_continuation_extends_client_prefill(anth, anthropic_check):
    src = {"messages": [{"role": "user", "content": "json please"}, {"role": "assistant", "content": "{"}]}
    body = anthropic_check(anth.build_continuation(src, '"a": 1', "m", None).body)
    assert [b["text"] for b in body["messages"][-1]["content"]] == ["{", '"a": 1']


def test_continuation_none_mode(provider):
    a = adapter_for(provider("anthropic", continuation="none"))
    assert a.can_continue is False
    with pytest.raises(ContinuationUnsupported):
        a.build_continuation({"messages": [{"role": "user", "content": "x"}]}, "abc", "m", None)


@pytest.mark.parametrize("src", [
    {"messages": [{"role": "user", "content": "x"}], "n": 2},
    {"messages": [{"role": "function", "name": "f", "content": "x"}]},
    {"messages": [{"role": "user", "content": [{"type": "input_audio", "input_audio": {}}]}]},
    {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "ftp://x"}}]}]},
    {"messages": "hello"},
    {"messages": [{"role": "user", "content": "x"}], "max_tokens": "many"},
    {"messages": [{"role": "user", "content": "x"}], "temperature": "hot"},
])
def test_unsupported_requests(anth, src):
    with pytest.raises(UnsupportedRequest):
        anth.build_chat(src, "m", False, None)


def test_no_embeddings(anth):
    assert anth.supports("chat") and not anth.supports("embeddings")
    with pytest.raises(UnsupportedRequest):
        anth.build_embeddings({"input": "x"}, "m", None)


VALID = {"model": "m", "max_tokens": 5, "tools": [{"name": "f", "input_schema": {"type": "object"}}], "messages": [
    {"role": "user", "content": [{"type": "text", "text": "hi"}]},
    {"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": "f", "input": {}}]},
    {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1", "content": "ok"}]},
]}


def _broken(path_fn):
    req = copy.deepcopy(VALID)
    path_fn(req)
    return req


@pytest.mark.parametrize("req", [
    _broken(lambda r: r.pop("max_tokens")),
    _broken(lambda r: r["messages"].append({"role": "tool", "content": "x"})),
    _broken(lambda r: r["messages"][0].update(content=[{"type": "text"}])),
    _broken(lambda r: r["messages"][0].update(content=[{"type": "image", "source": {
        "type": "base64", "media_type": "image/bmp", "data": "AA=="}}])),
    _broken(lambda r: r["messages"][0].update(content=[{"type": "text", "text": "  "}])),
    _broken(lambda r: r["messages"].insert(1, {"role": "user", "content": "again"})),
    _broken(lambda r: r["messages"][2]["content"].insert(0, {"type": "text", "text": "first"})),
    _broken(lambda r: r["messages"][2]["content"][0].update(tool_use_id="t9")),
    _broken(lambda r: r["messages"].append({"role": "assistant", "content": "end "})),
    _broken(lambda r: r.update(tools=[{"name": "f"}])),
    _broken(lambda r: r.update(tool_choice={"type": "function", "name": "f"})),
    _broken(lambda r: r.update(bogus=1)),
    # inside tool_result content, which the SDK types leave unchecked
    _broken(lambda r: r["messages"][2]["content"][0].update(content=[{"type": "text", "text": " "}])),
    _broken(lambda r: r["messages"][2]["content"][0].update(content=[{"type": "text"}])),
    _broken(lambda r: r["messages"][2]["content"][0].update(content=[{"type": "tool_use", "id": "x", "name": "f",
                                                                       "input": {}}])),
    _broken(lambda r: r["messages"][2]["content"][0].update(content=[{"type": "image", "source": {
        "type": "base64", "media_type": "image/bmp", "data": "AA=="}}])),
    _broken(lambda r: r["messages"][2]["content"][0].update(content=" ")),
    # a tool_use must be answered in the very next turn, and tool blocks need tools declared
    _broken(lambda r: r["messages"][2].update(content=[{"type": "text", "text": "never mind"}])),
    _broken(lambda r: r["messages"].pop()),
    _broken(lambda r: r.pop("tools")),
    _broken(lambda r: r.update(stop_sequences=["\n "])),
], ids=lambda r: "broken")
def test_validator_rejects_broken_requests(anthropic_check, req):
    anthropic_check(copy.deepcopy(VALID))  # the unbroken form passes...
    with pytest.raises((AssertionError, ValidationError)):
        anthropic_check(req)  # ...and each breakage is caught


def test_api_version_2026_drops_sampling_parameters(provider, anthropic_check):
    src = {"messages": [{"role": "user", "content": "x"}], "temperature": 0.2, "top_p": 0.5}
    old = anthropic_check(adapter_for(provider("anthropic")).build_chat(src, "m", False, None).body)
    assert old["temperature"] == 0.2 and old["top_p"] == 0.5
    with pytest.raises(AssertionError):  # the 2026-10-21 schema has no sampling parameters
        anthropic_check(old, legacy_sampling=False)
    new_adapter = adapter_for(provider("anthropic", apiVersion="2026-10-21"))
    new = anthropic_check(new_adapter.build_chat(src, "m", False, None).body, legacy_sampling=False)
    assert "temperature" not in new and "top_p" not in new


def test_blank_system_is_omitted(anth, anthropic_check):
    body, _ = build(anth, {"messages": [{"role": "system", "content": " "}, {"role": "developer", "content": ""},
                                        {"role": "user", "content": "x"}]})
    anthropic_check(body)
    assert "system" not in body


def test_tool_results_open_the_user_turn(anth, anthropic_check):
    # lenient clients put a user note between the tool call and its result
    body, _ = build(anth, {"messages": [
        {"role": "user", "content": "go"},
        {"role": "assistant", "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
        {"role": "user", "content": "note"},
        {"role": "tool", "tool_call_id": "c1", "content": "done"},
    ]})
    anthropic_check(body)
    assert [b["type"] for b in body["messages"][2]["content"]] == ["tool_result", "text"]


def test_legacy_function_call_becomes_a_tool_round(anth, anthropic_check):
    src = {"messages": [
        {"role": "user", "content": "weather?"},
        {"role": "assistant", "content": None, "function_call": {"name": "weather", "arguments": '{"city": "Oslo"}'}},
        {"role": "function", "name": "weather", "content": "Sunny"},
        {"role": "assistant", "content": "Sunny. Again?"},
        {"role": "user", "content": "yes"},
        {"role": "assistant", "function_call": {"name": "weather", "arguments": "{bad"}},
        {"role": "function", "name": "weather", "content": [{"type": "text", "text": " "}, {"type": "text", "text": "Rain"}]},
    ]}
    body, _ = build(anth, src)
    anthropic_check(body)
    assert [m["content"] for m in body["messages"][1:]] == [
        [{"type": "tool_use", "id": "call_legacy_1", "name": "weather", "input": {"city": "Oslo"}}],
        [{"type": "tool_result", "tool_use_id": "call_legacy_1", "content": "Sunny"}],
        [{"type": "text", "text": "Sunny. Again?"}],
        [{"type": "text", "text": "yes"}],
        [{"type": "tool_use", "id": "call_legacy_5", "name": "weather", "input": {"_raw_arguments": "{bad"}}],
        [{"type": "tool_result", "tool_use_id": "call_legacy_5", "content": "Rain"}],
    ]
    # history only: the tools it names are declared, and cannot be called now
    assert body["tools"] == [{"name": "weather", "input_schema": {"type": "object", "properties": {}}}]
    assert body["tool_choice"] == {"type": "none"}
    assert build(anth, src)[1].body == anth.build_chat(src, "claude-x", False, "k").body  # stable ids


@pytest.mark.parametrize("src", [
    # the model's answer would come back as tool_calls, which a functions-API client ignores
    {"messages": [{"role": "user", "content": "x"}], "functions": [{"name": "f", "parameters": {}}]},
    {"messages": [{"role": "user", "content": "x"}], "functions": [{"name": "f"}], "function_call": {"name": "f"}},
    # a function message must answer the function_call just before it
    {"messages": [{"role": "user", "content": "x"}, {"role": "function", "name": "f", "content": "r"}]},
    {"messages": [{"role": "user", "content": "x"},
                  {"role": "assistant", "function_call": {"name": "f", "arguments": "{}"}},
                  {"role": "function", "name": "f", "content": "r"}, {"role": "function", "name": "f", "content": "r"}]},
    {"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "function_call": {"arguments": "{}"}},
                  {"role": "function", "name": "f", "content": "r"}]},
])
def test_legacy_functions_that_cannot_translate_are_unsupported(anth, src):
    with pytest.raises(UnsupportedRequest):
        anth.build_chat(src, "m", False, None)


def test_tool_result_text_is_never_blank_and_keeps_images(anth, anthropic_check):
    call = {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
    call2 = {**call, "id": "c2"}
    call3 = {**call, "id": "c3"}
    body, _ = build(anth, {"messages": [
        {"role": "user", "content": "go"},
        {"role": "assistant", "tool_calls": [call, call2, call3]},
        {"role": "tool", "tool_call_id": "c1", "content": [{"type": "text", "text": " "}, {"type": "text", "text": "x"}]},
        {"role": "tool", "tool_call_id": "c2", "content": "\n "},
        {"role": "tool", "tool_call_id": "c3", "content": [
            {"type": "text", "text": "chart:"}, {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}}]},
    ], "tools": [{"type": "function", "function": {"name": "f"}}]})
    anthropic_check(body)
    assert body["messages"][2]["content"] == [
        {"type": "tool_result", "tool_use_id": "c1", "content": "x"},
        {"type": "tool_result", "tool_use_id": "c2"},
        {"type": "tool_result", "tool_use_id": "c3", "content": [
            {"type": "text", "text": "chart:"},
            {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG}}]},
    ]


def test_tool_history_without_tools_declares_them_not_callable(anth, anthropic_check):
    body, _ = build(anth, {"messages": [
        {"role": "user", "content": "go"},
        {"role": "assistant", "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "search", "arguments": "{}"}},
                                             {"id": "c2", "type": "function", "function": {"name": "now", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "r1"},
        {"role": "tool", "tool_call_id": "c2", "content": "r2"},
        {"role": "user", "content": "summarise"},
    ]})
    anthropic_check(body)
    assert [t["name"] for t in body["tools"]] == ["search", "now"] and body["tool_choice"] == {"type": "none"}


_CALL = {"role": "assistant", "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}},
                                             {"id": "c2", "type": "function", "function": {"name": "f", "arguments": "{}"}}]}


@pytest.mark.parametrize("tail", [
    [{"role": "user", "content": "never mind"}],                                       # no results at all
    [{"role": "tool", "tool_call_id": "c1", "content": "r"}, {"role": "user", "content": "and c2?"}],  # partial
    [],                                                                                # ends on the calls
    [{"role": "tool", "tool_call_id": "c1", "content": "r"}, {"role": "tool", "tool_call_id": "c2", "content": "r"},
     {"role": "tool", "tool_call_id": "c9", "content": "r"}],                          # answers nothing
    [{"role": "tool", "tool_call_id": "c1", "content": "r"}, {"role": "tool", "tool_call_id": "c1", "content": "r"},
     {"role": "tool", "tool_call_id": "c2", "content": "r"}],                          # answered twice
    [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"},
     {"role": "tool", "tool_call_id": "c1", "content": "r"}, {"role": "tool", "tool_call_id": "c2", "content": "r"}],  # too late
])
def test_unanswered_or_stray_tool_results_are_unsupported(anth, tail):
    # OpenAI answers these with a 400 too; Anthropic would reject the translation
    with pytest.raises(UnsupportedRequest, match="tool"):
        anth.build_chat({"messages": [{"role": "user", "content": "go"}, _CALL, *tail]}, "m", False, None)


@pytest.mark.parametrize("extra", [
    {"top_p": 1.5}, {"top_p": -0.1}, {"temperature": -1}, {"temperature": 2.5}, {"max_tokens": -5},
    {"temperature": float("nan")},
])
def test_out_of_range_numbers_are_unsupported(anth, extra):
    with pytest.raises(UnsupportedRequest, match=next(iter(extra))):
        anth.build_chat({"messages": [{"role": "user", "content": "x"}], **extra}, "m", False, None)


@pytest.mark.parametrize("messages", [
    [{"role": "system", "content": "You are terse."}],
    [{"role": "system", "content": "s"}, {"role": "user", "content": " \n"}, {"role": "assistant", "content": [{"type": "text", "text": ""}]}],
    [],
])
def test_nothing_to_send_is_unsupported(anth, messages):
    with pytest.raises(UnsupportedRequest, match="at least one"):
        anth.build_chat({"messages": messages}, "m", False, None)


def test_whitespace_stop_sequences_are_dropped(anth, anthropic_check):
    body, _ = build(anth, {"messages": [{"role": "user", "content": "x"}], "stop": [" ", "\n", "END", " x "]})
    anthropic_check(body)
    assert body["stop_sequences"] == ["END", " x "]
    body, _ = build(anth, {"messages": [{"role": "user", "content": "x"}], "stop": "\n\n"})
    assert "stop_sequences" not in body


def test_text_part_without_a_string_is_unsupported_not_dropped(anth):
    with pytest.raises(UnsupportedRequest):
        anth.build_chat({"messages": [{"role": "user", "content": [{"type": "text", "text": 5}]}]}, "m", False, None)
