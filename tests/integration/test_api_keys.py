"""Several API keys per provider, through the real proxy and the simulator, with the official
openai SDK as the client: a key refused with 401, another with 429, and the third serves; the
client sees one success, no provider fallback, and only key *indices* anywhere."""

from __future__ import annotations

import json

import httpx
import openai

from detour_proxy.policy import BreakerState, TargetKey
from support import ProxyServer, two_provider_config

KEYS = ["sk-revoked-0123456789abcdef", "sk-busy-0123456789abcdef", "sk-good-0123456789abcdef"]


def config(primary, secondary):
    cfg = two_provider_config(primary, secondary)
    prov = cfg["providers"][0]
    del prov["apiKey"]
    prov["apiKeys"] = [{"value": k} for k in KEYS]
    return cfg


def metric(proxy: ProxyServer, name: str, **labels) -> float:
    return proxy.state.metrics.registry.get_sample_value(name, labels) or 0.0


def test_a_refused_key_rotates_to_the_next_key_of_the_same_provider_not_to_another_provider(primary, secondary):
    primary.admin.put("/_sim/faults", json=[{"status": 401, "keys": [KEYS[0]]},
                                            {"status": 429, "retryAfter": "20", "keys": [KEYS[1]]}]).raise_for_status()
    with ProxyServer(config(primary, secondary)) as proxy:
        client = openai.OpenAI(base_url=proxy.v1, api_key="client-key", max_retries=0)
        raw = client.chat.completions.with_raw_response.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
        answer = raw.parse()
        assert answer.choices[0].message.content == "The quick brown fox jumps over the lazy dog."
        assert raw.headers["x-detour-target"] == "primary/gpt-4o-mini"   # no provider fallback
        assert raw.headers["x-detour-key"] == "2"                         # the key's index, not the key
        assert raw.headers["x-detour-attempts"] == "3"
        assert secondary.requests() == 0 and primary.requests() == 3
        labels = {"route": "chat", "provider": "primary", "model": "gpt-4o-mini"}
        assert metric(proxy, "detour_key_rotations_total", reason="http_4xx", **labels) == 1
        assert metric(proxy, "detour_key_rotations_total", reason="http_429", **labels) == 1
        assert metric(proxy, "detour_fallbacks_total", route="chat", from_provider="primary",
                      to_provider="secondary") == 0

        # The refused keys are held back: the next requests (unary and streamed) go to key 2 first.
        raw = client.chat.completions.with_raw_response.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "again"}])
        assert (raw.headers["x-detour-key"], raw.headers["x-detour-attempts"]) == ("2", "1")
        with client.chat.completions.with_streaming_response.create(
                model="gpt-4o-mini", messages=[{"role": "user", "content": "s"}], stream=True) as resp:
            assert (resp.headers["x-detour-key"], resp.headers["x-detour-attempts"]) == ("2", "1")
            text = "".join(c.choices[0].delta.content or "" for c in resp.parse() if c.choices)
        assert text == "The quick brown fox jumps over the lazy dog."
        assert primary.requests() == 5

        # Health per key: key 0 open (401: for maxCooldown), key 1 sidelined (its Retry-After),
        # key 2 closed; the model's breaker gauge shows its best key, so the model is up.
        reg = proxy.state.registry
        now = proxy.state.clock.now()
        base = primary.v1
        assert reg.get(TargetKey("primary", "gpt-4o-mini", base, 0)).breaker_state(now) is BreakerState.OPEN
        k1 = reg.get(TargetKey("primary", "gpt-4o-mini", base, 1))
        assert k1.breaker_state(now) is BreakerState.CLOSED and k1.rate_limited(now)
        assert reg.get(TargetKey("primary", "gpt-4o-mini", base, 2)).admits(now)
        assert metric(proxy, "detour_breaker_state", provider="primary", model="gpt-4o-mini") == 0

        # No key (nor a prefix of one) in the metrics or the headers
        with httpx.Client(base_url=proxy.url, headers={"authorization": "Bearer client-key"}) as c:
            exposed = c.get("/metrics").text
        for key in KEYS:
            assert key[:10] not in exposed and key[:10] not in str(dict(raw.headers))


def test_every_key_refused_falls_back_to_the_next_provider(primary, secondary):
    primary.admin.put("/_sim/faults", json=[{"status": 403, "keys": KEYS[:2]},
                                            {"status": 402, "keys": [KEYS[2]]}]).raise_for_status()
    with ProxyServer(config(primary, secondary)) as proxy:
        client = openai.OpenAI(base_url=proxy.v1, api_key="client-key", max_retries=0)
        raw = client.chat.completions.with_raw_response.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
        assert raw.parse().choices[0].message.content
        assert raw.headers["x-detour-target"] == "secondary/llama-3-8b"
        assert "x-detour-key" not in raw.headers       # secondary has one key
        assert primary.requests() == 3 and secondary.requests() == 1
        assert metric(proxy, "detour_fallbacks_total", route="chat", from_provider="primary",
                      to_provider="secondary") == 1
        # every key of primary is now out: the next request goes to secondary at once
        raw = client.chat.completions.with_raw_response.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "again"}])
        assert raw.headers["x-detour-target"] == "secondary/llama-3-8b" and raw.headers["x-detour-attempts"] == "1"
        assert primary.requests() == 3


def test_limits_hold_per_key_so_each_key_brings_its_own_quota(primary, secondary):
    from detour_proxy.policy import FakeClock
    cfg = config(primary, secondary)
    cfg["routes"][0]["targets"][0]["limits"] = {"requestsPerMinute": 1}
    with ProxyServer(cfg, clock=FakeClock(1000.0)) as proxy, httpx.Client(base_url=proxy.url, timeout=10) as c:
        served = []
        for _ in range(4):
            r = c.post("/v1/chat/completions", json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x"}]})
            assert r.status_code == 200, r.text
            served.append((r.headers["x-detour-target"], r.headers.get("x-detour-key")))
    assert served == [("primary/gpt-4o-mini", "0"), ("primary/gpt-4o-mini", "1"), ("primary/gpt-4o-mini", "2"),
                      ("secondary/llama-3-8b", None)]


def test_a_failing_model_does_not_take_its_provider_down(primary, secondary):
    """Health per (provider, model): gpt-4o-mini failing on primary opens only its own breaker;
    primary's gpt-4o keeps serving (no fallback, breaker gauge 0), and the shared-health report
    names only the failing model open."""
    from detour_proxy.cluster.health_codec import encode
    cfg = two_provider_config(primary, secondary)
    cfg["routes"][0]["match"] = {"models": ["gpt-4o-mini"]}
    cfg["routes"].append({"name": "big", "match": {"models": ["gpt-4o"]},
                          "targets": [{"provider": "primary", "model": "gpt-4o", "priority": 0},
                                      {"provider": "secondary", "model": "llama-3-8b", "priority": 1}],
                          "retry": {"attempts": 1}, "timeout": "10s"})
    primary.faults(status=503, models=["gpt-4o-mini"])
    with ProxyServer(cfg) as proxy:
        client = openai.OpenAI(base_url=proxy.v1, api_key="client-key", max_retries=0)
        for _ in range(3):   # consecutiveFailures 3: each request fails on primary, then falls back
            raw = client.chat.completions.with_raw_response.create(
                model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
            assert raw.headers["x-detour-target"] == "secondary/llama-3-8b"
        assert metric(proxy, "detour_breaker_state", provider="primary", model="gpt-4o-mini") == 2
        raw = client.chat.completions.with_raw_response.create(
            model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
        assert raw.headers["x-detour-target"] == "primary/gpt-4o" and raw.headers["x-detour-attempts"] == "1"
        assert metric(proxy, "detour_breaker_state", provider="primary", model="gpt-4o") == 0
        now = proxy.state.clock.now()
        report = encode("pod", proxy.state.registry.snapshot(now), wall_now=0.0, mono_now=now, heartbeat=10)
        states = {(t["provider"], t["model"]): t["state"] for t in json.loads(report)["targets"]}
        assert states[("primary", "gpt-4o-mini")] == "open" and states[("primary", "gpt-4o")] == "closed"


def test_a_stream_rotates_keys_before_its_first_byte_and_quota_headers_sideline_one_key(primary, secondary):
    """A streamed request refused on keys 0 (401) and 1 (429) streams from key 2 (the client sees
    one clean stream); a key whose responses say its quota is used up (remaining 0) is sidelined
    alone until the reset: the next requests go to the provider's next key, not to another provider."""
    from detour_proxy.policy import FakeClock
    primary.admin.put("/_sim/faults", json=[{"status": 401, "keys": [KEYS[0]]},
                                            {"status": 429, "keys": [KEYS[1]]}]).raise_for_status()
    with ProxyServer(config(primary, secondary)) as proxy:
        client = openai.OpenAI(base_url=proxy.v1, api_key="client-key", max_retries=0)
        with client.chat.completions.with_streaming_response.create(
                model="gpt-4o-mini", messages=[{"role": "user", "content": "s"}], stream=True) as resp:
            assert (resp.headers["x-detour-target"], resp.headers["x-detour-key"]) == ("primary/gpt-4o-mini", "2")
            assert resp.headers["x-detour-attempts"] == "3"
            text = "".join(c.choices[0].delta.content or "" for c in resp.parse() if c.choices)
        assert text == "The quick brown fox jumps over the lazy dog." and secondary.requests() == 0

    primary.clear()
    primary.faults(rateLimit={"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "5s"},
                   keys=[KEYS[0]])
    clock = FakeClock(1000.0)
    with ProxyServer(config(primary, secondary), clock=clock) as proxy, \
            httpx.Client(base_url=proxy.url, timeout=10) as c:
        def ask() -> tuple[str, str | None]:
            r = c.post("/v1/chat/completions", json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x"}]})
            assert r.status_code == 200, r.text
            return r.headers["x-detour-target"], r.headers.get("x-detour-key")
        assert ask() == ("primary/gpt-4o-mini", "0")          # served; its headers say "no budget left"
        assert [ask() for _ in range(3)] == [("primary/gpt-4o-mini", "1")] * 3
        clock.advance(5.0)
        assert ask() == ("primary/gpt-4o-mini", "0")          # the reset: key 0 again
        assert secondary.requests() == 0
