"""Native forwarding: the client's own API format sent as is to a provider that speaks it.

POST /v1/responses goes to OpenAI and Azure OpenAI targets (`Provider.serves_responses`) as
the Responses API, POST /v1/messages to Anthropic targets as the Messages API: the client's
bytes with only `model` replaced by the target's, the answer and the stream events relayed
as the provider sent them (no translation, no loss: stateful features, server-side tools,
thinking, cache_control and beta features all reach the provider). Only targets that do not
speak the format get the translated request.

What the engine needs to judge a native answer without translating it lives here: `check_*`
(is this 200 a real answer, its usage as canonical counts), and the stream decoders
(`ResponsesEvents`, `MessagesEvents`): which event is the first token, which ends the stream,
which is an in-band failure. Each relayed event is one `StreamEvent` whose payload is the
whole SSE frame, ready to write.

`previous_response_id` ties a request to the provider that stored the response: the ids of
responses served natively are remembered (bounded, per process) with their provider, so a
follow-up is sent only to targets of that provider; other targets are skipped with a reason.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import orjson

from ..adapters import StreamEvent, UnsupportedRequest, UpstreamError, UpstreamRequest
from ..adapters.base import DONE, SSEEvent, SSEParser
from ..adapters.errors import stream_error
from ..adapters.openai import serialize_with
from ..config import Provider, ProviderType

__all__ = ["responses_request", "messages_request", "check_response", "check_message", "ResponsesEvents",
           "MessagesEvents", "remember_response", "stored_by", "stored_url", "AZURE_RESPONSES_API_VERSION", "UnsupportedRequest"]

#: Azure's Responses API needs an api-version of 2025-03-01-preview or later
AZURE_RESPONSES_API_VERSION = "2025-04-01-preview"
_STORED_MAX = 10_000
_stored: OrderedDict[str, str] = OrderedDict()
_urls: dict[tuple[str, str, str | None], str] = {}


def remember_response(response_id: Any, provider: str) -> None:
    """Note which provider holds `response_id` (bounded: the oldest ids are forgotten)."""
    if isinstance(response_id, str) and response_id:
        _stored[response_id] = provider
        _stored.move_to_end(response_id)
        if len(_stored) > _STORED_MAX:
            _stored.popitem(last=False)


def stored_by(response_id: str) -> str | None:
    return _stored.get(response_id)


def _responses_url(p: Provider) -> str:
    key = (p.type.value, p.base_url, p.api_version)
    url = _urls.get(key)
    if url is None:
        base = p.base_url.rstrip("/")
        if p.type is ProviderType.azure_openai:
            if base.endswith("/openai"):
                base = base[: -len("/openai")]
            version = p.api_version if p.api_version and p.api_version[:10] >= "2025-03-01" \
                else AZURE_RESPONSES_API_VERSION
            url = f"{base}/openai/responses?api-version={version}"
        else:
            url = base + "/responses"
        _urls[key] = url
    return url


def stored_url(p: Provider, rest: str, query: str) -> str:
    """The URL of a stored response's endpoint (`rest` = "/{id}", "/{id}/cancel", ...) on `p`,
    with the client's query string (Azure's api-version appended)."""
    url, _, version = _responses_url(p).partition("?")
    query = "&".join(q for q in (query, version) if q)
    return url + rest + ("?" + query if query else "")


def _messages_url(p: Provider) -> str:
    base = p.base_url.rstrip("/")
    if base.endswith("/v1"):
        base = base[:-3]
    return base + "/v1/messages"


def responses_request(p: Provider, adapter: Any, body: dict[str, Any], raw: bytes, model: str,
                      api_key: str | None) -> UpstreamRequest:
    """The client's Responses request for an OpenAI/Azure target (its model swapped in)."""
    return UpstreamRequest("POST", _responses_url(p), adapter.headers(api_key),
                           serialize_with(body, model, None, raw), native=True)


def messages_request(p: Provider, adapter: Any, body: dict[str, Any], raw: bytes, model: str,
                     api_key: str | None, beta: str | None) -> UpstreamRequest:
    """The client's Messages request for an Anthropic target (its model swapped in)."""
    headers = adapter.headers(api_key)
    if beta:
        headers["anthropic-beta"] = beta
    return UpstreamRequest("POST", _messages_url(p), headers, serialize_with(body, model, None, raw), native=True)


def _usage(u: Any) -> dict[str, int] | None:
    if not isinstance(u, dict):
        return None
    inp, out = u.get("input_tokens"), u.get("output_tokens")
    return {"prompt_tokens": inp if isinstance(inp, int) else 0,
            "completion_tokens": out if isinstance(out, int) else 0}


def check_response(doc: Any, provider: str) -> tuple[str | None, dict[str, int] | None]:
    """(why a 200 is not a Responses answer or None, its usage as canonical counts)."""
    if not isinstance(doc, dict) or doc.get("object") != "response" or not isinstance(doc.get("output"), list):
        return "a body that is not a Responses API `response` object", None
    if doc.get("error") or doc.get("status") == "failed":
        err = doc.get("error") or {}
        return f"a failed response ({err.get('code') if isinstance(err, dict) else err})", None
    remember_response(doc.get("id"), provider)
    return None, _usage(doc.get("usage"))


def check_message(doc: Any, provider: str) -> tuple[str | None, dict[str, int] | None]:
    """(why a 200 is not an Anthropic `message` or None, its usage as canonical counts)."""
    del provider
    if not isinstance(doc, dict) or doc.get("type") != "message" or not isinstance(doc.get("content"), list):
        return "a body that is not an Anthropic `message`", None
    return None, _usage(doc.get("usage"))


def _frame(name: str, data: bytes) -> bytes:
    return b"event: " + name.encode() + b"\ndata: " + data + b"\n\n"


class _Events:
    """SSE in, one `StreamEvent` per provider event out (the frame as payload)."""

    label = ""

    def __init__(self, provider: str) -> None:
        self.provider = provider
        self.sse = SSEParser()
        self.finished = False
        self.usage: dict[str, int] | None = None

    def feed(self, data: bytes) -> list[StreamEvent]:
        return self._events(self.sse.feed(data))

    def close(self) -> list[StreamEvent]:
        out = self._events(self.sse.close())
        if not self.finished and not any(e.kind == "error" for e in out):
            out.append(StreamEvent.failed(UpstreamError(502, "upstream_error", "stream_truncated",
                                                        f"{self.label} stream ended without completing", None)))
        return out

    def _events(self, events: list[SSEEvent]) -> list[StreamEvent]:
        out: list[StreamEvent] = []
        for ev in events:
            if self.finished or not ev.data or ev.data == b"[DONE]":
                continue
            doc = orjson.loads(ev.data)
            name = doc.get("type") if isinstance(doc, dict) else None
            if not isinstance(name, str):
                raise ValueError("a stream event without a type")
            self._one(name, doc, ev.data, out)
        return out

    def _one(self, name: str, doc: dict[str, Any], data: bytes, out: list[StreamEvent]) -> None:
        raise NotImplementedError


class ResponsesEvents(_Events):
    """The Responses API's typed events. First token: any `*.delta`, or an output item that
    is not a message or reasoning (a function or server-side tool call). Ends with
    `response.completed`/`response.incomplete`; `response.failed` and `error` are failures."""

    label = "Responses API"

    def __init__(self, provider: str) -> None:
        super().__init__(provider)
        self.last_seq = -1
        self.response: dict[str, Any] | None = None   # as announced by response.created
        # what a translated continuation needs to carry on the same sequence
        self.done_items: list[dict[str, Any]] = []
        self.open_text: dict[str, Any] | None = None   # the message item being written: id, index, parts

    def _one(self, name: str, doc: dict[str, Any], data: bytes, out: list[StreamEvent]) -> None:
        if name == "response.failed" or name == "error":
            err = (doc.get("response") or {}).get("error") if name == "response.failed" else doc
            out.append(StreamEvent.failed(stream_error(err or {}, provider=self.provider, default_status=500)))
            self.finished = True
            return
        seq = doc.get("sequence_number")
        if isinstance(seq, int):
            self.last_seq = seq
        text = ""
        bearing = False
        if name.endswith(".delta"):
            bearing = True
            if name == "response.output_text.delta":
                text = doc.get("delta") or ""
            if name == "response.output_text.delta" and self.open_text is not None:
                self.open_text["parts"].append(text)
        elif name == "response.output_item.added":
            item = doc.get("item") or {}
            bearing = item.get("type") not in ("message", "reasoning")
            if item.get("type") == "message":
                self.open_text = {"id": item.get("id"), "index": doc.get("output_index", len(self.done_items)),
                                  "parts": []}
        elif name == "response.output_item.done":
            item = doc.get("item") or {}
            self.done_items.append(item)
            if self.open_text is not None and item.get("id") == self.open_text["id"]:
                self.open_text = None
        elif name == "response.created":
            self.response = doc.get("response")
            remember_response((self.response or {}).get("id"), self.provider)
        elif name in ("response.completed", "response.incomplete"):
            self.usage = _usage((doc.get("response") or {}).get("usage"))
            out.append(StreamEvent("chunk", _frame(name, data), content_bearing=True))
            out.append(DONE)
            self.finished = True
            return
        out.append(StreamEvent("chunk", _frame(name, data), text, bearing))


class MessagesEvents(_Events):
    """Anthropic's stream events. First token: any `content_block_delta` or a non-text block
    (tool use, server tool use); ends with `message_stop`; an `error` event is a failure."""

    label = "Anthropic Messages"

    def __init__(self, provider: str) -> None:
        super().__init__(provider)
        self.message: dict[str, Any] = {}
        self.blocks = 0                  # content blocks started
        self.open: int | None = None     # the open block's index, and its type
        self.open_type = ""

    def _one(self, name: str, doc: dict[str, Any], data: bytes, out: list[StreamEvent]) -> None:
        if name == "error":
            out.append(StreamEvent.failed(stream_error(doc.get("error") or {}, provider=self.provider)))
            self.finished = True
            return
        text = ""
        bearing = False
        if name == "content_block_delta":
            bearing = True
            delta = doc.get("delta") or {}
            if delta.get("type") == "text_delta":
                text = delta.get("text") or ""
        elif name == "content_block_start":
            self.open_type = (doc.get("content_block") or {}).get("type") or ""
            bearing = self.open_type not in ("text", "thinking")
            index = doc.get("index")
            self.open = index if isinstance(index, int) else self.blocks
            self.blocks = self.open + 1
        elif name == "content_block_stop":
            self.open = None
        elif name == "message_start":
            self.message = doc.get("message") or {}
            self.usage = _usage(self.message.get("usage"))
        elif name == "message_delta":
            u = doc.get("usage") or {}
            if isinstance(u.get("output_tokens"), int):
                self.usage = {**(self.usage or {"prompt_tokens": 0}), "completion_tokens": u["output_tokens"]}
        elif name == "message_stop":
            out.append(StreamEvent("chunk", _frame(name, data), content_bearing=True))
            out.append(DONE)
            self.finished = True
            return
        out.append(StreamEvent("chunk", _frame(name, data), text, bearing))
