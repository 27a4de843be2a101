"""/metrics: every family the operators rely on exists and moves with real traffic and faults;
label values are only config names and small enums, never request data or keys."""

from __future__ import annotations

import re
import threading
import time
from typing import Any

import httpx
import openai
from prometheus_client.parser import text_string_to_metric_families

from detour_proxy.cluster import services
from detour_proxy.config import parse_config
from detour_proxy.policy import FakeClock
from e2e.proxyproc import write_atomic
from support import ProxyServer, chat_body, two_provider_config

# name -> (type, labels): the contract documented in docs/observability.md.
FAMILIES = {
    "detour_requests": ("counter", {"route", "outcome"}),
    "detour_rejected_requests": ("counter", {"status"}),
    "detour_request_duration_seconds": ("histogram", {"route"}),
    "detour_time_to_first_token_seconds": ("histogram", {"route", "provider"}),
    "detour_in_flight_requests": ("gauge", {"route"}),
    "detour_upstream_attempts": ("counter", {"route", "provider", "model", "result"}),
    "detour_upstream_attempt_duration_seconds": ("histogram", {"provider"}),
    "detour_retries": ("counter", {"route", "provider", "reason"}),
    "detour_fallbacks": ("counter", {"route", "from_provider", "to_provider"}),
    "detour_forced_attempts": ("counter", {"route", "provider"}),
    "detour_probe_attempts": ("counter", {"provider", "outcome"}),
    "detour_hedges": ("counter", {"route"}),
    "detour_retry_budget_rejections": ("counter", {"route"}),
    "detour_breaker_state": ("gauge", {"provider", "model"}),
    "detour_breaker_transitions": ("counter", {"provider", "model", "to"}),
    "detour_streams_cut": ("counter", {"route", "provider"}),
    "detour_stream_continuations": ("counter", {"route", "from_provider", "to_provider"}),
    "detour_tokens": ("counter", {"route", "provider", "direction"}),
    "detour_config_reload": ("counter", {"result"}),
    "detour_config_info": ("gauge", {"hash"}),
    "detour_shared_health_publish": ("counter", {"result"}),
    "detour_shared_health_merges": ("counter", set()),
    "detour_shared_health_api_available": ("gauge", set()),
    "detour_shared_health_peers": ("gauge", set()),
    "detour_shared_health_ignored": ("counter", {"reason"}),
    "detour_provider_credentials_ok": ("gauge", {"provider"}),
    "detour_provider_credential_fetches": ("counter", {"provider", "result"}),
}


def scrape(proxy: ProxyServer) -> tuple[dict[str, Any], dict[tuple[str, frozenset], float]]:
    text = httpx.get(proxy.url + "/metrics", timeout=5).text
    families = {f.name: f for f in text_string_to_metric_families(text)}
    samples = {(s.name, frozenset(s.labels.items())): s.value for f in families.values() for s in f.samples}
    return families, samples


def val(samples: dict, name: str, **labels: str) -> float:
    """A sample's value; 0 when the labelled child does not exist (yet)."""
    return samples.get((name, frozenset(labels.items())), 0.0)


def client(proxy: ProxyServer, **kw: Any) -> openai.OpenAI:
    return openai.OpenAI(base_url=proxy.v1, api_key="client-unused", max_retries=0, **kw)


def ask(proxy: ProxyServer, **kw: Any) -> Any:
    return client(proxy).chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], **kw)


def test_every_family_is_exposed_with_prefix_units_and_label_names(primary, secondary):
    with ProxyServer(two_provider_config(primary, secondary)) as proxy:
        ask(proxy)
        families, _ = scrape(proxy)
    for name, (kind, labels) in FAMILIES.items():
        assert name in families, f"{name} missing from /metrics"
        fam = families[name]
        assert fam.type == kind, (name, fam.type)
        for s in fam.samples:
            assert set(s.labels) - {"le"} == labels, (name, s.labels)
            if kind == "counter":
                assert s.name in (name + "_total", name + "_created"), s.name
    for name in families:
        assert name.startswith("detour_"), name
        # Base units: durations in seconds, never ms.
        assert not re.search(r"_(ms|milliseconds|minutes)(_|$)", name), name


def test_unary_traffic_moves_requests_attempts_retries_fallbacks_tokens(primary, secondary):
    with ProxyServer(two_provider_config(primary, secondary)) as proxy:
        _, before = scrape(proxy)
        assert val(before, "detour_in_flight_requests", route="chat") == 0
        gw_hash = proxy.state.gateway.hash
        assert val(before, "detour_config_info", hash=gw_hash) == 1

        primary.faults(status=503, count=1)         # 503, then a retry on the same target succeeds
        r1 = ask(proxy)
        assert r1.headers["x-detour-attempts"] == "2"
        primary.faults(status=503)                  # 503 x2 (retry), then fallback to the secondary
        r2 = ask(proxy)
        assert r2.headers["x-detour-target"] == "secondary/llama-3-8b"
        primary.faults(status=400)                  # the request's own fault: returned, not retried
        r3 = httpx.post(proxy.v1 + "/chat/completions", json=chat_body(), timeout=10)
        assert r3.status_code == 400
        _, s = scrape(proxy)

    assert val(s, "detour_requests_total", route="chat", outcome="success") == 2
    assert val(s, "detour_requests_total", route="chat", outcome="client_error") == 1
    assert val(s, "detour_requests_total", route="chat", outcome="upstream_error") == 0
    assert val(s, "detour_request_duration_seconds_count", route="chat") == 3
    att = lambda p, m, r: val(s, "detour_upstream_attempts_total", route="chat", provider=p, model=m, result=r)  # noqa: E731
    assert att("primary", "gpt-4o-mini", "http_5xx") == 3
    assert att("primary", "gpt-4o-mini", "http_4xx") == 1
    assert att("primary", "gpt-4o-mini", "success") == 1
    assert att("secondary", "llama-3-8b", "success") == 1
    assert val(s, "detour_upstream_attempt_duration_seconds_count", provider="primary") == 5
    assert val(s, "detour_retries_total", route="chat", provider="primary", reason="http_5xx") == 2
    assert val(s, "detour_fallbacks_total", route="chat", from_provider="primary", to_provider="secondary") == 1
    # Tokens come from the providers' usage, per target provider.
    u1, u2 = r1.parse().usage, r2.parse().usage
    tok = lambda p, d: val(s, "detour_tokens_total", route="chat", provider=p, direction=d)  # noqa: E731
    assert tok("primary", "prompt") == u1.prompt_tokens > 0
    assert tok("primary", "completion") == u1.completion_tokens > 0
    assert tok("secondary", "completion") == u2.completion_tokens > 0
    # Non-streaming requests have no time to first token; the request duration covers them.
    assert val(s, "detour_time_to_first_token_seconds_count", route="chat", provider="primary") == 0
    assert val(s, "detour_in_flight_requests", route="chat") == 0


def test_in_flight_gauge_counts_requests_being_served(primary, secondary):
    primary.faults(latency=1.0)
    with ProxyServer(two_provider_config(primary, secondary)) as proxy:
        t = threading.Thread(target=lambda: httpx.post(proxy.v1 + "/chat/completions", json=chat_body(), timeout=10))
        t.start()
        seen = 0.0
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline and seen < 1:
            seen = val(scrape(proxy)[1], "detour_in_flight_requests", route="chat")
            time.sleep(0.02)
        t.join(5)
        assert seen == 1
        assert val(scrape(proxy)[1], "detour_in_flight_requests", route="chat") == 0


def test_breaker_state_and_transitions_and_forced_attempts(primary, secondary):
    clock = FakeClock(1000.0)
    primary.faults(status=503)
    with ProxyServer(two_provider_config(primary, secondary), clock=clock) as proxy:
        for _ in range(2):                      # 3 consecutive 503s open the primary's breaker
            ask(proxy)
        _, s = scrape(proxy)
        assert val(s, "detour_breaker_state", provider="primary", model="gpt-4o-mini") == 2
        assert val(s, "detour_breaker_state", provider="secondary", model="llama-3-8b") == 0
        assert val(s, "detour_breaker_transitions_total", provider="primary", model="gpt-4o-mini", to="open") == 1
        primary.clear()
        clock.advance(31)                       # cooldown over: one probe closes it
        assert ask(proxy).headers["x-detour-target"] == "primary/gpt-4o-mini"
        _, s = scrape(proxy)
        assert val(s, "detour_breaker_state", provider="primary", model="gpt-4o-mini") == 0
        for to in ("half-open", "closed"):
            assert val(s, "detour_breaker_transitions_total", provider="primary", model="gpt-4o-mini", to=to) == 1

    # Every target open: the one whose cooldown ends first is forced.
    primary.faults(status=503)
    secondary.faults(status=503)
    with ProxyServer(two_provider_config(primary, secondary), clock=FakeClock(1000.0)) as proxy:
        for _ in range(3):
            httpx.post(proxy.v1 + "/chat/completions", json=chat_body(), timeout=10)
        _, s = scrape(proxy)
    forced = sum(val(s, "detour_forced_attempts_total", route="chat", provider=p) for p in ("primary", "secondary"))
    assert forced >= 1


def test_retry_budget_rejections_are_counted(primary, secondary):
    cfg = two_provider_config(primary, secondary, retry={"attempts": 3, "backoff": {"initial": "10ms"}},
                              targets=[{"provider": "primary", "model": "gpt-4o-mini"}])
    cfg["retryBudget"] = {"ratio": 0.0, "minPerSecond": 0.0}
    primary.faults(status=503)
    with ProxyServer(cfg) as proxy:
        for _ in range(2):
            r = httpx.post(proxy.v1 + "/chat/completions", json=chat_body(), timeout=10)
            assert r.status_code == 503 and r.headers["x-detour-attempts"] == "1"
        _, s = scrape(proxy)
    assert val(s, "detour_retry_budget_rejections_total", route="chat") == 2
    assert val(s, "detour_retries_total", route="chat", provider="primary", reason="http_5xx") == 0
    assert val(s, "detour_requests_total", route="chat", outcome="upstream_error") == 2


def test_streams_ttft_cuts_and_continuations(primary, secondary):
    with ProxyServer(two_provider_config(primary, secondary)) as proxy:
        chunks = list(client(proxy).chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], stream=True,
            stream_options={"include_usage": True}))
        usage = chunks[-1].usage
        primary.faults(cutAfterChunks=3)        # tokens delivered, then the stream breaks
        with httpx.stream("POST", proxy.v1 + "/chat/completions", json=chat_body(stream=True), timeout=10) as r:
            body = r.read().decode()
        assert "stream_interrupted" in body
        primary.faults(status=400)              # refused before any chunk: a client error, status 400
        r = httpx.post(proxy.v1 + "/chat/completions", json=chat_body(stream=True), timeout=10)
        assert r.status_code == 400
        _, s = scrape(proxy)
    assert val(s, "detour_time_to_first_token_seconds_count", route="chat", provider="primary") == 2
    assert val(s, "detour_streams_cut_total", route="chat", provider="primary") == 1
    assert val(s, "detour_requests_total", route="chat", outcome="success") == 1
    assert val(s, "detour_requests_total", route="chat", outcome="upstream_error") == 1
    assert val(s, "detour_requests_total", route="chat", outcome="client_error") == 1
    assert val(s, "detour_upstream_attempts_total", route="chat", provider="primary", model="gpt-4o-mini",
               result="stream") == 1
    assert val(s, "detour_tokens_total", route="chat", provider="primary", direction="completion") \
        == usage.completion_tokens > 0

    primary.faults(resetAfterChunks=3)
    cfg = two_provider_config(primary, secondary, streamFailover="continue")
    cfg["providers"][1]["continuation"] = "prefill"
    with ProxyServer(cfg) as proxy:
        text = "".join(ch.choices[0].delta.content or "" for ch in client(proxy).chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], stream=True) if ch.choices)
        assert text == "The quick brown fox jumps over the lazy dog."
        _, s = scrape(proxy)
    assert val(s, "detour_stream_continuations_total", route="chat", from_provider="primary",
               to_provider="secondary") == 1
    assert val(s, "detour_streams_cut_total", route="chat", provider="primary") == 0
    assert val(s, "detour_requests_total", route="chat", outcome="success") == 1
    assert val(s, "detour_time_to_first_token_seconds_count", route="chat", provider="secondary") == 1


def test_config_hash_follows_installs(primary, secondary):
    cfg = two_provider_config(primary, secondary)
    with ProxyServer(cfg) as proxy:
        old = proxy.state.gateway.hash
        cfg2 = two_provider_config(primary, secondary, timeout="20s")

        async def reinstall() -> str:
            return proxy.state.install(parse_config(cfg2)).hash

        new = proxy.call(reinstall)
        _, s = scrape(proxy)
    assert new != old
    assert val(s, "detour_config_info", hash=new) == 1
    assert ("detour_config_info", frozenset({("hash", old)})) not in s


def test_reload_drops_gauges_of_removed_targets_and_routes(tmp_path, primary, secondary):
    """A gauge says what is true now: after a reload, a target or route the config no longer
    has loses its gauge series (an open breaker must not read 2 forever), and a target whose
    identity changed (new baseURL: a fresh, closed breaker) reads 0. Counters stay."""
    cfg = two_provider_config(primary, secondary)
    cfg["routes"].append({"name": "other", "match": {"models": ["other-*"]},
                          "targets": [{"provider": "secondary", "model": "llama-3-8b"}]})
    path = tmp_path / "config.yaml"
    write_atomic(path, cfg)
    primary_breaker = ("detour_breaker_state", frozenset({("provider", "primary"), ("model", "gpt-4o-mini")}))
    other_in_flight = ("detour_in_flight_requests", frozenset({("route", "other")}))
    primary.faults(status=503)
    with ProxyServer(cfg, clock=FakeClock(1000.0), config_path=path) as proxy:
        reloader = proxy.call(lambda: services.start_reload(proxy.state, watch=False))

        def reload(new_cfg: dict) -> None:
            write_atomic(path, new_cfg)
            assert proxy.call(lambda: reloader.reload("test")), "the new config was not installed"

        def open_primary() -> None:
            for _ in range(2):                  # 3 consecutive 503s open the primary's breaker
                assert ask(proxy).headers["x-detour-target"] == "secondary/llama-3-8b"
            assert val(scrape(proxy)[1], "detour_breaker_state", provider="primary", model="gpt-4o-mini") == 2

        try:
            open_primary()
            # 1) The primary's baseURL changes: a new identity with a fresh (closed) breaker.
            moved = {**cfg, "providers": [dict(p) for p in cfg["providers"]]}
            moved["providers"][0]["baseURL"] = primary.url + "/v1/"
            reload(moved)
            _, s = scrape(proxy)
            assert s[primary_breaker] == 0, "the gauge kept the forgotten target's open state"
            # 2) The open primary and the route `other` are removed from the config.
            open_primary()
            assert other_in_flight in scrape(proxy)[1]
            gone = two_provider_config(primary, secondary, targets=[{"provider": "secondary", "model": "llama-3-8b"}])
            reload(gone)
            _, s = scrape(proxy)
        finally:
            proxy.call(lambda: services.stop_all(proxy.state))
    assert primary_breaker not in s, "a removed target's breaker gauge is still exported"
    assert other_in_flight not in s, "a removed route's in-flight gauge is still exported"
    assert val(s, "detour_breaker_state", provider="secondary", model="llama-3-8b") == 0
    assert val(s, "detour_in_flight_requests", route="chat") == 0
    assert ("detour_in_flight_requests", frozenset({("route", "chat")})) in s
    # Counters keep their totals (Prometheus convention): the primary's failures are still there.
    assert val(s, "detour_upstream_attempts_total", route="chat", provider="primary", model="gpt-4o-mini",
               result="http_5xx") == 6
    assert val(s, "detour_breaker_transitions_total", provider="primary", model="gpt-4o-mini", to="open") == 2


def test_label_values_are_config_names_and_enums_only(primary, secondary):
    weird_model = "gpt-WEIRDMODEL-7f3a\"}\nx"
    glob_model = "chat-GLOBMATCH-19c2"        # routed by the `chat-*` pattern: must not become a label
    request_id = "rid-CANARY-41d9"
    prompt = "PROMPT-CANARY-a17b"
    cfg = two_provider_config(primary, secondary)
    cfg["clientAuth"] = {"keys": [{"value": "client-key-CANARY-5e0c"}]}
    primary.faults(status=503, count=1)
    with ProxyServer(cfg) as proxy:
        auth = {"authorization": "Bearer client-key-CANARY-5e0c", "x-request-id": request_id}
        r = httpx.post(proxy.v1 + "/chat/completions", headers=auth, json=chat_body(model=weird_model), timeout=10)
        assert r.status_code == 404 and r.headers["x-request-id"] == request_id
        r = httpx.post(proxy.v1 + "/chat/completions", headers=auth, json=chat_body(model=glob_model, text=prompt),
                       timeout=10)
        assert r.status_code == 200 and r.headers["x-request-id"] == request_id
        r = httpx.post(proxy.v1 + "/chat/completions", headers={"authorization": "Bearer wrong-CANARY-key"},
                       json=chat_body(text=prompt), timeout=10)
        assert r.status_code == 401
        text = httpx.get(proxy.url + "/metrics", timeout=5).text
        gw_hash = proxy.state.gateway.hash
        _, s = scrape(proxy)
    assert val(s, "detour_rejected_requests_total", status="404") == 1
    assert val(s, "detour_rejected_requests_total", status="401") == 1
    assert val(s, "detour_retries_total", route="chat", provider="primary", reason="http_5xx") == 1

    config_names = {"chat", "primary", "secondary", "gpt-4o-mini", "llama-3-8b"}
    enums = {"success", "upstream_error", "client_error", "cancelled", "http_4xx", "http_429", "http_5xx",
             "connect", "timeout", "stream", "prompt", "completion", "closed", "half-open", "open",
             "error", "stale", "invalid", "empty_answer", "context_window"}
    for (_, labels) in s:
        for key, value in labels:
            if key == "le":
                float(value)  # histogram bucket bounds are numbers
            elif key == "status":
                assert re.fullmatch(r"[1-5]\d\d", value), value
            elif key == "hash":
                assert value == gw_hash
            else:
                assert value in config_names | enums, f"label {key}={value!r} is not a config name or enum"
    for leak in ("WEIRDMODEL", "GLOBMATCH", "CANARY", "SECRET", request_id, prompt):
        assert leak not in text, f"{leak} appears in /metrics"
