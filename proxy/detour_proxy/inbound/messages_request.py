"""Anthropic Messages API request -> canonical chat-completions request.

Translation table (docs/inbound.md; tests/unit/inbound test each row):
- `system` (string or text blocks) -> a leading `system` message.
- `messages`: `text` blocks -> text; `image` blocks (`base64` source -> a data URL, `url`
  source -> the URL) -> `image_url` parts; assistant `tool_use` blocks -> `tool_calls`
  (input serialised as JSON arguments); user `tool_result` blocks -> `tool` messages (placed
  before the rest of that user turn; `is_error` prefixes the text with "Error: ");
  `thinking`/`redacted_thinking` blocks are dropped (provider-private signatures).
- `max_tokens` -> `max_tokens`; `stop_sequences` -> `stop`; `temperature`, `top_p` kept;
  `metadata.user_id` -> `user` (and kept as metadata for routing); `top_k` and `thinking`
  dropped (no chat equivalent).
- `tools` (client tools: `name`, `description`, `input_schema`) -> function tools;
  `tool_choice` auto/any/tool/none -> auto/required/function/none, with
  `disable_parallel_tool_use` -> `parallel_tool_calls: false`.
- Server tools (a versioned `type` such as `web_search_20250305`, `bash_20250124`,
  `text_editor_*`, `computer_*`, `code_execution_*`), `document`/`search_result` blocks,
  `container` and `mcp_servers` cannot be translated (`unsupported_by_route`, turned by the
  codec into `untranslatable`): only Anthropic targets, which get the request natively
  (inbound.native), may take it; the others are skipped with the reason.
"""

from __future__ import annotations

from typing import Any

import orjson

from ..errors import bad_request
from ._common import unsupported

__all__ = ["to_chat"]

_STATEFUL = ("container", "mcp_servers")


def to_chat(body: dict[str, Any]) -> dict[str, Any]:
    """The canonical chat body for a Messages request (raises ClientError 400)."""
    for name in _STATEFUL:
        if body.get(name):
            raise unsupported(f"'{name}' needs Anthropic's server-side tools, which Detour cannot translate.",
                              param=name)
    max_tokens = body.get("max_tokens")
    if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
        raise bad_request("max_tokens: Field required (an integer >= 1).", param="max_tokens")
    msgs = body.get("messages")
    if not isinstance(msgs, list) or not msgs:
        raise bad_request("messages: at least one message is required.", param="messages")
    messages: list[dict[str, Any]] = []
    system = body.get("system")
    if system:
        text = system if isinstance(system, str) else _text(system, "system")
        messages.append({"role": "system", "content": text})
    for i, m in enumerate(msgs):
        _add_message(messages, m, f"messages.{i}")
    out: dict[str, Any] = {"model": body["model"], "messages": messages, "max_tokens": max_tokens}
    for name in ("temperature", "top_p"):
        if body.get(name) is not None:
            out[name] = body[name]
    stops = body.get("stop_sequences")
    if stops:
        out["stop"] = stops
    meta = body.get("metadata")
    if isinstance(meta, dict):
        out["metadata"] = meta
        if isinstance(meta.get("user_id"), str) and meta["user_id"]:
            out["user"] = meta["user_id"]
    tools = body.get("tools")
    if tools:
        out["tools"] = [_tool(t, i) for i, t in enumerate(tools)]
    choice = body.get("tool_choice")
    if isinstance(choice, dict):
        t = choice.get("type")
        if t == "auto":
            out["tool_choice"] = "auto"
        elif t == "any":
            out["tool_choice"] = "required"
        elif t == "none":
            out["tool_choice"] = "none"
        elif t == "tool":
            out["tool_choice"] = {"type": "function", "function": {"name": choice.get("name")}}
        else:
            raise bad_request(f"tool_choice.type {t!r} is not one of auto, any, tool, none.", param="tool_choice")
        if choice.get("disable_parallel_tool_use") is True and tools:
            out["parallel_tool_calls"] = False
    if body.get("stream") is True:
        out["stream"] = True
        out["stream_options"] = {"include_usage": True}
    return out


def _text(blocks: Any, where: str) -> str:
    if not isinstance(blocks, list):
        raise bad_request(f"{where}: must be a string or an array of text blocks.")
    parts = []
    for b in blocks:
        if not isinstance(b, dict) or b.get("type") != "text":
            raise bad_request(f"{where}: only text blocks are allowed here.")
        parts.append(b.get("text", ""))
    return "\n\n".join(parts)


def _image(block: dict[str, Any], where: str) -> dict[str, Any]:
    src = block.get("source") or {}
    if src.get("type") == "base64":
        return {"type": "image_url", "image_url": {"url": f"data:{src.get('media_type')};base64,{src.get('data')}"}}
    if src.get("type") == "url":
        return {"type": "image_url", "image_url": {"url": src.get("url")}}
    raise unsupported(f"{where}: image source {src.get('type')!r} needs Anthropic's files API.")


def _result_text(content: Any, where: str) -> Any:
    if content is None or isinstance(content, str):
        return content or ""
    if isinstance(content, list):
        parts: list[dict[str, Any]] = []
        for j, b in enumerate(content):
            t = b.get("type") if isinstance(b, dict) else None
            if t == "text":
                parts.append({"type": "text", "text": b.get("text", "")})
            elif t == "image":
                parts.append(_image(b, f"{where}.content.{j}"))
            else:
                raise unsupported(f"{where}.content.{j}: block type {t!r} cannot be translated.")
        if all(p["type"] == "text" for p in parts):
            return "".join(p["text"] for p in parts)
        return parts
    raise bad_request(f"{where}.content must be a string or an array of blocks.")


def _add_message(messages: list[dict[str, Any]], m: Any, where: str) -> None:
    if not isinstance(m, dict) or m.get("role") not in ("user", "assistant"):
        raise bad_request(f"{where}.role: must be 'user' or 'assistant'.", param="messages")
    role = m["role"]
    content = m.get("content")
    if isinstance(content, str):
        messages.append({"role": role, "content": content})
        return
    if not isinstance(content, list):
        raise bad_request(f"{where}.content: must be a string or an array of content blocks.", param="messages")
    parts: list[dict[str, Any]] = []
    calls: list[dict[str, Any]] = []
    results: list[dict[str, Any]] = []
    for j, b in enumerate(content):
        w = f"{where}.content.{j}"
        t = b.get("type") if isinstance(b, dict) else None
        if t == "text":
            parts.append({"type": "text", "text": b.get("text", "")})
        elif t == "image":
            parts.append(_image(b, w))
        elif t == "tool_use" and role == "assistant":
            calls.append({"id": b.get("id"), "type": "function",
                          "function": {"name": b.get("name"),
                                       "arguments": orjson.dumps(b.get("input") or {}).decode()}})
        elif t == "tool_result" and role == "user":
            text = _result_text(b.get("content"), w)
            if b.get("is_error") and isinstance(text, str):
                text = "Error: " + text
            results.append({"role": "tool", "tool_call_id": b.get("tool_use_id"), "content": text})
        elif t in ("thinking", "redacted_thinking"):
            continue
        else:
            raise unsupported(f"{w}: content block type {t!r} cannot be translated for a non-Anthropic target.")
    messages.extend(results)
    if role == "assistant":
        if parts or calls:
            msg: dict[str, Any] = {"role": "assistant",
                                   "content": "".join(p.get("text", "") for p in parts) if parts else None}
            if calls:
                msg["tool_calls"] = calls
            messages.append(msg)
    elif parts:
        messages.append({"role": "user", "content": parts})


def _tool(tool: Any, i: int) -> dict[str, Any]:
    if not isinstance(tool, dict) or not tool.get("name"):
        raise bad_request(f"tools.{i}: a tool needs a name.", param="tools")
    t = tool.get("type")
    if t not in (None, "custom"):
        raise unsupported(f"tools.{i}: {t!r} is a server tool only Anthropic can run; Detour translates "
                          "client tools only.", param="tools")
    fn: dict[str, Any] = {"name": tool["name"], "parameters": tool.get("input_schema") or {"type": "object"}}
    if tool.get("description"):
        fn["description"] = tool["description"]
    return {"type": "function", "function": fn}
