"""Streaming with failover: the first-token gate, the relay, and what happens after a cut.

Before the first content-bearing chunk nothing has reached the client (not even the
response headers), so any failure - connect error, an answer that is not a 200 stream,
in-band error, malformed data, no first token within `timeouts.firstToken` - is retried or
failed over invisibly. After that, a failure is never disguised: by default the stream ends
with an error event and no end marker, so SDKs raise instead of returning a silently
truncated answer; with `streamFailover: continue` the next capable target continues the
delivered text into the same response. Only the chunks before the first token are
buffered; after it the relay writes as it reads, and ASGI `send` applies the client's
backpressure. The delivered text is kept only in continue mode (a continuation needs it);
otherwise a character count suffices.

Timeouts: before the first token only `timeouts.firstToken` (and the route deadline) bound
the wait; `timeouts.streamIdle` is armed on the connection once tokens flow, and `total`
bounds the rest. Time spent blocked sending to a slow client is the client's: `total` is
paused while a send waits (`TotalTimer`), and a `streamIdle` timeout that only a blocked
client explains ends the stream without counting against the target (`Result.client_fault`),
so slow readers cannot open a healthy breaker.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any, Coroutine

import orjson

from ..adapters import StreamEvent, UpstreamError
from ..adapters.base import SSEEventTooLarge, StreamDecoder
from ..policy import GiveUp, Outcome, OutcomeKind, RequestPlan
from ..transport import TransportError
from . import _usage as usage_acct
from ._attempts import Eligible, exception_result, malformed, prepare, redact_error, run_attempts
from ._context import RequestContext, Result, skipped_headers
from ._hidden import CONTEXT, chunk_opens_gate, context_result, hidden_result, is_context_error, stream_failure
from ._relay import Relay, Send, TotalTimer
from ._replies import failure_reply
from ._unary import classify_answer, observe_usage

if TYPE_CHECKING:
    from ..state import AppState
    from .gateway import TargetRuntime

__all__ = ["run_stream", "Relay"]

class StreamRunner:
    """The stream's side of the attempt loop: which targets may go next, one attempt, and
    what a recorded attempt means for the stream (served, cut, continued)."""

    def __init__(self, state: AppState, ctx: RequestContext, send: Send) -> None:
        self.state = state
        self.ctx = ctx
        route = ctx.route
        self.continue_mode = route.route.stream_failover.value == "continue"
        self.relay = Relay(send, ctx, keep_text=self.continue_mode)
        self.include_usage = bool((ctx.body.get("stream_options") or {}).get("include_usage"))
        self.served = False
        self.last_err: UpstreamError | None = None
        self.failed: TargetRuntime | None = None    # the target that cut the stream after delivering chunks
        self.cut_err: UpstreamError | None = None   # and how it cut it
        self.client_fault: str | None = None        # the stream ended because of the client

    def eligible(self) -> Eligible:
        """Built per call, never stored on `self`: a stored closure over `self` is a reference
        cycle that keeps each stream's whole object graph (relay, context, transport) alive
        until the cyclic GC runs, which cost about 5% of streaming throughput."""
        ctx, targets = self.ctx, self.ctx.route.targets
        if self.relay.started:
            cont = ctx.route.continue_eligible
            return lambda i: cont(i) and self._continuation(targets[i]) is not None
        return lambda i: prepare(ctx, targets[i], True) is not None

    def _continuation(self, tr: TargetRuntime) -> Any:
        """The continuation request for `tr` with the text delivered so far (cached per cut)."""
        reqs = self.ctx.requests
        if tr.index in reqs:
            return reqs[tr.index]
        prov = tr.provider
        why = getattr(self.ctx.codec, "untranslatable", None)
        if why:   # only the client's own format can carry it: no translated continuation
            self.ctx.unsupported = f"{tr.label} cannot continue this stream: {why}"
            reqs[tr.index] = None
            return None
        try:
            req = prov.adapter.build_continuation(self.ctx.body, "".join(self.relay.text), tr.target.model,
                                                  prov.api_key())
            req.headers["x-request-id"] = self.ctx.request_id
        except ValueError as exc:   # UnsupportedRequest / ContinuationUnsupported
            self.ctx.unsupported = f"{tr.label} cannot continue this stream: {exc}"
            req = None
        reqs[tr.index] = req
        return req

    def attempt(self, plan: RequestPlan, tr: TargetRuntime) -> Coroutine[Any, Any, Result]:
        return stream_attempt(self.state, self.ctx, tr, plan.deadline, self.relay, self.include_usage,
                                    self.failed)

    def after(self, plan: RequestPlan, tr: TargetRuntime, res: Result) -> bool:
        ctx = self.ctx
        ctx.target = tr
        outcome = res.outcome
        if outcome.ttft is not None:    # the first token came (also when the stream broke later)
            tr.metrics.observe_ttft(outcome.ttft)
        if res.client_fault:
            self.client_fault = outcome.message
            return True
        if outcome.ok:
            self.served = True
            return True
        self.last_err = res.err
        relay = self.relay
        if relay.started:
            if outcome.ttft is not None:
                # This attempt delivered chunks, then broke: it cut the stream. A continuation
                # target that fails before its own first token cut nothing; the client is still
                # waiting on the cut from before, and the final error must name that one.
                self.failed, self.cut_err = tr, res.err
                plan.continue_after_cut(self.state.clock.now())
            ctx.requests.clear()   # continuation requests carry the text delivered so far
            if not self.continue_mode or relay.non_text:
                return True
        return False


async def run_stream(state: AppState, ctx: RequestContext, send: Send) -> str:
    """Serve a streaming request; returns the request outcome label for metrics and logs."""
    runner = StreamRunner(state, ctx, send)
    give_up = await run_attempts(state, ctx, runner)
    if runner.served:
        return "success"
    relay = runner.relay
    if not relay.started:
        assert isinstance(give_up, GiveUp)
        reply = failure_reply(ctx, give_up, runner.last_err)
        reply.headers.append((b"x-request-id", ctx.request_id.encode()))
        reply.headers.append((b"x-detour-attempts", str(ctx.attempts).encode()))
        reply.headers.extend(skipped_headers(ctx))
        ctx.status = reply.status
        await send({"type": "http.response.start", "status": reply.status, "headers": reply.headers})
        await send({"type": "http.response.body", "body": reply.body, "more_body": False})
        return "upstream_error"
    if runner.client_fault is not None:
        await relay.fail(None, None, f"The stream was ended because the client read too slowly "
                                     f"({runner.client_fault}) after {relay.chunks} chunks.")
        return "client_error"
    cut = runner.failed or ctx.target    # always `failed`: only an attempt past its first token starts the relay
    if cut is not None:
        cut.metrics.streams_cut.inc()
    await relay.fail(cut, runner.cut_err or runner.last_err)
    return "upstream_error"


def _decode(decoder: StreamDecoder, data: bytes, tr: TargetRuntime) -> list[StreamEvent]:
    """Decoder output for `data` (b'' = end of stream). Whatever the decoder raises is this
    target's malformed stream: an error event, never an exception past the engine."""
    try:
        return decoder.feed(data) if data else decoder.close()
    except SSEEventTooLarge as exc:   # a provider that never ends its event or line
        return [StreamEvent.failed(UpstreamError(502, "stream_error", "event_too_large",
                                                 f"{tr.label} sent an oversized stream event ({exc})", None))]
    except Exception as exc:  # noqa: BLE001 - e.g. `delta.content` as a list
        return [StreamEvent.failed(UpstreamError(502, "stream_error", "malformed_chunk",
                                                 f"{tr.label} sent a malformed stream chunk ({type(exc).__name__})",
                                                 None))]


async def stream_attempt(state: AppState, ctx: RequestContext, tr: TargetRuntime, deadline: float, relay: Relay,
                         include_usage: bool, failed: TargetRuntime | None) -> Result:
    clock = state.clock
    prov = tr.provider
    timeouts = prov.config.timeouts
    req = ctx.requests[tr.index]
    assert req is not None   # eligible targets have a request
    started = clock.now()
    reservation = usage_acct.reserve(tr, ctx, started)
    chars_before = relay.chars
    resp = None
    complete = False
    gate_passed = False
    ttft: float | None = None
    loop_time = asyncio.get_running_loop().time
    total: TotalTimer | None = None
    read_at = 0.0          # loop time of the last upstream read, and
    blocked_at_read = 0.0  # the client-blocked seconds by then (to tell an idle upstream from a slow client)
    try:
        async with asyncio.timeout(max(0.0, min(timeouts.first_token, deadline - started))) as tm:
            # Connect timeout only: no socket read timer until the first token (see Response.arm_idle).
            resp = await state.upstream.send(req, prov.client_timeout)
            usage_acct.check_rate_headers(tr, resp.headers, clock.now())
            if resp.status != 200:
                raw = await resp.read(ctx.route.max_response_bytes)
                return classify_answer(state, ctx, tr, resp.status, resp.headers, raw, started, clock.now())
            if not req.native and CONTEXT in ctx.route.route.hidden_failures and "json" in resp.headers.get("content-type", ""):
                # A JSON document where a stream belongs: an error object in a 200 (a context-length
                # error is the request's, a larger target may take it); anything else is malformed.
                raw = await resp.read(ctx.route.max_response_bytes)
                err = redact_error(state, ctx, prov.adapter.parse_error(200, resp.headers, raw, api_key=prov.api_key()))
                if is_context_error(200, err):
                    return context_result(err, started, clock.now())
                return malformed(f"{tr.label} answered a stream request with a JSON document: {err.message}",
                                 started, clock.now())
            codec: Any = ctx.codec
            decoder = codec.native_decoder(tr.target.provider) if req.native else \
                prov.adapter.stream_decoder(include_usage=include_usage)
            pending: list[StreamEvent] = []
            done = False
            # judged on canonical chunks only (a native stream's events are the client's own format)
            hidden = frozenset() if req.native else ctx.route.stream_hidden
            while True:
                data = await resp.readany()
                for ev in _decode(decoder, data, tr):
                    if ev.kind == "chunk":
                        pending.append(ev)
                        gate_passed = gate_passed or (ev.content_bearing and (
                            not hidden or chunk_opens_gate(ev.payload, hidden)))
                    elif ev.kind == "done":
                        done = True
                    else:
                        return _stream_failure(state, ctx, ev.error, started, clock.now())
                if done and not gate_passed and hidden:
                    what = stream_failure([ev.payload for ev in pending], hidden)
                    if what is not None:
                        return hidden_result(tr.label, what, started, clock.now(), stream=True)
                if gate_passed or done:
                    break
                if not data:
                    return _stream_failure(state, ctx, None, started, clock.now())
            ttft = clock.now() - started
            # Past the gate: the attempt is now bounded by the provider's total timeout (paused
            # while the client holds a send)...
            tm.reschedule(None)
            total = TotalTimer(loop_time() + max(0.0, timeouts.total - ttft), relay, ctx.route.route.timeout)
            resp.arm_idle(timeouts.stream_idle)   # ...and by streamIdle between chunks
            prefix = b""
            if relay.started:
                prefix = relay.begin_continuation((failed or tr).label, tr.label, req.prefix_trim or "")
                state.metrics.continuations.labels(ctx.route.route.name, (failed or tr).target.provider,
                                                   tr.target.provider).inc()
            else:
                await relay.start(tr, native=req.native)
            blocked = relay.blocked
            await relay.emit(pending, prefix)
            if not req.native:
                _usage(tr, pending)
            while not done:
                if relay.blocked != blocked:   # time the client held us up is not the provider's
                    total.extend(relay.blocked - blocked)
                    blocked = relay.blocked
                read_at, blocked_at_read = loop_time(), blocked
                data = await resp.readany()
                out: list[StreamEvent] = []
                for ev in _decode(decoder, data, tr):
                    if ev.kind == "chunk":
                        out.append(ev)
                    elif ev.kind == "done":
                        done = True
                    else:
                        await relay.emit(out)
                        return _stream_failure(state, ctx, ev.error, started, clock.now(), ttft)
                await relay.emit(out)
                if not req.native:
                    _usage(tr, out)
                if not data and not done:
                    return _stream_failure(state, ctx, None, started, clock.now(), ttft)
            await relay.finish()
            complete = True
            if req.native:
                observe_usage(tr, getattr(decoder, "usage", None))
            return Result(Outcome(OutcomeKind.SUCCESS, status=200, duration=clock.now() - started, ttft=ttft))
    except asyncio.CancelledError:
        if total is None or not total.fired:
            raise                          # the client went away (or shutdown): not an outcome
        total.uncancel()
        now = clock.now()
        if total.client:
            return Result(Outcome(OutcomeKind.TIMEOUT, duration=now - started, ttft=ttft,
                                  message="client held the stream"), None, client_fault=True)
        return exception_result(TimeoutError(), started, now, ttft)
    except (TimeoutError, TransportError) as exc:
        now = clock.now()
        if ttft is not None and isinstance(exc, TimeoutError):
            # `streamIdle` (the connection's read timer): the provider's silence, unless the
            # client held the relay for most of it.
            silence = loop_time() - read_at - (relay.blocked - blocked_at_read)
            if relay.sending_since is not None or silence < timeouts.stream_idle * 0.9:
                # The client held the relay up (a timer ran out while a send waited for it, or
                # the upstream was silent for less than streamIdle once that wait is deducted).
                return Result(Outcome(OutcomeKind.TIMEOUT, duration=now - started, ttft=ttft,
                                      message="client backpressure"), None, client_fault=True)
        res = exception_result(exc, started, now, ttft)
        if isinstance(exc, TimeoutError) and not gate_passed:
            res.err = UpstreamError(504, "timeout", "first_token_timeout", f"no first token from {tr.label} in time",
                                    None)
        return res
    finally:
        if total is not None:
            total.cancel()
        usage_acct.settle_stream(reservation, relay.chars - chars_before)
        if resp is not None:
            if complete:
                resp.release()
            else:
                resp.close()   # drop the connection: nothing keeps reading for a failed or gone client


def _stream_failure(state: AppState, ctx: RequestContext, err: UpstreamError | None, started: float, now: float,
                    ttft: float | None = None) -> Result:
    if err is None:
        err = UpstreamError(502, "upstream_error", "stream_truncated",
                            "the provider's stream ended without completing", None)
    else:   # in-band error text is the provider's: remove every configured key from it
        err = redact_error(state, ctx, err)
        if ttft is None and CONTEXT in ctx.route.route.hidden_failures and is_context_error(400, err):
            return context_result(err, started, now)
    if err.code == "malformed_chunk":
        return malformed(err.message, started, now, code="malformed_chunk", ttft=ttft)
    status = err.status if err.status and err.status >= 400 else None
    return Result(Outcome(OutcomeKind.STREAM_ERROR, status=status, retry_after=err.retry_after,
                          duration=now - started, ttft=ttft, error_class="stream", message=err.message), err)


def _usage(tr: TargetRuntime, events: list[StreamEvent]) -> None:
    for ev in events:
        if b'"usage"' in ev.payload:
            doc = orjson.loads(ev.payload)
            observe_usage(tr, doc.get("usage"))
