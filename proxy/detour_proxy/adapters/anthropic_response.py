"""Anthropic Messages responses and event streams -> OpenAI chat completions and chunks.

Clients only speak OpenAI, so Anthropic's typed event stream (`message_start`,
`content_block_*`, `message_delta`, `message_stop`, `error`, `ping`) is re-expressed as
`chat.completion.chunk` documents that share one id/created/model per stream. The chunk
prefix is serialized once per stream and the per-event delta appended to it, because this
runs for every token.

Structured output: a `tool_use` of `ANSWER_TOOL` (how `anthropic_request` carries a
`response_format`) is the answer itself: its input becomes the message content as JSON text
(streamed as content deltas), and a turn that ended only to give it finishes with `stop`.

Usage: Anthropic counts cache reads/writes apart from `input_tokens`; OpenAI's
`prompt_tokens` includes cached tokens, so all three are summed (`cached_tokens` = reads).
"""

from __future__ import annotations

import time
from typing import Any

import orjson

from .anthropic_fields import ANSWER_TOOL
from .base import DONE, SSEEvent, SSEParser, SSEStreamDecoder, StreamEvent, UpstreamError
from .errors import stream_error

__all__ = ["from_anthropic", "AnthropicStreamDecoder", "FINISH_REASONS", "usage_of"]

FINISH_REASONS = {
    "end_turn": "stop", "stop_sequence": "stop", "pause_turn": "stop",
    "max_tokens": "length", "model_context_window_exceeded": "length",
    "tool_use": "tool_calls", "refusal": "content_filter",
}

_NULL_FINISH = b',"finish_reason":null}]}'


def usage_of(input_tokens: int, output_tokens: int, cache_creation: int, cache_read: int) -> dict[str, Any]:
    prompt = input_tokens + cache_creation + cache_read
    u: dict[str, Any] = {"prompt_tokens": prompt, "completion_tokens": output_tokens,
                         "total_tokens": prompt + output_tokens}
    if cache_read:
        u["prompt_tokens_details"] = {"cached_tokens": cache_read}
    return u


def _n(u: dict[str, Any], key: str) -> int:
    v = u.get(key)
    return v if isinstance(v, int) else 0


def _finish(stop_reason: Any, called: bool, answered: bool) -> str:
    """OpenAI's finish_reason; a turn that stopped for tool use but called only the answer tool
    (structured output) simply stopped."""
    reason = FINISH_REASONS.get(stop_reason or "end_turn", "stop")
    return "stop" if reason == "tool_calls" and answered and not called else reason


def from_anthropic(raw: bytes, model: str = "", created: int | None = None) -> bytes:
    """A non-streaming Anthropic `message` -> OpenAI `chat.completion` bytes.

    Text blocks concatenate into `content` (null when there is only tool use, as OpenAI
    does); `thinking` blocks go to `reasoning_content` (the convention of OpenAI-compatible
    reasoning servers); `tool_use` blocks become `tool_calls` with JSON-string arguments.
    """
    msg = orjson.loads(raw)  # orjson.JSONDecodeError is a ValueError
    if not isinstance(msg, dict) or not isinstance(msg.get("content", []), list):
        raise ValueError("anthropic response is not a message object")
    texts: list[str] = []
    thinking: list[str] = []
    tool_calls: list[dict[str, Any]] = []
    answered = False
    for block in msg.get("content") or ():
        t = block.get("type")
        if t == "text":
            texts.append(block.get("text", ""))
        elif t == "thinking":
            thinking.append(block.get("thinking", ""))
        elif t == "tool_use" and block.get("name") == ANSWER_TOOL:
            texts.append(orjson.dumps(block.get("input") or {}).decode())
            answered = True
        elif t == "tool_use":
            tool_calls.append({
                "id": block.get("id", ""), "type": "function",
                "function": {"name": block.get("name", ""),
                             "arguments": orjson.dumps(block.get("input") or {}).decode()},
            })
    message: dict[str, Any] = {"role": "assistant", "content": "".join(texts) if texts else None}
    if tool_calls:
        message["tool_calls"] = tool_calls
    if thinking:
        message["reasoning_content"] = "".join(thinking)
    u = msg.get("usage") or {}
    doc = {
        "id": msg.get("id") or "chatcmpl-anthropic",
        "object": "chat.completion",
        "created": int(time.time()) if created is None else created,
        "model": msg.get("model") or model,
        "choices": [{
            "index": 0, "message": message, "logprobs": None,
            "finish_reason": _finish(msg.get("stop_reason"), bool(tool_calls), answered),
        }],
        "usage": usage_of(_n(u, "input_tokens"), _n(u, "output_tokens"),
                          _n(u, "cache_creation_input_tokens"), _n(u, "cache_read_input_tokens")),
    }
    return orjson.dumps(doc)


class AnthropicStreamDecoder(SSEStreamDecoder):
    """Anthropic SSE events -> OpenAI chunk events (see the module docstring).

    `include_usage`: emit a final `choices: []` chunk with usage (the client asked for
    `stream_options.include_usage`). `prefix_trim`: whitespace removed from a continuation
    prefill; if the model starts its continuation by repeating it, it is not sent twice.
    A stream that ends before `message_stop` is truncated: `close()` returns an error event.
    """

    def __init__(self, include_usage: bool = False, prefix_trim: str = "", model: str = "",
                 created: int | None = None) -> None:
        self._sse = SSEParser()
        self._include_usage = include_usage
        self._trim = prefix_trim
        self._pending_ws: str | None = "" if prefix_trim else None  # None: trimming settled
        self._id = "chatcmpl-anthropic"
        self._model = model
        self._created = int(time.time()) if created is None else created
        self._head_bytes: bytes | None = None
        self._tools: dict[int, int] = {}      # content block index -> tool_calls index
        self._answer: set[int] = set()        # content block indexes of the answer tool
        self._usage = [0, 0, 0, 0]            # input, output, cache creation, cache read
        self._over = False

    # -- chunk encoding -------------------------------------------------------------------
    def _meta(self) -> dict[str, Any]:
        return {"id": self._id, "object": "chat.completion.chunk", "created": self._created, "model": self._model}

    def _head(self) -> bytes:
        if self._head_bytes is None:
            self._head_bytes = orjson.dumps(self._meta())[:-1] + b',"choices":[{"index":0,"delta":'
        return self._head_bytes

    def _chunk(self, delta: dict[str, Any], text: str = "", bearing: bool = True,
               finish: str | None = None) -> StreamEvent:
        tail = _NULL_FINISH if finish is None else b',"finish_reason":' + orjson.dumps(finish) + b"}]}"
        return StreamEvent("chunk", self._head() + orjson.dumps(delta) + tail, text, bearing)

    # -- decoding ---------------------------------------------------------------------------
    def _unterminated(self) -> StreamEvent:
        return StreamEvent.failed(UpstreamError(
            502, "stream_error", "truncated", "anthropic stream ended before message_stop"))

    def _fail(self, err: UpstreamError, out: list[StreamEvent]) -> None:
        self._over = True
        out.append(StreamEvent.failed(err))

    def _text(self, text: str, out: list[StreamEvent]) -> None:
        if self._pending_ws is not None:
            text = self._pending_ws + text
            if not text or text.isspace():
                self._pending_ws = text
                return
            self._pending_ws = None
            body = text.lstrip()
            text = self._dedupe_ws(text[: len(text) - len(body)]) + body
        if text:
            out.append(self._chunk({"content": text}, text))

    def _dedupe_ws(self, ws: str) -> str:
        """Leading whitespace of a continuation, minus what the client already received."""
        if ws.startswith(self._trim):
            return ws[len(self._trim):]
        if self._trim.startswith(ws):
            return ""
        return ws

    def _settle(self, out: list[StreamEvent]) -> None:
        if self._pending_ws is not None:
            ws = self._dedupe_ws(self._pending_ws)
            self._pending_ws = None
            if ws:
                out.append(self._chunk({"content": ws}, ws))

    def _events(self, sse_events: list[SSEEvent]) -> list[StreamEvent]:
        out: list[StreamEvent] = []
        for ev in sse_events:
            if self._over:
                break
            try:
                doc = orjson.loads(ev.data)
            except orjson.JSONDecodeError:
                self._fail(UpstreamError(502, "stream_error", "bad_event",
                                         "anthropic sent an undecodable stream event"), out)
                continue
            if not isinstance(doc, dict):
                continue
            kind = doc.get("type") or ev.event
            if kind == "content_block_delta":
                d = doc.get("delta") or {}
                dt = d.get("type")
                if dt == "text_delta":
                    self._text(d.get("text") or "", out)
                elif dt == "input_json_delta":
                    part = d.get("partial_json") or ""
                    ti = self._tools.get(doc.get("index", -1))
                    if part and doc.get("index", -1) in self._answer:
                        self._text(part, out)
                    elif part and ti is not None:
                        out.append(self._chunk({"tool_calls": [{"index": ti, "function": {"arguments": part}}]}))
                elif dt == "thinking_delta" and d.get("thinking"):
                    out.append(self._chunk({"reasoning_content": d["thinking"]}))
                # signature_delta / citations_delta have no OpenAI counterpart
            elif kind == "content_block_start":
                block = doc.get("content_block") or {}
                bt = block.get("type")
                if bt == "text" and block.get("text"):
                    self._text(block["text"], out)
                elif bt == "tool_use" and block.get("name") == ANSWER_TOOL:
                    self._answer.add(doc.get("index", -1))
                    if block.get("input"):
                        self._text(orjson.dumps(block["input"]).decode(), out)
                elif bt == "tool_use":
                    self._settle(out)
                    ti = len(self._tools)
                    self._tools[doc.get("index", ti)] = ti
                    out.append(self._chunk({"tool_calls": [{
                        "index": ti, "id": block.get("id", ""), "type": "function",
                        "function": {"name": block.get("name", ""), "arguments": ""}}]}))
                    if block.get("input"):  # servers that send the whole input up front
                        args = orjson.dumps(block["input"]).decode()
                        out.append(self._chunk({"tool_calls": [{"index": ti, "function": {"arguments": args}}]}))
            elif kind == "message_start":
                m = doc.get("message") or {}
                self._id = m.get("id") or self._id
                self._model = m.get("model") or self._model
                self._head_bytes = None
                self._take_usage(m.get("usage"))
                out.append(self._chunk({"role": "assistant", "content": ""}, bearing=False))
            elif kind == "message_delta":
                self._settle(out)
                self._take_usage(doc.get("usage"))
                reason = (doc.get("delta") or {}).get("stop_reason")
                if reason:
                    out.append(self._chunk({}, bearing=False, finish=_finish(reason, bool(self._tools), bool(self._answer))))
            elif kind == "message_stop":
                self._settle(out)
                if self._include_usage:
                    doc_u = {**self._meta(), "choices": [], "usage": usage_of(*self._usage)}
                    out.append(StreamEvent("chunk", orjson.dumps(doc_u), "", False))
                self._over = True
                out.append(DONE)
            elif kind == "error":
                self._fail(stream_error(doc.get("error") or doc, provider="anthropic"), out)
            # ping, content_block_stop and unknown future events carry nothing for the client
        return out

    def _take_usage(self, u: Any) -> None:
        """Anthropic reports usage cumulatively (message_start, then message_delta)."""
        if not isinstance(u, dict):
            return
        for i, key in enumerate(("input_tokens", "output_tokens", "cache_creation_input_tokens",
                                 "cache_read_input_tokens")):
            v = u.get(key)
            if isinstance(v, int):
                self._usage[i] = v
