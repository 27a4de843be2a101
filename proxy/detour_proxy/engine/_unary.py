"""Non-streamed requests: one attempt = send, read the answer (bounded), classify it.

`classify_answer` is where an upstream answer becomes exactly one Result: 200 with a
canonical answer of the right shape is a success; a redirect, 1xx/2xx/3xx other than 200,
a 200 carrying an error object or a body the adapter cannot read (any exception it raises)
is that target's malformed answer (it counts against the target; the request falls back);
4xx/5xx are the provider's error, normalised by the adapter with every configured key
removed from its text. Routes with `hiddenFailures` also fail an empty or reasoning-only
200 over, and mark context-length errors for a larger target (`_hidden`).
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any, Coroutine

import orjson

from ..adapters import UpstreamError, check_answer
from ..policy import GiveUp, Outcome, OutcomeKind, RequestPlan
from ..transport import TransportError
from . import _usage as usage
from ._attempts import Eligible, exception_result, malformed, prepare, redact_error, run_attempts
from ._context import Reply, RequestContext, Result
from ._hidden import CONTEXT, answer_failure, context_result, hidden_result, is_context_error
from ._replies import failure_reply

if TYPE_CHECKING:
    from ..state import AppState
    from .gateway import TargetRuntime

__all__ = ["run_unary", "classify_answer", "observe_usage"]


class UnaryRunner:
    __slots__ = ("state", "ctx", "body", "last_err", "_eligible")

    def __init__(self, state: AppState, ctx: RequestContext) -> None:
        self.state = state
        self.ctx = ctx
        self.body: bytes | None = None
        self.last_err: UpstreamError | None = None
        targets = ctx.route.targets
        self._eligible: Eligible = lambda i: prepare(ctx, targets[i], False) is not None

    def eligible(self) -> Eligible:
        return self._eligible

    def attempt(self, plan: RequestPlan, tr: TargetRuntime) -> Coroutine[Any, Any, Result]:
        return unary_attempt(self.state, self.ctx, tr, plan.deadline)

    def after(self, plan: RequestPlan, tr: TargetRuntime, res: Result) -> bool:
        if res.outcome.ok:
            if self.body is None:      # a race's first winner is the answer
                self.body = res.body
                self.ctx.target = tr
            return True
        if self.body is None:
            self.ctx.target = tr
            if res.err is not None:
                self.last_err = res.err
        return False


async def run_unary(state: AppState, ctx: RequestContext) -> Reply:
    """Serve a non-streaming request: attempts until success, a final error, or the deadline."""
    runner = UnaryRunner(state, ctx)
    give_up = await run_attempts(state, ctx, runner)
    if runner.body is not None:
        tr = ctx.target
        req = ctx.requests.get(tr.index) if tr is not None else None
        body = runner.body if req is not None and req.native else ctx.codec.answer(runner.body)
        return Reply(200, list(ctx.codec.json_headers), body)
    assert isinstance(give_up, GiveUp)
    return failure_reply(ctx, give_up, runner.last_err)


async def unary_attempt(state: AppState, ctx: RequestContext, tr: TargetRuntime, deadline: float) -> Result:
    """One non-streaming attempt bounded by the provider's total timeout and the deadline."""
    clock = state.clock
    prov = tr.provider
    req = ctx.requests[tr.index]
    assert req is not None   # the planner only hands out targets `prepare` could build for
    started = clock.now()
    meter = usage.reserve(tr, ctx, started)
    try:
        async with asyncio.timeout(min(prov.config.timeouts.total, deadline - started)):
            resp = await state.upstream.send(req, prov.client_timeout)
            usage.check_rate_headers(tr, resp.headers, clock.now())
            done = False
            try:
                raw = await resp.read(ctx.route.max_response_bytes)
                done = True
            finally:
                if done:
                    resp.release()
                else:
                    resp.close()
    except (TimeoutError, TransportError) as exc:
        return exception_result(exc, started, clock.now())
    return classify_answer(state, ctx, tr, resp.status, resp.headers, raw, started, clock.now(), meter)


def classify_answer(state: AppState, ctx: RequestContext, tr: TargetRuntime, status: int, headers: Any,
                    raw: bytes, started: float, now: float, meter: Any = None) -> Result:
    """A complete upstream answer -> exactly one Result (see the module docstring)."""
    adapter = tr.provider.adapter
    try:
        if status == 200:
            req = ctx.requests.get(tr.index)
            if req is not None and req.native:
                return _native_answer(ctx, tr, raw, started, now, meter)
            out = adapter.parse_response(status, headers, raw)
            doc = orjson.loads(out)
            if isinstance(doc, dict) and doc.get("model") == "":   # bedrock: Converse names no model
                doc["model"] = tr.target.model
                out = orjson.dumps(doc)
            why = check_answer(ctx.kind, doc)
            hidden = ctx.route.route.hidden_failures
            if why is None and hidden and ctx.kind == "chat":
                what = answer_failure(doc, frozenset(hidden))
                if what is not None:
                    observe_usage(tr, doc.get("usage"))
                    usage.settle(meter, doc.get("usage"))
                    return hidden_result(tr.label, what, started, now)
            if why is None:
                u = doc.get("usage")
                observe_usage(tr, u)
                usage.settle(meter, u)
                return Result(Outcome(OutcomeKind.SUCCESS, status=200, duration=now - started), None, out)
            if isinstance(doc, dict) and doc.get("error") is not None:
                err = redact_error(state, ctx, adapter.parse_error(status, headers, raw,
                                                                   api_key=tr.provider.api_key()))
                if CONTEXT in hidden and is_context_error(200, err):
                    return context_result(err, started, now)
                why = f"{why}: {err.message}"
            return malformed(f"{tr.label} answered 200 with {why}", started, now)
        if status < 400:
            where = headers.get("Location") if 300 <= status < 400 else None
            what = f"a redirect ({status})" if where is not None or 300 <= status < 400 else f"status {status}"
            return malformed(f"{tr.label} answered with {what} instead of a completion"
                             + (" (check its baseURL)" if 300 <= status < 400 else ""), started, now,
                             code="unexpected_status")
        err = redact_error(state, ctx, adapter.parse_error(status, headers, raw, api_key=tr.provider.api_key()))
        if err.status >= 400:
            status = err.status   # the adapter's reading (bedrock: a quota 400 is a 429)
        if CONTEXT in ctx.route.route.hidden_failures and is_context_error(status, err):
            return context_result(err, started, now)
    except Exception as exc:  # noqa: BLE001 - any adapter failure is this target's malformed answer
        return malformed(f"{tr.label} sent an answer Detour cannot read ({type(exc).__name__})", started, now)
    return Result(Outcome(OutcomeKind.HTTP_ERROR, status=status, retry_after=err.retry_after, duration=now - started,
                          error_class=f"http_{status}", message=err.message,
                          retryable=status in adapter.transient_statuses or _elsewhere(ctx, tr, err)), err)


def _elsewhere(ctx: RequestContext, tr: TargetRuntime, err: UpstreamError) -> bool:
    """A native request refused only because this provider does not hold the state it names
    (`previous_response_not_found`: another provider, or another replica's memory, knows the
    id): the next native target may hold it. Still a request error: not held against the target."""
    if err.code != "previous_response_not_found":
        return False
    req = ctx.requests.get(tr.index)
    return req is not None and req.native


def _native_answer(ctx: RequestContext, tr: TargetRuntime, raw: bytes, started: float, now: float,
                   meter: Any) -> Result:
    """A 200 from a target the client's format went to as is (see `inbound.native`): kept
    byte for byte when the codec recognises it as an answer, else that target's malformed one."""
    codec: Any = ctx.codec
    why, u = codec.check_native(orjson.loads(raw), tr.target.provider)
    if why is not None:
        return malformed(f"{tr.label} answered 200 with {why}", started, now)
    observe_usage(tr, u)
    usage.settle(meter, u)
    return Result(Outcome(OutcomeKind.SUCCESS, status=200, duration=now - started), None, raw)


def observe_usage(tr: TargetRuntime, u: Any) -> None:
    if isinstance(u, dict):
        p, c = u.get("prompt_tokens"), u.get("completion_tokens")
        m = tr.metrics
        # Counts a counter cannot take (negative) go through `inc`, which refuses them (the
        # answer is then malformed); the others through the bound fast add.
        if isinstance(p, int):
            if p >= 0:
                m.add_prompt_tokens(p)
            else:
                m.prompt_tokens.inc(p)
        if isinstance(c, int):
            if c >= 0:
                m.add_completion_tokens(c)
            else:
                m.completion_tokens.inc(c)
