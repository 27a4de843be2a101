"""Hedged non-streaming requests (routes with `hedge: {after, maxExtra}`).

`run_unary` hands a request here only when its route opts in, so other routes pay nothing.
The loop is the executor's (the planner decides retries and fallbacks); what changes is one
step: each attempt is a *race*. If the attempt has not answered after `hedge.after`, the
planner is asked for a hedge (`RequestPlan.hedge`: the next untried, admissible target; it
spends the retry budget, and at most `maxExtra` are sent per request) and the same request
goes there too. The first successful answer wins; the others are cancelled, which closes
their upstream connections (an aiohttp request cancelled before its body was read drops its
connection instead of returning it to the pool), and are abandoned in the plan (they count
neither as failures nor as successes). A failure does not end the race while another
attempt is still running; when every attempt failed, the planner takes over again.

The `after` timer runs on the event loop's clock: it is I/O timing, like the timeouts.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from .. import tracing
from ..adapters import UnsupportedRequest, UpstreamError
from ._executor import Reply, failure_reply, note_decision, record, unary_attempt
from ..policy import GiveUp, Outcome

if TYPE_CHECKING:
    from ..state import AppState
    from ._executor import RequestContext
    from ..policy import RequestPlan
    from .gateway import TargetRuntime

__all__ = ["run_hedged"]

_Result = tuple[Outcome, bytes | None, UpstreamError | None]


async def run_hedged(state: AppState, ctx: RequestContext) -> Reply:
    """`run_unary` for a route with `hedge` set."""
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
        if d.delay > 0:
            try:
                await asyncio.sleep(d.delay)
            except BaseException:
                plan.abandon(clock.now(), d.index)
                raise
        body, err = await _race(state, ctx, plan, tr, eligible)
        if body is not None:
            return Reply(200, [(b"content-type", b"application/json")], body)
        if err is not None:
            last_err = err
    return failure_reply(ctx, d, last_err)


async def _race(state: AppState, ctx: RequestContext, plan: RequestPlan, first: TargetRuntime,
                eligible: object) -> tuple[bytes | None, UpstreamError | None]:
    """Run `first` (already acquired by the plan) plus hedges; (winning body, last error)."""
    clock = state.clock
    route = ctx.route
    spec = route.route.hedge
    assert spec is not None
    loop = asyncio.get_running_loop()
    tasks: dict[asyncio.Task[_Result], TargetRuntime] = {}

    def launch(tr: TargetRuntime) -> None:
        ctx.attempts += 1
        task = loop.create_task(unary_attempt(state, ctx, tr, plan.deadline - clock.now()))
        tasks[task] = tr

    launch(first)
    hedge_at = loop.time() + spec.after
    may_hedge = True
    last_err: UpstreamError | None = None
    try:
        while tasks:
            timeout = max(0.0, hedge_at - loop.time()) if may_hedge else None
            done, _ = await asyncio.wait(tasks, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
            if not done:
                h = plan.hedge(clock.now(), eligible)  # type: ignore[arg-type]
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
            winner: bytes | None = None
            for task in done:
                tr = tasks.pop(task)
                try:
                    outcome, body, err = task.result()
                except UnsupportedRequest as exc:
                    # This target cannot express the request: skipped, not failed.
                    plan.abandon(clock.now(), tr.index)
                    tracing.end_attempt(ctx, tr, None, "unsupported")
                    ctx.attempts -= 1
                    ctx.unsupported = f"{tr.label} cannot serve this request: {exc}"
                    continue
                except BaseException:
                    plan.abandon(clock.now(), tr.index)
                    raise
                record(state, ctx, plan, tr, outcome, err)
                ctx.target = tr if winner is None else ctx.target
                if outcome.ok and body is not None:
                    if winner is None:
                        winner = body
                elif err is not None:
                    last_err = err
            if winner is not None:
                return winner, None
        return None, last_err
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
