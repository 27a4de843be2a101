"""Streaming failover: failures before the first token are invisible; later ones are never disguised."""

from __future__ import annotations

import asyncio
import time

import httpx
import openai
import pytest

from support import ProxyServer, chat_body, two_provider_config

CANONICAL = "The quick brown fox jumps over the lazy dog."


def stream_text(proxy: ProxyServer, **kw) -> tuple[str, dict]:
    c = openai.OpenAI(base_url=proxy.v1, api_key="x", max_retries=0)
    with c.chat.completions.with_streaming_response.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], stream=True, **kw) as resp:
        headers = dict(resp.headers)
        text = "".join(ch.choices[0].delta.content or "" for ch in resp.parse() if ch.choices)
    return text, headers


def test_healthy_stream_is_relayed_whole(primary, secondary):
    with ProxyServer(two_provider_config(primary, secondary)) as proxy:
        text, headers = stream_text(proxy)
    assert text == CANONICAL
    assert headers["x-detour-target"] == "primary/gpt-4o-mini"
    assert headers["content-type"].startswith("text/event-stream")


@pytest.mark.parametrize("fault", [
    {"status": 503},
    {"reset": True},
    {"inbandError": {"afterChunks": 0, "type": "server_error"}},
    {"malformed": "sse"},
    {"cutAfterChunks": 0},
], ids=["503", "reset", "inband-error", "malformed-sse", "cut-before-first-token"])
def test_failure_before_first_token_is_invisible(primary, secondary, fault):
    primary.faults(**fault)
    with ProxyServer(two_provider_config(primary, secondary)) as proxy:
        c = openai.OpenAI(base_url=proxy.v1, api_key="x", max_retries=0)
        with c.chat.completions.with_streaming_response.create(
                model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], stream=True) as resp:
            assert resp.headers["x-detour-target"] == "secondary/llama-3-8b"
            raw = resp.read().decode()
    # One clean stream from the fallback: no error, no trace of the failed attempt, one [DONE].
    assert raw.count("data: [DONE]") == 1
    assert "error" not in raw
    chunks = [line for line in raw.splitlines() if line.startswith("data: {")]
    assert len({c.split('"id":"', 1)[1].split('"', 1)[0] for c in chunks}) == 1
    assert primary.requests() >= 1


def test_first_token_too_late_fails_over_within_first_token_timeout(primary, secondary):
    primary.faults(ttft=5)
    cfg = two_provider_config(primary, secondary, retry={"attempts": 1})
    cfg["providers"][0]["timeouts"] = {"firstToken": "500ms"}
    with ProxyServer(cfg) as proxy:
        t0 = time.monotonic()
        text, headers = stream_text(proxy)
        elapsed = time.monotonic() - t0
    assert headers["x-detour-target"] == "secondary/llama-3-8b"
    assert text == CANONICAL
    assert 0.5 <= elapsed < 1.5


def test_cut_after_tokens_raises_in_the_sdk_by_default(primary, secondary):
    primary.faults(cutAfterChunks=3)
    with ProxyServer(two_provider_config(primary, secondary)) as proxy:
        c = openai.OpenAI(base_url=proxy.v1, api_key="x", max_retries=0)
        received = []
        with pytest.raises(openai.APIError) as exc:
            for ch in c.chat.completions.create(model="gpt-4o-mini", stream=True,
                                                messages=[{"role": "user", "content": "hi"}]):
                received.append(ch.choices[0].delta.content or "" if ch.choices else "")
        assert "upstream_stream_error" in str(exc.value) or "failed after 3 chunks" in str(exc.value)
        assert "".join(received) != CANONICAL
        metrics = httpx.get(proxy.url + "/metrics").text
        assert 'detour_streams_cut_total{provider="primary",route="chat"} 1.0' in metrics
    assert secondary.requests() == 0


def test_cut_after_tokens_raw_stream_has_error_event_and_no_done(primary, secondary):
    primary.faults(resetAfterChunks=2)
    with ProxyServer(two_provider_config(primary, secondary)) as proxy:
        raw = httpx.post(proxy.v1 + "/chat/completions", json=chat_body(stream=True), timeout=10).text
    assert "data: [DONE]" not in raw
    assert '"type":"upstream_stream_error"' in raw
    assert '"chunks_delivered":2' in raw


def test_continue_mode_stitches_the_answer_from_an_openai_compatible_fallback(primary, secondary):
    primary.faults(cutAfterChunks=3)
    cfg = two_provider_config(primary, secondary, streamFailover="continue")
    cfg["providers"][1]["continuation"] = "prefill"
    with ProxyServer(cfg) as proxy:
        c = openai.OpenAI(base_url=proxy.v1, api_key="x", max_retries=0)
        ids, models, parts = set(), set(), []
        for ch in c.chat.completions.create(model="gpt-4o-mini", stream=True,
                                            messages=[{"role": "user", "content": "hi"}]):
            ids.add(ch.id)
            models.add(ch.model)
            if ch.choices:
                parts.append(ch.choices[0].delta.content or "")
    assert "".join(parts) == CANONICAL
    assert len(ids) == 1 and len(models) == 1
    last = secondary.stats()["lastRequest"]["body"]
    assert last["messages"][-1]["role"] == "assistant"


def test_continue_mode_stitches_the_answer_from_an_anthropic_fallback(primary, anthropic_sim):
    primary.faults(cutAfterChunks=4)
    cfg = {
        "providers": [
            {"name": "primary", "type": "openai", "baseURL": primary.v1, "apiKey": {"value": "k1"}},
            {"name": "claude", "type": "anthropic", "baseURL": anthropic_sim.url, "apiKey": {"value": "k2"}},
        ],
        "routes": [{"name": "chat", "match": {"models": ["gpt-4o-mini"]}, "streamFailover": "continue",
                    "targets": [{"provider": "primary", "model": "gpt-4o-mini"},
                                {"provider": "claude", "model": "claude-3-5-haiku-latest", "priority": 1}]}],
    }
    with ProxyServer(cfg) as proxy:
        c = openai.OpenAI(base_url=proxy.v1, api_key="x", max_retries=0)
        with c.chat.completions.with_streaming_response.create(
                model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], stream=True) as resp:
            raw = resp.read().decode()
    assert ": detour-continuation from=primary/gpt-4o-mini to=claude/claude-3-5-haiku-latest" in raw
    text = "".join(
        (__import__("json").loads(line[6:])["choices"] or [{"delta": {}}])[0]["delta"].get("content") or ""
        for line in raw.splitlines() if line.startswith("data: {"))
    assert text == CANONICAL
    assert raw.rstrip().endswith("data: [DONE]")


def test_async_sdk_stream_fails_over_before_first_token(primary, secondary):
    primary.faults(status=500)

    async def go(url: str) -> str:
        c = openai.AsyncOpenAI(base_url=url, api_key="x", max_retries=0)
        out = []
        async for ch in await c.chat.completions.create(model="gpt-4o-mini", stream=True,
                                                        messages=[{"role": "user", "content": "hi"}]):
            if ch.choices:
                out.append(ch.choices[0].delta.content or "")
        return "".join(out)

    with ProxyServer(two_provider_config(primary, secondary)) as proxy:
        assert asyncio.run(go(proxy.v1)) == CANONICAL


def test_client_closing_a_stream_closes_the_upstream_within_a_second(primary, secondary):
    primary.faults(chunkDelay=0.2)
    with ProxyServer(two_provider_config(primary, secondary)) as proxy:
        with httpx.stream("POST", proxy.v1 + "/chat/completions", json=chat_body(stream=True), timeout=10) as r:
            seen = 0
            for line in r.iter_lines():
                if line.startswith("data: {") and '"content"' in line:
                    seen += 1
                    if seen == 3:
                        break
        t0 = time.monotonic()
        primary.wait("streamsClientClosed", 1, timeout=1.0)
        assert time.monotonic() - t0 < 1.0


def test_stalled_stream_after_tokens_is_cut_by_idle_timeout(primary, secondary):
    primary.faults(stallAfterChunks=2)
    cfg = two_provider_config(primary, secondary)
    cfg["providers"][0]["timeouts"] = {"streamIdle": "300ms"}
    with ProxyServer(cfg) as proxy:
        t0 = time.monotonic()
        raw = httpx.post(proxy.v1 + "/chat/completions", json=chat_body(stream=True), timeout=10).text
        elapsed = time.monotonic() - t0
    assert '"type":"upstream_stream_error"' in raw and "data: [DONE]" not in raw
    assert elapsed < 2


def test_anthropic_overloaded_before_first_delta_fails_over(primary, anthropic_sim):
    anthropic_sim.faults(inbandError={"afterChunks": 0, "type": "overloaded_error"})
    cfg = {
        "providers": [
            {"name": "claude", "type": "anthropic", "baseURL": anthropic_sim.url, "apiKey": {"value": "k2"}},
            {"name": "primary", "type": "openai", "baseURL": primary.v1, "apiKey": {"value": "k1"}},
        ],
        "routes": [{"name": "chat", "match": {"models": ["gpt-4o-mini"]},
                    "targets": [{"provider": "claude", "model": "claude-3-5-haiku-latest"},
                                {"provider": "primary", "model": "gpt-4o-mini", "priority": 1}]}],
    }
    with ProxyServer(cfg) as proxy:
        text, headers = stream_text(proxy)
    assert text == CANONICAL
    assert headers["x-detour-target"] == "primary/gpt-4o-mini"
