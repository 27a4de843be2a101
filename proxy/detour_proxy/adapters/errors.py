"""Error normalisation and rate-limit header parsing for every dialect.

Providers disagree on error shapes (`{"error": {...}}` from OpenAI/Azure, `{"type": "error",
"error": {...}}` from Anthropic, plain text or HTML from proxies in between) and on how they
announce limits (seconds, HTTP dates, milliseconds, Go-style durations, RFC 3339 instants).
The executor and the policy engine only want numbers: status, seconds to wait, what is left.

Wall-clock reads (`time.time()`) are only used to turn absolute instants into "seconds from
now"; every function takes `now=` so tests are deterministic.
"""

from __future__ import annotations

import re
import time
from datetime import datetime
from email.utils import parsedate_to_datetime
from typing import Any, Iterable

import orjson

from .base import Headers, RateLimitInfo, UpstreamError

__all__ = [
    "NormalizedErrors", "OPENAI_TRANSIENT", "ANTHROPIC_TRANSIENT",
    "normalize_error", "stream_error", "parse_retry_after", "parse_rate_limits",
    "parse_go_duration", "parse_instant", "redact", "status_for_error_type", "lower_headers",
]

MAX_MESSAGE = 1000

_STATUS_TYPE = {
    400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
    404: "not_found_error", 408: "timeout_error", 409: "conflict_error", 413: "request_too_large",
    422: "invalid_request_error", 429: "rate_limit_error", 500: "api_error", 502: "bad_gateway",
    503: "service_unavailable", 504: "gateway_timeout", 529: "overloaded_error",
}

# Error types seen inside streams (no HTTP status of their own) -> the status they stand for.
_TYPE_STATUS = {
    "invalid_request_error": 400, "authentication_error": 401, "permission_error": 403,
    "not_found_error": 404, "request_too_large": 413, "rate_limit_error": 429,
    "rate_limit_exceeded": 429, "tokens": 429, "requests": 429, "insufficient_quota": 429,
    "api_error": 500, "server_error": 500, "internal_error": 500, "timeout_error": 504,
    "service_unavailable": 503, "overloaded_error": 529, "overloaded": 529,
}


def status_for_error_type(error_type: str | None, default: int = 502) -> int:
    return _TYPE_STATUS.get(error_type or "", default)


def lower_headers(headers: Headers | None) -> dict[str, str]:
    """Case-insensitive view of plain dicts and aiohttp's CIMultiDict alike."""
    if not headers:
        return {}
    return {k.lower(): v for k, v in headers.items()}


# --- secrets -------------------------------------------------------------------------------

_SECRET_PATTERNS = re.compile(
    r"(?:\b(?:sk|pk|rk)-[A-Za-z0-9_\-\*\.]{6,})"          # OpenAI/Anthropic style keys (sk-ant-..., sk-proj-...)
    r"|(?:\bBearer\s+[A-Za-z0-9_\-\.=\*/\+]+)"            # bearer tokens echoed back by proxies
    r"|(?:\bya29\.[A-Za-z0-9_\-\.]{8,})"                    # Google OAuth access tokens (vertex)
    r"|(?:\bAIza[0-9A-Za-z_\-]{20,})"                       # Google API keys (gemini)
    r"|(?:\b(?:api[-_]?key|key)\s*[=:]\s*[\"']?[A-Za-z0-9_\-\.\*]{8,})",  # api-key=..., key: ...
    re.IGNORECASE,
)


def redact(text: str, secrets: Iterable[str | None] = ()) -> str:
    """Remove API keys from text that may reach clients or logs.

    OpenAI echoes a (partly masked) key on 401s and intermediary proxies sometimes echo whole
    request headers, so known secrets are removed verbatim and key-shaped tokens by pattern.
    """
    for s in secrets:
        if s and len(s) >= 4 and s in text:
            text = text.replace(s, "[redacted]")
    return _SECRET_PATTERNS.sub("[redacted]", text)


# --- time values ---------------------------------------------------------------------------

_GO_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|us|µs|ns|h|m|s)")
_GO_UNIT = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6, "ns": 1e-9}
_GO_FULL = re.compile(r"(?:\d+(?:\.\d+)?(?:ms|us|µs|ns|h|m|s))+")


def parse_go_duration(value: str | None) -> float | None:
    """OpenAI's `x-ratelimit-reset-*` values: `1s`, `6m0s`, `20ms`, `1h2m3.5s`, or bare seconds."""
    if value is None:
        return None
    v = value.strip()
    if not v:
        return None
    try:
        return max(0.0, float(v))
    except ValueError:
        pass
    if not _GO_FULL.fullmatch(v):
        return None
    return sum(float(n) * _GO_UNIT[u] for n, u in _GO_PART.findall(v))


def parse_instant(value: str | None, now: float | None = None) -> float | None:
    """Seconds from `now` until an RFC 3339 instant (Anthropic's `*-reset`), at least 0."""
    if not value:
        return None
    try:
        ts = datetime.fromisoformat(value.strip().replace("z", "Z")).timestamp()
    except ValueError:
        return None
    return max(0.0, ts - (time.time() if now is None else now))


def parse_retry_after(headers: Headers | None, now: float | None = None) -> float | None:
    """`retry-after-ms` (OpenAI, more precise) wins over `retry-after` (seconds or HTTP date)."""
    h = lower_headers(headers)
    ms = h.get("retry-after-ms")
    if ms:
        try:
            v = float(ms) / 1000.0
            if v >= 0 and v == v and v != float("inf"):
                return v
        except ValueError:
            pass
    ra = h.get("retry-after")
    if not ra:
        return None
    ra = ra.strip()
    try:
        v = float(ra)
        return v if v >= 0 and v == v and v != float("inf") else None
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(ra)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def _int(v: str | None) -> int | None:
    if v is None:
        return None
    try:
        return int(v.strip())
    except ValueError:
        try:
            return int(float(v))
        except ValueError:
            return None


def parse_rate_limits(headers: Headers | None, now: float | None = None) -> RateLimitInfo | None:
    """OpenAI/Azure `x-ratelimit-*` and Anthropic `anthropic-ratelimit-*` headers; None if absent."""
    h = lower_headers(headers)
    if "x-ratelimit-remaining-requests" in h or "x-ratelimit-remaining-tokens" in h \
            or "x-ratelimit-reset-requests" in h or "x-ratelimit-reset-tokens" in h:
        return RateLimitInfo(
            remaining_requests=_int(h.get("x-ratelimit-remaining-requests")),
            remaining_tokens=_int(h.get("x-ratelimit-remaining-tokens")),
            reset_requests_s=parse_go_duration(h.get("x-ratelimit-reset-requests")),
            reset_tokens_s=parse_go_duration(h.get("x-ratelimit-reset-tokens")),
        )
    p = "anthropic-ratelimit-"
    if any(k.startswith(p) for k in h):
        remaining, reset = _anthropic_tokens(h, now)
        return RateLimitInfo(
            remaining_requests=_int(h.get(p + "requests-remaining")),
            remaining_tokens=remaining,
            reset_requests_s=parse_instant(h.get(p + "requests-reset"), now),
            reset_tokens_s=reset,
        )
    return None


_ANTHROPIC_TOKEN_BUCKETS = ("tokens", "input-tokens", "output-tokens")


def _anthropic_tokens(h: dict[str, str], now: float | None) -> tuple[int | None, float | None]:
    """Anthropic reports up to three token budgets: `tokens-*` (the most restrictive limit in
    effect), `input-tokens-*` and `output-tokens-*`; a call needs all of them, so the tightest
    one is what is left. When one is exhausted, the reset is the latest reset among the
    exhausted ones (until then a call would still hit one of them)."""
    buckets = []
    for name in _ANTHROPIC_TOKEN_BUCKETS:
        left = _int(h.get(f"anthropic-ratelimit-{name}-remaining"))
        if left is not None:
            buckets.append((left, parse_instant(h.get(f"anthropic-ratelimit-{name}-reset"), now)))
    if not buckets:
        return None, None
    remaining = min(left for left, _ in buckets)
    if remaining <= 0:
        resets = [r for left, r in buckets if left <= 0 and r is not None]
        return remaining, max(resets) if resets else None
    return remaining, next(r for left, r in buckets if left == remaining)


# --- bodies --------------------------------------------------------------------------------

def _clip(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= MAX_MESSAGE else text[:MAX_MESSAGE] + "..."


def _describe(error: Any) -> tuple[str | None, str | None, str | None]:
    """(type, code, message) from the many shapes of an error object."""
    if isinstance(error, dict):
        etype = error.get("type")
        code = error.get("code")
        msg = error.get("message")
        if msg is None and "detail" in error:
            msg = error["detail"]
        return (
            str(etype) if etype is not None else None,
            str(code) if code is not None else None,
            msg if isinstance(msg, str) else (orjson.dumps(msg).decode() if msg is not None else None),
        )
    if isinstance(error, str):
        return None, None, error
    return None, None, None


def normalize_error(status: int, headers: Headers | None, raw: bytes, *, provider: str,
                    api_key: str | None = None, now: float | None = None) -> UpstreamError:
    """Any provider error response -> UpstreamError with the provider's type and message kept.

    `type` is the provider's error type when it gives one (`overloaded_error`,
    `rate_limit_error`, ...) or else one derived from the status; `code` is the provider's
    code (Azure puts everything there) or its type. The message reads
    `<provider> <status>: <provider type>: <provider message>` so a client can tell Detour's
    own errors from a provider's.
    """
    etype = code = msg = None
    try:
        doc = orjson.loads(raw) if raw else None
    except orjson.JSONDecodeError:
        doc = None
    if isinstance(doc, dict):
        if "error" in doc:
            etype, code, msg = _describe(doc["error"])
        else:
            etype, code, msg = _describe(doc)
    elif raw:
        msg = raw[:4096].decode("utf-8", "replace")
    ptype = etype or code
    norm_type = etype or _STATUS_TYPE.get(status) or ("api_error" if status >= 500 else "invalid_request_error")
    parts = [f"{provider} {status}"]
    if ptype:
        parts.append(ptype)
    parts.append(_clip(msg) if msg else "(no error message)")
    message = redact(": ".join(parts), (api_key,))
    return UpstreamError(
        status=status,
        type=norm_type,
        code=redact(code, (api_key,)) if code else etype,
        message=message,
        retry_after=parse_retry_after(headers, now),
    )


def stream_error(error: Any, *, provider: str, default_type: str = "stream_error",
                 default_status: int = 502) -> UpstreamError:
    """An error reported inside a stream (after a 200): status comes from the error type."""
    etype, code, msg = _describe(error)
    status = default_status
    if isinstance(error, dict):
        st = error.get("status") or error.get("status_code")
        if isinstance(st, int) and 400 <= st <= 599:
            status = st
        elif code and code.isdigit() and 400 <= int(code) <= 599:
            status = int(code)
        else:
            status = status_for_error_type(etype or code, default_status)
    ptype = etype or code or default_type
    message = redact(f"{provider} stream error: {ptype}: {_clip(msg) if msg else '(no error message)'}")
    return UpstreamError(status=status, type=etype or default_type, code=code or etype, message=message)


#: Statuses OpenAI and Azure OpenAI document as transient (rate limit, server error, overload).
OPENAI_TRANSIENT = frozenset({408, 429, 500, 502, 503, 504})
#: Anthropic adds 529 `overloaded_error` (https://docs.anthropic.com/en/api/errors).
ANTHROPIC_TRANSIENT = OPENAI_TRANSIENT | {529}


class NormalizedErrors:
    """`parse_error` and `rate_limits` shared by every adapter: one normalisation for all providers.

    `transient_statuses`: what this provider documents as transient; the engine marks such
    outcomes `retryable`, and the planner falls back on them even when a route's
    `fallbackOnStatusCodes` does not list them."""

    label: str
    transient_statuses: frozenset[int] = OPENAI_TRANSIENT

    def parse_error(self, status: int, headers: Headers, raw: bytes, *, api_key: str | None = None,
                    now: float | None = None) -> UpstreamError:
        return normalize_error(status, headers, raw, provider=self.label, api_key=api_key, now=now)

    def rate_limits(self, headers: Headers, *, now: float | None = None) -> RateLimitInfo | None:
        return parse_rate_limits(headers, now)
