"""Usage- and latency-aware routing through the real proxy and simulated providers: client-side
rate limits, provider rate-limit headers, slow-call brownouts, hedging, header/metadata routes."""

from __future__ import annotations

import time

import httpx
import orjson
import pytest

from detour_proxy.policy import BreakerState, FakeClock, TargetKey
from support import ProxyServer, chat_body, two_provider_config


def post(c: httpx.Client, headers: dict | None = None, **body) -> httpx.Response:
    r = c.post("/v1/chat/completions", json=chat_body(**body), headers=headers or {})
    assert r.status_code == 200, r.text
    return r


def metric(proxy: ProxyServer, name: str, **labels) -> float:
    value = proxy.state.metrics.registry.get_sample_value(name, labels)
    return value or 0.0


def state_of(proxy: ProxyServer, provider: str, model: str, sim) -> object:
    return proxy.state.registry.get(TargetKey(provider, model, sim.v1))


def test_60_rpm_target_gets_exactly_60_a_minute_and_the_rest_fall_back(primary, secondary):
    cfg = two_provider_config(primary, secondary)
    cfg["routes"][0]["targets"][0]["limits"] = {"requestsPerMinute": 60}
    clock = FakeClock(1000.0)
    with ProxyServer(cfg, clock=clock) as proxy, httpx.Client(base_url=proxy.url, timeout=10) as c:
        served = [post(c).headers["x-detour-target"] for _ in range(90)]
        assert served.count("primary/gpt-4o-mini") == 60
        assert served[:60] == ["primary/gpt-4o-mini"] * 60
        assert served[60:] == ["secondary/llama-3-8b"] * 30
        clock.advance(59.0)
        assert post(c).headers["x-detour-target"] == "secondary/llama-3-8b"
        clock.advance(1.0)                                    # the minute since the first is over
        assert post(c).headers["x-detour-target"] == "primary/gpt-4o-mini"
        assert metric(proxy, "detour_upstream_attempts_total", route="chat", provider="primary",
                      model="gpt-4o-mini", result="http_429") == 0
    assert primary.requests() == 61
    assert secondary.requests() == 31


def test_a_lone_target_at_its_limit_is_not_sent_more_and_the_client_learns_when_to_retry(primary, secondary):
    cfg = two_provider_config(primary, secondary)
    route = cfg["routes"][0]
    route["targets"] = [{"provider": "primary", "model": "gpt-4o-mini", "limits": {"requestsPerMinute": 3}}]
    clock = FakeClock(1000.0)
    with ProxyServer(cfg, clock=clock) as proxy, httpx.Client(base_url=proxy.url, timeout=10) as c:
        for _ in range(3):
            post(c)
        for stream in (False, True, False):
            r = c.post("/v1/chat/completions", json=chat_body(stream=stream))
            assert r.status_code == 429, r.text               # the route is at its rate limit: slow down
            assert r.headers["retry-after"] == "60"           # when the first of the 3 leaves the window
            err = r.json()["error"]
            assert set(err) >= {"message", "type", "code"} and err["code"] == "rate_limited"
        clock.advance(30.0)
        r = c.post("/v1/chat/completions", json=chat_body())
        assert (r.status_code, r.headers["retry-after"]) == (429, "30")
        assert primary.requests() == 3                        # the limit held: nothing forced through
        clock.advance(30.0)
        assert post(c).headers["x-detour-target"] == "primary/gpt-4o-mini"
        assert metric(proxy, "detour_forced_attempts_total", route="chat", provider="primary") == 0
    assert primary.requests() == 4
    assert secondary.requests() == 0


def test_token_limit_estimates_then_corrects_from_usage(primary, secondary):
    cfg = two_provider_config(primary, secondary)
    cfg["routes"][0]["targets"][0]["limits"] = {"tokensPerMinute": 1000}
    # ~2.4 kB body (estimated ~600 tokens) whose usage says 100 prompt + 8 completion tokens
    body = {"text": "x" * 400, "user": "u" * 2000}
    with ProxyServer(cfg, clock=FakeClock(0.0)) as proxy, httpx.Client(base_url=proxy.url, timeout=10) as c:
        served = [post(c, **body).headers["x-detour-target"] for _ in range(14)]
    # estimates alone would stop after 2 requests; corrected to 108 each, 10 fit (10 x 108 >= 1000)
    assert served == ["primary/gpt-4o-mini"] * 10 + ["secondary/llama-3-8b"] * 4


def test_sharedhealth_replicas_split_the_limit(primary, secondary):
    cfg = two_provider_config(primary, secondary)
    cfg["routes"][0]["targets"][0]["limits"] = {"requestsPerMinute": 30}
    cfg["sharedHealth"] = {"replicas": 3}
    with ProxyServer(cfg, clock=FakeClock(0.0)) as proxy, httpx.Client(base_url=proxy.url, timeout=10) as c:
        served = [post(c).headers["x-detour-target"] for _ in range(15)]
    assert served.count("primary/gpt-4o-mini") == 10        # 30 / 3 replicas (an approximation)


@pytest.mark.parametrize("stream", [False, True])
def test_remaining_requests_0_sidelines_for_the_reset_without_a_429(primary, secondary, stream):
    primary.faults(rateLimit={"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "5s"},
                   count=1)
    clock = FakeClock(1000.0)
    with ProxyServer(two_provider_config(primary, secondary), clock=clock) as proxy, \
            httpx.Client(base_url=proxy.url, timeout=10) as c:
        ask = lambda: post(c, stream=stream).headers["x-detour-target"]  # noqa: E731
        assert ask() == "primary/gpt-4o-mini"                 # served; its headers say "no budget left"
        for _ in range(5):
            assert ask() == "secondary/llama-3-8b"
        clock.advance(4.9)
        assert ask() == "secondary/llama-3-8b"
        clock.advance(0.1)                                    # the reset: traffic returns
        assert ask() == "primary/gpt-4o-mini"
        assert metric(proxy, "detour_upstream_attempts_total", route="chat", provider="primary",
                      model="gpt-4o-mini", result="http_429") == 0
        st = state_of(proxy, "primary", "gpt-4o-mini", primary)
        assert st.breaker_state(clock.now()) is BreakerState.CLOSED   # a sideline, not a failure
    assert primary.requests() == 2                           # and not a single 429 was collected
    assert secondary.requests() == 6


def test_latency_rise_without_errors_opens_the_slow_call_breaker(primary, secondary):
    cfg = two_provider_config(primary, secondary)
    cfg["health"]["breaker"]["minRequests"] = 4
    cfg["health"]["slowCall"] = {"threshold": "200ms", "ratio": 0.5}
    with ProxyServer(cfg) as proxy, httpx.Client(base_url=proxy.url, timeout=10) as c:
        ask = lambda: post(c).headers["x-detour-target"]  # noqa: E731
        assert [ask(), ask()] == ["primary/gpt-4o-mini"] * 2      # fast
        primary.faults(latency=0.3)                           # slower than the threshold, no errors
        assert [ask(), ask()] == ["primary/gpt-4o-mini"] * 2      # 2 slow of 4: ratio 0.5 -> open
        t0 = time.monotonic()
        assert [ask() for _ in range(5)] == ["secondary/llama-3-8b"] * 5
        assert time.monotonic() - t0 < 1.0                    # traffic moved: no more waiting
        st = state_of(proxy, "primary", "gpt-4o-mini", primary)
        now = proxy.state.clock.now()
        assert st.breaker_state(now) is BreakerState.OPEN
        requests, failures, slow = st.window_stats(now)
        assert failures == 0 and slow == 2
    assert primary.requests() == 4


def hedged_config(primary, secondary, after="150ms"):
    cfg = two_provider_config(primary, secondary, hedge={"after": after, "maxExtra": 1})
    return cfg


def test_hedged_request_returns_the_faster_answer_and_closes_the_slow_upstream(primary, secondary):
    primary.faults(latency=3.0)
    with ProxyServer(hedged_config(primary, secondary)) as proxy, \
            httpx.Client(base_url=proxy.url, timeout=10) as c:
        t0 = time.monotonic()
        r = post(c)
        elapsed = time.monotonic() - t0
        assert r.headers["x-detour-target"] == "secondary/llama-3-8b"
        assert r.json()["choices"][0]["message"]["content"]
        assert 0.15 <= elapsed < 1.5
        # the slow upstream sees its client (the proxy) go away: its connection was closed
        primary.wait("clientClosed", 1, timeout=3)
        assert metric(proxy, "detour_hedges_total", route="chat") == 1
        st = state_of(proxy, "primary", "gpt-4o-mini", primary)
        now = proxy.state.clock.now()
        assert st.in_flight == 0 and st.window_stats(now) == (0, 0, 0)   # the loser counts nothing
        assert r.headers["x-detour-attempts"] == "2"
    assert primary.stats()["inFlight"] == 0


def test_hedge_not_sent_when_the_first_answers_in_time(primary, secondary):
    with ProxyServer(hedged_config(primary, secondary, after="2s")) as proxy, \
            httpx.Client(base_url=proxy.url, timeout=10) as c:
        assert post(c).headers["x-detour-target"] == "primary/gpt-4o-mini"
        assert metric(proxy, "detour_hedges_total", route="chat") == 0
    assert secondary.requests() == 0


def test_hedge_keeps_waiting_when_the_hedge_fails(primary, secondary):
    primary.faults(latency=0.4)
    secondary.faults(status=503)
    with ProxyServer(hedged_config(primary, secondary, after="50ms")) as proxy, \
            httpx.Client(base_url=proxy.url, timeout=10) as c:
        r = post(c)
        assert r.headers["x-detour-target"] == "primary/gpt-4o-mini"   # the slow one still won
        assert metric(proxy, "detour_hedges_total", route="chat") == 1
    assert primary.stats()["clientClosed"] == 0


def test_a_streaming_request_on_a_hedged_route_is_not_hedged(primary, secondary):
    primary.faults(latency=0.4)
    with ProxyServer(hedged_config(primary, secondary, after="50ms")) as proxy, \
            httpx.Client(base_url=proxy.url, timeout=10) as c:
        t0 = time.monotonic()
        r = post(c, stream=True)
        assert time.monotonic() - t0 >= 0.4                   # it waited for the slow first target
        assert r.headers["x-detour-target"] == "primary/gpt-4o-mini"
        assert "data: [DONE]" in r.text
        assert metric(proxy, "detour_hedges_total", route="chat") == 0
    assert secondary.requests() == 0


def test_hedges_spend_the_retry_budget(primary, secondary):
    primary.faults(latency=0.3)
    cfg = hedged_config(primary, secondary, after="50ms")
    cfg["retryBudget"] = {"ratio": 0, "minPerSecond": 0.1, "window": "10s"}   # room for 1 retry
    with ProxyServer(cfg) as proxy, httpx.Client(base_url=proxy.url, timeout=10) as c:
        assert post(c).headers["x-detour-target"] == "secondary/llama-3-8b"   # hedged: spent it
        assert metric(proxy, "detour_retry_budget_rejections_total", route="chat") == 0
        assert post(c).headers["x-detour-target"] == "primary/gpt-4o-mini"   # no room: waits
        assert metric(proxy, "detour_hedges_total", route="chat") == 1
        assert metric(proxy, "detour_retry_budget_rejections_total", route="chat") == 1
    assert secondary.requests() == 1


def routing_config(primary, secondary):
    def prov(name, sim):
        return {"name": name, "type": "openai", "baseURL": sim.v1, "apiKey": {"value": "k"}}

    return {
        "providers": [prov("primary", primary), prov("secondary", secondary)],
        "routes": [
            {"name": "search", "match": {"models": ["chat-*"], "headers": {"X-Team": "search"}},
             "targets": [{"provider": "primary", "model": "search-model"}]},
            {"name": "batch", "match": {"metadata": {"tier": "batch"}},
             "targets": [{"provider": "secondary", "model": "batch-model"}]},
            {"name": "default", "match": {},
             "targets": [{"provider": "primary", "model": "default-model"}]},
        ],
    }


def test_header_and_metadata_routes_pick_the_right_targets(primary, secondary):
    with ProxyServer(routing_config(primary, secondary)) as proxy, \
            httpx.Client(base_url=proxy.url, timeout=10) as c:
        target = lambda r: r.headers["x-detour-target"]  # noqa: E731
        assert target(post(c, {"x-team": "search"}, model="chat-a")) == "primary/search-model"
        assert primary.stats()["lastRequest"]["body"]["model"] == "search-model"
        # the header route also needs its model pattern
        assert target(post(c, {"x-team": "search"}, model="gpt-4o")) == "primary/default-model"
        assert target(post(c, {"x-team": "ads"}, model="chat-a")) == "primary/default-model"
        # metadata: the OpenAI field or the x-detour-metadata header
        assert target(post(c, model="chat-a", metadata={"tier": "batch"})) == "secondary/batch-model"
        assert target(post(c, {"x-detour-metadata": orjson.dumps({"tier": "batch"}).decode()},
                           model="x")) == "secondary/batch-model"
        assert secondary.stats()["lastRequest"]["body"]["model"] == "batch-model"
        # first match wins: both header and metadata match -> the earlier route
        assert target(post(c, {"x-team": "search", "x-detour-metadata": '{"tier": "batch"}'},
                           model="chat-b")) == "primary/search-model"
        assert target(post(c, model="anything")) == "primary/default-model"   # catch-all


def test_a_request_missing_a_routes_conditions_gets_a_404_that_says_why(primary, secondary):
    cfg = two_provider_config(primary, secondary)
    cfg["routes"][0]["match"]["headers"] = {"x-team": "search"}
    with ProxyServer(cfg) as proxy, httpx.Client(base_url=proxy.url, timeout=10) as c:
        assert post(c, {"x-team": "search"}).status_code == 200
        r = c.post("/v1/chat/completions", json=chat_body(), headers={"x-team": "ads"})
        assert r.status_code == 404
        err = r.json()["error"]
        assert err["code"] == "model_not_found" and err["param"] == "model"
        assert "'chat'" in err["message"] and "headers or metadata" in err["message"]
        assert "ads" not in err["message"]          # request values are never echoed
        r = c.post("/v1/chat/completions", json=chat_body(model="unknown-model"))
        assert r.status_code == 404 and "not served by any route" in r.json()["error"]["message"]
