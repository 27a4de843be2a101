"""Streaming failover: failures before the first token are invisible; later ones are never disguised."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from dataclasses import dataclass, field
from typing import Any

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from support import ProxyServer, chat_body, two_provider_config

CANONICAL = "The quick brown fox jumps over the lazy dog."
MESSAGES = [{"role": "user", "content": "hi"}]
SDKS = ["sync", "async"]


@dataclass
class Streamed:
    """What a user of the official SDK saw of one streamed completion."""

    headers: dict[str, str] = field(default_factory=dict)
    parts: list[str] = field(default_factory=list)   # content deltas, in order
    ids: set[str] = field(default_factory=set)
    models: set[str] = field(default_factory=set)
    error: openai.APIError | None = None             # what the SDK raised while iterating
    closed_at: float = 0.0                           # monotonic time the client closed the stream

    @property
    def text(self) -> str:
        return "".join(self.parts)

    def add(self, ch: Any) -> int:
        """Record one chunk; returns the number of content chunks seen so far."""
        self.ids.add(ch.id)
        self.models.add(ch.model)
        if ch.choices and ch.choices[0].delta.content:
            self.parts.append(ch.choices[0].delta.content)
        return len(self.parts)


def sdk_stream(proxy: ProxyServer, sdk: str, stop_after: int | None = None, **kw: Any) -> Streamed:
    """Stream one chat completion with `openai.OpenAI` ("sync") or `openai.AsyncOpenAI` ("async").
    `stop_after`: close the stream after that many content chunks, as a user breaking out would."""
    if sdk == "sync":
        return _sync_stream(proxy, stop_after, kw)
    return asyncio.run(_async_stream(proxy, stop_after, kw))


def _sync_stream(proxy: ProxyServer, stop_after: int | None, kw: dict[str, Any]) -> Streamed:
    out = Streamed()
    with openai.OpenAI(base_url=proxy.v1, api_key="x", max_retries=0) as c:
        stream = c.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, stream=True, **kw)
        out.headers = dict(stream.response.headers)
        try:
            for ch in stream:
                if out.add(ch) == stop_after:
                    break
        except openai.APIError as exc:
            out.error = exc
        finally:
            stream.close()
            out.closed_at = time.monotonic()
    return out


async def _async_stream(proxy: ProxyServer, stop_after: int | None, kw: dict[str, Any]) -> Streamed:
    out = Streamed()
    async with openai.AsyncOpenAI(base_url=proxy.v1, api_key="x", max_retries=0) as c:
        stream = await c.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, stream=True, **kw)
        out.headers = dict(stream.response.headers)
        try:
            async for ch in stream:
                if out.add(ch) == stop_after:
                    break
        except openai.APIError as exc:
            out.error = exc
        finally:
            await stream.close()
            out.closed_at = time.monotonic()
    return out


def metric(proxy: ProxyServer, name: str, **labels: str) -> float:
    """One sample from /metrics; 0 when that labelled child does not exist."""
    for fam in text_string_to_metric_families(httpx.get(proxy.url + "/metrics", timeout=5).text):
        for sample in fam.samples:
            if sample.name == name and sample.labels == labels:
                return sample.value
    return 0.0


def sse_chunks(raw: str) -> list[dict[str, Any]]:
    """The completion chunks of a raw SSE body (not the error event)."""
    docs = (json.loads(line[6:]) for line in raw.splitlines() if line.startswith("data: {"))
    return [d for d in docs if "error" not in d]


def sse_text(raw: str) -> str:
    return "".join((c["choices"] or [{"delta": {}}])[0]["delta"].get("content") or "" for c in sse_chunks(raw))


def error_event(raw: str) -> dict[str, Any]:
    """The `error` object of the stream's final `event: error` SSE event."""
    head, sep, tail = raw.rpartition("event: error\ndata: ")
    assert sep, f"no error event in {raw[-300:]!r}"
    return json.loads(tail.split("\n", 1)[0])["error"]


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
    assert len({c["id"] for c in sse_chunks(raw)}) == 1
    assert sse_text(raw) == CANONICAL
    assert primary.requests() >= 1


@pytest.mark.parametrize("sdk", SDKS)
def test_first_token_too_late_fails_over_within_first_token_timeout(primary, secondary, sdk):
    primary.faults(ttft=5)
    cfg = two_provider_config(primary, secondary, retry={"attempts": 1})
    cfg["providers"][0]["timeouts"] = {"firstToken": "500ms"}
    with ProxyServer(cfg) as proxy:
        t0 = time.monotonic()
        got = sdk_stream(proxy, sdk)
        elapsed = time.monotonic() - t0
    assert got.error is None
    assert got.headers["x-detour-target"] == "secondary/llama-3-8b"
    assert got.text == CANONICAL
    assert 0.5 <= elapsed < 1.5


def test_stream_idle_does_not_bound_the_wait_for_the_first_token(primary, secondary):
    # The README: firstToken bounds the wait for the first token; streamIdle applies once tokens flow.
    primary.faults(ttft=0.6)
    cfg = two_provider_config(primary, secondary)
    cfg["providers"][0]["timeouts"] = {"streamIdle": "200ms", "firstToken": "5s"}
    with ProxyServer(cfg) as proxy:
        text, headers = stream_text(proxy)
    assert headers["x-detour-target"] == "primary/gpt-4o-mini"
    assert text == CANONICAL
    assert secondary.requests() == 0


@pytest.mark.parametrize("sdk", SDKS)
def test_cut_after_tokens_raises_in_the_sdk_by_default(primary, secondary, sdk):
    primary.faults(cutAfterChunks=3)
    with ProxyServer(two_provider_config(primary, secondary)) as proxy:
        got = sdk_stream(proxy, sdk)
        cut = metric(proxy, "detour_streams_cut_total", route="chat", provider="primary")
    assert isinstance(got.error, openai.APIError)
    assert got.error.body["type"] == "upstream_stream_error"
    assert got.error.body["target"] == "primary/gpt-4o-mini"
    assert got.error.body["chunks_delivered"] == 3 == len(got.parts)
    assert CANONICAL.startswith(got.text) and got.text != CANONICAL
    assert cut == 1
    assert secondary.requests() == 0


def test_cut_after_tokens_raw_stream_has_error_event_and_no_done(primary, secondary):
    primary.faults(resetAfterChunks=2)
    with ProxyServer(two_provider_config(primary, secondary)) as proxy:
        raw = httpx.post(proxy.v1 + "/chat/completions", json=chat_body(stream=True), timeout=10).text
        # The first token did arrive, so the reset stream still counts for time-to-first-token.
        ttft_count = metric(proxy, "detour_time_to_first_token_seconds_count", route="chat", provider="primary")
    assert "data: [DONE]" not in raw
    err = error_event(raw)
    assert err["type"] == "upstream_stream_error" and err["code"] == "stream_interrupted"
    assert err["target"] == "primary/gpt-4o-mini"
    assert err["chunks_delivered"] == 2
    assert ttft_count == 1


@pytest.mark.parametrize("sdk", SDKS)
def test_continue_mode_stitches_the_answer_from_an_openai_compatible_fallback(primary, secondary, sdk):
    primary.faults(cutAfterChunks=3)
    cfg = two_provider_config(primary, secondary, streamFailover="continue")
    cfg["providers"][1]["continuation"] = "prefill"
    with ProxyServer(cfg) as proxy:
        got = sdk_stream(proxy, sdk)
    assert got.error is None
    assert got.text == CANONICAL
    assert got.ids == {next(iter(got.ids))} and got.models == {"gpt-4o-mini"}
    last = secondary.stats()["lastRequest"]["body"]
    assert last["messages"][-1]["role"] == "assistant"


def three_provider_config(primary, secondary, azure) -> dict[str, Any]:
    """Continue mode with two OpenAI-compatible continuation targets behind the primary."""
    cfg = two_provider_config(primary, secondary, streamFailover="continue")
    cfg["providers"][1]["continuation"] = "prefill"
    cfg["providers"].append({"name": "azure", "type": "openai-compatible", "baseURL": azure.v1,
                             "apiKey": {"value": "k3"}, "continuation": "prefill"})
    cfg["routes"][0]["targets"].append({"provider": "azure", "model": "mistral-7b", "priority": 2})
    return cfg


def test_continuation_targets_failing_before_their_first_token_leave_the_cut_on_the_primary(
        primary, secondary, azure):
    primary.faults(cutAfterChunks=3)
    secondary.faults(status=503)
    azure.faults(status=503)
    with ProxyServer(three_provider_config(primary, secondary, azure)) as proxy:
        raw = httpx.post(proxy.v1 + "/chat/completions", json=chat_body(stream=True), timeout=10).text
        got = sdk_stream(proxy, "sync")
        cuts = {p: metric(proxy, "detour_streams_cut_total", route="chat", provider=p)
                for p in ("primary", "secondary", "azure")}
    assert secondary.requests() >= 2 and azure.requests() >= 2    # both were asked to continue
    assert "data: [DONE]" not in raw
    err = error_event(raw)
    assert err["type"] == "upstream_stream_error"
    assert err["target"] == "primary/gpt-4o-mini" and err["chunks_delivered"] == 3
    assert err["message"].startswith("Upstream stream from primary/gpt-4o-mini failed after 3 chunks")
    assert "503" not in err["message"]     # the cut is blamed on the primary's break, not a continuer's 503
    assert isinstance(got.error, openai.APIError) and got.error.body["target"] == "primary/gpt-4o-mini"
    assert got.text == sse_text(raw) != CANONICAL
    assert cuts == {"primary": 2, "secondary": 0, "azure": 0}


def test_a_later_continuation_names_the_target_that_cut_the_stream(primary, secondary, azure):
    primary.faults(cutAfterChunks=3)
    secondary.faults(status=503)            # cannot continue: fails before its first token
    with ProxyServer(three_provider_config(primary, secondary, azure)) as proxy:
        raw = httpx.post(proxy.v1 + "/chat/completions", json=chat_body(stream=True), timeout=10).text
        continued = metric(proxy, "detour_stream_continuations_total", route="chat",
                           from_provider="primary", to_provider="azure")
    assert ": detour-continuation from=primary/gpt-4o-mini to=azure/mistral-7b delivered_chunks=3\n" in raw
    assert sse_text(raw) == CANONICAL
    chunks = sse_chunks(raw)
    assert {c["id"] for c in chunks} == {chunks[0]["id"]} and {c["model"] for c in chunks} == {"gpt-4o-mini"}
    assert raw.rstrip().endswith("data: [DONE]") and "error" not in raw
    assert continued == 1


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
    assert sse_text(raw) == CANONICAL
    # The Anthropic continuation's own chunks carry its message id and model; the relay rewrites
    # them so the client sees one completion: the primary's id and the model it asked for.
    chunks = sse_chunks(raw)
    assert {c["id"] for c in chunks} == {chunks[0]["id"]} and {c["model"] for c in chunks} == {"gpt-4o-mini"}
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


@pytest.mark.parametrize("sdk", SDKS)
def test_client_closing_a_stream_closes_the_upstream_within_a_second(primary, secondary, sdk):
    primary.faults(chunkDelay=0.2)
    with ProxyServer(two_provider_config(primary, secondary)) as proxy:
        got = sdk_stream(proxy, sdk, stop_after=3)
        assert got.text == CANONICAL[:len(got.text)] and len(got.parts) == 3
        primary.wait("streamsClientClosed", 1, timeout=1.0)
        assert time.monotonic() - got.closed_at < 1.0
        assert primary.stats()["streamsCompleted"] == 0


def test_stalled_stream_after_tokens_is_cut_by_idle_timeout(primary, secondary):
    primary.faults(stallAfterChunks=2)
    cfg = two_provider_config(primary, secondary)
    cfg["providers"][0]["timeouts"] = {"streamIdle": "300ms"}
    with ProxyServer(cfg) as proxy:
        t0 = time.monotonic()
        raw = httpx.post(proxy.v1 + "/chat/completions", json=chat_body(stream=True), timeout=10).text
        elapsed = time.monotonic() - t0
        timeouts = metric(proxy, "detour_upstream_attempts_total", route="chat", provider="primary",
                          model="gpt-4o-mini", result="timeout")
        ttft_count = metric(proxy, "detour_time_to_first_token_seconds_count", route="chat", provider="primary")
        ewma = proxy.state.gateway.routes[0].targets[0].state.ewma_latency
    err = error_event(raw)
    assert err["target"] == "primary/gpt-4o-mini" and err["chunks_delivered"] == 2
    assert "data: [DONE]" not in raw
    assert elapsed < 2
    # The stall is a timeout of that target, and it is judged by its (fast) first token, not
    # by the whole stalled duration.
    assert timeouts == 1
    assert ttft_count == 1
    assert ewma is not None and ewma < 0.3


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


async def _endless_line(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """An upstream whose stream is one line that never ends: 2 MiB and still no newline."""
    try:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nconnection: close\r\n\r\n"
                     b"data: " + b"x" * (2 << 20))
        await writer.drain()
        await reader.read()            # hold the stream open until the proxy hangs up
    except ConnectionError:
        pass
    finally:
        writer.close()


def test_an_event_too_large_to_buffer_fails_over_before_the_first_token(primary, secondary):
    sock = socket.create_server(("127.0.0.1", 0))
    cfg = two_provider_config(primary, secondary)
    cfg["providers"][0]["baseURL"] = f"http://127.0.0.1:{sock.getsockname()[1]}/v1"
    cfg["providers"][0]["timeouts"] = {"firstToken": "2s"}
    with ProxyServer(cfg) as proxy:
        server = proxy.call(lambda: asyncio.start_server(_endless_line, sock=sock))
        try:
            text, headers = stream_text(proxy)
            # A malformed stream of that target, noticed at the bound, not a wait for firstToken.
            malformed = metric(proxy, "detour_upstream_attempts_total", route="chat", provider="primary",
                               model="gpt-4o-mini", result="stream")
        finally:
            async def stop() -> None:
                server.close()
            proxy.call(stop)
    assert headers["x-detour-target"] == "secondary/llama-3-8b"
    assert text == CANONICAL
    assert malformed == 1
