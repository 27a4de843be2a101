"""Active probes through the real proxy on loopback: a target that went down while idle is probed
(a tiny completion, never `max_tokens: 1`) and closed again before client traffic returns; off by
default. The one-replica-at-a-time rule across proxies: tests/e2e/test_shared_health_probes.py."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from detour_proxy.cluster.services import start_probes, stop_all
from support import ProxyServer, two_provider_config, wait_until
from test_metrics import ask, scrape, val

PROBES = {"enabled": True, "interval": "300ms", "timeout": "2s"}
BREAKER = {"consecutiveFailures": 1, "cooldown": "300ms", "maxCooldown": "1s"}


def probe_config(primary, secondary, **probes: Any) -> dict[str, Any]:
    cfg = two_provider_config(primary, secondary, retry={"attempts": 1})
    if probes:
        cfg["providers"][0]["activeProbes"] = probes
    cfg["health"] = {"breaker": BREAKER}
    return cfg


@contextlib.contextmanager
def serving(cfg: dict[str, Any]) -> Iterator[ProxyServer]:
    """The proxy with its background services as `detour-proxy` starts them (probes included)."""
    with ProxyServer(cfg) as proxy:
        proxy.call(lambda: start_probes(proxy.state))
        try:
            yield proxy
        finally:
            proxy.call(lambda: stop_all(proxy.state))


def metric(proxy: ProxyServer, name: str, **labels: str) -> float:
    return val(scrape(proxy)[1], name, **labels)


def test_an_idle_target_that_recovered_is_closed_by_a_probe_and_gets_traffic_again(primary, secondary):
    primary.faults(status=503)
    with serving(probe_config(primary, secondary, **PROBES)) as proxy:
        assert ask(proxy).headers["x-detour-target"] == "secondary/llama-3-8b"   # primary's breaker opens
        assert metric(proxy, "detour_breaker_state", provider="primary", model="gpt-4o-mini") == 2
        # No client traffic from here on. While primary is down, probes fail and re-open the breaker.
        wait_until(lambda: metric(proxy, "detour_probe_attempts_total", provider="primary", outcome="failure") >= 1,
                   10, "a failed probe")
        assert metric(proxy, "detour_probe_attempts_total", provider="primary", outcome="success") == 0
        primary.clear()
        wait_until(lambda: metric(proxy, "detour_probe_attempts_total", provider="primary", outcome="success") == 1,
                   10, "a successful probe")
        wait_until(lambda: metric(proxy, "detour_breaker_state", provider="primary", model="gpt-4o-mini") == 0,
                   5, "primary's breaker closed by the probe")
        body = primary.stats()["lastRequest"]["body"]
        assert body == {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Reply with OK."}],
                        "max_completion_tokens": 16}, "a limit reasoning models accept, never max_tokens: 1"
        probes = primary.requests() - 1
        # Client traffic returns to primary at once: no client request paid for the probe.
        r = ask(proxy)
        assert r.headers["x-detour-target"] == "primary/gpt-4o-mini" and r.headers["x-detour-attempts"] == "1"
        _, s = scrape(proxy)
        # Probes are not client requests: the retry budget and the request counters saw two requests.
        assert proxy.state.budget.stats(proxy.state.clock.now()) == (2, 0)
        assert sum(v for (n, lbl), v in s.items() if n == "detour_requests_total") == 2
        assert val(s, "detour_upstream_attempts_total", route="chat", provider="primary", model="gpt-4o-mini",
                   result="http_5xx") == 1, "only the client's attempt is an upstream attempt of the route"
    assert probes == val(s, "detour_probe_attempts_total", provider="primary", outcome="failure") + 1


def test_probes_are_off_by_default_and_each_provider_writes_its_own_limit(primary, secondary, anthropic_sim):
    """primary sets a probe interval but not `enabled` (default: off); an anthropic provider with
    probes on, down at the same time, shows probes going out meanwhile, with Anthropic's `max_tokens`."""
    primary.faults(status=503)
    anthropic_sim.faults(status=529)
    cfg = probe_config(primary, secondary, interval="300ms", timeout="2s")
    cfg["providers"].append({"name": "claude", "type": "anthropic", "baseURL": anthropic_sim.url,
                             "apiKey": {"value": "sk-ant-SECRET"}, "activeProbes": PROBES})
    cfg["routes"][0]["targets"].insert(1, {"provider": "claude", "model": "claude-3-5-haiku-latest", "priority": 0})
    with serving(cfg) as proxy:
        assert ask(proxy).headers["x-detour-target"] == "secondary/llama-3-8b"   # both breakers open
        assert primary.requests() == 1 and anthropic_sim.requests("/v1/messages") == 1
        wait_until(lambda: metric(proxy, "detour_probe_attempts_total", provider="claude", outcome="failure") >= 3,
                   15, "three probe rounds of the anthropic provider")
        body = anthropic_sim.stats()["lastRequest"]["body"]
        assert body["max_tokens"] == 16 and "max_completion_tokens" not in body
        assert primary.requests() == 1, "no probe without activeProbes.enabled"
        assert metric(proxy, "detour_probe_attempts_total", provider="primary", outcome="failure") == 0
