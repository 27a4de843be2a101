"""What happened to one attempt, as the policy engine sees it.

The executor translates whatever the transport gave it (a status, an exception, a stream that
broke) into an `Outcome`; the engine never sees aiohttp or adapter types. `error_class` is a
bounded label (safe as a metric label and in the shared-health annotation), derived from the
kind and status when the executor leaves it empty.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

__all__ = ["OutcomeKind", "Outcome", "REQUEST_ERROR_STATUSES", "CONTEXT_WINDOW", "error_class_for"]

#: Statuses caused by the request itself (bad JSON, too large, invalid parameters): they say
#: nothing about the target's health, so they never count against it.
REQUEST_ERROR_STATUSES = frozenset({400, 413, 422})
#: `error_class` of a prompt longer than the target's context window (an HTTP_ERROR with
#: status 400: the request's fault, never the target's). The planner moves such a request
#: to a target with a larger context (route `hiddenFailures: [context-window]`).
CONTEXT_WINDOW = "context_window"


class OutcomeKind(str, Enum):
    SUCCESS = "success"
    HTTP_ERROR = "http_error"        # the upstream answered with a non-2xx status
    CONNECT_ERROR = "connect_error"  # DNS, TCP or TLS failure: nothing was sent
    TIMEOUT = "timeout"              # connect/first-token/idle/total timeout
    STREAM_ERROR = "stream_error"    # a stream broke or carried an error event


def error_class_for(kind: OutcomeKind, status: int | None = None) -> str:
    """The bounded label for an outcome: `http_503`, `connect`, `timeout`, `stream`, or ''."""
    if kind is OutcomeKind.SUCCESS:
        return ""
    if kind is OutcomeKind.HTTP_ERROR:
        return f"http_{status}" if status is not None else "http"
    return {OutcomeKind.CONNECT_ERROR: "connect", OutcomeKind.TIMEOUT: "timeout",
            OutcomeKind.STREAM_ERROR: "stream"}[kind]


_set = object.__setattr__
_SUCCESS = OutcomeKind.SUCCESS


@dataclass(frozen=True, slots=True)
class Outcome:
    """The result of one attempt.

    `duration` is the attempt's wall time and `ttft` the time to the first token (streams) or
    to the response headers; latency tracking and the slow-call rule prefer `ttft` because a
    long answer is not a slow provider. `retry_after` is in seconds, already parsed.
    """

    kind: OutcomeKind
    status: int | None = None
    retry_after: float | None = None
    duration: float | None = None
    ttft: float | None = None
    error_class: str = ""
    message: str = ""
    #: the provider's adapter knows this status as transient for that provider (e.g. 529 on
    #: Anthropic): the planner falls back on it whatever the route's status lists say
    retryable: bool = False

    # Written out instead of the generated frozen __init__ + __post_init__ (one is built per
    # attempt: this is a third of their cost). Still frozen: assignments raise.
    def __init__(self, kind: OutcomeKind, status: int | None = None, retry_after: float | None = None,
                 duration: float | None = None, ttft: float | None = None, error_class: str = "",
                 message: str = "", retryable: bool = False) -> None:
        _set(self, "kind", kind)
        _set(self, "status", status)
        _set(self, "retry_after", retry_after)
        _set(self, "duration", duration)
        _set(self, "ttft", ttft)
        _set(self, "error_class", error_class if error_class or kind is _SUCCESS
             else error_class_for(kind, status))
        _set(self, "message", message)
        _set(self, "retryable", retryable)

    @property
    def ok(self) -> bool:
        return self.kind is OutcomeKind.SUCCESS

    @property
    def counts_against_target(self) -> bool:
        """False for success and for errors the request caused (400, 413, 422)."""
        if self.ok:
            return False
        return not (self.kind is OutcomeKind.HTTP_ERROR and self.status in REQUEST_ERROR_STATUSES)

    @property
    def latency(self) -> float | None:
        """The latency the engine judges a target by: ttft when known, else duration."""
        return self.ttft if self.ttft is not None else self.duration

    # Convenience constructors, so call sites read as what happened.
    @classmethod
    def success(cls, duration: float | None = None, ttft: float | None = None) -> Outcome:
        return cls(OutcomeKind.SUCCESS, status=200, duration=duration, ttft=ttft)

    @classmethod
    def http(cls, status: int, retry_after: float | None = None, duration: float | None = None,
             message: str = "") -> Outcome:
        """An upstream status; 2xx maps to SUCCESS."""
        if 200 <= status < 300:
            return cls(OutcomeKind.SUCCESS, status=status, duration=duration)
        return cls(OutcomeKind.HTTP_ERROR, status=status, retry_after=retry_after,
                   duration=duration, message=message)

    @classmethod
    def connect_error(cls, message: str = "", duration: float | None = None) -> Outcome:
        return cls(OutcomeKind.CONNECT_ERROR, duration=duration, message=message)

    @classmethod
    def timeout(cls, duration: float | None = None, ttft: float | None = None,
                message: str = "") -> Outcome:
        return cls(OutcomeKind.TIMEOUT, duration=duration, ttft=ttft, message=message)

    @classmethod
    def stream_error(cls, message: str = "", duration: float | None = None,
                     ttft: float | None = None) -> Outcome:
        return cls(OutcomeKind.STREAM_ERROR, duration=duration, ttft=ttft, message=message)
