"""OpenAI Responses API request -> canonical chat-completions request.

Translation table (docs/inbound.md has it with reasons; tests/unit/inbound test each row):
- `instructions` -> a leading `system` message; `input` string -> one `user` message.
- `input` items: messages (role user/system/developer/assistant; `input_text`, `output_text`,
  `input_image` parts) -> chat messages; `function_call` -> an assistant `tool_calls` entry
  (consecutive calls share one assistant message); `function_call_output` -> a `tool`
  message; `reasoning` items are dropped (provider-private, cannot move between providers).
- function `tools` -> chat function tools; `tool_choice` likewise; `text.format`
  (`json_schema`/`json_object`) -> `response_format`; `max_output_tokens` ->
  `max_completion_tokens`; `temperature`, `top_p`, `parallel_tool_calls`, `user`,
  `service_tier`, `reasoning.effort` -> their chat names; `metadata` kept for routing only.
- Stateful or server-side features cannot be translated (`unsupported_by_route`, raised here
  and turned by the codec into `untranslatable`): `previous_response_id`, `conversation`,
  `store: true`, `background: true`, `prompt` templates, `item_reference` items and
  non-function tools (web/file search, code interpreter, computer use, MCP, image
  generation). Only targets serving the Responses API natively (inbound.native) may take such
  a request; the others are skipped with the reason, since serving it without the provider's
  state would answer wrongly. A 400 names it when no target of the route can.
"""

from __future__ import annotations

from typing import Any

from ..errors import bad_request
from ._common import unsupported

__all__ = ["to_chat", "STATEFUL_FIELDS"]

STATEFUL_FIELDS = ("previous_response_id", "conversation", "prompt")
_ROLES = ("user", "system", "developer", "assistant")
_PASS = ("temperature", "top_p", "parallel_tool_calls", "user", "service_tier", "top_logprobs",
         "safety_identifier", "prompt_cache_key")


def _why_stateful(body: dict[str, Any]) -> str | None:
    for name in STATEFUL_FIELDS:
        if body.get(name) not in (None, "", {}):
            return f"'{name}' needs the provider's stored state"
    if body.get("store") is True:
        return "'store': true asks the provider to keep the response"
    if body.get("background") is True:
        return "'background': true needs the provider to run the response asynchronously"
    return None


def to_chat(body: dict[str, Any]) -> dict[str, Any]:
    """The canonical chat body for a Responses request (raises ClientError 400)."""
    why = _why_stateful(body)
    if why:
        raise unsupported(f"{why}, which cannot be translated to chat completions")
    messages: list[dict[str, Any]] = []
    instructions = body.get("instructions")
    if instructions is not None:
        if not isinstance(instructions, str):
            raise bad_request("'instructions' must be a string.", param="instructions")
        if instructions:
            messages.append({"role": "system", "content": instructions})
    items = body.get("input")
    if isinstance(items, str):
        messages.append({"role": "user", "content": items})
    elif isinstance(items, list):
        for i, item in enumerate(items):
            _add_item(messages, item, f"input[{i}]")
    else:
        raise bad_request("'input' must be a string or an array of input items.", param="input")
    if not any(m["role"] != "system" for m in messages):
        raise bad_request("'input' must contain at least one message.", param="input")
    out: dict[str, Any] = {"model": body["model"], "messages": messages}
    for name in _PASS:
        if body.get(name) is not None:
            out[name] = body[name]
    if body.get("max_output_tokens") is not None:
        out["max_completion_tokens"] = body["max_output_tokens"]
    reasoning = body.get("reasoning")
    if isinstance(reasoning, dict) and reasoning.get("effort"):
        out["reasoning_effort"] = reasoning["effort"]
    if isinstance(body.get("metadata"), dict):
        out["metadata"] = body["metadata"]
    tools = body.get("tools")
    if tools:
        if not isinstance(tools, list):
            raise bad_request("'tools' must be an array.", param="tools")
        out["tools"] = [_tool(t, i) for i, t in enumerate(tools)]
    if body.get("tool_choice") is not None:
        out["tool_choice"] = _tool_choice(body["tool_choice"])
    fmt = (body.get("text") or {}).get("format") if isinstance(body.get("text"), dict) else None
    if isinstance(fmt, dict):
        if fmt.get("type") == "json_schema":
            schema = {k: fmt[k] for k in ("name", "schema", "strict", "description") if k in fmt}
            out["response_format"] = {"type": "json_schema", "json_schema": schema}
        elif fmt.get("type") == "json_object":
            out["response_format"] = {"type": "json_object"}
    if body.get("stream") is True:
        out["stream"] = True
        out["stream_options"] = {"include_usage": True}
    return out


def _content(content: Any, role: str, where: str) -> Any:
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise bad_request(f"{where}.content must be a string or an array of content parts.", param="input")
    parts: list[dict[str, Any]] = []
    for j, p in enumerate(content):
        t = p.get("type") if isinstance(p, dict) else None
        if t in ("input_text", "output_text", "text"):
            parts.append({"type": "text", "text": p.get("text", "")})
        elif t == "refusal":
            parts.append({"type": "text", "text": p.get("refusal", "")})
        elif t == "input_image":
            url = p.get("image_url")
            if not isinstance(url, str):
                raise unsupported(f"{where}.content[{j}]: only images given by 'image_url' (a data URL or "
                                  "an https URL) can be translated; 'file_id' needs the provider's files.")
            image = {"url": url}
            if p.get("detail"):
                image["detail"] = p["detail"]
            parts.append({"type": "image_url", "image_url": image})
        else:
            raise unsupported(f"{where}.content[{j}]: content part type {t!r} cannot be translated.")
    if role in ("assistant", "system", "developer") and all(p["type"] == "text" for p in parts):
        return "".join(p["text"] for p in parts)
    return parts


def _add_item(messages: list[dict[str, Any]], item: Any, where: str) -> None:
    if not isinstance(item, dict):
        raise bad_request(f"{where} must be an object.", param="input")
    t = item.get("type", "message")
    if t == "message":
        role = item.get("role")
        if role not in _ROLES:
            raise bad_request(f"{where}.role must be one of {', '.join(_ROLES)}.", param="input")
        messages.append({"role": role, "content": _content(item.get("content"), role, where)})
    elif t == "function_call":
        call = {"id": item.get("call_id"), "type": "function",
                "function": {"name": item.get("name"), "arguments": item.get("arguments") or "{}"}}
        last = messages[-1] if messages else None
        if last is not None and last["role"] == "assistant":   # calls of one turn share one message
            last.setdefault("tool_calls", []).append(call)
        else:
            messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
    elif t == "function_call_output":
        output = item.get("output")
        if isinstance(output, list):
            output = _content(output, "tool", where)
        messages.append({"role": "tool", "tool_call_id": item.get("call_id"), "content": output})
    elif t == "reasoning":
        return
    else:
        raise unsupported(f"{where}: input item type {t!r} needs the provider's stored state or server-side "
                          "tools, which no translated target has.")


def _tool(tool: Any, i: int) -> dict[str, Any]:
    if not isinstance(tool, dict) or tool.get("type") != "function":
        kind = tool.get("type") if isinstance(tool, dict) else None
        raise unsupported(f"tools[{i}]: {kind!r} is a server-side tool that only the provider can run; "
                          "Detour translates function tools only.", param="tools")
    fn = {"name": tool.get("name")}
    for k in ("description", "parameters", "strict"):
        if tool.get(k) is not None:
            fn[k] = tool[k]
    return {"type": "function", "function": fn}


def _tool_choice(choice: Any) -> Any:
    if isinstance(choice, str):
        return choice
    if isinstance(choice, dict) and choice.get("type") == "function":
        return {"type": "function", "function": {"name": choice.get("name")}}
    raise unsupported(f"tool_choice {choice!r} names a server-side tool, which Detour cannot translate.",
                      param="tool_choice")
