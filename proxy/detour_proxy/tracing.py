"""Optional OpenTelemetry tracing: one span per client request, one child span per upstream attempt.

Off by default, and free when off: nothing imports `opentelemetry`, and every hook returns at
once (`start_request` finds no tracer; the others find no trace on the request context).

On when the CLI's `setup_from_env()` finds an OTLP endpoint in the standard OpenTelemetry
environment (`OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` or `OTEL_EXPORTER_OTLP_ENDPOINT`, and
`OTEL_SDK_DISABLED` is not `true`) and the SDK and the OTLP/HTTP exporter are installed
(`pip install 'detour[otel]'`). The exporter reads the rest of the `OTEL_EXPORTER_OTLP_*`
settings itself; `OTEL_SERVICE_NAME` defaults to `detour-proxy`. Embedders and tests call
`enable(tracer_provider)` instead.

Span attributes are config names and small enums (route, target, provider, model, attempt
number, reason, result, status) and the request id: never prompts, headers or keys. No trace
context is sent to providers (they are third parties).
"""

from __future__ import annotations

import logging
import os
import time
from typing import TYPE_CHECKING, Any, Mapping

if TYPE_CHECKING:
    from .engine import RequestContext
    from .policy import Outcome, Try
    from .engine.gateway import TargetRuntime

log = logging.getLogger("detour.tracing")

_tracer: Any = None     # an opentelemetry Tracer once enabled; None = tracing off
_api: Any = None        # the `opentelemetry.trace` module once enabled


class RequestTrace:
    """The spans of one request (kept on `RequestContext.trace`): open attempts by target index
    (hedged routes run several at once)."""

    __slots__ = ("span", "attempts", "context")

    def __init__(self, span: Any, context: Any) -> None:
        self.span = span
        self.attempts: dict[int, Any] = {}
        self.context = context


def enabled() -> bool:
    return _tracer is not None


def enable(tracer_provider: Any = None) -> None:
    """Trace requests with `tracer_provider` (default: the global OpenTelemetry provider)."""
    global _tracer, _api
    from opentelemetry import trace

    from . import __version__

    provider = tracer_provider if tracer_provider is not None else trace.get_tracer_provider()
    _api = trace
    _tracer = provider.get_tracer("detour_proxy", __version__)


def disable() -> None:
    global _tracer
    _tracer = None


def setup_from_env(env: Mapping[str, str] = os.environ) -> bool:
    """Enable OTLP/HTTP export when the environment names an endpoint; True when tracing is on."""
    endpoint = env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or env.get("OTEL_EXPORTER_OTLP_ENDPOINT")
    if not endpoint or env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    try:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ImportError as exc:
        log.warning("OTEL_EXPORTER_OTLP_ENDPOINT is set but tracing stays off: %s "
                    "(install detour[otel])", exc)
        return False
    import atexit

    provider = TracerProvider(resource=Resource.create(
        {"service.name": env.get("OTEL_SERVICE_NAME") or "detour-proxy"}))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    atexit.register(provider.shutdown)   # flush what is batched on exit
    enable(provider)
    log.info("tracing on: OTLP/HTTP export to %s", endpoint)
    return True


# -- hooks (called by handlers and the executor) ----------------------------------------------

def start_request(ctx: RequestContext) -> None:
    tracer = _tracer
    if tracer is None:
        return
    span = tracer.start_span(f"detour {ctx.kind}", kind=_api.SpanKind.SERVER, attributes={
        "detour.request_id": ctx.request_id, "detour.route": ctx.route.route.name,
        "detour.kind": ctx.kind, "detour.stream": ctx.stream})
    ctx.trace = RequestTrace(span, _api.set_span_in_context(span))


def end_request(ctx: RequestContext, status: int, outcome: str) -> None:
    t = ctx.trace
    if t is None:
        return
    for index in list(t.attempts):       # cancelled mid-attempt (client gone, hedge lost)
        _end_attempt(t, index, "cancelled", None, "")
    span = t.span
    span.set_attribute("http.response.status_code", status)
    span.set_attribute("detour.outcome", outcome)
    span.set_attribute("detour.attempts", ctx.attempts)
    if ctx.target is not None:
        span.set_attribute("detour.target", ctx.target.label)
    if outcome != "success":
        span.set_status(_api.Status(_api.StatusCode.ERROR, outcome))
    span.end()


def start_attempt(ctx: RequestContext, d: Try, tr: TargetRuntime) -> None:
    t = ctx.trace
    if t is None:
        return
    if d.index in t.attempts:
        _end_attempt(t, d.index, "abandoned", None, "")
    t.attempts[d.index] = _start_attempt(ctx, t, tr, d.reason, d.attempt, ctx.attempts + 1,
                                         time.time_ns() + int(d.delay * 1e9))  # after the backoff


def end_attempt(ctx: RequestContext, tr: TargetRuntime, outcome: Outcome | None, result: str) -> None:
    t = ctx.trace
    if t is None:
        return
    if tr.index not in t.attempts:
        if _tracer is None:
            return
        # Not seen starting (a hedge): open it now, back-dated by the attempt's duration.
        dur = outcome.duration if outcome is not None and outcome.duration is not None else 0.0
        t.attempts[tr.index] = _start_attempt(ctx, t, tr, "hedge", None, ctx.attempts,
                                              time.time_ns() - int(dur * 1e9))
    _end_attempt(t, tr.index, result, outcome.status if outcome is not None else None,
                 outcome.error_class if outcome is not None else "")


def _start_attempt(ctx: RequestContext, t: RequestTrace, tr: TargetRuntime, reason: str,
                   target_try: int | None, number: int, start_ns: int) -> Any:
    attrs = {"detour.request_id": ctx.request_id, "detour.route": ctx.route.route.name,
             "detour.target": tr.label, "detour.provider": tr.target.provider,
             "detour.model": tr.target.model, "detour.attempt": number, "detour.reason": reason}
    if target_try is not None:
        attrs["detour.target_try"] = target_try
    return _tracer.start_span("detour attempt", context=t.context, kind=_api.SpanKind.CLIENT,
                              start_time=start_ns, attributes=attrs)


def _end_attempt(t: RequestTrace, index: int, result: str, status: int | None, error_class: str) -> None:
    span = t.attempts.pop(index)
    span.set_attribute("detour.result", result)
    if status is not None:
        span.set_attribute("http.response.status_code", status)
    if error_class:
        span.set_attribute("error.type", error_class)
    if result != "success":
        span.set_status(_api.Status(_api.StatusCode.ERROR, result))
    span.end(end_time=max(time.time_ns(), getattr(span, "start_time", None) or 0))
