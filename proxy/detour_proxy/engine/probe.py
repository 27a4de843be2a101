"""One active probe: a tiny completion sent to one target, judged like any non-streamed answer.

The probe is a canonical chat request (`probe_body`): one user message (`activeProbes.prompt`)
and `max_completion_tokens: activeProbes.maxTokens`, which each provider's adapter writes in its
own wire format (OpenAI, Azure and compatible servers: `max_completion_tokens`, the one OpenAI's
reasoning models accept; Anthropic and Vertex Claude: `max_tokens`; Gemini: `maxOutputTokens`;
Bedrock: `inferenceConfig.maxTokens`). Never a 1-token limit: reasoning models refuse it or spend
it on reasoning. An answer cut at the limit (or with reasoning only) still proves the target
serves: the probe asks "is it up?", not "is the answer good?".

The caller (`cluster.prober`) has acquired the target's half-open probe slot and records the
`Outcome` with its ticket, exactly like a client request's probe; nothing here touches the
retry budget, the route metrics or a client.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

import orjson

from ..adapters import TargetUnavailable, UnsupportedRequest, check_answer
from ..config import ActiveProbes
from ..policy import Clock, Outcome, OutcomeKind
from ..transport import TransportError
from ._attempts import exception_result, malformed

if TYPE_CHECKING:
    from ..transport import Upstream
    from .gateway import TargetRuntime

__all__ = ["probe_body", "send_probe"]

#: Largest probe answer read: a 16-token completion is a few hundred bytes.
MAX_PROBE_ANSWER = 256 * 1024


def probe_body(settings: ActiveProbes, model: str) -> dict[str, Any]:
    """The canonical (OpenAI chat) request of a probe."""
    return {"model": model, "messages": [{"role": "user", "content": settings.prompt}],
            "max_completion_tokens": settings.max_tokens}


async def send_probe(upstream: Upstream, tr: TargetRuntime, settings: ActiveProbes,
                     clock: Clock) -> Outcome | None:
    """Send one probe to `tr` and return how it ended; None when the target cannot be probed
    now (its adapter cannot express the request, or it has no credentials yet): no attempt."""
    prov = tr.provider
    try:
        req = prov.adapter.build_chat(probe_body(settings, tr.target.model), tr.target.model, False,
                                      prov.api_key())
    except (UnsupportedRequest, TargetUnavailable):
        return None
    started = clock.now()
    try:
        async with asyncio.timeout(min(settings.timeout, prov.config.timeouts.total)):
            resp = await upstream.send(req, prov.client_timeout)
            try:
                raw = await resp.read(MAX_PROBE_ANSWER)
            finally:
                resp.close()
    except (TimeoutError, TransportError) as exc:
        return exception_result(exc, started, clock.now()).outcome
    return judge(tr, resp.status, resp.headers, raw, started, clock.now())


def judge(tr: TargetRuntime, status: int, headers: Any, raw: bytes, started: float, now: float) -> Outcome:
    """A probe's answer as an Outcome: a 200 carrying a chat completion is a success; an error
    status is the provider's error (a 400 counts for nothing, like a client's); anything else
    is the target's malformed answer."""
    adapter = tr.provider.adapter
    try:
        if status == 200:
            doc = orjson.loads(adapter.parse_response(status, headers, raw))
            why = check_answer("chat", doc)
            if why is None:
                return Outcome(OutcomeKind.SUCCESS, status=200, duration=now - started)
            return malformed(f"{tr.label} answered a probe with {why}", started, now).outcome
        if status < 400:
            return malformed(f"{tr.label} answered a probe with status {status}", started, now).outcome
        err = adapter.parse_error(status, headers, raw, api_key=tr.provider.api_key())
    except Exception as exc:  # noqa: BLE001 - any adapter failure is this target's malformed answer
        return malformed(f"{tr.label} sent a probe answer Detour cannot read ({type(exc).__name__})",
                         started, now).outcome
    status = err.status if err.status >= 400 else status
    return Outcome(OutcomeKind.HTTP_ERROR, status=status, retry_after=err.retry_after, duration=now - started,
                   error_class=f"http_{status}", retryable=status in adapter.transient_statuses)
