"""OpenAI chat request -> Anthropic Messages request.

The two dialects model a conversation differently: Anthropic has a top-level `system`,
strictly user/assistant turns (consecutive same-role turns merged), tool calls as
`tool_use` content blocks and tool results as `tool_result` blocks *inside a user turn*
(which must come before any other content of that turn). This module only reshapes; it does
not judge content, so what Anthropic rejects (e.g. an unsupported image type) comes back as
Anthropic's own 400.

Choices worth knowing:
- system/developer messages anywhere in the conversation are hoisted into `system`, joined
  with a blank line, in order (Anthropic has no mid-conversation system turn).
- Tool-call arguments that are not a JSON object are sent as `{"_raw_arguments": "<text>"}`
  rather than `{}`, so the model still sees what it produced (nothing silently lost).
- Empty and whitespace-only text blocks (and stop sequences) are dropped, also inside tool
  results (Anthropic rejects them); a final assistant turn is right-stripped (Anthropic
  rejects trailing whitespace there) and the stripped text is returned so the stream
  decoder can avoid repeating it. Tool results may carry images (Anthropic accepts them).
- Tool pairing is checked, not repaired: every assistant `tool_calls` entry must be answered
  by a tool message among the user/tool messages that follow it, before the next assistant
  message (lenient clients may put a user note first; the results are moved to the front of
  that turn), and every tool message must answer a call of the assistant message before
  it. OpenAI rejects such conversations with a 400 too, and Anthropic would; inventing
  results would put words in the tool's mouth, so it is an UnsupportedRequest (the client
  gets a 400 naming the reason if no other target serves it).
- Anthropic rejects `tool_use`/`tool_result` blocks in a request without `tools`, which
  OpenAI allows (a history with tool calls, no tools offered now). The tools named in the
  history are then declared with an open schema and `tool_choice: none`, so the history
  is kept and the model still cannot call anything.
- Legacy functions API: an assistant `function_call` becomes a `tool_use` with the stable
  id `call_legacy_<message index>` (the same on every retry and fallback), and the `function`
  message after it its `tool_result`. The request-level `functions` parameter raises
  UnsupportedRequest: the model's call would come back as `tool_calls`, which a
  functions-API client does not read (the response translation has no per-request context
  to answer with a legacy `function_call`), so such requests go to an OpenAI-dialect target.
  `function_call` without `functions` means nothing, like `tool_choice` without `tools`.
- `temperature` is clamped from OpenAI's [0, 2] to Anthropic's [0, 1]; `top_p` must be in
  [0, 1] (in both APIs) and `max_tokens` positive. Sampling parameters exist only up to
  anthropic-version 2023-06-01: from 2026-10-21 the API rejects `temperature`/`top_p`
  (even at defaults) and the SDK types no longer have them, so they are dropped there.
  Some newer models reject `temperature` even on 2023-06-01; that comes back as their 400.
- A conversation with no user/assistant content left (only system messages, or only blank
  text) raises UnsupportedRequest: Anthropic needs at least one message.
- `n > 1`, out-of-range numbers and unknown content parts raise UnsupportedRequest.
- `response_format` (structured output) is translated, never dropped: `json_schema` becomes a
  tool named `ANSWER_TOOL` whose `input_schema` is the schema, forced with `tool_choice` (or,
  when the request offers its own tools and lets the model choose, offered next to them with
  `tool_choice: any`, so the model either calls a tool or answers in the format, as OpenAI
  allows). `json_object` is the same tool with a permissive object schema: a forced tool call
  always yields a JSON object, which a system instruction would only ask for. The response
  side (`anthropic_response`) turns that tool's input back into the message's content as JSON
  text with `finish_reason: stop`. A schema whose root is not an object, and a request that
  declares a tool of that reserved name, are UnsupportedRequest.
- Every other OpenAI request field is either translated, sent nowhere with the reason listed
  in `anthropic_fields.DROPPED` (a hint Anthropic has no counterpart for, which cannot change
  the answer's shape), or makes the target ineligible (`anthropic_fields.INELIGIBLE`: the
  client would miss something it asked for). docs/adapters.md has the table; tests check each row.
"""

from __future__ import annotations

import re
from typing import Any

import orjson

from .anthropic_fields import ANSWER_TOOL, answer_tool, check_eligible
from .base import UnsupportedRequest

__all__ = ["to_anthropic", "tool_input"]


_DATA_URL = re.compile(r"^data:([^;,]+)?((?:;[^;,]*)*?);base64,(.*)$", re.DOTALL)


def _text_of(content: Any, where: str) -> list[str]:
    """Texts of a string-or-parts content (system, developer, tool messages)."""
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
                raise UnsupportedRequest(f"{where}: only text content parts are supported")
        return out
    raise UnsupportedRequest(f"{where}: content must be a string or a list of parts")


def _text_block(text: Any, where: str) -> dict[str, Any] | None:
    """A text block, or None for blank text (Anthropic rejects blank text blocks)."""
    if not isinstance(text, str):
        raise UnsupportedRequest(f"{where}: text content must be a string")
    return {"type": "text", "text": text} if text and not text.isspace() else None


def _image_block(part: dict[str, Any], where: str) -> dict[str, Any]:
    iu = part.get("image_url")
    url = iu.get("url") if isinstance(iu, dict) else iu
    if not isinstance(url, str):
        raise UnsupportedRequest(f"{where}: image_url.url must be a string")
    m = _DATA_URL.match(url)
    if m:
        return {"type": "image", "source": {"type": "base64", "media_type": m.group(1) or "image/png",
                                            "data": m.group(3)}}
    if url.startswith(("http://", "https://")):
        return {"type": "image", "source": {"type": "url", "url": url}}
    raise UnsupportedRequest(f"{where}: image_url must be a base64 data URL or an http(s) URL")


def _user_blocks(content: Any, where: str) -> list[dict[str, Any]]:
    """Blocks of a user/assistant/tool content: text (non-blank) and image parts, in order."""
    if content is None:
        return []
    if isinstance(content, str):
        b = _text_block(content, where)
        return [b] if b else []
    if not isinstance(content, list):
        raise UnsupportedRequest(f"{where}: content must be a string or a list of parts")
    out = []
    for part in content:
        t = part.get("type") if isinstance(part, dict) else None
        if t in ("text", "input_text", "refusal"):
            b = _text_block(part.get("text") if t != "refusal" else part.get("refusal"), where)
            if b:
                out.append(b)
        elif t == "image_url":
            out.append(_image_block(part, where))
        else:
            raise UnsupportedRequest(f"{where}: content part type {t!r} is not supported by anthropic")
    return out


def tool_input(arguments: Any) -> dict[str, Any]:
    """OpenAI's JSON-string arguments -> Anthropic's `input` object (see module docstring)."""
    if isinstance(arguments, dict):
        return arguments
    if arguments is None or (isinstance(arguments, str) and not arguments.strip()):
        return {}
    if isinstance(arguments, str):
        try:
            value = orjson.loads(arguments)
        except orjson.JSONDecodeError:
            return {"_raw_arguments": arguments}
        if isinstance(value, dict):
            return value
        return {"_raw_arguments": arguments}
    return {"_raw_arguments": orjson.dumps(arguments).decode()}


def _legacy_use_block(function_call: Any, call_id: str, where: str) -> dict[str, Any]:
    """An assistant `function_call` (legacy functions API) as a tool_use with a synthetic id."""
    if not isinstance(function_call, dict) or not isinstance(function_call.get("name"), str):
        raise UnsupportedRequest(f"{where}.function_call: needs a name")
    return {"type": "tool_use", "id": call_id, "name": function_call["name"],
            "input": tool_input(function_call.get("arguments"))}


def _tool_use_blocks(tool_calls: Any, where: str) -> list[dict[str, Any]]:
    if not isinstance(tool_calls, list):
        raise UnsupportedRequest(f"{where}: tool_calls must be a list")
    out = []
    for j, tc in enumerate(tool_calls):
        fn = tc.get("function") if isinstance(tc, dict) else None
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str) or not isinstance(tc.get("id"), str):
            raise UnsupportedRequest(f"{where}.tool_calls[{j}]: needs id and function.name")
        out.append({"type": "tool_use", "id": tc["id"], "name": fn["name"], "input": tool_input(fn.get("arguments"))})
    return out


def _tool_result_block(tool_use_id: Any, content: Any, where: str) -> dict[str, Any]:
    """A tool (or legacy function) message as a tool_result: one text as a string, else blocks."""
    if not isinstance(tool_use_id, str):
        raise UnsupportedRequest(f"{where}: tool message needs tool_call_id")
    blocks = _user_blocks(content, where)
    block: dict[str, Any] = {"type": "tool_result", "tool_use_id": tool_use_id}
    if len(blocks) == 1 and blocks[0]["type"] == "text":
        block["content"] = blocks[0]["text"]
    elif blocks:
        block["content"] = blocks
    return block


def _check_tool_pairing(turns: list[tuple[str, list[dict[str, Any]]]]) -> list[str]:
    """Raise unless each tool_use is answered in the next user turn and each tool_result
    answers one (see the module docstring); returns the tool names used, in first-use order."""
    names: dict[str, None] = {}
    pending: dict[str, None] = {}
    for role, blocks in turns:
        if role == "assistant":
            pending = {}
            for b in blocks:
                if b["type"] == "tool_use":
                    pending[b["id"]] = None
                    names[b["name"]] = None
            continue
        answered = [b["tool_use_id"] for b in blocks if b["type"] == "tool_result"]
        stray = [a for a in answered if a not in pending]
        if stray:
            raise UnsupportedRequest(f"tool messages for {stray} answer no tool call of the assistant "
                                     "message before them")
        if len(set(answered)) != len(answered):
            raise UnsupportedRequest("a tool call is answered by more than one tool message")
        missing = [p for p in pending if p not in answered]
        if missing:
            raise UnsupportedRequest(f"tool calls {missing} are not answered by tool messages")
        pending = {}
    if pending:
        raise UnsupportedRequest(f"tool calls {list(pending)} of the last assistant message are not answered")
    return list(names)


def _tool(t: Any, i: int) -> dict[str, Any]:
    fn = t.get("function") if isinstance(t, dict) and t.get("type", "function") == "function" else None
    if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
        raise UnsupportedRequest(f"tools[{i}]: only function tools with a name are supported")
    schema = fn.get("parameters")
    if not isinstance(schema, dict) or not schema:
        schema = {"type": "object", "properties": {}}
    elif "type" not in schema:
        schema = {"type": "object", **schema}
    out: dict[str, Any] = {"name": fn["name"], "input_schema": schema}
    if isinstance(fn.get("description"), str) and fn["description"]:
        out["description"] = fn["description"]
    return out


def _tool_choice(tc: Any) -> dict[str, Any] | None:
    if tc is None:
        return None
    if tc == "auto":
        return {"type": "auto"}
    if tc == "none":
        return {"type": "none"}
    if tc == "required":
        return {"type": "any"}
    if isinstance(tc, dict) and tc.get("type") == "function" and isinstance(tc.get("function"), dict):
        return {"type": "tool", "name": tc["function"]["name"]}
    raise UnsupportedRequest(f"tool_choice {tc!r} is not supported")


def _number(kind: type, value: Any, name: str, lo: float, hi: float) -> Any:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise UnsupportedRequest(f"{name} must be a number")
    if not lo <= value <= hi:  # also false for NaN
        bound = f"at least {lo:g}" if hi == float("inf") else f"between {lo:g} and {hi:g}"
        raise UnsupportedRequest(f"{name} must be {bound}")
    return kind(value)


def to_anthropic(body: dict[str, Any], model: str, stream: bool, max_tokens_default: int,
                 prefill: str | None = None, sampling: bool = True) -> tuple[dict[str, Any], str]:
    """Translate; returns (Anthropic request dict, whitespace stripped from the final assistant turn).

    `prefill` (continuation) is appended to the conversation as assistant text. `sampling`
    False drops `temperature`/`top_p`: API version 2026-10-21 rejects them with a 400.
    """
    msgs = body.get("messages")
    if not isinstance(msgs, list):
        raise UnsupportedRequest("messages must be a list")
    if (body.get("n") or 1) > 1:
        raise UnsupportedRequest("anthropic returns one choice: n > 1 is not supported")
    check_eligible(body)
    if body.get("functions"):
        raise UnsupportedRequest("the legacy `functions` parameter is not supported (its answer would come "
                                 "back as tool_calls): use `tools`")
    system: list[str] = []
    turns: list[tuple[str, list[dict[str, Any]]]] = []
    legacy_call: str | None = None  # id given to the latest assistant function_call

    def add(role: str, blocks: list[dict[str, Any]]) -> None:
        if not blocks:
            return
        if turns and turns[-1][0] == role:
            turns[-1][1].extend(blocks)
        else:
            turns.append((role, list(blocks)))

    for i, m in enumerate(msgs):
        where = f"messages[{i}]"
        if not isinstance(m, dict):
            raise UnsupportedRequest(f"{where}: must be an object")
        role = m.get("role")
        if role in ("system", "developer"):
            system.extend(t for t in _text_of(m.get("content"), where) if t.strip())
        elif role == "user":
            add("user", _user_blocks(m.get("content"), where))
        elif role == "assistant":
            blocks = _user_blocks(m.get("content"), where)
            if m.get("tool_calls"):
                blocks.extend(_tool_use_blocks(m["tool_calls"], where))
            legacy_call = None
            if m.get("function_call"):
                legacy_call = f"call_legacy_{i}"
                blocks.append(_legacy_use_block(m["function_call"], legacy_call, where))
            add("assistant", blocks)
        elif role == "tool":
            add("user", [_tool_result_block(m.get("tool_call_id"), m.get("content"), where)])
        elif role == "function":
            if legacy_call is None:
                raise UnsupportedRequest(f"{where}: function message answers no function_call")
            add("user", [_tool_result_block(legacy_call, m.get("content"), where)])
            legacy_call = None
        else:
            raise UnsupportedRequest(f"{where}: role {role!r} is not supported by anthropic")

    if prefill:
        add("assistant", [{"type": "text", "text": prefill}])

    trimmed = ""
    if turns and turns[-1][0] == "assistant":
        blocks = turns[-1][1]
        while blocks and blocks[-1]["type"] == "text":
            text = blocks[-1]["text"]
            stripped = text.rstrip()
            trimmed = text[len(stripped):] + trimmed
            if stripped:
                blocks[-1] = {"type": "text", "text": stripped}
                break
            blocks.pop()
        if not blocks:
            turns.pop()
    if not turns:
        raise UnsupportedRequest("anthropic needs at least one non-blank user or assistant message")
    tool_names = _check_tool_pairing(turns)

    messages = []
    for role, blocks in turns:
        if role == "user" and len(blocks) > 1:
            # tool_result blocks must open the user turn that answers a tool_use.
            blocks = sorted(blocks, key=lambda b: b["type"] != "tool_result")
        messages.append({"role": role, "content": blocks})

    out: dict[str, Any] = {"model": model, "messages": messages}
    out["max_tokens"] = _number(int, body.get("max_completion_tokens") or body.get("max_tokens")
                                or max_tokens_default, "max_tokens", 1, float("inf"))
    if system:
        out["system"] = "\n\n".join(system)
    if sampling and body.get("temperature") is not None:
        out["temperature"] = min(1.0, _number(float, body["temperature"], "temperature", 0, 2))
    if sampling and body.get("top_p") is not None:
        out["top_p"] = _number(float, body["top_p"], "top_p", 0, 1)
    stop = body.get("stop")
    if isinstance(stop, str):
        stop = [stop]
    if isinstance(stop, list):
        stops = [s for s in stop if isinstance(s, str) and s.strip()]
        if stops:
            out["stop_sequences"] = stops
    if stream:
        out["stream"] = True
    if isinstance(body.get("user"), str) and body["user"]:
        out["metadata"] = {"user_id": body["user"]}
    tools = body.get("tools")
    answer = answer_tool(body.get("response_format"))
    if tools:  # without tools, a tool_choice means nothing to Anthropic
        out["tools"] = [_tool(t, i) for i, t in enumerate(tools)]
        if any(t["name"] == ANSWER_TOOL for t in out["tools"]):
            raise UnsupportedRequest(f"the tool name {ANSWER_TOOL!r} is reserved by Detour")
        choice = _tool_choice(body.get("tool_choice"))
        if answer is not None:
            out["tools"].append(answer)
            if choice is None or choice["type"] == "auto":
                choice = {"type": "any"}   # a tool call, or the answer in the requested format
            elif choice["type"] == "none":
                choice = {"type": "tool", "name": ANSWER_TOOL}
        if body.get("parallel_tool_calls") is False:
            choice = choice or {"type": "auto"}
            if choice["type"] != "none":
                choice["disable_parallel_tool_use"] = True
        if choice is not None:
            out["tool_choice"] = choice
    elif answer is not None:
        out["tools"] = [{"name": n, "input_schema": {"type": "object", "properties": {}}} for n in tool_names]
        out["tools"].append(answer)
        out["tool_choice"] = {"type": "tool", "name": ANSWER_TOOL}
    elif tool_names:  # history with tool blocks but no tools offered now (see module docstring)
        out["tools"] = [{"name": n, "input_schema": {"type": "object", "properties": {}}} for n in tool_names]
        out["tool_choice"] = {"type": "none"}
    return out, trimmed
