"""OpenAI chat request -> Gemini `generateContent` request (the Gemini API and Vertex AI alike).

Gemini models a conversation as `contents` of `user`/`model` turns made of `parts` (`text`,
`inlineData`, `functionCall`, `functionResponse`), with the system prompt apart
(`systemInstruction`), tools as `functionDeclarations` steered by `toolConfig`, and the
sampling knobs in `generationConfig`. This module only reshapes; what Gemini rejects comes
back as its own 400.

Choices worth knowing:
- system/developer messages anywhere are hoisted, in order, into `systemInstruction`.
- Consecutive turns of the same role are merged (Gemini wants alternating turns); tool
  results are `functionResponse` parts of a `user` turn. A `functionResponse` needs the
  function's *name*, which OpenAI's tool message does not carry: it is looked up from the
  assistant `tool_calls` entry with the same id (a tool message answering no call is an
  UnsupportedRequest, as it is a 400 on OpenAI). A tool result that is a JSON object is sent
  as the response object; any other text as `{"content": "<text>"}` (Gemini wants an object).
- A function call's `thoughtSignature` (which Gemini 3 needs back with the call) travels in the
  tool call id (`gemini_response.SIGNATURE_MARK`) and is put back on the `functionCall` part.
- Tool-call arguments that are not a JSON object are sent as `{"_raw_arguments": "<text>"}`
  (the same rule as the Anthropic adapter: nothing silently lost).
- Function parameter schemas and `response_format` schemas are JSON Schema; Gemini accepts an
  OpenAPI subset. Keywords outside it (`additionalProperties`, `$schema`, `strict`, ...) are
  removed recursively (they constrain, they never add content); `$ref` cannot be expressed
  and makes the target ineligible.
- Images: base64 data URLs become `inlineData`; an http(s) image URL makes the target
  ineligible (Gemini fetches only its own uploaded files and gs:// URIs).
- Each field is translated, dropped with a reason (`DROPPED`) or makes the target ineligible
  (`INELIGIBLE`); docs/adapters.md has the table.
"""

from __future__ import annotations

import re
from typing import Any

import orjson

from .anthropic_request import tool_input
from .base import UnsupportedRequest
from .gemini_response import split_signature

__all__ = ["to_gemini", "TRANSLATED", "DROPPED", "INELIGIBLE", "clean_schema", "SKIP_SIGNATURE"]

TRANSLATED = (
    "model", "messages", "max_tokens", "max_completion_tokens", "temperature", "top_p", "stop", "stream",
    "stream_options", "tools", "tool_choice", "response_format", "seed", "presence_penalty",
    "frequency_penalty", "n",
)

DROPPED = {
    "user": "an end-user id for OpenAI's abuse tracking; Gemini has no such field",
    "safety_identifier": "OpenAI's abuse-tracking id",
    "metadata": "OpenAI's stored-completion tags (Detour still routes on them)",
    "store": "OpenAI's stored completions",
    "service_tier": "OpenAI's processing tier",
    "parallel_tool_calls": "Gemini has no switch for parallel calls; a client that allows one call also handles one",
    "logit_bias": "a sampling hint; Gemini has no token biases",
    "prediction": "a latency optimisation (predicted output); the answer is the same without it",
    "prompt_cache_key": "OpenAI's cache routing hint; Gemini caches implicitly by prefix",
    "reasoning_effort": "OpenAI reasoning models' effort; the Gemini target's own thinking default applies",
    "verbosity": "a length hint for OpenAI reasoning models",
}

INELIGIBLE = {
    "logprobs": "the translation carries no log probabilities back",
    "top_logprobs": "the translation carries no log probabilities back",
    "audio": "audio output is not translated",
    "modalities": "only text answers are translated",
    "web_search_options": "OpenAI's web search is a model feature with no counterpart here",
    "functions": "the legacy `functions` parameter (its caller reads `function_call`): use `tools`",
}

_DATA_URL = re.compile(r"^data:([^;,]+)?((?:;[^;,]*)*?);base64,(.*)$", re.DOTALL)

# The OpenAPI-subset keywords Gemini's `Schema` accepts (everything else is removed).
_SCHEMA_KEYS = frozenset({
    "type", "format", "title", "description", "nullable", "enum", "maxItems", "minItems", "properties",
    "required", "minProperties", "maxProperties", "minLength", "maxLength", "pattern", "example",
    "anyOf", "propertyOrdering", "default", "items", "minimum", "maximum",
})
_MAX_STOP = 5   # Gemini accepts at most five stop sequences


def clean_schema(schema: Any, where: str) -> Any:
    """JSON Schema -> Gemini's schema subset (see the module docstring)."""
    if isinstance(schema, list):
        return [clean_schema(s, where) for s in schema]
    if not isinstance(schema, dict):
        return schema
    if "$ref" in schema:
        raise UnsupportedRequest(f"{where}: schema references ($ref) are not supported by gemini")
    out: dict[str, Any] = {}
    for k, v in schema.items():
        if k not in _SCHEMA_KEYS:
            continue
        if k == "properties" and isinstance(v, dict):
            out[k] = {name: clean_schema(s, where) for name, s in v.items()}
        elif k in ("items", "anyOf"):
            out[k] = clean_schema(v, where)
        elif k == "type" and isinstance(v, list):   # ["string", "null"] -> string, nullable
            kinds = [t for t in v if t != "null"]
            if len(kinds) != 1:
                raise UnsupportedRequest(f"{where}: a schema type union {v!r} is not supported by gemini")
            out["type"] = kinds[0]
            if "null" in v:
                out["nullable"] = True
        else:
            out[k] = v
    return out


def _number(kind: type, value: Any, name: str, lo: float, hi: float) -> Any:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise UnsupportedRequest(f"{name} must be a number")
    if not lo <= value <= hi:  # also false for NaN
        bound = f"at least {lo:g}" if hi == float("inf") else f"between {lo:g} and {hi:g}"
        raise UnsupportedRequest(f"{name} must be {bound}")
    return kind(value)


def _texts(content: Any, where: str) -> list[str]:
    if content is None:
        return []
    if isinstance(content, str):
        return [content]
    if isinstance(content, list):
        out = []
        for part in content:
            if isinstance(part, dict) and part.get("type") in ("text", "input_text") and isinstance(part.get("text"), str):
                out.append(part["text"])
            else:
                raise UnsupportedRequest(f"{where}: only text content parts are supported here")
        return out
    raise UnsupportedRequest(f"{where}: content must be a string or a list of parts")


def _parts(content: Any, where: str) -> list[dict[str, Any]]:
    """Text (non-empty) and inline image parts of a user/assistant content, in order."""
    if content is None:
        return []
    if isinstance(content, str):
        return [{"text": content}] if content else []
    if not isinstance(content, list):
        raise UnsupportedRequest(f"{where}: content must be a string or a list of parts")
    out: list[dict[str, Any]] = []
    for part in content:
        t = part.get("type") if isinstance(part, dict) else None
        if t in ("text", "input_text", "refusal"):
            text = part.get("refusal") if t == "refusal" else part.get("text")
            if not isinstance(text, str):
                raise UnsupportedRequest(f"{where}: text content must be a string")
            if text:
                out.append({"text": text})
        elif t == "image_url":
            iu = part.get("image_url")
            url = iu.get("url") if isinstance(iu, dict) else iu
            m = _DATA_URL.match(url) if isinstance(url, str) else None
            if m is None:
                raise UnsupportedRequest(f"{where}: gemini takes images as base64 data URLs only")
            out.append({"inlineData": {"mimeType": m.group(1) or "image/png", "data": m.group(3)}})
        else:
            raise UnsupportedRequest(f"{where}: content part type {t!r} is not supported by gemini")
    return out


def _response_object(content: Any, where: str) -> dict[str, Any]:
    text = "".join(_texts(content, where))
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError:
        return {"content": text}
    return value if isinstance(value, dict) else {"content": text}


def _declaration(t: Any, i: int) -> dict[str, Any]:
    fn = t.get("function") if isinstance(t, dict) and t.get("type", "function") == "function" else None
    if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
        raise UnsupportedRequest(f"tools[{i}]: only function tools with a name are supported")
    out: dict[str, Any] = {"name": fn["name"]}
    if isinstance(fn.get("description"), str) and fn["description"]:
        out["description"] = fn["description"]
    params = fn.get("parameters")
    if isinstance(params, dict) and params:
        schema = clean_schema({"type": "object", **params}, f"tools[{i}].function.parameters")
        if schema.get("properties"):   # Gemini rejects an object schema without properties
            out["parameters"] = schema
    return out


def _tool_config(tc: Any) -> dict[str, Any] | None:
    if tc is None:
        return None
    if tc == "auto":
        mode: dict[str, Any] = {"mode": "AUTO"}
    elif tc == "none":
        mode = {"mode": "NONE"}
    elif tc == "required":
        mode = {"mode": "ANY"}
    elif isinstance(tc, dict) and tc.get("type") == "function" and isinstance(tc.get("function"), dict) \
            and isinstance(tc["function"].get("name"), str):
        mode = {"mode": "ANY", "allowedFunctionNames": [tc["function"]["name"]]}
    else:
        raise UnsupportedRequest(f"tool_choice {tc!r} is not supported")
    return {"functionCallingConfig": mode}


def _check_eligible(body: dict[str, Any]) -> None:
    for name, why in INELIGIBLE.items():
        value = body.get(name)
        if name == "modalities" and isinstance(value, list) and all(m == "text" for m in value):
            continue
        if value is not None and value is not False and value != [] and not (name == "top_logprobs" and value == 0):
            raise UnsupportedRequest(f"`{name}` is not supported by gemini: {why}")
    if (body.get("n") or 1) != 1:
        raise UnsupportedRequest("gemini targets return one choice here: n > 1 is not supported")


def _generation_config(body: dict[str, Any]) -> dict[str, Any]:
    gc: dict[str, Any] = {}
    mt = body.get("max_completion_tokens") or body.get("max_tokens")
    if mt is not None:
        gc["maxOutputTokens"] = _number(int, mt, "max_tokens", 1, float("inf"))
    if body.get("temperature") is not None:
        gc["temperature"] = _number(float, body["temperature"], "temperature", 0, 2)
    if body.get("top_p") is not None:
        gc["topP"] = _number(float, body["top_p"], "top_p", 0, 1)
    for src, dst in (("presence_penalty", "presencePenalty"), ("frequency_penalty", "frequencyPenalty")):
        if body.get(src) is not None:
            gc[dst] = _number(float, body[src], src, -2, 2)
    if body.get("seed") is not None:
        gc["seed"] = _number(int, body["seed"], "seed", -(2 ** 31), 2 ** 31 - 1)
    stop = body.get("stop")
    stops = [stop] if isinstance(stop, str) else stop if isinstance(stop, list) else []
    stops = [s for s in stops if isinstance(s, str) and s]
    if len(stops) > _MAX_STOP:
        raise UnsupportedRequest(f"gemini accepts at most {_MAX_STOP} stop sequences")
    if stops:
        gc["stopSequences"] = stops
    rf = body.get("response_format")
    kind = rf.get("type") if isinstance(rf, dict) else None
    if rf is not None and kind not in ("text", "json_object", "json_schema"):
        raise UnsupportedRequest(f"response_format type {kind!r} is not supported")
    if kind in ("json_object", "json_schema"):
        gc["responseMimeType"] = "application/json"
        js = rf.get("json_schema") if kind == "json_schema" else None  # type: ignore[union-attr]
        schema = js.get("schema") if isinstance(js, dict) else None
        if isinstance(schema, dict) and schema:
            gc["responseSchema"] = clean_schema(schema, "response_format.json_schema.schema")
    return gc


#: Google's documented stand-in signature for function calls that no Gemini model made (a history
#: from another provider, e.g. after a failover): Gemini 3 skips validating it.
SKIP_SIGNATURE = "skip_thought_signature_validator"


def to_gemini(body: dict[str, Any], model: str = "") -> dict[str, Any]:
    """The `generateContent` body for an OpenAI chat request (the model goes in the URL).
    `model`: Gemini 3 models need a signature on every function call of the history; calls that
    carry none (made by another model) get Google's documented `SKIP_SIGNATURE`."""
    needs_signature = model.startswith("gemini-3")
    msgs = body.get("messages")
    if not isinstance(msgs, list):
        raise UnsupportedRequest("messages must be a list")
    _check_eligible(body)
    system: list[str] = []
    contents: list[dict[str, Any]] = []
    names: dict[str, str] = {}      # tool call id -> function name (for functionResponse)
    answered: set[str] = set()

    def add(role: str, parts: list[dict[str, Any]]) -> None:
        if not parts:
            return
        if contents and contents[-1]["role"] == role:
            contents[-1]["parts"].extend(parts)
        else:
            contents.append({"role": role, "parts": list(parts)})

    for i, m in enumerate(msgs):
        where = f"messages[{i}]"
        if not isinstance(m, dict):
            raise UnsupportedRequest(f"{where}: must be an object")
        role = m.get("role")
        if role in ("system", "developer"):
            system.extend(t for t in _texts(m.get("content"), where) if t.strip())
        elif role == "user":
            add("user", _parts(m.get("content"), where))
        elif role == "assistant":
            parts = _parts(m.get("content"), where)
            calls = m.get("tool_calls") or []
            if not isinstance(calls, list):
                raise UnsupportedRequest(f"{where}: tool_calls must be a list")
            for j, tc in enumerate(calls):
                fn = tc.get("function") if isinstance(tc, dict) else None
                if not isinstance(fn, dict) or not isinstance(fn.get("name"), str) or not isinstance(tc.get("id"), str):
                    raise UnsupportedRequest(f"{where}.tool_calls[{j}]: needs id and function.name")
                names[tc["id"]] = fn["name"]
                part: dict[str, Any] = {"functionCall": {"name": fn["name"], "args": tool_input(fn.get("arguments"))}}
                _, signature = split_signature(tc["id"])
                if signature or needs_signature:
                    part["thoughtSignature"] = signature or SKIP_SIGNATURE
                parts.append(part)
            if m.get("function_call"):
                raise UnsupportedRequest(f"{where}: legacy function_call history is not supported by gemini")
            add("model", parts)
        elif role == "tool":
            cid = m.get("tool_call_id")
            if not isinstance(cid, str) or cid not in names:
                raise UnsupportedRequest(f"{where}: tool message answers no tool call of an earlier assistant message")
            answered.add(cid)
            add("user", [{"functionResponse": {"name": names[cid],
                                               "response": _response_object(m.get("content"), where)}}])
        else:
            raise UnsupportedRequest(f"{where}: role {role!r} is not supported by gemini")
    missing = [c for c in names if c not in answered]
    if missing:
        raise UnsupportedRequest(f"tool calls {missing} are not answered by tool messages")
    if not contents:
        raise UnsupportedRequest("gemini needs at least one non-empty user or assistant message")

    out: dict[str, Any] = {"contents": contents}
    if system:
        out["systemInstruction"] = {"parts": [{"text": "\n\n".join(system)}]}
    tools = body.get("tools")
    if tools:
        if not isinstance(tools, list):
            raise UnsupportedRequest("tools must be a list")
        out["tools"] = [{"functionDeclarations": [_declaration(t, i) for i, t in enumerate(tools)]}]
        tc = _tool_config(body.get("tool_choice"))
        if tc is not None:
            out["toolConfig"] = tc
    gc = _generation_config(body)
    if gc:
        out["generationConfig"] = gc
    return out
