"""The gateway keeps answering through outages, 429s and slow providers (official openai SDK as client)."""

from __future__ import annotations

import time

import httpx
import openai
import pytest

from detour_proxy.policy import FakeClock
from support import ProxyServer, chat_body, two_provider_config, wait_until
from test_metrics import scrape, val


def client(proxy: ProxyServer, **kw) -> openai.OpenAI:
    return openai.OpenAI(base_url=proxy.v1, api_key="unused", max_retries=0, **kw)


def test_primary_down_every_request_succeeds_via_secondary(primary, secondary):
    primary.faults(status=503)
    with ProxyServer(two_provider_config(primary, secondary)) as proxy:
        c = client(proxy)
        for _ in range(20):
            raw = c.chat.completions.with_raw_response.create(model="gpt-4o-mini",
                                                              messages=[{"role": "user", "content": "hi"}])
            completion = raw.parse()
            assert completion.choices[0].message.content
            assert raw.headers["x-detour-target"] == "secondary/llama-3-8b"
    # The breaker opened after 3 consecutive failures: the primary saw 3 requests, not 40.
    assert primary.requests() == 3
    assert secondary.requests() == 20


def test_healthy_primary_serves_and_headers_name_it(primary, secondary):
    with ProxyServer(two_provider_config(primary, secondary)) as proxy:
        raw = client(proxy).chat.completions.with_raw_response.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
        assert raw.headers["x-detour-target"] == "primary/gpt-4o-mini"
        assert raw.headers["x-detour-attempts"] == "1"
        assert raw.headers["x-request-id"]
    last = primary.stats()["lastRequest"]
    assert last["body"]["model"] == "gpt-4o-mini"
    assert last["headers"]["x-request-id"] == raw.headers["x-request-id"]


def test_429_with_retry_after_is_waited_then_retried_on_same_target(primary, secondary):
    primary.faults(status=429, retryAfter="1", count=1)
    with ProxyServer(two_provider_config(primary, secondary)) as proxy:
        t0 = time.monotonic()
        raw = client(proxy).chat.completions.with_raw_response.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
        elapsed = time.monotonic() - t0
        _, s = scrape(proxy)
    assert val(s, "detour_retries_total", route="chat", provider="primary", reason="http_429") == 1
    assert raw.headers["x-detour-target"] == "primary/gpt-4o-mini"
    assert raw.headers["x-detour-attempts"] == "2"
    assert elapsed >= 1.0, "Retry-After: 1 must be honoured before the retry"
    assert secondary.requests() == 0


def test_retry_after_longer_than_max_falls_back_at_once(primary, secondary):
    primary.faults(status=429, retryAfter="60")
    cfg = two_provider_config(primary, secondary)
    with ProxyServer(cfg) as proxy:
        t0 = time.monotonic()
        raw = client(proxy).chat.completions.with_raw_response.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
        elapsed = time.monotonic() - t0
    assert raw.headers["x-detour-target"] == "secondary/llama-3-8b"
    assert elapsed < 1.0
    assert primary.requests() == 1


def test_breaker_opens_skips_probes_and_closes(primary, secondary):
    clock = FakeClock(1000.0)
    primary.faults(status=503)
    with ProxyServer(two_provider_config(primary, secondary), clock=clock) as proxy:
        c = client(proxy)
        ask = lambda: c.chat.completions.with_raw_response.create(  # noqa: E731
            model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}]).headers["x-detour-target"]
        # 2 requests x 2 tries would be 4 primary hits; the breaker opens at 3 consecutive failures.
        for _ in range(5):
            assert ask() == "secondary/llama-3-8b"
        opened_at = primary.requests()
        assert opened_at == 3
        metrics = httpx.get(proxy.url + "/metrics").text
        assert 'detour_breaker_state{model="gpt-4o-mini",provider="primary"} 2.0' in metrics
        # Open: skipped at no cost.
        for _ in range(5):
            assert ask() == "secondary/llama-3-8b"
        assert primary.requests() == opened_at
        # Provider recovers; after the cooldown one real request probes it and closes the breaker.
        primary.clear()
        clock.advance(31)
        assert ask() == "primary/gpt-4o-mini"
        assert primary.requests() == opened_at + 1
        for _ in range(3):
            assert ask() == "primary/gpt-4o-mini"
        metrics = httpx.get(proxy.url + "/metrics").text
        assert 'detour_breaker_state{model="gpt-4o-mini",provider="primary"} 0.0' in metrics


def test_failed_probe_reopens_breaker(primary, secondary):
    clock = FakeClock(1000.0)
    primary.faults(status=503)
    with ProxyServer(two_provider_config(primary, secondary), clock=clock) as proxy:
        c = client(proxy)
        for _ in range(3):
            c.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
        hits = primary.requests()
        clock.advance(31)
        c.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
        assert primary.requests() == hits + 1          # exactly one probe
        clock.advance(31)                               # cooldown doubled to 60 s: still open
        c.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
        assert primary.requests() == hits + 1


def test_deadline_bounds_all_attempts(primary, secondary):
    primary.faults(latency=5)
    secondary.faults(latency=5)
    cfg = two_provider_config(primary, secondary, timeout="1s")
    with ProxyServer(cfg) as proxy:
        t0 = time.monotonic()
        with pytest.raises(openai.APIStatusError) as exc:
            client(proxy).chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
        elapsed = time.monotonic() - t0
    assert exc.value.status_code == 504
    assert elapsed < 1.5
    body = exc.value.response.json()
    assert body["error"]["code"] == "all_targets_failed"


def test_all_targets_failing_gives_openai_error_without_keys(primary, secondary):
    primary.faults(status=503)
    secondary.faults(status=502)
    with ProxyServer(two_provider_config(primary, secondary)) as proxy:
        with pytest.raises(openai.APIStatusError) as exc:
            client(proxy).chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
    err = exc.value.response.json()["error"]
    assert exc.value.status_code == 502
    assert err["type"] == "upstream_error" and err["code"] == "all_targets_failed"
    assert "primary/gpt-4o-mini: http_503 x2" in err["message"]
    assert "secondary/llama-3-8b: http_502 x2" in err["message"]
    assert "SECRET" not in exc.value.response.text


def test_bad_request_from_provider_is_returned_not_retried(primary, secondary):
    primary.faults(status=400)
    with ProxyServer(two_provider_config(primary, secondary)) as proxy:
        with pytest.raises(openai.BadRequestError):
            client(proxy).chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
    assert primary.requests() == 1
    assert secondary.requests() == 0


def test_connection_reset_fails_over(primary, secondary):
    primary.faults(reset=True)
    with ProxyServer(two_provider_config(primary, secondary)) as proxy:
        raw = client(proxy).chat.completions.with_raw_response.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
        _, s = scrape(proxy)
    assert raw.headers["x-detour-target"] == "secondary/llama-3-8b"
    assert raw.headers["x-detour-attempts"] == "3"
    assert val(s, "detour_retries_total", route="chat", provider="primary", reason="connect") == 1


def test_provider_timeout_is_retried_then_falls_back(primary, secondary):
    primary.faults(latency=2)
    cfg = two_provider_config(primary, secondary)
    cfg["providers"][0]["timeouts"] = {"total": "150ms"}
    with ProxyServer(cfg) as proxy:
        raw = client(proxy).chat.completions.with_raw_response.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
        _, s = scrape(proxy)
    assert raw.headers["x-detour-target"] == "secondary/llama-3-8b"
    assert raw.headers["x-detour-attempts"] == "3"
    assert val(s, "detour_retries_total", route="chat", provider="primary", reason="timeout") == 1
    assert val(s, "detour_upstream_attempts_total", route="chat", provider="primary", model="gpt-4o-mini",
               result="timeout") == 2


def test_malformed_body_from_provider_fails_over(primary, secondary):
    primary.faults(malformed="body")
    with ProxyServer(two_provider_config(primary, secondary)) as proxy:
        raw = client(proxy).chat.completions.with_raw_response.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
    assert raw.headers["x-detour-target"] == "secondary/llama-3-8b"
    assert raw.parse().choices[0].message.content


def test_client_disconnect_cancels_upstream_request(primary, secondary):
    primary.faults(latency=5)
    with ProxyServer(two_provider_config(primary, secondary)) as proxy:
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(proxy.v1 + "/chat/completions", json=chat_body(), timeout=0.5)
        # The proxy drops its upstream connection: the simulator sees the request abandoned.
        stats = primary.wait("clientClosed", 1, timeout=2)
        assert stats["inFlight"] == 0
        # Counted and logged as a routed request the client cancelled.
        def counted() -> dict | None:
            s = scrape(proxy)[1]
            return s if val(s, "detour_requests_total", route="chat", outcome="cancelled") == 1 else None

        s = wait_until(counted, 3, "the cancelled request to be counted")
        assert val(s, "detour_in_flight_requests", route="chat") == 0
        assert val(s, "detour_requests_total", route="chat", outcome="success") == 0
    assert secondary.requests() == 0
