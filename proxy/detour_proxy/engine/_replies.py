"""The client-facing answer when a request could not be served: the most meaningful status,
an honest message, and a `Retry-After` a client can trust.

`Retry-After` is whole seconds, rounded up (a client that honours it must not come back too
early), at least 1 and at most `MAX_CLIENT_RETRY_AFTER` (60 s): past that, SDKs stop
honouring it (the openai SDK skips waits over 60 s and refuses to retry past 120 s), and a
provider's `Retry-After: 1e300` must not become a 301-digit header.
"""

from __future__ import annotations

import math

from ..adapters import UpstreamError
from ..policy import GiveUp
from ._context import Reply, RequestContext

__all__ = ["failure_reply", "summarize", "retry_after_header", "MAX_CLIENT_RETRY_AFTER"]

MAX_CLIENT_RETRY_AFTER = 60


def retry_after_header(seconds: float) -> int:
    """Seconds as a `Retry-After` value: rounded up, clamped to [1, MAX_CLIENT_RETRY_AFTER]."""
    if not seconds == seconds:   # NaN
        return 1
    return int(max(1, min(MAX_CLIENT_RETRY_AFTER, math.ceil(min(seconds, 1e9)))))


def failure_reply(ctx: RequestContext, give_up: GiveUp, last_err: UpstreamError | None) -> Reply:
    """The client-facing error after the last attempt, in the client's format (`ctx.codec`)."""
    codec = ctx.codec
    headers = list(codec.json_headers)
    if give_up.reason == "not_retryable" and last_err is not None:
        # The request itself was refused (e.g. 400): return the provider's verdict as is.
        return Reply(last_err.status, headers, codec.upstream_error(last_err))
    if last_err is not None and _native_refusal(ctx, last_err):
        # The client's own format, refused the same way by every target it went to as is
        # (e.g. OpenAI's 404 `previous_response_not_found`): the provider's verdict, as is.
        return Reply(last_err.status, headers, codec.upstream_error(last_err))
    route = ctx.route
    name = route.route.name
    if ctx.attempts == 0:
        if ctx.unsupported or (ctx.kind == "embeddings"
                               and not any(map(route.embeddings_eligible, range(len(route.targets))))):
            msg = ctx.unsupported or f"No target of route '{name}' can serve {ctx.kind} requests."
            if ctx.unavailable:   # a target without credentials yet: not the request's fault
                return Reply(503, headers, codec.error(msg, "upstream_error", "no_target_available"))
            return Reply(400, headers, codec.error(msg, "invalid_request_error", "unsupported_by_route"))
        if give_up.reason == "deadline":
            msg = f"Route '{name}' deadline passed before any attempt could start."
            return Reply(504, headers, codec.error(msg, "upstream_error", "deadline_exceeded"))
        if give_up.rate_limited:  # every target is at its limit or told us to slow down: so is the client
            status, code = 429, "rate_limited"
            msg = f"Every target of route '{name}' is at its rate limit right now."
        elif give_up.breaker_open:
            status, code = 503, "no_target_available"
            msg = (f"Every target of route '{name}' is failing: their circuit breakers are open and "
                   "their probes are already out.")
        else:
            status, code = 503, "no_target_available"
            msg = (f"No target of route '{name}' can take a request right now "
                   "(open circuit breakers, rate limits or provider-requested pauses).")
        if give_up.retry_after is not None:
            # When the soonest target admits again (its next probe, limit window or reset).
            wait = retry_after_header(give_up.retry_after)
            headers.append((b"retry-after", str(wait).encode()))
            msg += f" Retry after {wait} s."
        return Reply(status, headers, codec.error(msg, "upstream_error", code))
    status = last_err.status if last_err is not None else 502
    if give_up.reason == "deadline" and (last_err is None or last_err.type == "timeout"):
        status = 504
    msg = f"All attempts failed ({ctx.attempts} attempts, {give_up.reason}): {summarize(ctx)}"
    if last_err is not None and last_err.message:
        msg += f". Last error: {last_err.message}"
    hint = last_err.retry_after if last_err is not None and last_err.retry_after is not None else give_up.retry_after
    if hint is not None and status in (429, 503):
        headers.append((b"retry-after", str(retry_after_header(hint)).encode()))
    return Reply(status, headers, codec.error(msg, "upstream_error", "all_targets_failed"))


def summarize(ctx: RequestContext) -> str:
    """'primary/gpt-4o-mini: http_503 x2; secondary/llama: connect' — labels only, no bodies."""
    counts: dict[tuple[str, str], int] = {}
    for label, outcome, _ in ctx.errors:
        k = (label, outcome.error_class or outcome.kind.name.lower())
        counts[k] = counts.get(k, 0) + 1
    out = "; ".join(f"{label}: {cls}" + (f" x{n}" if n > 1 else "") for (label, cls), n in counts.items())
    if ctx.unsupported:
        out += ("; " if out else "") + ctx.unsupported
    return out


def _native_refusal(ctx: RequestContext, last: UpstreamError) -> bool:
    """Every failed attempt was a natively forwarded request refused with `last`'s 4xx."""
    if not 400 <= last.status < 500 or last.status in (408, 409, 425, 429) or not ctx.errors:
        return False
    native = {tr.label for tr in ctx.route.targets
              if (req := ctx.requests.get(tr.index)) is not None and req.native}
    return all(label in native and err is not None and err.status == last.status and err.code == last.code
               for label, _, err in ctx.errors)
