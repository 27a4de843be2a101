"""Shared vocabulary of the adapters: requests, errors, stream events and the SSE splitter.

Adapters are pure translators (no I/O, no clock-driven decisions): the executor owns the
network, the adapters own the dialects. Everything the executor needs to *decide* (status,
Retry-After, whether a chunk carries content) is surfaced here in provider-neutral form so
that the executor never has to look at a provider's bytes itself.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, Mapping, NamedTuple, Protocol

import orjson

__all__ = [
    "UpstreamRequest", "UpstreamError", "RateLimitInfo", "StreamEvent", "StreamDecoder",
    "Adapter", "UnsupportedRequest", "TargetUnavailable", "ContinuationUnsupported", "SSEEvent", "SSEParser",
    "SSEEventTooLarge", "is_retryable_status", "Headers",
]

Headers = Mapping[str, str]


def is_retryable_status(status: int) -> bool:
    """Statuses worth another try somewhere: timeouts, conflicts, rate limits, server errors
    (529 is Anthropic's "overloaded"). The executor's route policy has the final word; this is
    only the provider-neutral hint carried on errors that have no HTTP status of their own."""
    return status in (408, 409, 425, 429) or status >= 500


_SECRET_HEADERS = frozenset({"authorization", "api-key", "x-api-key", "x-goog-api-key", "proxy-authorization"})


@dataclass(frozen=True, slots=True, repr=False)
class UpstreamRequest:
    """One request ready to send. `body` is final bytes so the executor never re-serializes.

    `prefix_trim` is whitespace the adapter removed from the end of a trailing assistant turn
    (Anthropic rejects a final assistant turn ending in whitespace). The client has already
    seen it, so the decoder created with `stream_decoder(prefix_trim=...)` drops the same
    whitespace if the model repeats it at the start of its continuation.
    """

    method: str
    url: str
    headers: dict[str, str]
    body: bytes
    prefix_trim: str = ""
    #: the client's own API format forwarded as is (an inbound codec's native request): the
    #: answer and stream are the client's format already, not canonical chat
    native: bool = False

    def __repr__(self) -> str:  # requests end up in logs and tracebacks: never show a key
        headers = {k: ("***" if k.lower() in _SECRET_HEADERS else v) for k, v in self.headers.items()}
        return (f"UpstreamRequest(method={self.method!r}, url={self.url!r}, headers={headers!r}, "
                f"body=<{len(self.body)} bytes>, prefix_trim={self.prefix_trim!r})")


@dataclass(frozen=True, slots=True)
class RateLimitInfo:
    """What the provider told us about its limits (None = not reported). Resets in seconds from now."""

    remaining_requests: int | None = None
    remaining_tokens: int | None = None
    reset_requests_s: float | None = None
    reset_tokens_s: float | None = None


@dataclass(frozen=True, slots=True)
class UpstreamError:
    """A provider failure in one normalised shape, whatever dialect it came in.

    `status` is the upstream HTTP status (for failures inside a stream: the status the
    provider's error type maps to, e.g. 529 for `overloaded_error`, or 502 for a broken or
    truncated stream). `type`/`code` keep the provider's own words so nothing is lost;
    `message` never contains an API key. `retry_after` is seconds (None = not given).
    """

    status: int
    type: str
    code: str | None
    message: str
    retry_after: float | None = None
    retryable: bool = field(default=None)  # type: ignore[assignment]  # filled from status

    def __post_init__(self) -> None:
        if self.retryable is None:
            object.__setattr__(self, "retryable", is_retryable_status(self.status))

    def to_openai_body(self) -> bytes:
        """The error as an OpenAI error document, ready to return to the client."""
        return orjson.dumps({"error": {"message": self.message, "type": self.type, "code": self.code}})


@dataclass(slots=True)
class StreamEvent:
    """One decoded stream step.

    kind `chunk`: `payload` is an OpenAI `chat.completion.chunk` JSON document (the provider's
    own bytes for pass-through adapters); `text` is the delta text it adds (for continuation);
    `content_bearing` says whether it counts for the first-token gate.
    kind `done`: the stream completed normally (payload empty; the executor writes `[DONE]`).
    kind `error`: `error` is set and `payload` is `error.to_openai_body()`.
    """

    kind: Literal["chunk", "done", "error"]
    payload: bytes = b""
    text: str = ""
    content_bearing: bool = False
    error: UpstreamError | None = None

    @classmethod
    def failed(cls, error: UpstreamError) -> StreamEvent:
        return cls("error", error.to_openai_body(), error=error)


DONE = StreamEvent("done")


class StreamDecoder(Protocol):
    """Incremental decoder: bytes in (any split), events out. After `done`/`error`, nothing more."""

    def feed(self, data: bytes) -> list[StreamEvent]: ...

    def close(self) -> list[StreamEvent]:
        """End of the byte stream: flushes, and reports a truncated stream as an error event."""
        ...


class UnsupportedRequest(ValueError):
    """The request cannot be expressed in this provider's dialect (e.g. `n>1` on Anthropic).

    The executor should treat it like a 400 from this target: skip it, not count it against
    its health."""


class TargetUnavailable(UnsupportedRequest):
    """The target cannot take any request right now for a reason of its own (a vertex provider
    without a Google access token yet): skipped like an UnsupportedRequest, but when no target
    is left the client gets a 503, not a 400."""


class ContinuationUnsupported(UnsupportedRequest):
    """The provider has no way to continue a partial answer (continuation mode `none`)."""


class Adapter(Protocol):
    """What the executor calls; see docs/architecture.md, "Adapters API"."""

    can_continue: bool
    transient_statuses: frozenset[int]

    def supports(self, kind: str) -> bool: ...
    def build_chat(self, body: dict[str, Any], model: str, stream: bool, api_key: str | None,
                   raw: bytes | None = None) -> UpstreamRequest: ...
    def build_embeddings(self, body: dict[str, Any], model: str, api_key: str | None,
                         raw: bytes | None = None) -> UpstreamRequest: ...
    def build_continuation(self, body: dict[str, Any], delivered_text: str, model: str,
                           api_key: str | None) -> UpstreamRequest: ...
    def parse_response(self, status: int, headers: Headers, raw: bytes) -> bytes: ...
    def parse_error(self, status: int, headers: Headers, raw: bytes, *, api_key: str | None = None,
                    now: float | None = None) -> UpstreamError: ...
    def rate_limits(self, headers: Headers, *, now: float | None = None) -> RateLimitInfo | None: ...
    def stream_decoder(self, include_usage: bool = False, prefix_trim: str = "",
                       model: str = "") -> StreamDecoder: ...


class SSEEvent(NamedTuple):
    event: str | None
    data: bytes


MAX_SSE_EVENT_BYTES = 1 << 20   # far above any real chunk (a few KiB at most, tool-call arguments included)


class SSEEventTooLarge(Exception):
    """A stream event (or a line without its end) grew past the parser's bound.

    Raised from `SSEParser.feed`, through the decoders, to the executor, which treats it as a
    malformed stream from that target (failover-eligible before the first token). Without the
    bound, a provider that never sends a newline would grow one buffer per stream without limit.
    """


class SSEParser:
    """Server-sent-events splitter per the WHATWG rules that matter for LLM streams.

    Network reads split events anywhere: inside a line, between `\\r` and `\\n`, or between
    events. Lines end in `\\n`, `\\r\\n` or `\\r`; a `\\r` at the end of a read is held back
    until the next read shows whether a `\\n` follows (otherwise `\\r|\\n` would read as two
    line ends and dispatch an event early). Multiple `data:` lines join with `\\n`; comments
    (`:`) are ignored; an event is dispatched at a blank line. `close()` dispatches a final
    event that lacks its blank line (lenient: some servers end with `data: [DONE]\\n`).

    Memory is bounded: once the event being assembled (its data lines plus the unfinished
    line) exceeds `max_event_bytes`, `feed` raises `SSEEventTooLarge` and the parser is spent.
    The check runs once per read, so the most held is the bound plus one network read.
    """

    __slots__ = ("_buf", "_cr", "_event", "_data", "_size", "_max")

    def __init__(self, max_event_bytes: int = MAX_SSE_EVENT_BYTES) -> None:
        self._buf = b""
        self._cr = False          # the previous read ended in "\r"
        self._event: str | None = None
        self._data: list[bytes] = []
        self._size = 0            # bytes in self._data: the event assembled so far
        self._max = max_event_bytes

    def feed(self, data: bytes) -> list[SSEEvent]:
        if self._cr:
            self._cr = False
            if data[:1] == b"\n":
                data = data[1:]
        buf = self._buf + data if self._buf else data
        if b"\r" in buf:
            if buf.endswith(b"\r"):
                self._cr = True
            buf = buf.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        if b"\n" not in buf:
            self._buf = buf
            if len(buf) + self._size > self._max:
                self._too_large()
            return []
        lines = buf.split(b"\n")
        self._buf = lines.pop()
        out: list[SSEEvent] = []
        for line in lines:
            # The two lines LLM streams are made of are handled inline (a call per line is a
            # measurable share of a stream's cost); anything else goes through `_line`.
            if line[:6] == b"data: ":
                value = line[6:]
                self._data.append(value)
                self._size += len(value)
            elif not line and self._data:
                parts = self._data
                out.append(SSEEvent(self._event, parts[0] if len(parts) == 1 else b"\n".join(parts)))
                self._data = []
                self._size = 0
                self._event = None
            else:
                self._line(line, out)
        if len(self._buf) + self._size > self._max:
            self._too_large()
        return out

    def close(self) -> list[SSEEvent]:
        out: list[SSEEvent] = []
        if self._buf:
            self._line(self._buf, out)
            self._buf = b""
        self._line(b"", out)
        return out

    def _too_large(self) -> None:
        self._buf, self._data = b"", []   # let go of the bytes before the stream is abandoned
        raise SSEEventTooLarge(f"a stream event exceeded {self._max} bytes")

    def _line(self, line: bytes, out: list[SSEEvent]) -> None:
        if not line:
            if self._data:
                out.append(SSEEvent(self._event, b"\n".join(self._data)))
                self._data = []
                self._size = 0
            self._event = None
            return
        if line[0] == 58:  # ":" comment / keep-alive
            return
        name, sep, value = line.partition(b":")
        if sep and value[:1] == b" ":
            value = value[1:]
        if name == b"data":
            self._data.append(value)
            self._size += len(value)
        elif name == b"event":
            self._event = value.decode("utf-8", "replace")
        # id / retry / unknown fields do not matter to a one-shot LLM stream


class SSEStreamDecoder:
    """What every SSE-based `StreamDecoder` shares: bytes go through an `SSEParser` into the
    subclass's `_events`, nothing is emitted once `_over` (after `done`/`error`), and a byte
    stream that ends without its end marker gets `_unterminated()` (a truncation error, or
    `done` when the dialect allows it). Subclasses set `_sse` and `_over` (slots of their own)."""

    __slots__ = ()
    _sse: SSEParser
    _over: bool

    def _events(self, sse_events: list[SSEEvent]) -> list[StreamEvent]:
        raise NotImplementedError

    def _unterminated(self) -> StreamEvent:
        raise NotImplementedError

    def feed(self, data: bytes) -> list[StreamEvent]:
        if self._over:
            return []
        return self._events(self._sse.feed(data))

    def close(self) -> list[StreamEvent]:
        if self._over:
            return []
        out = self._events(self._sse.close())
        if not self._over:
            self._over = True  # type: ignore[misc]  # a slot of every subclass (see the docstring)
            out.append(self._unterminated())
        return out
