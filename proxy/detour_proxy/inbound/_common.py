"""Small helpers shared by the inbound codecs: ids, JSON parsing of the client's bytes."""

from __future__ import annotations

import os
from typing import Any

import orjson

from ..errors import ClientError, bad_request


def new_id(prefix: str) -> str:
    return prefix + os.urandom(12).hex()


def load_object(raw: bytes) -> dict[str, Any]:
    """The client's body as a JSON object, or a 400."""
    if not raw:
        raise bad_request("The request body is empty; send a JSON object.")
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise bad_request(f"The request body is not valid JSON: {exc.args[0] if exc.args else exc}",
                          code="invalid_json") from None
    if not isinstance(body, dict):
        raise bad_request("The request body must be a JSON object.")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise bad_request("You must provide a model parameter.", param="model")
    if "stream" in body and not isinstance(body["stream"], bool):
        raise bad_request("'stream' must be a boolean.", param="stream")
    return body


def unsupported(message: str, param: str | None = None) -> Exception:
    """A request no target of any route can serve once translated (stateful or server-side
    features): refused with a reason instead of being served wrongly."""
    return bad_request(message, param=param, code="unsupported_by_route")


def chat_usage(doc: dict[str, Any]) -> tuple[int, int]:
    u = doc.get("usage") or {}
    return int(u.get("prompt_tokens") or 0), int(u.get("completion_tokens") or 0)


def translate_or_defer(to_chat: Any, request: dict[str, Any]) -> tuple[dict[str, Any], str | None]:
    """(canonical body, None), or for a request only a native target can serve (stateful or
    server-side features): (a stand-in body for routing, the reason). The reason makes every
    target that would need the translation ineligible (skipped, `x-detour-skipped`); a 400
    names it only when no target of the route speaks the client's format."""
    try:
        return to_chat(request), None
    except ClientError as exc:
        if exc.code != "unsupported_by_route":
            raise
        why = exc.message
    body: dict[str, Any] = {"model": request["model"], "messages": [{"role": "user", "content": ""}]}
    if isinstance(request.get("metadata"), dict):
        body["metadata"] = request["metadata"]
    if request.get("stream") is True:
        body["stream"] = True
    return body, why
