"""Gemini `GenerateContentResponse` (and its SSE stream) -> OpenAI chat completions and chunks,
plus Google's error format.

Answers: the first candidate's `text` parts make `content`, `thought` parts
`reasoning_content`, `functionCall` parts `tool_calls` (Gemini sends a call whole, never in
pieces; ids are Gemini's own when it gives them, else fresh random `call_<hex>` ids).
`finishReason` maps STOP -> stop (tool_calls when the turn called a function), MAX_TOKENS ->
length, SAFETY / RECITATION / BLOCKLIST / PROHIBITED_CONTENT / SPII / IMAGE_SAFETY ->
content_filter; MALFORMED_FUNCTION_CALL (and any unknown reason) is an unusable answer of that
target (the engine falls back). A prompt blocked outright (`promptFeedback.blockReason`, no
candidate) is a `content_filter` answer with empty content. `usageMetadata` -> `usage`
(thinking tokens are completion tokens, as OpenAI counts reasoning; cached tokens are reported).

Streams: `streamGenerateContent?alt=sse` sends one `data:` document per chunk and no end
marker; the stream is complete when a chunk carried a `finishReason` and the connection then
ended. A stream that ends without one is truncated (error event), an `error` document inside
the stream is that target's error with the status its code says.

Errors: `{"error": {"code": 429, "message": ..., "status": "RESOURCE_EXHAUSTED", "details": [...]}}`
(sometimes wrapped in a list). The status word is kept as type and code; RESOURCE_EXHAUSTED,
UNAVAILABLE, INTERNAL and DEADLINE_EXCEEDED are transient whatever the HTTP status says; a
`google.rpc.RetryInfo` detail's `retryDelay` is the Retry-After when no header gives one.
"""

from __future__ import annotations

import base64
import time
import uuid
from typing import Any

import orjson

from .base import DONE, Headers, SSEEvent, SSEParser, SSEStreamDecoder, StreamEvent, UpstreamError
from .errors import MAX_MESSAGE, parse_retry_after, redact

__all__ = ["from_gemini", "GeminiStreamDecoder", "FINISH_REASONS", "google_error", "is_google_error",
           "GOOGLE_TRANSIENT_STATUS", "with_signature", "split_signature", "SIGNATURE_MARK"]

#: Gemini's `thoughtSignature` of a function call must come back with the call in the next turn
#: (Gemini 3 rejects a function-call history without it). OpenAI's format has no place for it but
#: the tool call id, which clients echo verbatim: `<id>__thought__<signature, URL-safe base64>`
#: (URL-safe so the id stays valid for Anthropic targets, whose ids allow only [A-Za-z0-9_-]).
SIGNATURE_MARK = "__thought__"


def with_signature(call_id: str, signature: str) -> str:
    try:
        raw = base64.b64decode(signature + "=" * (-len(signature) % 4), validate=False)
    except ValueError:
        return call_id
    return call_id + SIGNATURE_MARK + base64.urlsafe_b64encode(raw).decode().rstrip("=")


def split_signature(call_id: str) -> tuple[str, str | None]:
    """(the call id, Gemini's thoughtSignature in standard base64, or None)."""
    head, mark, tail = call_id.partition(SIGNATURE_MARK)
    if not mark or not tail:
        return call_id, None
    try:
        raw = base64.urlsafe_b64decode(tail + "=" * (-len(tail) % 4))
    except ValueError:
        return call_id, None
    return head, base64.b64encode(raw).decode()

FINISH_REASONS = {
    "STOP": "stop", "MAX_TOKENS": "length", "SAFETY": "content_filter", "RECITATION": "content_filter",
    "BLOCKLIST": "content_filter", "PROHIBITED_CONTENT": "content_filter", "SPII": "content_filter",
    "IMAGE_SAFETY": "content_filter", "LANGUAGE": "content_filter", "FINISH_REASON_UNSPECIFIED": "stop",
}

#: Google's canonical status words that are worth another try (elsewhere).
GOOGLE_TRANSIENT_STATUS = {
    "RESOURCE_EXHAUSTED": 429, "UNAVAILABLE": 503, "INTERNAL": 500, "DEADLINE_EXCEEDED": 504,
}
_STATUS_HTTP = {
    **GOOGLE_TRANSIENT_STATUS, "INVALID_ARGUMENT": 400, "FAILED_PRECONDITION": 400, "OUT_OF_RANGE": 400,
    "UNAUTHENTICATED": 401, "PERMISSION_DENIED": 403, "NOT_FOUND": 404, "ABORTED": 409,
    "ALREADY_EXISTS": 409, "CANCELLED": 499, "UNIMPLEMENTED": 501, "UNKNOWN": 500, "DATA_LOSS": 500,
}
_NULL_FINISH = b',"finish_reason":null}]}'


def _clip(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= MAX_MESSAGE else text[:MAX_MESSAGE] + "..."


def _error_object(doc: Any) -> dict[str, Any] | None:
    if isinstance(doc, list) and doc:
        doc = doc[0]
    if isinstance(doc, dict) and isinstance(doc.get("error"), dict):
        err: dict[str, Any] = doc["error"]
        return err
    return None


def is_google_error(raw: bytes) -> bool:
    """Is this Google's error shape (`error.status` is a status word)? Vertex's front end answers
    so even for Claude models (quota, permissions); Claude's own errors are Anthropic's."""
    try:
        err = _error_object(orjson.loads(raw))
    except orjson.JSONDecodeError:
        return False
    return err is not None and isinstance(err.get("status"), str) and "type" not in err


def _retry_delay(err: dict[str, Any]) -> float | None:
    for d in err.get("details") or ():
        if isinstance(d, dict) and str(d.get("@type", "")).endswith("google.rpc.RetryInfo"):
            delay = d.get("retryDelay")
            if isinstance(delay, str) and delay.endswith("s"):
                try:
                    v = float(delay[:-1])
                except ValueError:
                    return None
                return v if 0 <= v < float("inf") else None
    return None


def google_error(status: int, headers: Headers | None, raw: bytes, *, provider: str,
                 api_key: str | None = None, now: float | None = None) -> UpstreamError:
    """A Google error response (HTTP status, or a stream's error document with status 0)."""
    try:
        err = _error_object(orjson.loads(raw)) if raw else None
    except orjson.JSONDecodeError:
        err = None
    word = msg = None
    retry_after = parse_retry_after(headers, now) if headers else None
    if err is not None:
        word = err.get("status") if isinstance(err.get("status"), str) else None
        msg = err.get("message") if isinstance(err.get("message"), str) else None
        code = err.get("code")
        if not status:
            status = code if isinstance(code, int) and 400 <= code <= 599 else _STATUS_HTTP.get(word or "", 502)
        if retry_after is None:
            retry_after = _retry_delay(err)
    elif raw:
        msg = raw[:4096].decode("utf-8", "replace")
    status = status or 502
    parts = [f"{provider} {status}"] + ([word] if word else []) + [_clip(msg) if msg else "(no error message)"]
    return UpstreamError(
        status=status, type=word or ("api_error" if status >= 500 else "invalid_request_error"), code=word,
        message=redact(": ".join(parts), (api_key,)), retry_after=retry_after,
        retryable=word in GOOGLE_TRANSIENT_STATUS or status in (408, 429) or status >= 500,
    )


def usage_of(um: Any) -> dict[str, Any]:
    u = um if isinstance(um, dict) else {}

    def n(key: str) -> int:
        v = u.get(key)
        return v if isinstance(v, int) else 0

    prompt, thoughts = n("promptTokenCount"), n("thoughtsTokenCount")
    completion = n("candidatesTokenCount") + thoughts
    out: dict[str, Any] = {"prompt_tokens": prompt, "completion_tokens": completion,
                           "total_tokens": n("totalTokenCount") or prompt + completion}
    if n("cachedContentTokenCount"):
        out["prompt_tokens_details"] = {"cached_tokens": n("cachedContentTokenCount")}
    if thoughts:
        out["completion_tokens_details"] = {"reasoning_tokens": thoughts}
    return out


def _finish(reason: Any, called: bool) -> str:
    if reason == "MALFORMED_FUNCTION_CALL":
        raise ValueError("gemini produced a malformed function call")
    if not isinstance(reason, str) or reason not in FINISH_REASONS:
        raise ValueError(f"gemini finished for an unknown reason {reason!r}")
    out = FINISH_REASONS[reason]
    return "tool_calls" if out == "stop" and called else out


def _call(part: dict[str, Any], n: int) -> dict[str, Any]:
    fc = part["functionCall"]
    if not isinstance(fc, dict) or not isinstance(fc.get("name"), str):
        raise ValueError("gemini functionCall without a name")
    # Gemini's own id when it gives one; else a fresh one (ids must not repeat across a conversation's turns)
    given = fc.get("id")
    cid = given if isinstance(given, str) and given else f"call_{uuid.uuid4().hex[:24]}"
    sig = part.get("thoughtSignature")
    if isinstance(sig, str) and sig:
        cid = with_signature(cid, sig)
    return {"id": cid, "type": "function",
            "function": {"name": fc["name"], "arguments": orjson.dumps(fc.get("args") or {}).decode()}}


def _candidate(doc: dict[str, Any]) -> dict[str, Any] | None:
    cands = doc.get("candidates")
    if cands is None:
        return None
    if not isinstance(cands, list):
        raise ValueError("gemini candidates is not a list")
    if not cands:
        return None
    c = cands[0]
    if not isinstance(c, dict):
        raise ValueError("gemini candidate is not an object")
    return c


def _parts(cand: dict[str, Any]) -> list[dict[str, Any]]:
    content = cand.get("content") or {}
    parts = content.get("parts") if isinstance(content, dict) else None
    if parts is None:
        return []
    if not isinstance(parts, list):
        raise ValueError("gemini content.parts is not a list")
    return [p for p in parts if isinstance(p, dict)]


def from_gemini(raw: bytes, model: str = "", created: int | None = None) -> bytes:
    """A non-streaming `GenerateContentResponse` -> OpenAI `chat.completion` bytes."""
    doc = orjson.loads(raw)
    if not isinstance(doc, dict) or "error" in doc:
        raise ValueError("gemini response is not a GenerateContentResponse")
    cand = _candidate(doc)
    texts: list[str] = []
    thoughts: list[str] = []
    calls: list[dict[str, Any]] = []
    if cand is None:
        blocked = (doc.get("promptFeedback") or {}).get("blockReason")
        if not blocked:
            raise ValueError("gemini answered without a candidate")
        finish = "content_filter"
    else:
        for p in _parts(cand):
            if "functionCall" in p:
                calls.append(_call(p, len(calls)))
            elif isinstance(p.get("text"), str):
                (thoughts if p.get("thought") is True else texts).append(p["text"])
        finish = _finish(cand.get("finishReason") or "STOP", bool(calls))
    message: dict[str, Any] = {"role": "assistant", "content": "".join(texts) if texts or not calls else None}
    if calls:
        message["tool_calls"] = calls
    if thoughts:
        message["reasoning_content"] = "".join(thoughts)
    out = {
        "id": "chatcmpl-" + str(doc.get("responseId") or "gemini"),
        "object": "chat.completion",
        "created": int(time.time()) if created is None else created,
        "model": doc.get("modelVersion") or model,
        "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": finish}],
        "usage": usage_of(doc.get("usageMetadata")),
    }
    return orjson.dumps(out)


class GeminiStreamDecoder(SSEStreamDecoder):
    """Gemini SSE chunks -> OpenAI chunk events (see the module docstring)."""

    __slots__ = ("_sse", "_over", "_include_usage", "_id", "_model", "_created", "_head_bytes",
                 "_calls", "_finished", "_usage", "_label", "_started")

    def __init__(self, include_usage: bool = False, model: str = "", created: int | None = None,
                 label: str = "gemini") -> None:
        self._sse = SSEParser()
        self._over = False
        self._include_usage = include_usage
        self._id = "chatcmpl-gemini"
        self._model = model
        self._created = int(time.time()) if created is None else created
        self._head_bytes: bytes | None = None
        self._calls = 0
        self._finished = False
        self._usage: Any = None
        self._label = label
        self._started = False

    def _meta(self) -> dict[str, Any]:
        return {"id": self._id, "object": "chat.completion.chunk", "created": self._created, "model": self._model}

    def _chunk(self, delta: dict[str, Any], text: str = "", bearing: bool = True,
               finish: str | None = None) -> StreamEvent:
        if self._head_bytes is None:
            self._head_bytes = orjson.dumps(self._meta())[:-1] + b',"choices":[{"index":0,"delta":'
        tail = _NULL_FINISH if finish is None else b',"finish_reason":' + orjson.dumps(finish) + b"}]}"
        return StreamEvent("chunk", self._head_bytes + orjson.dumps(delta) + tail, text, bearing)

    def _fail(self, err: UpstreamError, out: list[StreamEvent]) -> None:
        self._over = True
        out.append(StreamEvent.failed(err))

    def _unterminated(self) -> StreamEvent:
        if not self._finished:
            return StreamEvent.failed(UpstreamError(
                502, "stream_error", "truncated", f"{self._label} stream ended before a finishReason"))
        return DONE

    def close(self) -> list[StreamEvent]:
        out = super().close()
        if out and out[-1] is DONE and self._include_usage:
            doc = {**self._meta(), "choices": [], "usage": usage_of(self._usage)}
            out.insert(len(out) - 1, StreamEvent("chunk", orjson.dumps(doc), "", False))
        return out

    def _events(self, sse_events: list[SSEEvent]) -> list[StreamEvent]:
        out: list[StreamEvent] = []
        for ev in sse_events:
            if self._over:
                break
            try:
                doc = orjson.loads(ev.data)
            except orjson.JSONDecodeError:
                self._fail(UpstreamError(502, "stream_error", "bad_event",
                                         f"{self._label} sent an undecodable stream event"), out)
                continue
            if _error_object(doc) is not None:
                self._fail(google_error(0, None, ev.data, provider=f"{self._label} stream error"), out)
                continue
            if not isinstance(doc, dict):
                continue
            if self._finished:   # after the finish: only usage may still come
                self._usage = doc.get("usageMetadata") or self._usage
                continue
            if not self._started:
                self._started = True
                self._id = "chatcmpl-" + str(doc.get("responseId") or "gemini")
                self._model = doc.get("modelVersion") or self._model
                out.append(self._chunk({"role": "assistant", "content": ""}, bearing=False))
            if doc.get("usageMetadata"):
                self._usage = doc["usageMetadata"]
            try:
                cand = _candidate(doc)
                parts = _parts(cand) if cand is not None else []
                for p in parts:
                    if "functionCall" in p:
                        call = _call(p, self._calls)
                        out.append(self._chunk({"tool_calls": [{"index": self._calls, **call}]}))
                        self._calls += 1
                    elif isinstance(p.get("text"), str) and p["text"]:
                        if p.get("thought") is True:
                            out.append(self._chunk({"reasoning_content": p["text"]}))
                        else:
                            out.append(self._chunk({"content": p["text"]}, p["text"]))
                reason = cand.get("finishReason") if cand is not None else None
                if cand is None and (doc.get("promptFeedback") or {}).get("blockReason"):
                    reason = "SAFETY"
                if reason:
                    self._finished = True
                    out.append(self._chunk({}, bearing=False, finish=_finish(reason, self._calls > 0)))
            except ValueError as exc:
                self._fail(UpstreamError(502, "stream_error", "bad_event", f"{self._label}: {exc}"), out)
        return out
