"""Broken upstream responses: connection resets, half-written bodies, malformed JSON and SSE,
in-band errors, stalls. Each must become a failover (before the first token) or a clean error
(after it: an SSE error event and no [DONE]), never a crash or a hang. /healthz is polled
throughout and must keep answering fast.

The primary's breaker is disabled here so that every request really meets the fault.
"""

from __future__ import annotations

import asyncio
import json
import time

import aiohttp
import httpx
import pytest

from detour_sim.text import DEFAULT_REPLY
from harness import ProxyProcess, chat, gateway_config, record_result, scaled

N = scaled(16, 200)          # requests per case
CONCURRENCY = 8
CLIENT_TIMEOUT = 10.0        # anything slower is a hang
TIMEOUTS = {"connect": "1s", "firstToken": "1s", "streamIdle": "1s", "total": "2s"}
NO_BREAKER = {"consecutiveFailures": 1000000, "minRequests": 1000000}

# Mid-stream faults get a chunk delay so the first token reaches the client before the fault
# (without it, chunks and fault can arrive in one read, before the gate: an invisible failover).
MID = {"chunkDelay": 0.02}
# (case id, fault on the primary, stream?, expected: failover | clean_error)
CASES = [
    ("unary-reset", {"reset": True}, False, "failover"),
    ("unary-malformed-json", {"malformed": "body"}, False, "failover"),
    ("unary-500", {"status": 500}, False, "failover"),
    ("unary-timeout", {"latency": 5}, False, "failover"),
    ("stream-reset-before-headers", {"reset": True}, True, "failover"),
    ("stream-503", {"status": 503}, True, "failover"),
    ("stream-malformed-body", {"malformed": "body"}, True, "failover"),
    ("stream-reset-after-0-chunks", {"resetAfterChunks": 0}, True, "failover"),
    ("stream-cut-after-0-chunks", {"cutAfterChunks": 0}, True, "failover"),
    ("stream-malformed-sse-first", {"malformed": "sse", "malformedAfterChunks": 0}, True, "failover"),
    ("stream-inband-error-first", {"inbandError": {"afterChunks": 0}}, True, "failover"),
    ("stream-no-first-token", {"stallAfterChunks": 0}, True, "failover"),
    ("stream-reset-mid", {"resetAfterChunks": 2, **MID}, True, "clean_error"),
    ("stream-cut-mid", {"cutAfterChunks": 2, **MID}, True, "clean_error"),
    ("stream-malformed-sse-mid", {"malformed": "sse", "malformedAfterChunks": 2, **MID}, True, "clean_error"),
    ("stream-inband-error-mid", {"inbandError": {"afterChunks": 2}, **MID}, True, "clean_error"),
    ("stream-stall-mid", {"stallAfterChunks": 2, **MID}, True, "clean_error"),
]


async def judge(session: aiohttp.ClientSession, url: str, stream: bool) -> tuple[str, str, float]:
    """-> (verdict, detail, seconds): verdict is failover | clean_error | unclean | hang."""
    t0 = time.monotonic()
    try:
        async with asyncio.timeout(CLIENT_TIMEOUT):
            async with session.post(url + "/v1/chat/completions", json=chat(stream=stream)) as r:
                status, target, raw = r.status, r.headers.get("x-detour-target", ""), await r.read()
    except TimeoutError:
        return "hang", "", time.monotonic() - t0
    except aiohttp.ClientError as exc:
        return "unclean", f"transport {type(exc).__name__}", time.monotonic() - t0
    dt = time.monotonic() - t0
    if not stream:
        doc = json.loads(raw)
        if status == 200 and doc["choices"][0]["message"]["content"] == DEFAULT_REPLY:
            return "failover", target, dt
        if status >= 400 and doc.get("error", {}).get("message"):
            return "clean_error", f"{status} {doc['error'].get('code')}", dt
        return "unclean", f"{status} {raw[:200]!r}", dt
    if status != 200:
        doc = json.loads(raw)
        return ("clean_error" if doc.get("error") else "unclean"), f"{status}", dt
    events = [e for e in raw.decode().split("\n\n") if e.strip()]
    if events[-1] == "data: [DONE]":
        text = "".join(
            (json.loads(e[6:])["choices"] or [{}])[0].get("delta", {}).get("content") or ""
            for e in events[:-1] if e.startswith("data: {"))
        return ("failover" if text == DEFAULT_REPLY else "unclean"), f"{target} text={text!r}", dt
    if events[-1].startswith("event: error\ndata: ") and b"data: [DONE]" not in raw:
        err = json.loads(events[-1].split("data: ", 1)[1])["error"]
        ok = err["code"] == "stream_interrupted" and err["chunks_delivered"] >= 1
        return ("clean_error" if ok else "unclean"), err["code"], dt
    return "unclean", f"stream ended without [DONE] or error: {events[-1][:200]!r}", dt


async def healthz_poller(url: str, out: list[float]) -> None:
    async with httpx.AsyncClient(timeout=5) as c:
        while True:
            t0 = time.monotonic()
            r = await c.get(url + "/healthz")
            assert r.status_code == 200
            out.append(time.monotonic() - t0)
            await asyncio.sleep(0.1)


@pytest.mark.timeout(scaled(90, 600))
async def test_broken_upstream_responses_fail_over_or_end_cleanly(sim_a, sim_b, tmp_path):
    primary, fallback = sim_a, sim_b
    cfg = gateway_config(primary, fallback, timeouts=TIMEOUTS, breaker=NO_BREAKER)
    figures: dict[str, dict[str, object]] = {}
    health: list[float] = []
    with ProxyProcess(cfg, tmp_path) as proxy:
        poller = asyncio.create_task(healthz_poller(proxy.url, health))
        try:
            async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=CONCURRENCY)) as session:
                for case, fault, stream, expected in CASES:
                    primary.reset()
                    primary.faults(**fault)
                    sem = asyncio.Semaphore(CONCURRENCY)

                    async def one() -> tuple[str, str, float]:
                        async with sem:
                            return await judge(session, proxy.url, stream)

                    n = N if "timeout" not in case else CONCURRENCY
                    results = await asyncio.gather(*(one() for _ in range(n)))
                    verdicts = [v for v, _, _ in results]
                    injected = primary.stats()["faultsInjected"]
                    assert verdicts == [expected] * n, f"{case}: expected {expected}, got {results[:5]}"
                    assert injected >= n, f"{case}: the fault hit only {injected} of {n} requests"
                    if expected == "failover":
                        assert all(d.startswith(fallback.name) for _, d, _ in results), (case, results[:3])
                    figures[case] = {"requests": n, "verdict": expected,
                                     "max_s": round(max(t for _, _, t in results), 2)}
                    assert poller.done() is False, "/healthz poller failed"
        finally:
            poller.cancel()
        primary.clear()
        # Nothing left hanging: no upstream request still open on either side.
        for sim in (primary, fallback):
            r = sim.admin.get("/_sim/wait", params={"key": "inFlight", "atMost": 0, "timeout": 5}, timeout=10)
            assert r.status_code == 200, f"{sim.name} still has requests in flight: {r.text}"
        m = proxy.metrics()
        assert m.get("detour_in_flight_requests") == 0
        proxy.assert_healthy()
        # And it still serves normally afterwards.
        assert httpx.post(proxy.url + "/v1/chat/completions", json=chat(), timeout=5).headers["x-detour-target"] \
            .startswith(primary.name)
    assert health and max(health) < 1.0, f"/healthz took up to {max(health):.2f}s during the faults"
    record_result("upstream_faults", {
        "cases": figures, "healthz_checks": len(health), "healthz_max_ms": round(1000 * max(health), 1),
        "client_errors_on_failover_cases": 0,
        "streams_cut": int(m.get("detour_streams_cut_total")),
    })


@pytest.mark.timeout(scaled(60, 120))
async def test_mid_stream_faults_are_continued_with_stream_failover_continue(sim_a, sim_b, tmp_path):
    """With `streamFailover: continue`, a mid-stream reset/cut becomes a failover too: the
    fallback continues the delivered text and the client gets the whole canonical reply."""
    primary, fallback = sim_a, sim_b
    cfg = gateway_config(primary, fallback, timeouts=TIMEOUTS, breaker=NO_BREAKER,
                         route={"streamFailover": "continue"})
    cfg["providers"][1]["continuation"] = "prefill"
    with ProxyProcess(cfg, tmp_path) as proxy:
        async with aiohttp.ClientSession() as session:
            for fault in ({"resetAfterChunks": 2}, {"cutAfterChunks": 3}, {"stallAfterChunks": 1}):
                primary.faults(**fault)
                results = await asyncio.gather(*(judge(session, proxy.url, True) for _ in range(8)))
                assert [v for v, _, _ in results] == ["failover"] * 8, (fault, results[:3])
        m = proxy.metrics()
        assert m.get("detour_stream_continuations_total") >= 24
        proxy.assert_healthy()
