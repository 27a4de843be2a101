"""The one attempt loop: unary, hedged and streamed requests all run here.

The planner (pure) says "try target X after N s" or "give up"; the loop sleeps, hands the
attempt to a `Runner` (unary: `_unary.UnaryRunner`, streams: `_streaming.StreamRunner`), reports
the attempt's one `Outcome` back to the plan and loops. A route with `hedge` runs each unary
step as a race (`_race`): the same request goes to the next admissible target if the first
has not answered after `hedge.after`; the first success wins and the losers are cancelled
(which closes their upstream connections) and abandoned in the plan.

Whatever an attempt meets (a status, a timeout, a dropped connection, a body an adapter
cannot read) ends as exactly one `Result`: `Runner.attempt` never raises for upstream
behaviour, only for cancellation (the client left), which abandons the attempt.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import replace
from typing import TYPE_CHECKING, Any, Callable, Coroutine, Protocol

from .. import tracing
from ..adapters import TargetUnavailable, UnsupportedRequest, UpstreamError, UpstreamRequest
from ..adapters.errors import redact
from ..policy import GiveUp, Outcome, OutcomeKind, RequestPlan, Try
from ..transport import BodyTooLarge, Disconnected
from ._context import RequestContext, Result
from .codec import OPENAI

if TYPE_CHECKING:
    from ..state import AppState
    from .gateway import TargetRuntime

__all__ = ["Runner", "run_attempts", "prepare", "exception_result", "malformed", "result_label",
           "redact_for", "redact_error", "Eligible"]

log = logging.getLogger("detour.engine")
Eligible = Callable[[int], bool]


class Runner(Protocol):
    """One kind of attempt. `attempt` sends to `tr` (already acquired by the plan) and
    returns its Result; `after` sees every recorded Result and says whether the request is
    over (served, or ended for good); `eligible` narrows the targets of the next step."""

    def eligible(self) -> Eligible: ...
    # A plain method returning the attempt's coroutine (not `async def`): one coroutine frame
    # less on every resume of every attempt.
    def attempt(self, plan: RequestPlan, tr: TargetRuntime) -> Coroutine[Any, Any, Result]: ...
    def after(self, plan: RequestPlan, tr: TargetRuntime, res: Result) -> bool: ...


async def run_attempts(state: AppState, ctx: RequestContext, runner: Runner) -> GiveUp | None:
    """Run the plan to its end: None when `runner.after` ended it, else the planner's GiveUp."""
    clock = state.clock
    route = ctx.route
    plan = route.planner.begin(clock.now(), eligible=route.embeddings_eligible if ctx.kind == "embeddings" else None,
                               affinity=ctx.affinity_key)
    hedged = route.route.hedge is not None and not ctx.stream
    while True:
        d = plan.next(clock.now(), eligible=runner.eligible())
        note_decision(state, ctx, d, plan)
        if isinstance(d, GiveUp):
            return d
        tr = route.targets[d.index]
        if d.delay > 0:
            try:
                await asyncio.sleep(d.delay)
            except BaseException:
                plan.abandon(clock.now(), d.index)
                raise
        if hedged:
            if await _race(state, ctx, plan, tr, runner):
                return None
            continue
        ctx.attempts += 1
        try:
            res = await runner.attempt(plan, tr)
        except BaseException:
            plan.abandon(clock.now(), d.index)
            raise
        record(state, ctx, plan, tr, res)
        if runner.after(plan, tr, res):
            return None


async def _race(state: AppState, ctx: RequestContext, plan: RequestPlan, first: TargetRuntime,
                runner: Runner) -> bool:
    """Run `first` (already acquired) plus hedges; True once `runner.after` ended the request."""
    clock = state.clock
    route = ctx.route
    spec = route.route.hedge
    assert spec is not None
    loop = asyncio.get_running_loop()
    tasks: dict[asyncio.Task[Result], TargetRuntime] = {}

    def launch(tr: TargetRuntime) -> None:
        ctx.attempts += 1
        tasks[loop.create_task(runner.attempt(plan, tr))] = tr

    launch(first)
    hedge_at = loop.time() + spec.after
    may_hedge = True
    try:
        while tasks:
            timeout = max(0.0, hedge_at - loop.time()) if may_hedge else None
            done, _ = await asyncio.wait(tasks, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
            if not done:
                h = plan.hedge(clock.now(), runner.eligible())
                if plan.budget_denied:
                    route.metrics.budget_rejections.inc(plan.budget_denied)
                    plan.budget_denied = 0
                if h is None:
                    may_hedge = False
                    continue
                route.metrics.hedges.inc()
                launch(route.targets[h.index])
                hedge_at += spec.after
                continue
            over = False
            for task in done:
                tr = tasks.pop(task)
                try:
                    res = task.result()
                except BaseException:
                    plan.abandon(clock.now(), tr.index)
                    raise
                record(state, ctx, plan, tr, res)
                over = runner.after(plan, tr, res) or over
            if over:
                return True
        return False
    finally:
        # Losers (or everything, when the client went away): cancel, wait, free their slots.
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
            now = clock.now()
            for tr in tasks.values():
                plan.abandon(now, tr.index)
                tracing.end_attempt(ctx, tr, None, "cancelled")


def prepare(ctx: RequestContext, tr: TargetRuntime, stream: bool) -> UpstreamRequest | None:
    """The upstream request for `tr` (built once per request and target), or None when the
    target cannot express this request (e.g. `n>1` on Anthropic): it is then not eligible,
    so no rate-limit slot or probe is spent on it, and the reason goes into the error summary."""
    reqs = ctx.requests
    i = tr.index
    if i in reqs:
        return reqs[i]
    prov = tr.provider
    try:
        if ctx.kind == "embeddings":
            req: UpstreamRequest | None = prov.adapter.build_embeddings(ctx.body, tr.target.model, prov.api_key(),
                                                                        raw=ctx.raw)
        else:
            req = None
            raw: bytes | None = ctx.raw
            if ctx.codec is not OPENAI:
                raw = None   # ctx.raw is the client's own format: the canonical body is serialised
                # An inbound format goes as is to a target that speaks it (inbound.native);
                # None: translate it. The codec raises UnsupportedRequest when it cannot be.
                native = getattr(ctx.codec, "native_request", None)
                if native is not None:
                    req = native(prov, tr.target.model, stream, prov.api_key())
            if req is None:
                req = prov.adapter.build_chat(ctx.body, tr.target.model, stream, prov.api_key(), raw=raw)
        req.headers["x-request-id"] = ctx.request_id  # type: ignore[union-attr]
        if ctx.codec is not OPENAI and not req.native:  # type: ignore[union-attr]
            # an inbound format may pass headers to same-format targets only
            extra = getattr(ctx.codec, "upstream_headers", None)
            if extra is not None:
                req.headers.update(extra(prov.adapter))  # type: ignore[union-attr]
    except UnsupportedRequest as exc:
        ctx.unsupported = f"{tr.label} cannot serve this request: {exc}"
        ctx.unavailable = ctx.unavailable or isinstance(exc, TargetUnavailable)
        req = None
    reqs[i] = req
    return req


_HIDDEN_LABELS = {"empty_answer": "empty_answer", "reasoning_only_answer": "empty_answer",
                  "context_window": "context_window"}


def result_label(outcome: Outcome) -> str:
    """Bounded metric label for an attempt's result."""
    kind = outcome.kind
    if kind is OutcomeKind.SUCCESS:
        return "success"
    if outcome.error_class in _HIDDEN_LABELS:   # route hiddenFailures (engine._hidden)
        return _HIDDEN_LABELS[outcome.error_class]
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
    if ctx.trace is not None:   # (tracing off: not even the call)
        tracing.start_attempt(ctx, d, tr)
    if d.reason == "retry" and ctx.errors:
        tr.metrics.retries[result_label(ctx.errors[-1][1])].inc()
    elif d.reason == "fallback" and ctx.target is not None:
        state.metrics.fallbacks.labels(ctx.route.route.name, ctx.target.target.provider, tr.target.provider).inc()
    elif d.reason == "forced":
        tr.metrics.forced.inc()
    elif d.reason == "rotate" and ctx.errors:
        tr.metrics.key_rotations[result_label(ctx.errors[-1][1])].inc()


def record(state: AppState, ctx: RequestContext, plan: RequestPlan, tr: TargetRuntime, res: Result) -> None:
    """Report an attempt's outcome to the planner, metrics and the per-request error list.
    An attempt the client ended (`client_fault`) is abandoned instead: it says nothing
    about the target."""
    outcome = res.outcome
    if res.client_fault:
        plan.abandon(state.clock.now(), tr.index)
        tracing.end_attempt(ctx, tr, None, "client")
        return
    plan.record(outcome, state.clock.now(), tr.index)
    result = result_label(outcome)
    tr.metrics.count_attempt[result](1)
    if ctx.trace is not None:
        tracing.end_attempt(ctx, tr, outcome, result)
    if outcome.duration is not None:
        tr.metrics.observe_attempt_duration(outcome.duration)
    if not outcome.ok:
        ctx.errors.append((tr.label, outcome, res.err))
    if log.isEnabledFor(logging.DEBUG):
        log.debug("attempt", extra={"fields": {
            "request_id": ctx.request_id, "route": ctx.route.route.name, "target": tr.label,
            "attempt": ctx.attempts, "result": result, "status": outcome.status,
            "error_class": outcome.error_class or None,
            "latency_ms": round(outcome.duration * 1000, 2) if outcome.duration is not None else None}})


def exception_result(exc: BaseException, started: float, now: float, ttft: float | None = None) -> Result:
    """A timeout or transport failure as a Result (with a client-safe error description).

    `ttft`: a stream that broke (reset, idle timeout) after its first token passes the time
    that token took, so it still reaches the TTFT metric, and the latency EWMA judges the
    target by it rather than by the whole stalled duration."""
    dur = now - started
    name = str(exc) or type(exc).__name__
    if isinstance(exc, TimeoutError):
        return Result(Outcome(OutcomeKind.TIMEOUT, duration=dur, ttft=ttft, error_class="timeout", message="timed out"),
                      UpstreamError(504, "timeout", "upstream_timeout", "the provider did not answer in time", None))
    if isinstance(exc, Disconnected) and ttft is None:
        return Result(Outcome(OutcomeKind.CONNECT_ERROR, duration=dur, error_class="connect", message=name),
                      UpstreamError(502, "connection_error", "upstream_connect_error",
                                    f"cannot reach the provider ({name})", None))
    if isinstance(exc, BodyTooLarge):
        return malformed(f"the provider's answer is too large ({exc})", started, now, code="response_too_large")
    return Result(Outcome(OutcomeKind.STREAM_ERROR, duration=dur, ttft=ttft, error_class="stream", message=name),
                  UpstreamError(502, "upstream_error", "upstream_read_error",
                                f"the provider's response broke off ({name})", None))


def malformed(why: str, started: float, now: float, *, code: str = "malformed_response",
              ttft: float | None = None) -> Result:
    """An answer the target should not have given (wrong shape, wrong status, too large):
    that target's failure (it counts against it and the request falls back), never a 500."""
    return Result(Outcome(OutcomeKind.STREAM_ERROR, duration=now - started, ttft=ttft, error_class="malformed",
                          message=why),
                  UpstreamError(502, "upstream_error", code, why, None))


def redact_for(state: AppState, ctx: RequestContext, text: str) -> str:
    """Remove every configured provider key (verbatim: the request's own generation and the
    current one, in case a key rotated meanwhile) and key-shaped tokens from upstream text
    before it reaches a client or a log. Off the hot path: only errors pay for it."""
    keys = {t.provider.api_key() for t in ctx.route.targets}
    gw = state.gateway
    if gw is not None:
        keys.update(k for p in gw.providers.values() for k in p.all_api_keys())
    return redact(text, keys)


def redact_error(state: AppState, ctx: RequestContext, err: UpstreamError) -> UpstreamError:
    """`err` with every configured key removed from its message and code."""
    msg = redact_for(state, ctx, err.message)
    code = redact_for(state, ctx, err.code) if err.code else err.code
    if msg == err.message and code == err.code:
        return err
    return replace(err, message=msg, code=code)
