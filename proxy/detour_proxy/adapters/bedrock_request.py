"""OpenAI chat request -> Bedrock Converse request.

Converse models a conversation the way Anthropic's Messages API does (a top-level `system`,
strictly alternating user/assistant turns, tool calls and results as content blocks), so the
request is first reshaped by `anthropic_request.to_anthropic` -- one place that knows how an
OpenAI conversation becomes turns, checks tool pairing, hoists system messages, carries
`response_format` as the forced `detour_structured_output` tool, clamps temperature and
refuses what cannot be expressed -- and its blocks are then spelled the Converse way:

| Anthropic (from the OpenAI request)      | Converse                                           |
|------------------------------------------|----------------------------------------------------|
| `system`                                 | `system: [{text}]`                                 |
| text block                               | `{text}`                                           |
| image, base64 data URL                   | `{image: {format: png|jpeg|gif|webp, source: {bytes: <base64>}}}` |
| image, http(s) URL                       | UnsupportedRequest: Bedrock takes image bytes only (Detour does not fetch URLs) |
| `tool_use`                               | `{toolUse: {toolUseId, name, input}}`              |
| `tool_result` (`is_error`)               | `{toolResult: {toolUseId, content: [{text}|{image}], status: error}}` |
| `max_tokens`, `temperature`, `top_p`, `stop_sequences` | `inferenceConfig.maxTokens/temperature/topP/stopSequences` |
| `tools`                                  | `toolConfig.tools[].toolSpec{name, description, inputSchema.json}` |
| `tool_choice` auto / any / tool          | `toolConfig.toolChoice` `{auto:{}}` / `{any:{}}` / `{tool:{name}}` |
| `tool_choice` none                       | tools left out (Converse has no "none"); with tool history in the conversation the target is ineligible (Converse needs `toolConfig` then, and would let the model call a tool) |
| `disable_parallel_tool_use` (`parallel_tool_calls: false`) | dropped: Converse has no switch (the model may call several tools) |
| `metadata.user_id` (`user`)              | dropped: Converse has no end-user field             |

Every other OpenAI field is translated, dropped or refused exactly as for Anthropic
(`anthropic_fields`); docs/adapters.md has the table.
"""

from __future__ import annotations

from typing import Any

from .anthropic_request import to_anthropic
from .base import UnsupportedRequest

__all__ = ["to_converse", "IMAGE_FORMATS"]

IMAGE_FORMATS = {"image/png": "png", "image/jpeg": "jpeg", "image/jpg": "jpeg", "image/gif": "gif",
                 "image/webp": "webp"}


def _image(block: dict[str, Any]) -> dict[str, Any]:
    src = block.get("source") or {}
    if src.get("type") != "base64":
        raise UnsupportedRequest("bedrock takes images as bytes: send image_url as a base64 data URL "
                                 "(Detour does not fetch image URLs)")
    fmt = IMAGE_FORMATS.get(str(src.get("media_type", "")).lower())
    if fmt is None:
        raise UnsupportedRequest(f"bedrock accepts png, jpeg, gif and webp images, not {src.get('media_type')!r}")
    return {"image": {"format": fmt, "source": {"bytes": src.get("data", "")}}}


def _result_content(content: Any) -> list[dict[str, Any]]:
    if isinstance(content, str):
        return [{"text": content}]
    out: list[dict[str, Any]] = []
    for b in content or ():
        if b.get("type") == "text":
            out.append({"text": b.get("text", "")})
        elif b.get("type") == "image":
            out.append(_image(b))
    return out or [{"text": ""}]


def _block(b: dict[str, Any]) -> dict[str, Any]:
    t = b.get("type")
    if t == "text":
        return {"text": b["text"]}
    if t == "image":
        return _image(b)
    if t == "tool_use":
        return {"toolUse": {"toolUseId": b["id"], "name": b["name"], "input": b.get("input") or {}}}
    if t == "tool_result":
        res: dict[str, Any] = {"toolUseId": b["tool_use_id"], "content": _result_content(b.get("content"))}
        if b.get("is_error"):
            res["status"] = "error"
        return {"toolResult": res}
    raise UnsupportedRequest(f"content block {t!r} is not supported by bedrock")


def _tool(t: dict[str, Any]) -> dict[str, Any]:
    spec: dict[str, Any] = {"name": t["name"], "inputSchema": {"json": t.get("input_schema") or {"type": "object"}}}
    if t.get("description"):
        spec["description"] = t["description"]
    return {"toolSpec": spec}


def to_converse(body: dict[str, Any], model: str, max_tokens_default: int,
                prefill: str | None = None) -> tuple[dict[str, Any], str]:
    """Translate; returns (Converse request dict, whitespace stripped from a final assistant turn).
    The model travels in the URL, the stream flag in the path (converse / converse-stream)."""
    req, trimmed = to_anthropic(body, model, False, max_tokens_default, prefill=prefill)
    messages = [{"role": m["role"], "content": [_block(b) for b in m["content"]]} for m in req["messages"]]
    out: dict[str, Any] = {"messages": messages}
    if req.get("system"):
        out["system"] = [{"text": req["system"]}]
    inference: dict[str, Any] = {"maxTokens": req["max_tokens"]}
    for src, dst in (("temperature", "temperature"), ("top_p", "topP"), ("stop_sequences", "stopSequences")):
        if src in req:
            inference[dst] = req[src]
    out["inferenceConfig"] = inference
    tools = req.get("tools")
    choice = req.get("tool_choice") or {"type": "auto"}
    if tools:
        if choice["type"] == "none":
            if any("toolUse" in b or "toolResult" in b for m in messages for b in m["content"]):
                raise UnsupportedRequest("tool_choice none with tool calls in the conversation cannot be "
                                         "expressed on bedrock (Converse has no tool_choice none)")
        else:
            cfg: dict[str, Any] = {"tools": [_tool(t) for t in tools]}
            if choice["type"] == "any":
                cfg["toolChoice"] = {"any": {}}
            elif choice["type"] == "tool":
                cfg["toolChoice"] = {"tool": {"name": choice["name"]}}
            else:
                cfg["toolChoice"] = {"auto": {}}
            out["toolConfig"] = cfg
    return out, trimmed
