"""Error normalisation and retry-after / rate-limit header tables."""

from __future__ import annotations

from email.utils import formatdate

import orjson
import pytest

from detour_proxy.adapters import UpstreamError, adapter_for
from detour_proxy.adapters.errors import parse_go_duration, parse_rate_limits, parse_retry_after, redact

NOW = 1_800_000_000.0


@pytest.mark.parametrize("ptype,status,raw,etype,code,parts", [
    ("openai", 429, b'{"error": {"message": "Rate limit reached", "type": "requests", "code": "rate_limit_exceeded"}}',
     "requests", "rate_limit_exceeded", ["openai 429", "requests", "Rate limit reached"]),
    ("openai", 400, b'{"error": {"message": "bad param", "type": "invalid_request_error", "code": null, "param": "x"}}',
     "invalid_request_error", "invalid_request_error", ["openai 400", "bad param"]),
    ("azure-openai", 429, b'{"error": {"code": "429", "message": "Requests exceeded token rate limit"}}',
     "rate_limit_error", "429", ["azure-openai 429", "exceeded token rate limit"]),
    ("anthropic", 529, b'{"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}',
     "overloaded_error", "overloaded_error", ["anthropic 529", "overloaded_error", "Overloaded"]),
    ("anthropic", 400, b'{"type":"error","error":{"type":"invalid_request_error","message":"messages: empty"},"request_id":"r"}',
     "invalid_request_error", "invalid_request_error", ["messages: empty"]),
    ("openai-compatible", 502, b"<html><body>502 Bad Gateway</body></html>",
     "bad_gateway", None, ["openai-compatible 502", "502 Bad Gateway"]),
    ("openai-compatible", 503, b"", "service_unavailable", None, ["(no error message)"]),
    ("openai-compatible", 500, b'{"detail": "engine dead"}', "api_error", None, ["engine dead"]),
    ("openai-compatible", 422, b'{"error": "plain string error"}', "invalid_request_error", None, ["plain string error"]),
    ("openai-compatible", 599, b"[1, 2]", "api_error", None, ["599"]),
])
def test_normalise_error(provider, ptype, status, raw, etype, code, parts):
    err = adapter_for(provider(ptype)).parse_error(status, {}, raw)
    assert (err.status, err.type, err.code) == (status, etype, code)
    for p in parts:
        assert p in err.message
    body = orjson.loads(err.to_openai_body())
    assert body == {"error": {"message": err.message, "type": etype, "code": code}}


@pytest.mark.parametrize("status,retryable", [(400, False), (401, False), (404, False), (408, True),
                                              (429, True), (500, True), (503, True), (529, True)])
def test_retryable(status, retryable):
    assert UpstreamError(status, "t", None, "m").retryable is retryable


def test_api_keys_never_in_error_text(provider):
    key = "sk-proj-abcdefghijklmnopqrstuvwxyz0123456789"
    raw = orjson.dumps({"error": {"message": f"Incorrect API key provided: {key}. Also Bearer {key}",
                                  "type": "invalid_request_error", "code": "invalid_api_key"}})
    err = adapter_for(provider("openai")).parse_error(401, {}, raw, api_key=key)
    assert key not in err.message and key[:12] not in err.message and "[redacted]" in err.message
    odd_key = "AZURE0123456789abcdef"  # not key-shaped: removed because it is known
    raw2 = b"upstream says: header api-key was " + odd_key.encode()
    err2 = adapter_for(provider("azure-openai")).parse_error(401, {}, raw2, api_key=odd_key)
    assert odd_key not in err2.message and odd_key.encode() not in err2.to_openai_body()


@pytest.mark.parametrize("text,secret", [
    ("key sk-ant-api03-AAAAbbbbCCCCdddd here", "sk-ant-api03-AAAAbbbbCCCCdddd"),
    ("Authorization: Bearer eyJhbGciOi.xyz", "eyJhbGciOi.xyz"),
    ("api_key=abcdef123456789", "abcdef123456789"),
])
def test_redact_patterns(text, secret):
    assert secret not in redact(text)


@pytest.mark.parametrize("headers,expected", [
    ({}, None),
    ({"Retry-After": "7"}, 7.0),
    ({"retry-after": "1.5"}, 1.5),
    ({"retry-after": formatdate(NOW + 30, usegmt=True)}, 30.0),
    ({"retry-after": formatdate(NOW - 30, usegmt=True)}, 0.0),
    ({"retry-after-ms": "250", "retry-after": "9"}, 0.25),
    ({"retry-after-ms": "junk", "retry-after": "9"}, 9.0),
    ({"retry-after": "soon"}, None),
    ({"retry-after": "-3"}, None),
])
def test_retry_after(headers, expected):
    assert parse_retry_after(headers, now=NOW) == expected


def test_retry_after_reaches_error(provider):
    err = adapter_for(provider("anthropic")).parse_error(429, {"Retry-After": "12"}, b"{}", now=NOW)
    assert err.retry_after == 12.0 and err.status == 429 and err.type == "rate_limit_error"


@pytest.mark.parametrize("value,expected", [
    ("1s", 1.0), ("6m0s", 360.0), ("20ms", 0.02), ("1h2m3.5s", 3723.5), ("0.5", 0.5), ("", None),
    ("later", None), (None, None), ("2m", 120.0),
])
def test_go_durations(value, expected):
    got = parse_go_duration(value)
    assert got == pytest.approx(expected) if expected is not None else got is None


def test_openai_rate_limit_headers():
    info = parse_rate_limits({"x-ratelimit-remaining-requests": "59", "X-RateLimit-Remaining-Tokens": "149984",
                              "x-ratelimit-reset-requests": "1s", "x-ratelimit-reset-tokens": "6m0s"})
    assert (info.remaining_requests, info.remaining_tokens, info.reset_requests_s, info.reset_tokens_s) == \
        (59, 149984, 1.0, 360.0)


def test_anthropic_rate_limit_headers(provider):
    from datetime import datetime, timezone
    at = datetime.fromtimestamp(NOW + 42, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    info = adapter_for(provider("anthropic")).rate_limits({
        "anthropic-ratelimit-requests-remaining": "3", "anthropic-ratelimit-requests-reset": at,
        "anthropic-ratelimit-tokens-remaining": "1000", "anthropic-ratelimit-tokens-reset": at}, now=NOW)
    assert (info.remaining_requests, info.remaining_tokens, info.reset_requests_s, info.reset_tokens_s) == \
        (3, 1000, 42.0, 42.0)
    only_input = parse_rate_limits({"anthropic-ratelimit-input-tokens-remaining": "77"}, now=NOW)
    assert only_input.remaining_tokens == 77 and only_input.remaining_requests is None


def test_anthropic_output_tokens_exhausted_is_what_is_left(provider):
    from datetime import datetime, timezone

    def at(s):
        return datetime.fromtimestamp(NOW + s, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")

    p = "anthropic-ratelimit-"
    info = adapter_for(provider("anthropic")).rate_limits({
        p + "requests-remaining": "40", p + "requests-reset": at(5),
        p + "input-tokens-remaining": "30000", p + "input-tokens-reset": at(3),
        p + "output-tokens-remaining": "0", p + "output-tokens-reset": at(17)}, now=NOW)
    assert (info.remaining_requests, info.remaining_tokens, info.reset_tokens_s) == (40, 0, 17.0)
    # several budgets exhausted: free when the last of them resets; none: the tightest one
    both = parse_rate_limits({p + "tokens-remaining": "0", p + "tokens-reset": at(8),
                              p + "output-tokens-remaining": "0", p + "output-tokens-reset": at(20)}, now=NOW)
    assert (both.remaining_tokens, both.reset_tokens_s) == (0, 20.0)
    tight = parse_rate_limits({p + "tokens-remaining": "900", p + "tokens-reset": at(8),
                               p + "output-tokens-remaining": "50", p + "output-tokens-reset": at(2)}, now=NOW)
    assert (tight.remaining_tokens, tight.reset_tokens_s) == (50, 2.0)


def test_no_rate_limit_headers(provider):
    assert adapter_for(provider("openai")).rate_limits({"content-type": "application/json"}) is None
