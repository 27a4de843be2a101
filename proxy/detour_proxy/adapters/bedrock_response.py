"""Bedrock Converse answers, ConverseStream events and Bedrock's errors -> OpenAI chat format.

Converse's output is Anthropic's Messages output with other spellings, so answers and stream
events are re-spelled as Anthropic documents and handed to `anthropic_response` (one place
for finish reasons, tool-call chunks, the structured-output tool, usage and the whitespace
de-duplication of continuations):
- answer: `output.message.content[]` (`text`, `toolUse`, `reasoningContent`), `stopReason`,
  `usage` (`inputTokens`, `outputTokens`, `cacheReadInputTokens`, `cacheWriteInputTokens`).
- stream: `messageStart` -> message_start, `contentBlockStart` (toolUse) -> content_block_start,
  `contentBlockDelta` (`text`, `toolUse.input` pieces, `reasoningContent.text`) ->
  content_block_delta, `messageStop` -> message_delta (stop reason), `metadata` (usage) ->
  message_stop (the end). A stream that stops after `messageStop` without `metadata` is
  complete; before `messageStop` it is truncated (502).
- Stop reasons: `guardrail_intervened` and `content_filtered` -> `content_filter`.

Errors: Bedrock names the error in `x-amzn-ErrorType` (`ThrottlingException:http://...`) and
puts `{"message": ...}` in the body; stream exceptions come as event-stream messages with
`:message-type: exception` and `:exception-type`. `EXCEPTION_STATUS` gives each the status it
stands for; `ServiceQuotaExceededException` arrives as a 400 but is a quota ("resubmit
later"), so it is reported as 429 (rate limited: retried/fallen back on, not the request's
fault).
"""

from __future__ import annotations

import time
import uuid
from typing import Any

import orjson

from .anthropic_response import AnthropicStreamDecoder, from_anthropic
from .base import DONE, Headers, SSEEvent, StreamEvent, UpstreamError
from .bedrock_stream import EventStreamError, EventStreamParser
from .errors import lower_headers, parse_retry_after, redact

__all__ = ["from_converse", "ConverseStreamDecoder", "bedrock_error", "EXCEPTION_STATUS", "STOP_REASONS"]

#: Bedrock's error names -> the status they stand for (lower camel case in streams).
EXCEPTION_STATUS = {
    "throttlingexception": 429, "servicequotaexceededexception": 429, "modelnotreadyexception": 429,
    "serviceunavailableexception": 503, "internalserverexception": 500, "modeltimeoutexception": 408,
    "modelerrorexception": 424, "modelstreamerrorexception": 424, "validationexception": 400,
    "accessdeniedexception": 403, "resourcenotfoundexception": 404, "unrecognizedclientexception": 403,
    "invalidsignatureexception": 403, "expiredtokenexception": 403,
}
_TYPES = {429: "rate_limit_error", 503: "service_unavailable", 500: "api_error", 408: "timeout_error",
          424: "api_error", 400: "invalid_request_error", 403: "permission_error", 404: "not_found_error"}

STOP_REASONS = {
    "end_turn": "end_turn", "tool_use": "tool_use", "max_tokens": "max_tokens", "stop_sequence": "stop_sequence",
    "guardrail_intervened": "refusal", "content_filtered": "refusal",
    "model_context_window_exceeded": "model_context_window_exceeded",
}


def _usage(u: Any) -> dict[str, int]:
    u = u if isinstance(u, dict) else {}

    def n(k: str) -> int:
        v = u.get(k)
        return v if isinstance(v, int) else 0
    return {"input_tokens": n("inputTokens"), "output_tokens": n("outputTokens"),
            "cache_creation_input_tokens": n("cacheWriteInputTokens"),
            "cache_read_input_tokens": n("cacheReadInputTokens")}


def _stop(reason: Any) -> str:
    return STOP_REASONS.get(reason if isinstance(reason, str) else "", "end_turn")


def from_converse(raw: bytes, model: str = "", created: int | None = None) -> bytes:
    """A Converse answer -> OpenAI `chat.completion` bytes."""
    doc = orjson.loads(raw)
    msg = ((doc.get("output") or {}).get("message") if isinstance(doc, dict) else None)
    if not isinstance(msg, dict) or not isinstance(msg.get("content"), list):
        raise ValueError("bedrock response has no output.message")
    blocks: list[dict[str, Any]] = []
    for b in msg["content"]:
        if not isinstance(b, dict):
            continue
        if isinstance(b.get("text"), str):
            blocks.append({"type": "text", "text": b["text"]})
        elif isinstance(b.get("toolUse"), dict):
            tu = b["toolUse"]
            blocks.append({"type": "tool_use", "id": tu.get("toolUseId", ""), "name": tu.get("name", ""),
                           "input": tu.get("input") or {}})
        elif isinstance(b.get("reasoningContent"), dict):
            text = (b["reasoningContent"].get("reasoningText") or {}).get("text")
            if isinstance(text, str):
                blocks.append({"type": "thinking", "thinking": text})
    anthropic = {"type": "message", "id": f"chatcmpl-bedrock-{uuid.uuid4().hex[:24]}", "model": model,
                 "content": blocks, "stop_reason": _stop(doc.get("stopReason")), "usage": _usage(doc.get("usage"))}
    return from_anthropic(orjson.dumps(anthropic), model, created)


def _obj(x: Any) -> dict[str, Any]:
    return x if isinstance(x, dict) else {}


def _str(x: Any) -> str:
    return x if isinstance(x, str) else ""


def _name_of(header: str | None) -> str:
    """`ThrottlingException:http://internal.amazon.com/...` -> `ThrottlingException`."""
    return (header or "").split(":", 1)[0].strip()


def bedrock_error(status: int, headers: Headers, raw: bytes, *, api_key: str | None = None,
                  now: float | None = None) -> UpstreamError:
    h = lower_headers(headers)
    name = _name_of(h.get("x-amzn-errortype"))
    msg = ""
    try:
        doc = orjson.loads(raw) if raw else None
    except orjson.JSONDecodeError:
        doc = None
    if isinstance(doc, dict):
        m = doc.get("message") or doc.get("Message")
        msg = m if isinstance(m, str) else ""
        if not name and isinstance(doc.get("__type"), str):
            name = _name_of(doc["__type"].rsplit("#", 1)[-1])
    elif raw:
        msg = raw[:1000].decode("utf-8", "replace")
    mapped = EXCEPTION_STATUS.get(name.lower())
    if mapped == 429 or (mapped is not None and status < 400):
        status = mapped
    status = status or 502
    etype = _TYPES.get(status) or ("api_error" if status >= 500 else "invalid_request_error")
    text = f"bedrock {status}: {name or etype}: {msg[:1000] or '(no error message)'}"
    return UpstreamError(status=status, type=etype, code=name or None, message=redact(text, (api_key,)),
                         retry_after=parse_retry_after(headers, now))


def _stream_exception(name: str, payload: bytes) -> UpstreamError:
    try:
        doc = orjson.loads(payload) if payload else {}
    except orjson.JSONDecodeError:
        doc = {}
    msg = doc.get("message") if isinstance(doc, dict) else None
    status = EXCEPTION_STATUS.get(name.lower(), 502)
    return UpstreamError(status, _TYPES.get(status, "api_error"), name or "stream_error",
                         redact(f"bedrock stream {name or 'error'}: {msg if isinstance(msg, str) else ''}"[:1200]))


class ConverseStreamDecoder:
    """ConverseStream (binary event stream) -> OpenAI chunk events, through the Anthropic
    stream decoder (see the module docstring)."""

    __slots__ = ("_inner", "_es", "_over", "_stopped", "_usage")

    def __init__(self, include_usage: bool = False, prefix_trim: str = "", model: str = "",
                 created: int | None = None) -> None:
        self._inner = AnthropicStreamDecoder(include_usage=include_usage, prefix_trim=prefix_trim,
                                             model=model, created=int(time.time()) if created is None else created)
        self._inner._id = f"chatcmpl-bedrock-{uuid.uuid4().hex[:24]}"
        self._es = EventStreamParser()
        self._over = False
        self._stopped = False
        self._usage: Any = None

    def _fail(self, err: UpstreamError) -> list[StreamEvent]:
        self._over = True
        return [StreamEvent.failed(err)]

    def _emit(self, doc: dict[str, Any]) -> list[StreamEvent]:
        out = self._inner._events([SSEEvent(None, orjson.dumps(doc))])
        if self._inner._over:
            self._over = True
        return out

    def _finish(self) -> list[StreamEvent]:
        if self._usage is not None:
            self._emit({"type": "message_delta", "delta": {}, "usage": _usage(self._usage)})
        out = self._emit({"type": "message_stop"})
        self._over = True
        return out or [DONE]

    def feed(self, data: bytes) -> list[StreamEvent]:
        if self._over:
            return []
        try:
            messages = self._es.feed(data)
        except EventStreamError as exc:
            return self._fail(UpstreamError(502, "stream_error", "bad_event", f"bedrock: {exc}"))
        out: list[StreamEvent] = []
        for m in messages:
            if self._over:
                break
            mtype = m.headers.get(":message-type")
            if mtype == "exception":
                out += self._fail(_stream_exception(str(m.headers.get(":exception-type", "")), m.payload))
                continue
            if mtype == "error":
                name = str(m.headers.get(":error-code", "")) or "error"
                out += self._fail(_stream_exception(name, orjson.dumps({"message": m.headers.get(":error-message", "")})))
                continue
            try:
                doc = orjson.loads(m.payload) if m.payload else {}
            except orjson.JSONDecodeError:
                out += self._fail(UpstreamError(502, "stream_error", "bad_event",
                                                "bedrock sent an undecodable stream event"))
                continue
            if isinstance(doc, dict):
                out += self._event(str(m.headers.get(":event-type", "")), doc)
        return out

    def _event(self, kind: str, doc: dict[str, Any]) -> list[StreamEvent]:
        idx = doc.get("contentBlockIndex", 0)
        if not isinstance(idx, int):
            idx = 0
        if kind == "contentBlockDelta":
            d = _obj(doc.get("delta"))
            if isinstance(d.get("text"), str):
                return self._emit({"type": "content_block_delta", "index": idx,
                                   "delta": {"type": "text_delta", "text": d["text"]}})
            piece = _obj(d.get("toolUse")).get("input")
            if isinstance(piece, str):
                return self._emit({"type": "content_block_delta", "index": idx,
                                   "delta": {"type": "input_json_delta", "partial_json": piece}})
            rc = d.get("reasoningContent")
            if isinstance(rc, dict) and isinstance(rc.get("text"), str):
                return self._emit({"type": "content_block_delta", "index": idx,
                                   "delta": {"type": "thinking_delta", "thinking": rc["text"]}})
            return []
        if kind == "contentBlockStart":
            tu = _obj(_obj(doc.get("start")).get("toolUse"))
            if tu:
                return self._emit({"type": "content_block_start", "index": idx, "content_block": {
                    "type": "tool_use", "id": _str(tu.get("toolUseId")), "name": _str(tu.get("name"))}})
            return []
        if kind == "messageStart":
            return self._emit({"type": "message_start", "message": {}})
        if kind == "messageStop":
            self._stopped = True
            return self._emit({"type": "message_delta", "delta": {"stop_reason": _stop(doc.get("stopReason"))}})
        if kind == "metadata":
            self._usage = _obj(doc.get("usage"))
            return self._finish()
        return []   # contentBlockStop and future events carry nothing for the client

    def close(self) -> list[StreamEvent]:
        if self._over:
            return []
        if self._stopped:   # messageStop arrived: the answer is complete, only usage may be missing
            return self._finish()
        return self._fail(UpstreamError(502, "stream_error", "truncated", "bedrock stream ended before messageStop"))
