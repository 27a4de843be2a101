"""What one client request carries through the engine, and what an attempt hands back."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..adapters import UpstreamError, UpstreamRequest
from ..policy import Outcome
from .codec import OPENAI, InboundCodec

if TYPE_CHECKING:
    from .gateway import RouteRuntime, TargetRuntime

__all__ = ["RequestContext", "Reply", "Result"]


@dataclass(slots=True)
class RequestContext:
    """One client request: the canonical body (see `codec`), and what happened to it so far."""

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
    unavailable: bool = False        # ...because of the target (no credentials yet), not the request: 503
    trace: Any = None                # tracing.RequestTrace when OpenTelemetry tracing is on
    status: int = 0                  # the status sent once the response started (0: nothing sent yet)
    codec: InboundCodec = OPENAI     # the client's API format
    affinity_key: str | None = None  # prompt-cache affinity key (routes with `affinity`; policy.affinity)
    #: upstream requests built for this request, by target index (None: the target cannot
    #: express it). Built when the planner asks whether a target is eligible, so a target
    #: that cannot take the request never has a rate-limit slot or a probe spent on it.
    requests: dict[int, UpstreamRequest | None] = field(default_factory=dict)


def skipped_headers(ctx: RequestContext) -> list[tuple[bytes, bytes]]:
    """`x-detour-skipped`: the targets that could not express this request and were not tried
    (why: `ctx.unsupported`, quoted in an error summary). Nothing a client asked for is dropped
    silently: it went elsewhere, and the header says so even when the request succeeded."""
    for req in ctx.requests.values():
        if req is None:
            break
    else:
        return []   # the common case: every target asked could express the request
    skipped = list(dict.fromkeys(ctx.route.targets[i].label for i, req in ctx.requests.items() if req is None))
    return [(b"x-detour-skipped", ", ".join(skipped).encode())] if skipped else []


@dataclass(slots=True)
class Reply:
    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes


@dataclass(slots=True)
class Result:
    """How one attempt ended: exactly one `Outcome`, the client-safe error when it failed,
    and for a unary success the canonical answer."""

    outcome: Outcome
    err: UpstreamError | None = None
    body: bytes | None = None
    #: the attempt ended because of the client (it read too slowly), not the target: the
    #: plan abandons it instead of recording it against the target
    client_fault: bool = False
