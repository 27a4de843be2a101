"""Streaming with failover: the first-token gate, the relay, and what happens after a cut.

Before the first content-bearing chunk nothing has reached the client (not even the
response headers), so any failure - connect error, non-2xx, in-band error, malformed data,
no first token within `timeouts.firstToken` - is retried or failed over invisibly. After
that, a failure is never disguised: by default the stream ends with an SSE error event and
no `data: [DONE]`, so SDKs raise instead of returning a silently truncated answer; with
`streamFailover: continue` the next capable target continues the delivered text into the
same response. Only the chunks before the first token are buffered; after it the relay
writes as it reads, and ASGI `send` applies the client's backpressure. The delivered text is
kept only in continue mode (a continuation needs it); otherwise a character count suffices.

Timeouts: before the first token only `timeouts.firstToken` (and the route deadline) bound
the wait; `timeouts.streamIdle` is armed on the connection once tokens flow.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any, Awaitable, Callable

import orjson

from ..adapters import StreamEvent, UpstreamError
from ..adapters import UnsupportedRequest
from ..adapters.base import SSEEventTooLarge
from . import _usage as usage_acct
from ._executor import (RequestContext, build_request, exception_outcome, failure_reply, note_decision,
                       observe_usage, record, skip_unsupported)
from ..policy import GiveUp, Outcome, OutcomeKind
from ..transport import CONNECT_ERRORS, STREAM_ERRORS, arm_read_timeout

if TYPE_CHECKING:
    from ..state import AppState
    from .gateway import TargetRuntime

Send = Callable[[dict[str, Any]], Awaitable[None]]
SSE_HEADERS = [(b"content-type", b"text/event-stream; charset=utf-8"), (b"cache-control", b"no-cache"),
               (b"x-accel-buffering", b"no")]
_DONE = b"data: [DONE]\n\n"


class Relay:
    """The client side of a stream: headers once, chunks as they come, one ending."""

    def __init__(self, send: Send, ctx: RequestContext, keep_text: bool) -> None:
        self.send = send
        self.ctx = ctx
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

    async def start(self, tr: TargetRuntime) -> None:
        headers = [*SSE_HEADERS, (b"x-detour-target", tr.label.encode()),
                   (b"x-detour-attempts", str(self.ctx.attempts).encode()),
                   (b"x-request-id", self.ctx.request_id.encode())]
        self.ctx.status = 200   # the response has started (handlers read it if something fails later)
        await self.send({"type": "http.response.start", "status": 200, "headers": headers})
        self.started = True

    def begin_continuation(self, from_label: str, to_label: str, trim: str) -> bytes:
        self.continuing = True
        self.trim = trim
        self.seen_content = False
        return (f": detour-continuation from={from_label} to={to_label} "
                f"delivered_chunks={self.chunks}\n\n").encode()

    def _frame(self, ev: StreamEvent) -> bytes | None:
        """The payload to relay for `ev` (None: drop it), with the relay's bookkeeping."""
        payload = ev.payload
        if self.stream_id is None:
            doc = orjson.loads(payload)
            self.stream_id, self.model = doc.get("id"), doc.get("model")
        if self.continuing:
            payload = self._rewrite(ev)
            if payload is None:
                return None
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
        if not ev.content_bearing and not self.seen_content:
            doc = orjson.loads(ev.payload)
            if not any(c.get("finish_reason") for c in doc.get("choices") or ()) and not doc.get("usage"):
                return None
        doc = orjson.loads(ev.payload)
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

    async def emit(self, events: list[StreamEvent], prefix: bytes = b"") -> None:
        parts = [prefix] if prefix else []
        for ev in events:
            payload = self._frame(ev)
            if payload is not None:
                parts += (b"data: ", payload, b"\n\n")
        if parts:
            await self.send({"type": "http.response.body", "body": b"".join(parts), "more_body": True})

    async def finish(self) -> None:
        await self.send({"type": "http.response.body", "body": _DONE, "more_body": False})

    async def fail(self, tr: TargetRuntime, err: UpstreamError | None) -> None:
        """End a started stream with an OpenAI-format error event and no [DONE]."""
        reason = err.message if err is not None else "the provider stream failed"
        event = {"error": {
            "message": f"Upstream stream from {tr.label} failed after {self.chunks} chunks: {reason}",
            "type": "upstream_stream_error", "code": "stream_interrupted", "param": None,
            "target": tr.label, "chunks_delivered": self.chunks,
        }}
        body = b"event: error\ndata: " + orjson.dumps(event) + b"\n\n"
        await self.send({"type": "http.response.body", "body": body, "more_body": False})


async def run_stream(state: AppState, ctx: RequestContext, send: Send) -> str:
    """Serve a streaming request; returns the request outcome label for metrics and logs."""
    clock = state.clock
    route = ctx.route
    plan = route.planner.begin(clock.now())
    continue_mode = route.route.stream_failover.value == "continue"
    relay = Relay(send, ctx, keep_text=continue_mode)
    include_usage = bool((ctx.body.get("stream_options") or {}).get("include_usage"))
    last_err: UpstreamError | None = None
    failed: TargetRuntime | None = None     # the target that broke the stream after delivering chunks
    cut_err: UpstreamError | None = None    # and how it broke it
    while True:
        d = plan.next(clock.now(), eligible=route.continue_eligible if relay.started else None)
        note_decision(state, ctx, d, plan)
        if isinstance(d, GiveUp):
            break
        tr = route.targets[d.index]
        try:
            if d.delay > 0:
                await asyncio.sleep(d.delay)
            ctx.attempts += 1
            outcome, err = await _attempt(state, ctx, tr, plan.deadline, relay, include_usage, failed)
        except UnsupportedRequest as exc:
            skip_unsupported(state, ctx, plan, tr, exc)
            continue
        except BaseException:
            plan.abandon(clock.now())
            raise
        record(state, ctx, plan, tr, outcome, err)
        ctx.target = tr
        if outcome.ttft is not None:    # the first token came (also when the stream broke later)
            tr.metrics.ttft.observe(outcome.ttft)
        if outcome.ok:
            return "success"
        last_err = err
        if relay.started:
            if outcome.ttft is not None:
                # This attempt delivered chunks, then broke: it cut the stream. A continuation
                # target that fails before its own first token cut nothing; the client is still
                # waiting on the cut from before, and the final error must name that one.
                failed, cut_err = tr, err
                # The continuation gets a fresh deadline: the original bounded the time to a first token.
                plan.deadline = max(plan.deadline, clock.now() + route.route.timeout)
            if not continue_mode or relay.non_text:
                break
    if not relay.started:
        reply = failure_reply(ctx, d, last_err)
        reply.headers.append((b"x-request-id", ctx.request_id.encode()))
        reply.headers.append((b"x-detour-attempts", str(ctx.attempts).encode()))
        ctx.status = reply.status
        await send({"type": "http.response.start", "status": reply.status, "headers": reply.headers})
        await send({"type": "http.response.body", "body": reply.body, "more_body": False})
        return "upstream_error"
    cut = failed or tr    # always `failed`: only an attempt past its first token starts the relay
    cut.metrics.streams_cut.inc()
    await relay.fail(cut, cut_err or last_err)
    return "upstream_error"


async def _attempt(state: AppState, ctx: RequestContext, tr: TargetRuntime, deadline: float, relay: Relay,
                   include_usage: bool, failed: TargetRuntime | None) -> tuple[Outcome, UpstreamError | None]:
    clock = state.clock
    prov = tr.provider
    adapter = prov.adapter
    started = clock.now()
    reservation = usage_acct.reserve(tr, ctx, started)
    chars_before = relay.chars
    resp = None
    complete = False
    gate_passed = False
    ttft: float | None = None
    try:
        if relay.started:
            req = adapter.build_continuation(ctx.body, "".join(relay.text), tr.target.model, prov.api_key())
            req.headers["x-request-id"] = ctx.request_id
        else:
            req = build_request(ctx, tr, stream=True)
        async with asyncio.timeout(max(0.0, min(prov.config.timeouts.first_token, deadline - started))) as tm:
            # Connect timeout only: no socket read timer until the first token (see upstream.arm_read_timeout).
            resp = await state.upstream.send(req, prov.client_timeout)
            usage_acct.check_rate_headers(tr, resp.headers, clock.now())
            if resp.status != 200:
                raw = await resp.read()
                err = adapter.parse_error(resp.status, resp.headers, raw, api_key=prov.api_key())
                return (Outcome(OutcomeKind.HTTP_ERROR, status=resp.status, retry_after=err.retry_after,
                                duration=clock.now() - started, error_class=f"http_{resp.status}",
                                message=err.message), err)
            decoder = adapter.stream_decoder(include_usage=include_usage)
            content = resp.content
            pending: list[StreamEvent] = []
            done = False
            while True:
                data = await content.readany()
                events = decoder.feed(data) if data else decoder.close()
                for ev in events:
                    if ev.kind == "chunk":
                        pending.append(ev)
                        gate_passed = gate_passed or ev.content_bearing
                    elif ev.kind == "done":
                        done = True
                    else:
                        return _stream_failure(ev.error, started, clock.now())
                if gate_passed or done:
                    break
                if not data:
                    return _stream_failure(None, started, clock.now())
            ttft = clock.now() - started
            # Past the gate: the attempt is now bounded by the provider's total timeout...
            tm.reschedule(asyncio.get_running_loop().time() + max(0.0, prov.config.timeouts.total - ttft))
            arm_read_timeout(resp, prov.config.timeouts.stream_idle)   # ...and by streamIdle between chunks
            prefix = b""
            if relay.started:
                trim = getattr(req, "prefix_trim", "") or ""
                prefix = relay.begin_continuation((failed or tr).label, tr.label, trim)
                state.metrics.continuations.labels(ctx.route.route.name, (failed or tr).target.provider,
                                                   tr.target.provider).inc()
            else:
                await relay.start(tr)
            await relay.emit(pending, prefix)
            _usage(tr, pending)
            while not done:
                data = await content.readany()
                events = decoder.feed(data) if data else decoder.close()
                out: list[StreamEvent] = []
                for ev in events:
                    if ev.kind == "chunk":
                        out.append(ev)
                    elif ev.kind == "done":
                        done = True
                    else:
                        await relay.emit(out)
                        return _stream_failure(ev.error, started, clock.now(), ttft)
                await relay.emit(out)
                _usage(tr, out)
                if not data and not done:
                    return _stream_failure(None, started, clock.now(), ttft)
            await relay.finish()
            complete = True
            return Outcome(OutcomeKind.SUCCESS, status=200, duration=clock.now() - started, ttft=ttft), None
    except (TimeoutError, *CONNECT_ERRORS, *STREAM_ERRORS) as exc:
        outcome, err = exception_outcome(exc, started, clock.now(), ttft)
        if isinstance(exc, TimeoutError) and not gate_passed:
            err = UpstreamError(504, "timeout", "first_token_timeout",
                                f"no first token from {tr.label} in time", None)
        return outcome, err
    except SSEEventTooLarge as exc:   # malformed: a provider that never ends its event or line
        return _stream_failure(UpstreamError(502, "stream_error", "event_too_large",
                                             f"{tr.label} sent an oversized stream event ({exc})", None),
                               started, clock.now(), ttft)
    finally:
        usage_acct.settle_stream(reservation, relay.chars - chars_before)
        if resp is not None:
            if complete:
                resp.release()
            else:
                resp.close()   # drop the connection: nothing keeps reading for a failed or gone client


def _stream_failure(err: UpstreamError | None, started: float, now: float,
                    ttft: float | None = None) -> tuple[Outcome, UpstreamError]:
    if err is None:
        err = UpstreamError(502, "upstream_error", "stream_truncated",
                            "the provider's stream ended without completing", None)
    status = err.status if err.status and err.status >= 400 else None
    return (Outcome(OutcomeKind.STREAM_ERROR, status=status, retry_after=err.retry_after,
                    duration=now - started, ttft=ttft, error_class="stream", message=err.message), err)


def _usage(tr: TargetRuntime, events: list[StreamEvent]) -> None:
    for ev in events:
        if b'"usage"' in ev.payload:
            doc = orjson.loads(ev.payload)
            observe_usage(tr, doc.get("usage"))
