"""The executor: runs what the planner decides, doing the I/O and the sleeping.

The planner (pure) says "try target X after N s" or "give up"; this module sends the
attempt through the upstream seam, turns what happened into an `Outcome`, reports it back
and loops. Streams share the same loop shape in `_streaming.py`; what both need lives here.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import orjson

from ..adapters import UnsupportedRequest, UpstreamError, UpstreamRequest
from .. import tracing
from . import _usage as usage
from ..errors import error_body
from ..policy import GiveUp, Outcome, OutcomeKind, RequestPlan, Try
from ..transport import CONNECT_ERRORS, STREAM_ERRORS

if TYPE_CHECKING:
    from ..state import AppState
    from .gateway import RouteRuntime, TargetRuntime

log = logging.getLogger("detour.executor")


@dataclass(slots=True)
class RequestContext:
    """What one client request carries through the executor."""

    request_id: str
    route: RouteRuntime
    body: dict[str, Any]
    raw: bytes
    kind: str                     # "chat" | "embeddings"
    stream: bool
    started: float
    attempts: int = 0
    target: TargetRuntime | None = None
    errors: list[tuple[str, Outcome, UpstreamError | None]] = field(default_factory=list)
    unsupported: str | None = None   # why a target could not take this request (no attempt sent)
    trace: Any = None                # tracing.RequestTrace when OpenTelemetry tracing is on
    status: int = 0                  # the status sent once the response started (0: nothing sent yet)


@dataclass(slots=True)
class Reply:
    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes


def result_label(outcome: Outcome) -> str:
    """Bounded metric label for an attempt's result."""
    kind = outcome.kind
    if kind is OutcomeKind.SUCCESS:
        return "success"
    if kind is OutcomeKind.HTTP_ERROR:
        s = outcome.status or 0
        return "http_429" if s == 429 else "http_5xx" if s >= 500 else "http_4xx"
    if kind is OutcomeKind.CONNECT_ERROR:
        return "connect"
    if kind is OutcomeKind.TIMEOUT:
        return "timeout"
    return "stream"


def note_decision(state: AppState, ctx: RequestContext, d: Try | GiveUp, plan: RequestPlan) -> None:
    """Count retries, fallbacks, forced attempts and budget refusals as the planner decided them.
    Called right after every `plan.next()`, before acting on its answer."""
    if plan.budget_denied:
        ctx.route.metrics.budget_rejections.inc(plan.budget_denied)
        plan.budget_denied = 0
    if isinstance(d, GiveUp):
        return
    tr = ctx.route.targets[d.index]
    tracing.start_attempt(ctx, d, tr)
    if d.reason == "retry" and ctx.errors:
        tr.metrics.retries[result_label(ctx.errors[-1][1])].inc()
    elif d.reason == "fallback" and ctx.target is not None:
        state.metrics.fallbacks.labels(ctx.route.route.name, ctx.target.target.provider, tr.target.provider).inc()
    elif d.reason == "forced":
        tr.metrics.forced.inc()


def record(state: AppState, ctx: RequestContext, plan: RequestPlan, tr: TargetRuntime, outcome: Outcome,
           err: UpstreamError | None) -> None:
    """Report an attempt's outcome to the planner, metrics and the per-request error list."""
    plan.record(outcome, state.clock.now(), tr.index)
    result = result_label(outcome)
    tr.metrics.attempts[result].inc()
    tracing.end_attempt(ctx, tr, outcome, result)
    if outcome.duration is not None:
        tr.metrics.attempt_duration.observe(outcome.duration)
    if not outcome.ok:
        ctx.errors.append((tr.label, outcome, err))
    if log.isEnabledFor(logging.DEBUG):
        log.debug("attempt", extra={"fields": {
            "request_id": ctx.request_id, "route": ctx.route.route.name, "target": tr.label,
            "attempt": ctx.attempts, "result": result, "status": outcome.status,
            "error_class": outcome.error_class or None,
            "latency_ms": round(outcome.duration * 1000, 2) if outcome.duration is not None else None}})


def observe_usage(tr: TargetRuntime, usage: Any) -> None:
    if isinstance(usage, dict):
        p, c = usage.get("prompt_tokens"), usage.get("completion_tokens")
        if isinstance(p, int):
            tr.metrics.prompt_tokens.inc(p)
        if isinstance(c, int):
            tr.metrics.completion_tokens.inc(c)


def exception_outcome(exc: BaseException, started: float, now: float,
                      ttft: float | None = None) -> tuple[Outcome, UpstreamError]:
    """Classify a transport exception into an Outcome (and a client-safe error description).

    `ttft`: a stream that broke (reset, idle timeout) after its first token passes the time
    that token took, so it still reaches the TTFT metric, and the latency EWMA judges the
    target by it rather than by the whole stalled duration."""
    dur = now - started
    if isinstance(exc, TimeoutError):
        return (Outcome(OutcomeKind.TIMEOUT, duration=dur, ttft=ttft, error_class="timeout", message="timed out"),
                UpstreamError(504, "timeout", "upstream_timeout", "the provider did not answer in time", None))
    if isinstance(exc, CONNECT_ERRORS) and ttft is None:
        return (Outcome(OutcomeKind.CONNECT_ERROR, duration=dur, error_class="connect", message=type(exc).__name__),
                UpstreamError(502, "connection_error", "upstream_connect_error",
                              f"cannot reach the provider ({type(exc).__name__})", None))
    return (Outcome(OutcomeKind.STREAM_ERROR, duration=dur, ttft=ttft, error_class="stream",
                    message=type(exc).__name__),
            UpstreamError(502, "upstream_error", "upstream_read_error",
                          f"the provider's response broke off ({type(exc).__name__})", None))


def build_request(ctx: RequestContext, tr: TargetRuntime, stream: bool) -> UpstreamRequest:
    prov = tr.provider
    key = prov.api_key()
    if ctx.kind == "embeddings":
        req = prov.adapter.build_embeddings(ctx.body, tr.target.model, key, raw=ctx.raw)
    else:
        req = prov.adapter.build_chat(ctx.body, tr.target.model, stream, key, raw=ctx.raw)
    req.headers["x-request-id"] = ctx.request_id
    return req


async def unary_attempt(state: AppState, ctx: RequestContext, tr: TargetRuntime,
                        remaining: float) -> tuple[Outcome, bytes | None, UpstreamError | None]:
    """One non-streaming attempt bounded by the provider's total timeout and the deadline."""
    clock = state.clock
    started = clock.now()
    meter = usage.reserve(tr, ctx, started)
    try:
        req = build_request(ctx, tr, stream=False)
        async with asyncio.timeout(min(tr.provider.config.timeouts.total, remaining)):
            resp = await state.upstream.send(req, tr.provider.client_timeout)
            usage.check_rate_headers(tr, resp.headers, clock.now())
            try:
                raw = await resp.read()
            finally:
                resp.release()
    except (TimeoutError, *CONNECT_ERRORS, *STREAM_ERRORS) as exc:
        outcome, err = exception_outcome(exc, started, clock.now())
        return outcome, None, err
    dur = clock.now() - started
    status = resp.status
    adapter = tr.provider.adapter
    if 200 <= status < 300:
        try:
            out = adapter.parse_response(status, resp.headers, raw)
            doc = orjson.loads(out)
            if not isinstance(doc, dict):
                raise ValueError("not an object")
        except ValueError:
            return (Outcome(OutcomeKind.STREAM_ERROR, status=status, duration=dur, error_class="malformed",
                            message="malformed response body"),
                    None, UpstreamError(502, "upstream_error", "malformed_response",
                                        "the provider returned a malformed response body", None))
        observe_usage(tr, doc.get("usage"))
        usage.settle(meter, doc.get("usage"))
        return Outcome(OutcomeKind.SUCCESS, status=status, duration=dur), out, None
    err = adapter.parse_error(status, resp.headers, raw, api_key=tr.provider.api_key())
    return (Outcome(OutcomeKind.HTTP_ERROR, status=status, retry_after=err.retry_after, duration=dur,
                    error_class=f"http_{status}", message=err.message), None, err)


async def run_unary(state: AppState, ctx: RequestContext) -> Reply:
    """Serve a non-streaming request: attempts until success, a final error, or the deadline."""
    if ctx.route.route.hedge is not None:  # opt-in per route; one attribute test otherwise
        from ._hedging import run_hedged
        return await run_hedged(state, ctx)
    clock = state.clock
    route = ctx.route
    eligible = route.embeddings_eligible if ctx.kind == "embeddings" else None
    plan = route.planner.begin(clock.now(), eligible=eligible)
    last_err: UpstreamError | None = None
    while True:
        d = plan.next(clock.now())
        note_decision(state, ctx, d, plan)
        if isinstance(d, GiveUp):
            break
        tr = route.targets[d.index]
        try:
            if d.delay > 0:
                await asyncio.sleep(d.delay)
            ctx.attempts += 1
            outcome, body, err = await unary_attempt(state, ctx, tr, plan.deadline - clock.now())
        except UnsupportedRequest as exc:
            skip_unsupported(state, ctx, plan, tr, exc)
            continue
        except BaseException:
            plan.abandon(clock.now())
            raise
        record(state, ctx, plan, tr, outcome, err)
        ctx.target = tr
        if outcome.ok and body is not None:
            return Reply(200, [(b"content-type", b"application/json")], body)
        last_err = err
    return failure_reply(ctx, d, last_err)


def skip_unsupported(state: AppState, ctx: RequestContext, plan: RequestPlan, tr: TargetRuntime,
                     exc: UnsupportedRequest) -> None:
    """A target that cannot express this request (e.g. n>1 on Anthropic) is skipped, not failed."""
    plan.abandon(state.clock.now())
    tracing.end_attempt(ctx, tr, None, "unsupported")
    ctx.attempts -= 1
    ctx.unsupported = f"{tr.label} cannot serve this request: {exc}"


def failure_reply(ctx: RequestContext, give_up: GiveUp, last_err: UpstreamError | None) -> Reply:
    """The client-facing error after the last attempt: the most meaningful status, a summary."""
    headers = [(b"content-type", b"application/json")]
    if give_up.reason == "not_retryable" and last_err is not None:
        # The request itself was refused (e.g. 400): return the provider's verdict as is.
        return Reply(last_err.status, headers, last_err.to_openai_body())
    if ctx.attempts == 0:
        route = ctx.route
        if ctx.unsupported or (ctx.kind == "embeddings"
                               and not any(map(route.embeddings_eligible, range(len(route.targets))))):
            msg = ctx.unsupported or f"No target of route '{ctx.route.route.name}' can serve {ctx.kind} requests."
            return Reply(400, headers, error_body(msg, "invalid_request_error", "unsupported_by_route"))
        if give_up.reason == "deadline":
            msg = f"Route '{route.route.name}' deadline passed before any attempt could start."
            return Reply(504, headers, error_body(msg, "upstream_error", "deadline_exceeded"))
        if give_up.rate_limited:  # every target is at its limit or told us to slow down: so is the client
            status, code = 429, "rate_limited"
            msg = f"Every target of route '{route.route.name}' is at its rate limit right now."
        else:
            status, code = 503, "no_target_available"
            msg = f"No target of route '{route.route.name}' can take a request right now (limits or cooldowns)."
        if give_up.retry_after is not None:
            # When the soonest target frees (its limit window or the provider's reset): whole
            # seconds, rounded up so a client that honours it does not come back too early.
            from math import ceil  # only on this refusal path
            wait = max(1, ceil(give_up.retry_after))
            headers.append((b"retry-after", str(wait).encode()))
            msg += f" Retry after {wait} s."
        return Reply(status, headers, error_body(msg, "upstream_error", code))
    status = last_err.status if last_err is not None else 502
    if give_up.reason == "deadline" and (last_err is None or last_err.type == "timeout"):
        status = 504
    summary = summarize(ctx)
    msg = f"All attempts failed ({ctx.attempts} attempts, {give_up.reason}): {summary}"
    if last_err is not None and last_err.message:
        msg += f". Last error: {last_err.message}"
    if last_err is not None and last_err.retry_after is not None and status in (429, 503):
        headers.append((b"retry-after", str(max(1, round(last_err.retry_after))).encode()))
    return Reply(status, headers, error_body(msg, "upstream_error", "all_targets_failed"))


def summarize(ctx: RequestContext) -> str:
    """'primary/gpt-4o-mini: http_503 x2; secondary/llama: connect' — labels only, no bodies."""
    counts: dict[tuple[str, str], int] = {}
    for label, outcome, _ in ctx.errors:
        k = (label, outcome.error_class or outcome.kind.name.lower())
        counts[k] = counts.get(k, 0) + 1
    return "; ".join(f"{label}: {cls}" + (f" x{n}" if n > 1 else "") for (label, cls), n in counts.items())
