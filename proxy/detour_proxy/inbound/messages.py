"""The Anthropic Messages codec: canonical chat answers and chunks -> Anthropic messages and
events, and every error in Anthropic's error format with the status Anthropic would use.

A stream becomes `message_start`, `ping`, per block `content_block_start`,
`content_block_delta` (`text_delta` / `input_json_delta`)..., `content_block_stop`, then
`message_delta` (stop_reason, usage) and `message_stop`. A stream that fails after it
started ends with an in-band `error` event and no `message_stop`, so the SDK raises instead
of returning a truncated message.
"""

from __future__ import annotations

from typing import Any

import orjson

from ..adapters import UpstreamError, UpstreamRequest
from ..adapters.anthropic import AnthropicAdapter
from ..adapters.vertex import VertexAdapter
from ..config import ProviderType
from ..engine.codec import SSE_HEADERS
from . import native as nat
from ._common import chat_usage, load_object, new_id, translate_or_defer
from .messages_request import to_chat

__all__ = ["MessagesCodec", "to_message", "anthropic_status", "error_type"]

_JSON = [(b"content-type", b"application/json")]
_STOP = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use", "function_call": "tool_use",
         "content_filter": "refusal"}
_TYPES = {400: "invalid_request_error", 401: "authentication_error", 402: "billing_error",
          403: "permission_error", 404: "not_found_error", 413: "request_too_large", 429: "rate_limit_error",
          500: "api_error", 504: "timeout_error", 529: "overloaded_error"}


def anthropic_status(status: int) -> int:
    """The status Anthropic would answer with: overload (503) is 529, other gateway failures
    (502) are 500 `api_error`; the rest are Anthropic's own statuses already."""
    if status == 503:
        return 529
    if status == 502 or (status > 500 and status not in (504, 529)):
        return 500
    return status


def error_type(status: int) -> str:
    return _TYPES.get(status) or ("api_error" if status >= 500 else "invalid_request_error")


def _error(status: int, message: str) -> bytes:
    return orjson.dumps({"type": "error", "error": {"type": error_type(anthropic_status(status)),
                                                    "message": message}})


def to_message(chat: dict[str, Any], model: str) -> dict[str, Any]:
    """A canonical `chat.completion` -> an Anthropic `message`."""
    choice = (chat.get("choices") or [{}])[0]
    msg = choice.get("message") or {}
    content: list[dict[str, Any]] = []
    text = msg.get("content") or msg.get("refusal")
    if isinstance(text, str) and text:
        content.append({"type": "text", "text": text})
    for call in msg.get("tool_calls") or ():
        fn = call.get("function") or {}
        try:
            args = orjson.loads(fn.get("arguments") or "{}")
        except orjson.JSONDecodeError:
            args = {"_raw_arguments": fn.get("arguments")}
        content.append({"type": "tool_use", "id": call.get("id") or new_id("toolu_"), "name": fn.get("name", ""),
                        "input": args})
    inp, out = chat_usage(chat)
    return {"id": new_id("msg_"), "type": "message", "role": "assistant", "model": chat.get("model") or model,
            "content": content, "stop_reason": _STOP.get(choice.get("finish_reason") or "stop", "end_turn"),
            "stop_sequence": None, "usage": {"input_tokens": inp, "output_tokens": out}}


class MessagesCodec:
    """POST /v1/messages. One instance per request: it keeps the stream's state."""

    json_headers = _JSON
    stream_headers = SSE_HEADERS

    def __init__(self) -> None:
        self.model = ""
        self.request: dict[str, Any] = {}
        self.raw = b""
        self.untranslatable: str | None = None   # why no translated target can serve it
        self.native = False                       # the relayed stream is Anthropic's own events
        self._events: nat.MessagesEvents | None = None
        self.beta: str | None = None         # the client's anthropic-beta header
        self._started = False
        self._block: int | None = None       # index of the open content block
        self._block_kind = ""
        self._blocks = 0
        self._calls: dict[int, int] = {}     # chat tool-call index -> block index
        self._stop: str | None = None
        self._usage = (0, 0)

    def parse(self, raw: bytes, kind: str) -> dict[str, Any]:
        self.request = load_object(raw)
        self.raw = raw
        self.model = self.request["model"]
        body, self.untranslatable = translate_or_defer(to_chat, self.request)
        return body

    # -- native forwarding (see inbound.native) ----------------------------------------------
    def native_request(self, prov: Any, model: str, stream: bool, api_key: str | None) -> UpstreamRequest | None:
        """The request as is for an Anthropic target; None: translate it (raises
        UnsupportedRequest, via the engine, when the translation cannot carry it)."""
        config = prov.config
        if config.type is not ProviderType.anthropic:
            if self.untranslatable:
                raise nat.UnsupportedRequest(f"it does not speak the Messages API, and {self.untranslatable}")
            return None
        return nat.messages_request(config, prov.adapter, self.request, self.raw, model, api_key, self.beta)

    def native_decoder(self, provider: str) -> nat.MessagesEvents:
        self._events = nat.MessagesEvents(provider)
        return self._events

    def resume_translated(self) -> None:
        """A native stream was cut and a translated continuation carries on: continue its
        content blocks (the open text block keeps its index) so the client sees one message."""
        self.native = False
        ev = self._events
        if ev is None:
            return
        self._started = True
        self._blocks = ev.blocks
        self._block = ev.open if ev.open_type == "text" else None
        self._block_kind = "text"
        if ev.usage:
            self._usage = (ev.usage.get("prompt_tokens", 0), 0)

    def check_native(self, doc: Any, provider: str) -> tuple[str | None, dict[str, int] | None]:
        return nat.check_message(doc, provider)

    def answer(self, body: bytes) -> bytes:
        return orjson.dumps(to_message(orjson.loads(body), self.model))

    def error(self, message: str, type_: str, code: str | None = None) -> bytes:
        # The status is not known here: `client_status` maps it and the endpoint re-types the body.
        return orjson.dumps({"type": "error", "error": {"type": type_, "message": message}})

    def upstream_error(self, err: UpstreamError) -> bytes:
        return _error(err.status, err.message)

    def client_status(self, status: int) -> int:
        return anthropic_status(status)

    def upstream_headers(self, adapter: Any) -> dict[str, str]:
        """`anthropic-beta` goes to Anthropic targets and Vertex (Claude reads it there, as the
        anthropic SDK's Vertex client sends it; Vertex's Gemini ignores it); others do not know it."""
        return ({"anthropic-beta": self.beta} if self.beta and isinstance(adapter, (AnthropicAdapter, VertexAdapter))
                else {})

    def reply_body(self, status: int, body: bytes) -> bytes:
        """An error body re-typed for the status the client gets (Anthropic keys on both)."""
        doc = orjson.loads(body)
        doc["error"]["type"] = error_type(status)
        return orjson.dumps(doc)

    # -- streams --------------------------------------------------------------------------
    @staticmethod
    def _event(type_: str, doc: dict[str, Any]) -> bytes:
        doc = {"type": type_, **doc}
        return b"event: " + type_.encode() + b"\ndata: " + orjson.dumps(doc) + b"\n\n"

    def _start(self, chunk: dict[str, Any], out: list[bytes]) -> None:
        self._started = True
        message: dict[str, Any] = {"id": new_id("msg_"), "type": "message", "role": "assistant", "content": [],
                   "model": chunk.get("model") or self.model, "stop_reason": None, "stop_sequence": None,
                   "usage": {"input_tokens": 0, "output_tokens": 0}}
        out.append(self._event("message_start", {"message": message}))
        out.append(self._event("ping", {}))

    def _close(self, out: list[bytes]) -> None:
        if self._block is not None:
            out.append(self._event("content_block_stop", {"index": self._block}))
            self._block = None

    def _open(self, kind: str, block: dict[str, Any], out: list[bytes]) -> int:
        self._close(out)
        index = self._block = self._blocks
        self._blocks += 1
        self._block_kind = kind
        out.append(self._event("content_block_start", {"index": index, "content_block": block}))
        return index

    def chunks(self, payloads: list[bytes]) -> bytes:
        if self.native:
            return b"".join(payloads)
        out: list[bytes] = []
        for p in payloads:
            chunk = orjson.loads(p)
            if not self._started:
                self._start(chunk, out)
            if chunk.get("usage"):
                self._usage = chat_usage(chunk)
            for choice in chunk.get("choices") or ():
                delta = choice.get("delta") or {}
                text = delta.get("content")
                if text:
                    if self._block is None or self._block_kind != "text":
                        self._open("text", {"type": "text", "text": ""}, out)
                    out.append(self._event("content_block_delta", {"index": self._block, "delta": {
                        "type": "text_delta", "text": text}}))
                for tc in delta.get("tool_calls") or ():
                    i = tc.get("index", 0)
                    fn = tc.get("function") or {}
                    if i not in self._calls:
                        self._calls[i] = self._open("tool", {"type": "tool_use", "id": tc.get("id") or new_id("toolu_"),
                                                             "name": fn.get("name") or "", "input": {}}, out)
                    if fn.get("arguments"):
                        out.append(self._event("content_block_delta", {"index": self._calls[i], "delta": {
                            "type": "input_json_delta", "partial_json": fn["arguments"]}}))
                if choice.get("finish_reason"):
                    self._stop = choice["finish_reason"]
        return b"".join(out)

    def done(self) -> bytes:
        if self.native:
            return b""   # Anthropic's message_stop was relayed
        out: list[bytes] = []
        if not self._started:
            self._start({}, out)
        self._close(out)
        inp, outp = self._usage
        out.append(self._event("message_delta", {
            "delta": {"stop_reason": _STOP.get(self._stop or "stop", "end_turn"), "stop_sequence": None},
            "usage": {"input_tokens": inp, "output_tokens": outp}}))
        out.append(self._event("message_stop", {}))
        return b"".join(out)

    def stream_error(self, error: dict[str, Any]) -> bytes:
        message = str(error.get("message") or "the upstream stream failed")
        return self._event("error", {"error": {"type": "overloaded_error" if "overload" in message.lower()
                                               else "api_error", "message": message}})
