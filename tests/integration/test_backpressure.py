"""A slow client never counts against a healthy provider (issue 13).

Five clients that stop reading their streams for longer than the provider's `timeouts.total`
block the relay's sends (ASGI backpressure). That time is theirs: the streams complete once
they read again, nothing is recorded against the provider, its breaker stays closed and the
next request still goes to it.
"""

from __future__ import annotations

import socket
import threading
import time

import httpx
import orjson
import pytest

from support import ProxyServer, Sim, chat_body, two_provider_config

CHUNKS = 20000   # ~4.5 MB of SSE: far more than the socket buffers between a stalled client and the relay


@pytest.fixture(scope="module")
def long_sim():
    sim = Sim("long", "openai", "--chunks", str(CHUNKS), "--reply", " ".join(["word"] * CHUNKS))
    yield sim
    sim.stop()


def _slow_stream(port: int, pause: float, out: list[bytes]) -> None:
    body = orjson.dumps(chat_body(stream=True))
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)   # a small window: the relay blocks soon
    s.connect(("127.0.0.1", port))
    s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
              b"Connection: close\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
    s.recv(1024)
    time.sleep(pause)     # the slow reader: reads nothing for longer than the provider's total timeout
    data = bytearray()
    s.settimeout(20)
    while chunk := s.recv(65536):
        data += chunk
    s.close()
    out.append(bytes(data))


def test_five_slow_readers_do_not_open_a_healthy_breaker(long_sim, secondary):
    cfg = two_provider_config(long_sim, secondary)
    cfg["providers"][0]["timeouts"] = {"total": "1s", "streamIdle": "20s"}
    cfg["health"]["breaker"].update(consecutiveFailures=3)
    with ProxyServer(cfg) as proxy:
        out: list[bytes] = []
        threads = [threading.Thread(target=_slow_stream, args=(proxy.port, 2.0, out)) for _ in range(5)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert len(out) == 5
        for data in out:
            assert data.endswith(b"data: [DONE]\n\n0\r\n\r\n") or b"data: [DONE]\n\n" in data[-64:], data[-300:]
        now = proxy.state.clock.now()
        for key, st in proxy.state.registry.items():
            if key.provider == "primary":
                assert st.window_stats(now)[1] == 0, "a slow client's stall counted against the provider"
                assert st.breaker_state(now).value == "closed"
        r = httpx.post(proxy.v1 + "/chat/completions", json=chat_body(), timeout=10)
        assert r.headers["x-detour-target"] == "primary/gpt-4o-mini"

