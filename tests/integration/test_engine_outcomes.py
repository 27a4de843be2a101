"""Every attempt ends in exactly one honest outcome, whatever the upstream sent (issue 13).

Real HTTP on loopback: the simulators answer with wrong shapes, non-error statuses, oversized
bodies, overloads and quoted keys; the client sees a served answer from the next target (or
a clean error), never a Detour 500 or a provider's non-answer passed through.
"""

from __future__ import annotations

import time

import httpx
import orjson
import pytest

from support import ProxyServer, chat_body, two_provider_config

GOOD = {"id": "c", "object": "chat.completion", "created": 1, "model": "m",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}]}


def _failures(proxy: ProxyServer, provider: str) -> int:
    now = proxy.state.clock.now()
    for key, st in proxy.state.registry.items():
        if key.provider == provider:
            return st.window_stats(now)[1]
    raise AssertionError(provider)


def _sse(*docs: object) -> str:
    return "".join(f"data: {orjson.dumps(d).decode()}\n\n" for d in docs) + "data: [DONE]\n\n"


@pytest.mark.parametrize("body", [
    {"choices": [1]},
    {**GOOD, "usage": [1, 2]},
    {"choices": [{"index": 0, "message": {"role": "assistant", "content": ["x"]}}]},
    {"error": {"message": "upstream gateway failed", "type": "server_error"}},
    [1, 2, 3],
], ids=["choice-not-object", "usage-list", "content-list", "error-object-on-200", "not-an-object"])
def test_a_malformed_answer_is_the_targets_failure_and_the_next_target_serves(primary, secondary, body):
    primary.faults(body=body)
    with ProxyServer(two_provider_config(primary, secondary)) as proxy:
        r = httpx.post(proxy.v1 + "/chat/completions", json=chat_body(), timeout=10)
        assert r.status_code == 200, r.text
        assert r.headers["x-detour-target"] == "secondary/llama-3-8b"
        assert r.json()["choices"][0]["message"]["content"]
        assert _failures(proxy, "primary") == 1   # recorded: the breaker counts it


def test_anthropic_content_of_the_wrong_shape_falls_back(anthropic_sim, secondary):
    anthropic_sim.faults(body={"id": "m", "type": "message", "role": "assistant", "model": "claude",
                               "content": [1], "stop_reason": "end_turn",
                               "usage": {"input_tokens": 1, "output_tokens": 1}})
    cfg = two_provider_config(anthropic_sim, secondary)
    cfg["providers"][0].update(type="anthropic", baseURL=anthropic_sim.url)
    with ProxyServer(cfg) as proxy:
        r = httpx.post(proxy.v1 + "/chat/completions", json=chat_body(), timeout=10)
        assert r.status_code == 200 and r.headers["x-detour-target"] == "secondary/llama-3-8b", r.text
        assert _failures(proxy, "primary") == 1


def test_a_stream_chunk_of_the_wrong_shape_falls_back_before_the_first_token(primary, secondary):
    bad = {"id": "x", "object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {"content": ["a"]}}]}
    primary.faults(body=_sse(bad), contentType="text/event-stream")
    with ProxyServer(two_provider_config(primary, secondary)) as proxy:
        with httpx.stream("POST", proxy.v1 + "/chat/completions", json=chat_body(stream=True), timeout=10) as r:
            text = r.read().decode()
        assert r.status_code == 200 and r.headers["x-detour-target"] == "secondary/llama-3-8b"
        assert text.endswith("data: [DONE]\n\n")
        assert _failures(proxy, "primary") == 1


@pytest.mark.parametrize("fault", [
    {"status": 301, "location": "https://example.invalid/v1/chat/completions"},
    {"status": 302},
    {"status": 202, "body": {}},
    {"status": 204},
    {"status": 304},
], ids=["301", "302", "202", "204", "304"])
@pytest.mark.parametrize("stream", [False, True], ids=["unary", "stream"])
def test_a_non_error_status_is_never_passed_through(primary, secondary, fault, stream):
    primary.faults(**fault)
    with ProxyServer(two_provider_config(primary, secondary)) as proxy:
        r = httpx.post(proxy.v1 + "/chat/completions", json=chat_body(stream=stream), timeout=10)
        assert r.status_code == 200, r.text
        assert r.headers["x-detour-target"] == "secondary/llama-3-8b"
        assert _failures(proxy, "primary") == 1


@pytest.mark.parametrize("status", [204, 304, 301])
def test_a_non_error_status_on_a_lone_target_stream_is_a_clean_502_and_keep_alive_survives(primary, secondary,
                                                                                            status):
    cfg = two_provider_config(primary, secondary)
    cfg["routes"][0]["targets"] = cfg["routes"][0]["targets"][:1]
    primary.faults(status=status, count=1)   # a wrong answer is not retried on the same target
    with ProxyServer(cfg) as proxy, httpx.Client(timeout=10) as client:
        r = client.post(proxy.v1 + "/chat/completions", json=chat_body(stream=True))
        assert r.status_code == 502
        err = r.json()["error"]
        assert err["code"] == "all_targets_failed" and f"{status}" in err["message"]
        again = client.post(proxy.v1 + "/chat/completions", json=chat_body(stream=True))   # same connection
        assert again.status_code == 200 and again.text.endswith("data: [DONE]\n\n")


def test_an_oversized_answer_is_the_targets_failure(primary, secondary):
    big = {**GOOD, "choices": [{"index": 0, "message": {"role": "assistant", "content": "x" * 20_000},
                                "finish_reason": "stop"}]}
    primary.faults(body=big)
    cfg = two_provider_config(primary, secondary)
    cfg["server"] = {"maxResponseBytes": 8192}
    with ProxyServer(cfg) as proxy:
        r = httpx.post(proxy.v1 + "/chat/completions", json=chat_body(), timeout=10)
        assert r.status_code == 200 and r.headers["x-detour-target"] == "secondary/llama-3-8b"
        assert _failures(proxy, "primary") == 1
    primary.clear()
    cfg["routes"][0]["targets"] = cfg["routes"][0]["targets"][:1]
    primary.faults(body=big)
    with ProxyServer(cfg) as proxy:
        r = httpx.post(proxy.v1 + "/chat/completions", json=chat_body(), timeout=10)
        assert r.status_code == 502 and "too large" in r.json()["error"]["message"]


KEY = "azk0123456789abcdefAZURE"   # not shaped like sk-/Bearer: only the configured value can find it


def _keyed(primary, secondary, **route):
    cfg = two_provider_config(primary, secondary, **route)
    cfg["providers"][0]["apiKey"] = {"value": KEY}
    cfg["routes"][0]["targets"] = cfg["routes"][0]["targets"][:1]
    return cfg


def test_a_provider_key_quoted_in_an_in_band_stream_error_never_reaches_the_client(primary, secondary):
    primary.faults(inbandError={"afterChunks": 2, "type": "server_error",
                                "message": f"invalid credential {KEY} for deployment"}, chunkDelay=0.05)
    with ProxyServer(_keyed(primary, secondary)) as proxy:
        with httpx.stream("POST", proxy.v1 + "/chat/completions", json=chat_body(stream=True), timeout=10) as r:
            text = r.read().decode()
        assert "event: error" in text and "[redacted]" in text
        assert KEY not in text


@pytest.mark.parametrize("stream", [False, True], ids=["unary", "stream"])
def test_a_provider_key_quoted_in_an_error_body_never_reaches_the_client(primary, secondary, stream):
    primary.faults(inbandError={"afterChunks": 0, "type": "server_error", "message": f"bad key {KEY}"}) if stream \
        else primary.faults(status=500, errorMessage=f"bad key {KEY}")
    with ProxyServer(_keyed(primary, secondary)) as proxy:
        r = httpx.post(proxy.v1 + "/chat/completions", json=chat_body(stream=stream), timeout=10)
        assert r.status_code in (500, 502) and "[redacted]" in r.text, r.text
        assert KEY not in r.text


def test_a_provider_retry_after_copied_to_the_client_is_clamped(primary, secondary):
    cfg = _keyed(primary, secondary, retry={"attempts": 1})
    primary.faults(status=429, retryAfter="1e300")
    with ProxyServer(cfg) as proxy:
        r = httpx.post(proxy.v1 + "/chat/completions", json=chat_body(), timeout=10)
        assert r.status_code == 429 and r.headers["retry-after"] == "60"


def _anthropic_first(anthropic_sim, secondary, **route):
    cfg = two_provider_config(anthropic_sim, secondary, **route)
    cfg["providers"][0].update(type="anthropic", baseURL=anthropic_sim.url)
    return cfg


@pytest.mark.parametrize("stream", [False, True], ids=["unary", "stream"])
def test_anthropic_529_overloaded_falls_back_with_the_defaults(anthropic_sim, secondary, stream):
    anthropic_sim.faults(status=529)
    with ProxyServer(_anthropic_first(anthropic_sim, secondary)) as proxy:
        r = httpx.post(proxy.v1 + "/chat/completions", json=chat_body(stream=stream), timeout=10)
        assert r.status_code == 200 and r.headers["x-detour-target"] == "secondary/llama-3-8b", r.text
    assert anthropic_sim.requests("/v1/messages") == 2   # retried once on the same target, then fell back


def test_an_adapters_transient_status_falls_back_even_when_the_route_does_not_list_it(anthropic_sim, secondary):
    anthropic_sim.faults(status=529)
    cfg = _anthropic_first(anthropic_sim, secondary, fallbackOnStatusCodes=[503],
                           retry={"attempts": 1, "onStatusCodes": [503]})
    with ProxyServer(cfg) as proxy:
        r = httpx.post(proxy.v1 + "/chat/completions", json=chat_body(), timeout=10)
        assert r.status_code == 200 and r.headers["x-detour-target"] == "secondary/llama-3-8b", r.text


def test_a_continuation_that_meets_529_moves_on_to_the_next_target(primary, anthropic_sim, secondary):
    cfg = two_provider_config(primary, secondary, streamFailover="continue")
    cfg["providers"].append({"name": "anthropic", "type": "anthropic", "baseURL": anthropic_sim.url,
                             "apiKey": {"value": "sk-ant-x"}})
    cfg["providers"][1]["continuation"] = "prefill"
    cfg["routes"][0]["targets"].insert(1, {"provider": "anthropic", "model": "claude", "priority": 1})
    cfg["routes"][0]["targets"][2]["priority"] = 2
    primary.faults(resetAfterChunks=2)
    anthropic_sim.faults(status=529)
    with ProxyServer(cfg) as proxy:
        with httpx.stream("POST", proxy.v1 + "/chat/completions", json=chat_body(stream=True), timeout=10) as r:
            text = r.read().decode()
    assert "detour-continuation" in text and text.endswith("data: [DONE]\n\n"), text
    assert "to=secondary/llama-3-8b" in text


def test_a_request_a_target_cannot_express_spends_none_of_its_rate_limit(anthropic_sim, secondary):
    cfg = _anthropic_first(anthropic_sim, secondary)
    cfg["routes"][0]["targets"][0]["limits"] = {"requestsPerMinute": 1}
    with ProxyServer(cfg) as proxy:
        for _ in range(2):   # n=2 cannot be expressed on Anthropic: served by the next target
            r = httpx.post(proxy.v1 + "/chat/completions", json=chat_body(n=2), timeout=10)
            assert r.status_code == 200 and r.headers["x-detour-target"] == "secondary/llama-3-8b"
        r = httpx.post(proxy.v1 + "/chat/completions", json=chat_body(), timeout=10)
        assert r.headers["x-detour-target"] == "primary/gpt-4o-mini", "the one request a minute is still unspent"


def test_a_finished_streams_idle_timer_does_not_stay_on_its_pooled_connection(primary, secondary):
    cfg = two_provider_config(primary, secondary)
    cfg["providers"][0]["timeouts"] = {"streamIdle": "300ms"}
    cfg["routes"][0]["targets"] = cfg["routes"][0]["targets"][:1]
    cfg["routes"][0]["retry"] = {"attempts": 1}
    with ProxyServer(cfg) as proxy, httpx.Client(timeout=10) as client:
        r = client.post(proxy.v1 + "/chat/completions", json=chat_body(stream=True))
        assert r.status_code == 200
        primary.faults(latency=0.6)   # the next answer takes longer than streamIdle: it must not matter
        t0 = time.monotonic()
        r = client.post(proxy.v1 + "/chat/completions", json=chat_body())
        assert r.status_code == 200, r.text
        assert time.monotonic() - t0 >= 0.6
    assert primary.stats()["total"] == 2


def test_a_full_outage_is_shed_not_hammered(primary, secondary):
    cfg = two_provider_config(primary, secondary, retry={"attempts": 1})
    cfg["health"]["breaker"].update(consecutiveFailures=1, cooldown="30s", halfOpenProbes=1, maxCooldown="10m")
    primary.faults(status=503)
    secondary.faults(status=503)
    with ProxyServer(cfg) as proxy, httpx.Client(timeout=10) as client:
        for i in range(3):   # opens both breakers, then one forced probe each fails
            r = client.post(proxy.v1 + "/chat/completions", json=chat_body())
            if i > 0:   # the provider's bare 503 after a failed probe still says when the next may go
                assert r.status_code == 503 and 1 <= int(r.headers["retry-after"]) <= 60, r.headers
        sent = primary.requests() + secondary.requests()
        for _ in range(10):
            r = client.post(proxy.v1 + "/chat/completions", json=chat_body())
            assert r.status_code == 503
            err = r.json()["error"]
            assert err["code"] == "no_target_available" and "circuit breakers" in err["message"]
            assert 1 <= int(r.headers["retry-after"]) <= 60
        assert primary.requests() + secondary.requests() == sent, "refused requests reach no provider"
        now = proxy.state.clock.now()
        for key, st in proxy.state.registry.items():
            assert st.cooldown_until - now <= 60.0 + 1e-6, (key, "doubled once per failed probe, not per request")
