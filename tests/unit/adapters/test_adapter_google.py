"""Gemini and Vertex adapters (issue 16): what goes out (URLs, auth, bodies), what comes back
(answers, finish reasons, usage), and how Google's errors are classified for retry/fallback."""

from __future__ import annotations

import orjson
import pytest
from openai._models import construct_type
from openai.types.chat import ChatCompletion

from detour_proxy.adapters import UnsupportedRequest, adapter_for
from detour_proxy.adapters.base import ContinuationUnsupported
from detour_proxy.adapters.gemini_request import DROPPED, INELIGIBLE, TRANSLATED, to_gemini
from detour_proxy.config import ConfigError, Provider, parse_config

TOOL = {"type": "function", "function": {"name": "search", "description": "Search",
                                         "parameters": {"type": "object", "additionalProperties": False,
                                                        "properties": {"query": {"type": ["string", "null"]}},
                                                        "required": ["query"], "$schema": "x"}}}


def gemini(**kw) -> Provider:
    return Provider(name="gem", type="gemini", baseURL="https://generativelanguage.googleapis.com/v1beta",
                    apiKey={"value": "AIza-secret"}, **kw)


def vertex(**kw) -> Provider:
    return Provider(name="vx", type="vertex", baseURL="https://us-east5-aiplatform.googleapis.com",
                    project="proj-1", location="us-east5", **kw)


def body(**kw):
    return {"model": "m", "messages": [{"role": "user", "content": "hi"}], **kw}


# -- requests --------------------------------------------------------------------------------

def test_gemini_request_url_key_header_and_body():
    req = adapter_for(gemini()).build_chat(body(), "gemini-2.5-flash", False, "AIza-secret")
    assert req.url == "https://generativelanguage.googleapis.com/v1beta/models/gemini-2.5-flash:generateContent"
    assert req.headers["x-goog-api-key"] == "AIza-secret" and "AIza" not in repr(req)
    assert "key=" not in req.url
    assert orjson.loads(req.body) == {"contents": [{"role": "user", "parts": [{"text": "hi"}]}]}
    stream = adapter_for(gemini()).build_chat(body(), "gemini-2.5-flash", True, "k")
    assert stream.url.endswith("/models/gemini-2.5-flash:streamGenerateContent?alt=sse")


def test_conversation_with_system_tools_images_and_tool_results():
    msgs = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": [{"type": "text", "text": "look"},
                                     {"type": "image_url", "image_url": {"url": "data:image/jpeg;base64,QUJD"}}]},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "search", "arguments": '{"query": "x"}'}},
            {"id": "c2", "type": "function", "function": {"name": "search", "arguments": "not json"}}]},
        {"role": "tool", "tool_call_id": "c1", "content": '{"hits": 3}'},
        {"role": "tool", "tool_call_id": "c2", "content": "plain text"},
        {"role": "developer", "content": "Cite sources."},
    ]
    out = to_gemini({"model": "m", "messages": msgs, "tools": [TOOL], "tool_choice": "required",
                     "max_completion_tokens": 50, "temperature": 1.5, "top_p": 0.5, "stop": ["END"], "seed": 7,
                     "presence_penalty": 0.1, "frequency_penalty": -0.2})
    assert out["systemInstruction"] == {"parts": [{"text": "Be brief.\n\nCite sources."}]}
    assert out["contents"] == [
        {"role": "user", "parts": [{"text": "look"}, {"inlineData": {"mimeType": "image/jpeg", "data": "QUJD"}}]},
        {"role": "model", "parts": [{"functionCall": {"name": "search", "args": {"query": "x"}}},
                                    {"functionCall": {"name": "search", "args": {"_raw_arguments": "not json"}}}]},
        {"role": "user", "parts": [{"functionResponse": {"name": "search", "response": {"hits": 3}}},
                                   {"functionResponse": {"name": "search", "response": {"content": "plain text"}}}]},
    ]
    decl = out["tools"][0]["functionDeclarations"][0]
    assert decl == {"name": "search", "description": "Search",
                    "parameters": {"type": "object", "properties": {"query": {"type": "string", "nullable": True}},
                                   "required": ["query"]}}
    assert out["toolConfig"] == {"functionCallingConfig": {"mode": "ANY"}}
    assert out["generationConfig"] == {"maxOutputTokens": 50, "temperature": 1.5, "topP": 0.5,
                                       "stopSequences": ["END"], "seed": 7, "presencePenalty": 0.1,
                                       "frequencyPenalty": -0.2}


@pytest.mark.parametrize("choice, config", [
    ("auto", {"mode": "AUTO"}), ("none", {"mode": "NONE"}), ("required", {"mode": "ANY"}),
    ({"type": "function", "function": {"name": "search"}}, {"mode": "ANY", "allowedFunctionNames": ["search"]}),
])
def test_tool_choice(choice, config):
    assert to_gemini(body(tools=[TOOL], tool_choice=choice))["toolConfig"] == {"functionCallingConfig": config}


def test_response_format_becomes_response_schema():
    schema = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"],
              "additionalProperties": False}
    out = to_gemini(body(response_format={"type": "json_schema", "json_schema": {"name": "c", "schema": schema,
                                                                                "strict": True}}))
    assert out["generationConfig"] == {"responseMimeType": "application/json", "responseSchema": {
        "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}
    assert to_gemini(body(response_format={"type": "json_object"}))["generationConfig"] == {
        "responseMimeType": "application/json"}
    assert "generationConfig" not in to_gemini(body(response_format={"type": "text"}))


def test_every_request_field_is_accounted_for():
    """Translated, dropped with a reason, or ineligible: the table docs/adapters.md shows."""
    assert not set(TRANSLATED) & set(DROPPED) and not set(DROPPED) & set(INELIGIBLE)
    for name in DROPPED:
        assert to_gemini(body(**{name: "x" if name != "parallel_tool_calls" else False})) == to_gemini(body())
    for name in INELIGIBLE:
        with pytest.raises(UnsupportedRequest, match=name):
            to_gemini(body(**{name: True if name != "modalities" else ["text", "audio"]}))


@pytest.mark.parametrize("request_body, why", [
    (body(n=2), "n > 1"),
    ({"model": "m", "messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "https://x/cat.png"}}]}]}, "base64 data URLs"),
    ({"model": "m", "messages": [{"role": "tool", "tool_call_id": "nope", "content": "x"}]}, "answers no tool call"),
    ({"model": "m", "messages": [{"role": "user", "content": "q"}, {"role": "assistant", "tool_calls": [
        {"id": "c", "type": "function", "function": {"name": "f", "arguments": "{}"}}]}]}, "not answered"),
    (body(stop=["a", "b", "c", "d", "e", "f"]), "at most 5"),
    (body(temperature=3), "temperature"),
    (body(tools=[{"type": "function", "function": {"name": "f", "parameters": {"$ref": "#/x"}}}]), r"\$ref"),
    ({"model": "m", "messages": [{"role": "system", "content": "only"}]}, "at least one"),
])
def test_requests_gemini_cannot_express_make_the_target_ineligible(request_body, why):
    with pytest.raises(UnsupportedRequest, match=why):
        to_gemini(request_body)


def test_vertex_claude_uses_raw_predict_with_the_anthropic_body():
    a = adapter_for(vertex())
    req = a.build_chat(body(max_tokens=20, tools=[TOOL]), "claude-sonnet-4-5@20250929", False, "ya29.token")
    assert req.url == ("https://us-east5-aiplatform.googleapis.com/v1/projects/proj-1/locations/us-east5/"
                       "publishers/anthropic/models/claude-sonnet-4-5@20250929:rawPredict")
    assert req.headers["Authorization"] == "Bearer ya29.token" and "ya29" not in repr(req)
    sent = orjson.loads(req.body)
    assert "model" not in sent and sent["anthropic_version"] == "vertex-2023-10-16"
    assert sent["max_tokens"] == 20 and sent["messages"] == [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]
    assert sent["tools"][0]["name"] == "search"
    stream = a.build_chat(body(), "claude-sonnet-4-5", True, "t")
    assert stream.url.endswith(":streamRawPredict") and orjson.loads(stream.body)["stream"] is True
    cont = a.build_continuation(body(), "The quick ", "claude-sonnet-4-5", "t")
    assert orjson.loads(cont.body)["messages"][-1] == {"role": "assistant", "content": [{"type": "text", "text": "The quick"}]}
    assert cont.prefix_trim == " "


def test_vertex_gemini_and_the_publisher_override():
    req = adapter_for(vertex()).build_chat(body(), "gemini-2.5-pro", True, "t")
    assert req.url.endswith("/publishers/google/models/gemini-2.5-pro:streamGenerateContent?alt=sse")
    assert orjson.loads(req.body) == {"contents": [{"role": "user", "parts": [{"text": "hi"}]}]}
    with pytest.raises(ContinuationUnsupported):
        adapter_for(vertex()).build_continuation(body(), "x", "gemini-2.5-pro", "t")
    pinned = adapter_for(vertex(publisher="anthropic")).build_chat(body(), "my-tuned-model", False, "t")
    assert "/publishers/anthropic/models/my-tuned-model:rawPredict" in pinned.url
    pinned = adapter_for(vertex(publisher="google")).build_chat(body(), "claude-lookalike", False, "t")
    assert "/publishers/google/models/claude-lookalike:generateContent" in pinned.url


def test_vertex_without_a_token_is_ineligible_not_sent_unauthenticated():
    with pytest.raises(UnsupportedRequest, match="no Google access token"):
        adapter_for(vertex()).build_chat(body(), "claude-sonnet-4-5", False, None)


@pytest.mark.parametrize("provider, why", [
    ({"type": "vertex", "location": "us-east5"}, "project and location"),
    ({"type": "vertex", "project": "p"}, "project and location"),
    ({"type": "vertex", "project": "p", "location": "l", "apiKey": {"value": "k"}}, "not apiKey"),
    ({"type": "gemini", "project": "p"}, "apply only to type vertex"),
    ({"type": "anthropic", "credentialsFile": "/x"}, "apply only to type vertex"),
])
def test_config_refuses_incomplete_or_misplaced_google_fields(provider, why):
    doc = {"providers": [{"name": "p", "baseURL": "https://x", **provider}],
           "routes": [{"name": "r", "targets": [{"provider": "p", "model": "m"}]}]}
    with pytest.raises(ConfigError, match=why):
        parse_config(doc)


# -- answers ---------------------------------------------------------------------------------

def _answer(parts, finish="STOP", **extra):
    return orjson.dumps({"candidates": [{"content": {"role": "model", "parts": parts}, "finishReason": finish}],
                         "usageMetadata": {"promptTokenCount": 10, "candidatesTokenCount": 4,
                                           "thoughtsTokenCount": 3, "cachedContentTokenCount": 2,
                                           "totalTokenCount": 17},
                         "modelVersion": "gemini-2.5-flash", "responseId": "abc", **extra})


def test_gemini_answer_to_chat_completion():
    raw = _answer([{"text": "thinking...", "thought": True}, {"text": "Hello"}, {"text": " world"}])
    doc = orjson.loads(adapter_for(gemini()).parse_response(200, {}, raw))
    c = construct_type(type_=ChatCompletion, value=doc)
    assert c.choices[0].message.content == "Hello world" and c.choices[0].finish_reason == "stop"
    assert doc["choices"][0]["message"]["reasoning_content"] == "thinking..."
    assert doc["usage"] == {"prompt_tokens": 10, "completion_tokens": 7, "total_tokens": 17,
                            "prompt_tokens_details": {"cached_tokens": 2},
                            "completion_tokens_details": {"reasoning_tokens": 3}}
    assert doc["model"] == "gemini-2.5-flash"


def test_gemini_function_calls_become_tool_calls():
    raw = _answer([{"functionCall": {"name": "search", "args": {"query": "x"}}},
                   {"functionCall": {"name": "search", "args": {"query": "y"}, "id": "g-1"}}])
    msg = orjson.loads(adapter_for(gemini()).parse_response(200, {}, raw))["choices"][0]
    assert msg["finish_reason"] == "tool_calls" and msg["message"]["content"] is None
    calls = msg["message"]["tool_calls"]
    assert [orjson.loads(c["function"]["arguments"]) for c in calls] == [{"query": "x"}, {"query": "y"}]
    assert calls[1]["id"] == "g-1" and calls[0]["id"].startswith("call_") and calls[0]["id"] != calls[1]["id"]


@pytest.mark.parametrize("finish, expected", [
    ("MAX_TOKENS", "length"), ("SAFETY", "content_filter"), ("RECITATION", "content_filter"),
    ("PROHIBITED_CONTENT", "content_filter"), ("STOP", "stop"),
])
def test_finish_reasons(finish, expected):
    doc = orjson.loads(adapter_for(gemini()).parse_response(200, {}, _answer([{"text": "x"}], finish)))
    assert doc["choices"][0]["finish_reason"] == expected


def test_blocked_prompt_and_unusable_answers():
    a = adapter_for(gemini())
    blocked = orjson.loads(a.parse_response(200, {}, orjson.dumps({"promptFeedback": {"blockReason": "SAFETY"}})))
    assert blocked["choices"][0]["finish_reason"] == "content_filter" and blocked["choices"][0]["message"]["content"] == ""
    for bad in (_answer([{"functionCall": {"name": "f"}}], "MALFORMED_FUNCTION_CALL"), b'{"candidates": []}',
                b'{"error": {"code": 500}}'):
        with pytest.raises(ValueError):
            a.parse_response(200, {}, bad)


def test_vertex_reads_claude_and_gemini_answers_by_shape():
    a = adapter_for(vertex())
    claude = {"id": "msg_1", "type": "message", "role": "assistant", "model": "claude-sonnet-4-5",
              "content": [{"type": "text", "text": "hi"}], "stop_reason": "end_turn",
              "usage": {"input_tokens": 3, "output_tokens": 1}}
    assert orjson.loads(a.parse_response(200, {}, orjson.dumps(claude)))["choices"][0]["message"]["content"] == "hi"
    assert orjson.loads(a.parse_response(200, {}, _answer([{"text": "yo"}])))["choices"][0]["message"]["content"] == "yo"


# -- errors ----------------------------------------------------------------------------------

def _google(code, status, msg="boom", details=None):
    return orjson.dumps({"error": {"code": code, "message": msg, "status": status, **({"details": details} if details else {})}})


@pytest.mark.parametrize("code, word, retryable", [
    (429, "RESOURCE_EXHAUSTED", True), (503, "UNAVAILABLE", True), (500, "INTERNAL", True),
    (504, "DEADLINE_EXCEEDED", True), (400, "INVALID_ARGUMENT", False), (403, "PERMISSION_DENIED", False),
    (404, "NOT_FOUND", False),
])
def test_google_errors_are_classified(code, word, retryable):
    for a in (adapter_for(gemini()), adapter_for(vertex())):
        err = a.parse_error(code, {}, _google(code, word, "quota for AIza-secret"), api_key="AIza-secret")
        assert (err.status, err.type, err.code, err.retryable) == (code, word, word, retryable)
        assert "AIza-secret" not in err.message and word in err.message
        assert (code in a.transient_statuses) == retryable


def test_retry_info_detail_is_the_retry_after():
    raw = _google(429, "RESOURCE_EXHAUSTED", details=[
        {"@type": "type.googleapis.com/google.rpc.QuotaFailure"},
        {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "17s"}])
    assert adapter_for(gemini()).parse_error(429, {}, raw).retry_after == 17.0
    assert adapter_for(gemini()).parse_error(429, {"retry-after": "3"}, raw).retry_after == 3.0
    listed = b"[" + _google(503, "UNAVAILABLE") + b"]"
    assert adapter_for(gemini()).parse_error(503, {}, listed).type == "UNAVAILABLE"


def test_claude_errors_on_vertex_keep_anthropic_types():
    raw = orjson.dumps({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}})
    err = adapter_for(vertex()).parse_error(529, {}, raw)
    assert (err.status, err.type, err.retryable) == (529, "overloaded_error", True)
    assert 529 in adapter_for(vertex()).transient_statuses


def test_the_docs_table_lists_exactly_the_known_fields():
    import re
    from pathlib import Path

    text = (Path(__file__).resolve().parents[3] / "docs" / "adapters.md").read_text()
    section = text.split("## OpenAI chat request -> Gemini generateContent")[1].split("\n## ")[0]
    doc: dict[str, str] = {}
    for names, verdict in re.findall(r"^\| (`[^|]+`[^|]*) \| (\w[\w ]*?)[:|]", section, re.M):
        for name in re.findall(r"`(\w+)`", names):
            doc[name] = verdict.strip()
    assert {f for f, v in doc.items() if v == "dropped"} == set(DROPPED)
    assert {f for f, v in doc.items() if v == "target ineligible"} == set(INELIGIBLE)
    assert {f for f, v in doc.items() if v == "translated"} == set(TRANSLATED)


def test_thought_signatures_travel_in_the_tool_call_id():
    import base64

    sig = base64.b64encode(bytes(range(256))).decode()       # has + and / in standard base64
    raw = _answer([{"functionCall": {"name": "search", "args": {}}, "thoughtSignature": sig}])
    call = orjson.loads(adapter_for(gemini()).parse_response(200, {}, raw))["choices"][0]["message"]["tool_calls"][0]
    assert "__thought__" in call["id"] and all(ch.isalnum() or ch in "_-" for ch in call["id"])  # valid on Anthropic
    history = {"model": "m", "messages": [
        {"role": "user", "content": "q"}, {"role": "assistant", "tool_calls": [call]},
        {"role": "tool", "tool_call_id": call["id"], "content": "ok"}]}
    for model in ("gemini-2.5-flash", "gemini-3-pro-preview"):
        part = to_gemini(history, model)["contents"][1]["parts"][0]
        assert part["thoughtSignature"] == sig
    # claude on Vertex gets the same id as a tool_use id
    claude = orjson.loads(adapter_for(vertex()).build_chat(history, "claude-sonnet-4-5", False, "t").body)
    assert claude["messages"][1]["content"][0]["id"] == call["id"]
    plain = {**history, "messages": [history["messages"][0], {"role": "assistant", "tool_calls": [{**call, "id": "c1"}]},
                                     {"role": "tool", "tool_call_id": "c1", "content": "ok"}]}
    assert "thoughtSignature" not in to_gemini(plain, "gemini-2.5-flash")["contents"][1]["parts"][0]
    assert to_gemini(plain, "gemini-3-pro-preview")["contents"][1]["parts"][0]["thoughtSignature"] == \
        "skip_thought_signature_validator"


def test_vertex_api_version_overrides_anthropic_version_and_drops_sampling_when_dated():
    sent = orjson.loads(adapter_for(vertex(apiVersion="2026-10-21")).build_chat(
        body(temperature=0.5, top_p=0.9), "claude-sonnet-4-5", False, "t").body)
    assert sent["anthropic_version"] == "2026-10-21" and "temperature" not in sent and "top_p" not in sent
    sent = orjson.loads(adapter_for(vertex()).build_chat(body(temperature=0.5), "claude-sonnet-4-5", False, "t").body)
    assert sent["anthropic_version"] == "vertex-2023-10-16" and sent["temperature"] == 0.5
