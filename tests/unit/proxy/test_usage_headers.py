"""Provider rate-limit headers sideline a target before any 429; token reservations."""

from __future__ import annotations

from types import SimpleNamespace

import orjson
import pytest
from multidict import CIMultiDict, CIMultiDictProxy

from detour_proxy import config
from detour_proxy.adapters import adapter_for
from detour_proxy.policy import HealthRegistry, TargetKey
from detour_proxy.engine import _usage as usage


def target(ptype="openai", max_cooldown=300.0, limits=None):
    prov = config.Provider(name="p", type=ptype, baseURL="https://p.example/v1")
    reg = HealthRegistry(config.Health(breaker=config.Breaker(cooldown=1.0, maxCooldown=max_cooldown)))
    key = TargetKey("p", "m", prov.base_url)
    if limits:
        reg.set_limits({key: limits})
    st = reg.state(key)
    return SimpleNamespace(provider=SimpleNamespace(config=prov, adapter=adapter_for(prov)), state=st)


def h(**kv):
    return CIMultiDictProxy(CIMultiDict({k.replace("_", "-"): v for k, v in kv.items()}))


def test_exhausted_requests_sideline_until_reset():
    tr = target()
    assert usage.check_rate_headers(tr, h(x_ratelimit_remaining_requests="3", x_ratelimit_reset_requests="5s"), 10.0) is None
    assert tr.state.admits(10.0)
    until = usage.check_rate_headers(tr, h(**{"X-RateLimit-Remaining-Requests": "0",
                                              "x-ratelimit-reset-requests": "5s"}), 10.0)
    assert until == 15.0
    assert not tr.state.admits(14.99) and tr.state.admits(15.0)
    assert tr.state.available_at(12.0) == 15.0


def test_exhausted_tokens_use_the_token_reset_and_max_cooldown_bounds_it():
    tr = target(max_cooldown=30.0)
    until = usage.check_rate_headers(tr, h(x_ratelimit_remaining_requests="10", x_ratelimit_remaining_tokens="0",
                                           x_ratelimit_reset_requests="1s", x_ratelimit_reset_tokens="6m0s"), 0.0)
    assert until == 30.0


def test_no_headers_or_no_reset():
    tr = target()
    assert usage.check_rate_headers(tr, h(content_type="application/json"), 0.0) is None
    assert usage.check_rate_headers(tr, h(x_ratelimit_remaining_requests="0"), 0.0) == usage.DEFAULT_RESET


def test_anthropic_headers():
    tr = target("anthropic")
    import datetime as dt
    reset = (dt.datetime.now(dt.timezone.utc) + dt.timedelta(seconds=20)).isoformat()
    until = usage.check_rate_headers(tr, h(**{"anthropic-ratelimit-requests-remaining": "0",
                                              "anthropic-ratelimit-requests-reset": reset}), 100.0)
    assert until is not None and 118.0 < until <= 120.0


def test_anthropic_output_tokens_exhausted_sidelines_until_their_reset():
    tr = target("anthropic")
    import datetime as dt
    soon = dt.datetime.now(dt.timezone.utc)
    until = usage.check_rate_headers(tr, h(**{
        "anthropic-ratelimit-requests-remaining": "40",
        "anthropic-ratelimit-requests-reset": (soon + dt.timedelta(seconds=2)).isoformat(),
        "anthropic-ratelimit-input-tokens-remaining": "30000",
        "anthropic-ratelimit-output-tokens-remaining": "0",
        "anthropic-ratelimit-output-tokens-reset": (soon + dt.timedelta(seconds=20)).isoformat()}), 100.0)
    assert until is not None and 118.0 < until <= 120.0
    assert not tr.state.admits(117.0) and tr.state.admits(120.0)


def test_token_reservation_and_settlement():
    tr = target(limits=config.Limits(tokens_per_minute=100))
    ctx = SimpleNamespace(raw=b"x" * 400)          # ~100 tokens estimated
    meter = usage.reserve(tr, ctx, 0.0)
    assert meter.estimate == 100 and not tr.state.admits(0.0)
    usage.settle(meter, {"prompt_tokens": 20, "completion_tokens": 10, "total_tokens": 30})
    assert tr.state.admits(0.0) and tr.state.limiter.usage(0.0)[1] == 30
    # streams: estimate + delivered chars / 4
    sm = usage.reserve(tr, ctx, 1.0)
    usage.settle_stream(sm, 80)
    assert tr.state.limiter.usage(1.0)[1] == 30 + 100 + 20
    # no token limit: nothing reserved
    assert usage.reserve(target(), ctx, 0.0) is None


@pytest.mark.parametrize("wait,header", [(60.0, b"60"), (59.2, b"60"), (0.3, b"1"), (0.0, b"1")])
def test_no_target_available_says_when_to_come_back(wait, header):
    from detour_proxy.engine import OPENAI
    from detour_proxy.engine._replies import failure_reply
    from detour_proxy.policy import GiveUp
    route = SimpleNamespace(route=SimpleNamespace(name="chat"), targets=[object()],
                            embeddings_eligible=lambda i: True)
    ctx = SimpleNamespace(attempts=0, unsupported=None, kind="chat", route=route, codec=OPENAI)
    reply = failure_reply(ctx, GiveUp("unavailable", None, wait), None)
    assert reply.status == 503 and dict(reply.headers)[b"retry-after"] == header
    err = orjson.loads(reply.body)["error"]
    assert err["code"] == "no_target_available" and err["type"] == "upstream_error" and err["message"]
    # unknown (e.g. a half-open target with its probe out): no header rather than a guess
    unknown = failure_reply(ctx, GiveUp("unavailable", None, None), None)
    assert unknown.status == 503 and b"retry-after" not in dict(unknown.headers)
