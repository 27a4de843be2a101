"""The client side of a stream: `Relay` (headers once, chunks as they come, one ending, in the
client's format) and `_TotalTimer` (the provider's `total` budget, paused while the client
holds a send)."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any, Awaitable, Callable

import orjson

from ..adapters import StreamEvent, UpstreamError
from ._context import RequestContext, skipped_headers

if TYPE_CHECKING:
    from .gateway import TargetRuntime

__all__ = ["Relay", "TotalTimer", "Send", "BLOCKED"]

Send = Callable[[dict[str, Any]], Awaitable[None]]
#: A send that took longer than this was held up by the client (loopback sends take microseconds).
BLOCKED = 0.002
#: While the client holds a send, the `total` timer looks again this often instead of firing.
RECHECK = 0.05


class TotalTimer:
    """`timeouts.total` after the first token, paused while the client holds a send.

    One `call_at` per stream (like `asyncio.timeout`); moved only when a send was blocked. When
    it runs out during a send, it waits for the send instead of firing (the time is the
    client's), unless the client has held that send for longer than `client_cap` (the route
    timeout): then it fires as the client's fault, so a reader that never reads cannot pin
    an upstream connection forever."""

    __slots__ = ("_loop", "_task", "_relay", "_cap", "_handle", "when", "fired", "client")

    def __init__(self, when: float, relay: Relay, client_cap: float) -> None:
        self._loop = asyncio.get_running_loop()
        self._task = asyncio.current_task()
        self._relay = relay
        self._cap = client_cap
        self.when = when
        self.fired = False
        self.client = False
        self._handle = self._loop.call_at(when, self._fire)

    def _fire(self) -> None:
        since = self._relay.sending_since
        now = self._loop.time()
        if since is not None and now - since > BLOCKED:
            if now - since < self._cap:
                self._handle = self._loop.call_at(now + RECHECK, self._fire)
                return
            self.client = True
        self.fired = True
        if self._task is not None:
            self._task.cancel()

    def extend(self, seconds: float) -> None:
        self.when += seconds
        self._handle.cancel()
        self._handle = self._loop.call_at(self.when, self._fire)

    def cancel(self) -> None:
        self._handle.cancel()

    def uncancel(self) -> None:
        if self._task is not None:
            self._task.uncancel()


class Relay:
    """The client side of a stream: headers once, chunks as they come, one ending.

    `blocked` sums the seconds sends spent waiting for the client (backpressure);
    `sending_since` is set while a send is in progress."""

    def __init__(self, send: Send, ctx: RequestContext, keep_text: bool) -> None:
        self.send = send
        self.ctx = ctx
        self.codec = ctx.codec
        self.started = False
        self.chunks = 0
        self.chars = 0              # delivered text, counted for token accounting
        self.keep_text = keep_text  # continue mode: the next target must be shown the text itself
        self.text: list[str] = []
        self.non_text = False       # a tool call or refusal was delivered: cannot be continued
        self.stream_id: str | None = None
        self.model: str | None = None
        self.continuing = False     # rewriting a continuation into the original stream
        self.trim = ""              # whitespace the continuation prefill had to drop
        self.seen_content = False
        self.native = False         # relaying a provider's own events (see `start`)
        self.blocked = 0.0
        self.sending_since: float | None = None
        self._time = asyncio.get_running_loop().time

    async def start(self, tr: TargetRuntime, native: bool = False) -> None:
        """Send the headers. `native`: the stream is the provider's own events in the client's
        format (inbound.native), relayed as they are; a continuation after a cut is translated by
        the codec into the same event sequence (`begin_continuation`)."""
        if native:
            self.native = True
            self.codec.native = True   # type: ignore[attr-defined]
        headers = [*self.codec.stream_headers, (b"x-detour-target", tr.label.encode()),
                   (b"x-detour-attempts", str(self.ctx.attempts).encode()),
                   (b"x-request-id", self.ctx.request_id.encode()), *skipped_headers(self.ctx)]
        if tr.key_label is not None:   # several API keys: which one served (its index, never the key)
            headers.append((b"x-detour-key", tr.key_label))
        self.ctx.status = 200   # the response has started (handlers read it if something fails later)
        await self.send({"type": "http.response.start", "status": 200, "headers": headers})
        self.started = True

    def begin_continuation(self, from_label: str, to_label: str, trim: str) -> bytes:
        if self.native:   # continuations are canonical chat: the codec translates from here on
            self.native = False
            self.codec.resume_translated()   # type: ignore[attr-defined]
        self.continuing = True
        self.trim = trim
        self.seen_content = False
        return (f": detour-continuation from={from_label} to={to_label} "
                f"delivered_chunks={self.chunks}\n\n").encode()

    def _frame(self, ev: StreamEvent) -> bytes | None:
        """The payload to relay for `ev` (None: drop it), with the relay's bookkeeping."""
        payload = ev.payload
        if self.keep_text and self.stream_id is None and not self.native:
            # the id and model a continuation is rewritten to (continue mode only: keep_text)
            doc = orjson.loads(payload)
            self.stream_id, self.model = doc.get("id"), doc.get("model")
        if self.continuing:
            rewritten = self._rewrite(ev)
            if rewritten is None:
                return None
            payload = rewritten
        if ev.content_bearing:
            self.chunks += 1
            if ev.text:
                self.chars += len(ev.text)
                if self.keep_text:
                    self.text.append(ev.text)
            else:
                self.non_text = True
        return payload

    def _rewrite(self, ev: StreamEvent) -> bytes | None:
        """Continuation chunks carry the original id and model; the leading role chunk is dropped."""
        doc = orjson.loads(ev.payload)
        if not ev.content_bearing and not self.seen_content:
            if not any(c.get("finish_reason") for c in doc.get("choices") or ()) and not doc.get("usage"):
                return None
        doc["id"], doc["model"] = self.stream_id, self.model
        if ev.content_bearing and not self.seen_content:
            self.seen_content = True
            if self.trim:
                for choice in doc.get("choices") or ():
                    delta = choice.get("delta") or {}
                    content = delta.get("content")
                    if isinstance(content, str) and content.startswith(self.trim):
                        delta["content"] = content[len(self.trim):]
        return orjson.dumps(doc)

    async def _send(self, body: bytes, more: bool) -> None:
        t0 = self.sending_since = self._time()
        await self.send({"type": "http.response.body", "body": body, "more_body": more})
        self.sending_since = None
        dt = self._time() - t0
        if dt > BLOCKED:
            self.blocked += dt

    async def emit(self, events: list[StreamEvent], prefix: bytes = b"") -> None:
        payloads = []
        for ev in events:
            payload = self._frame(ev)
            if payload is not None:
                payloads.append(payload)
        if payloads:
            await self._send(prefix + self.codec.chunks(payloads) if prefix else self.codec.chunks(payloads), True)
        elif prefix:
            await self._send(prefix, True)

    async def finish(self) -> None:
        await self._send(self.codec.done(), False)

    async def fail(self, tr: TargetRuntime | None, err: UpstreamError | None, why: str | None = None) -> None:
        """End a started stream with an error event in the client's format and no end marker."""
        reason = err.message if err is not None else "the provider stream failed"
        label = tr.label if tr is not None else None
        message = why or f"Upstream stream from {label} failed after {self.chunks} chunks: {reason}"
        await self.send({"type": "http.response.body", "more_body": False, "body": self.codec.stream_error({
            "message": message, "type": "upstream_stream_error", "code": "stream_interrupted", "param": None,
            "target": label, "chunks_delivered": self.chunks})})
