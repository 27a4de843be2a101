"""The Responses API codec: canonical chat answers and chunks -> Responses objects and events.

A stream becomes the Responses API's typed events: `response.created`,
`response.in_progress`, then per output item `response.output_item.added`, (text)
`response.content_part.added`, `response.output_text.delta`..., `response.output_text.done`,
`response.content_part.done`, (function call) `response.function_call_arguments.delta`...,
`response.function_call_arguments.done`, then `response.output_item.done`; finally
`response.completed` (or `response.incomplete` for a length/content-filter stop). A stream
that fails after it started ends with `response.failed` carrying the error: never a
`response.completed` over truncated output.
"""

from __future__ import annotations

import time
from typing import Any

import orjson

from ..adapters import UnsupportedRequest, UpstreamError, UpstreamRequest
from ..engine.codec import SSE_HEADERS
from ..errors import error_body
from . import native as nat
from ._common import chat_usage, load_object, new_id, translate_or_defer
from .responses_request import to_chat

__all__ = ["ResponsesCodec", "to_response"]

_JSON = [(b"content-type", b"application/json")]
_ECHO = ("instructions", "max_output_tokens", "parallel_tool_calls", "temperature", "top_p", "tool_choice",
         "tools", "metadata", "user", "text", "truncation", "reasoning", "service_tier")
_INCOMPLETE = {"length": "max_output_tokens", "content_filter": "content_filter"}


def _usage(inp: int, out: int) -> dict[str, Any]:
    return {"input_tokens": inp, "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0}, "output_tokens": out,
            "output_tokens_details": {"reasoning_tokens": 0}, "total_tokens": inp + out}


def _skeleton(request: dict[str, Any], rid: str, model: str, created: int) -> dict[str, Any]:
    doc: dict[str, Any] = {"id": rid, "object": "response", "created_at": created, "status": "in_progress",
                           "model": model, "output": [], "error": None, "incomplete_details": None,
                           "parallel_tool_calls": True, "tool_choice": "auto", "tools": [],
                           "usage": None, "metadata": {}}
    for k in _ECHO:
        if request.get(k) is not None:
            doc[k] = request[k]
    return doc


def _message_item(item_id: str, text: str, status: str = "completed") -> dict[str, Any]:
    return {"type": "message", "id": item_id, "status": status, "role": "assistant",
            "content": [{"type": "output_text", "text": text, "annotations": [], "logprobs": []}]}


def _call_item(item_id: str, call_id: str, name: str, args: str, status: str = "completed") -> dict[str, Any]:
    return {"type": "function_call", "id": item_id, "call_id": call_id, "name": name, "arguments": args,
            "status": status}


def _finish(doc: dict[str, Any], finish_reason: str | None) -> None:
    reason = _INCOMPLETE.get(finish_reason or "")
    doc["status"] = "incomplete" if reason else "completed"
    doc["incomplete_details"] = {"reason": reason} if reason else None


def to_response(chat: dict[str, Any], request: dict[str, Any]) -> dict[str, Any]:
    """A canonical `chat.completion` -> a Responses `response` object."""
    doc = _skeleton(request, new_id("resp_"), chat.get("model") or request.get("model", ""),
                    int(chat.get("created") or time.time()))
    choice = (chat.get("choices") or [{}])[0]
    msg = choice.get("message") or {}
    text = msg.get("content")
    if isinstance(text, str) and text:
        doc["output"].append(_message_item(new_id("msg_"), text))
    elif msg.get("refusal"):
        doc["output"].append({"type": "message", "id": new_id("msg_"), "status": "completed", "role": "assistant",
                              "content": [{"type": "refusal", "refusal": msg["refusal"]}]})
    for call in msg.get("tool_calls") or ():
        fn = call.get("function") or {}
        doc["output"].append(_call_item(new_id("fc_"), call.get("id") or new_id("call_"), fn.get("name", ""),
                                        fn.get("arguments") or ""))
    _finish(doc, choice.get("finish_reason"))
    doc["usage"] = _usage(*chat_usage(chat))
    return doc


class ResponsesCodec:
    """POST /v1/responses. One instance per request: it keeps the stream's state."""

    json_headers = _JSON
    stream_headers = SSE_HEADERS

    def __init__(self) -> None:
        self.request: dict[str, Any] = {}
        self.raw = b""
        self.untranslatable: str | None = None   # why no translated target can serve it
        self.native = False                       # the relayed stream is a provider's own events
        self._events: nat.ResponsesEvents | None = None
        self._seq = 0
        self._doc: dict[str, Any] | None = None
        self._text: dict[str, Any] | None = None   # the open message item: id, index, parts
        self._calls: dict[int, dict[str, Any]] = {}
        self._open_call: int | None = None
        self._finish: str | None = None
        self._usage = (0, 0)

    # -- requests and whole answers -------------------------------------------------------
    def parse(self, raw: bytes, kind: str) -> dict[str, Any]:
        self.request = load_object(raw)
        self.raw = raw
        body, self.untranslatable = translate_or_defer(to_chat, self.request)
        return body

    # -- native forwarding (see inbound.native) ----------------------------------------------
    def native_request(self, prov: Any, model: str, stream: bool, api_key: str | None) -> UpstreamRequest | None:
        """The request as is for a target serving the Responses API; None: translate it.
        Raises UnsupportedRequest when this target cannot serve it at all."""
        config = prov.config
        if not config.serves_responses:
            if self.untranslatable:
                raise UnsupportedRequest(f"it does not serve the Responses API natively, and {self.untranslatable}")
            return None
        prev = self.request.get("previous_response_id")
        if isinstance(prev, str):
            owner = nat.stored_by(prev)
            if owner is not None and owner != config.name:
                raise UnsupportedRequest(f"previous_response_id {prev!r} is stored by provider {owner!r}")
        return nat.responses_request(config, prov.adapter, self.request, self.raw, model, api_key)

    def resume_translated(self) -> None:
        """A native stream was cut and a translated continuation carries on: take over its
        sequence numbers, response, finished items and the open message item, so the client
        sees one consistent event sequence."""
        self.native = False
        ev = self._events
        if ev is None:
            return
        self._seq = ev.last_seq + 1
        self._doc = {**(ev.response or _skeleton(self.request, new_id("resp_"), self.request.get("model", ""),
                                                 int(time.time()))), "output": list(ev.done_items)}
        if ev.open_text is not None:
            self._text = {"id": ev.open_text["id"], "index": ev.open_text["index"], "parts": list(ev.open_text["parts"])}

    def native_decoder(self, provider: str) -> nat.ResponsesEvents:
        self._events = nat.ResponsesEvents(provider)
        return self._events

    def check_native(self, doc: Any, provider: str) -> tuple[str | None, dict[str, int] | None]:
        return nat.check_response(doc, provider)

    def answer(self, body: bytes) -> bytes:
        return orjson.dumps(to_response(orjson.loads(body), self.request))

    def error(self, message: str, type_: str, code: str | None = None) -> bytes:
        return error_body(message, type_, code)

    def upstream_error(self, err: UpstreamError) -> bytes:
        return err.to_openai_body()

    def client_status(self, status: int) -> int:
        return status

    # -- streams --------------------------------------------------------------------------
    def _event(self, type_: str, **fields: Any) -> bytes:
        fields["type"] = type_
        fields["sequence_number"] = self._seq
        self._seq += 1
        return b"event: " + type_.encode() + b"\ndata: " + orjson.dumps(fields) + b"\n\n"

    def _start(self, chunk: dict[str, Any], out: list[bytes]) -> None:
        self._doc = _skeleton(self.request, new_id("resp_"), chunk.get("model") or self.request.get("model", ""),
                              int(chunk.get("created") or time.time()))
        out.append(self._event("response.created", response=self._doc))
        out.append(self._event("response.in_progress", response=self._doc))

    def _close_text(self, out: list[bytes]) -> None:
        t = self._text
        if t is None:
            return
        self._text = None
        text = "".join(t["parts"])
        part = {"type": "output_text", "text": text, "annotations": [], "logprobs": []}
        out.append(self._event("response.output_text.done", item_id=t["id"], output_index=t["index"],
                               content_index=0, text=text, logprobs=[]))
        out.append(self._event("response.content_part.done", item_id=t["id"], output_index=t["index"],
                               content_index=0, part=part))
        item = _message_item(t["id"], text)
        self._doc["output"].append(item)   # type: ignore[index]
        out.append(self._event("response.output_item.done", output_index=t["index"], item=item))

    def _close_call(self, out: list[bytes]) -> None:
        if self._open_call is None:
            return
        c = self._calls[self._open_call]
        self._open_call = None
        args = "".join(c["args"])
        out.append(self._event("response.function_call_arguments.done", item_id=c["id"],
                               output_index=c["index"], name=c["name"], arguments=args))
        item = _call_item(c["id"], c["call_id"], c["name"], args)
        self._doc["output"].append(item)   # type: ignore[index]
        out.append(self._event("response.output_item.done", output_index=c["index"], item=item))

    def _next_index(self) -> int:
        return len(self._doc["output"]) + (self._text is not None) + (self._open_call is not None)  # type: ignore[index]

    def _on_text(self, delta: str, out: list[bytes]) -> None:
        if self._text is None:
            self._close_call(out)
            t = self._text = {"id": new_id("msg_"), "index": self._next_index(), "parts": []}
            out.append(self._event("response.output_item.added", output_index=t["index"],
                                   item={**_message_item(t["id"], "", "in_progress"), "content": []}))
            out.append(self._event("response.content_part.added", item_id=t["id"], output_index=t["index"],
                                   content_index=0, part={"type": "output_text", "text": "", "annotations": [],
                                                          "logprobs": []}))
        t = self._text
        t["parts"].append(delta)
        out.append(self._event("response.output_text.delta", item_id=t["id"], output_index=t["index"],
                               content_index=0, delta=delta, logprobs=[]))

    def _on_call(self, tc: dict[str, Any], out: list[bytes]) -> None:
        idx = tc.get("index", 0)
        fn = tc.get("function") or {}
        c = self._calls.get(idx)
        if c is None:
            self._close_text(out)
            self._close_call(out)
            c = self._calls[idx] = {"id": new_id("fc_"), "index": self._next_index(),
                                    "call_id": tc.get("id") or new_id("call_"), "name": fn.get("name") or "",
                                    "args": []}
            self._open_call = idx
            out.append(self._event("response.output_item.added", output_index=c["index"],
                                   item=_call_item(c["id"], c["call_id"], c["name"], "", "in_progress")))
        args = fn.get("arguments")
        if args:
            c["args"].append(args)
            out.append(self._event("response.function_call_arguments.delta", item_id=c["id"],
                                   output_index=c["index"], delta=args))

    def chunks(self, payloads: list[bytes]) -> bytes:
        if self.native:
            return b"".join(payloads)
        out: list[bytes] = []
        for p in payloads:
            chunk = orjson.loads(p)
            if self._doc is None:
                self._start(chunk, out)
            if chunk.get("usage"):
                self._usage = chat_usage(chunk)
            for choice in chunk.get("choices") or ():
                delta = choice.get("delta") or {}
                if delta.get("content"):
                    self._on_text(delta["content"], out)
                for tc in delta.get("tool_calls") or ():
                    self._on_call(tc, out)
                if choice.get("finish_reason"):
                    self._finish = choice["finish_reason"]
        return b"".join(out)

    def done(self) -> bytes:
        if self.native:
            return b""   # the provider's response.completed was relayed
        out: list[bytes] = []
        if self._doc is None:
            self._start({}, out)
        self._close_text(out)
        self._close_call(out)
        doc = self._doc
        _finish(doc, self._finish)   # type: ignore[arg-type]
        doc["usage"] = _usage(*self._usage)   # type: ignore[index]
        out.append(self._event("response.incomplete" if doc["status"] == "incomplete" else "response.completed",  # type: ignore[index]
                               response=doc))
        return b"".join(out)

    def stream_error(self, error: dict[str, Any]) -> bytes:
        if self.native and self._events is not None:
            # continue the provider's numbering, with the response it announced
            ev = self._events
            self._seq = ev.last_seq + 1
            self._doc = dict(ev.response or _skeleton(self.request, new_id("resp_"), self.request.get("model", ""),
                                                      int(time.time())))
        out: list[bytes] = []
        if self._doc is None:
            self._start({}, out)
        doc = self._doc
        doc["status"] = "failed"   # type: ignore[index]
        doc["error"] = {"code": "server_error", "message": str(error.get("message") or "upstream stream failed")}  # type: ignore[index]
        out.append(self._event("response.failed", response=doc))
        return b"".join(out)
