"""Bad clients: malformed and oversized bodies, slow uploads, thousands of idle connections,
invalid UTF-8, header injection attempts. Each gets a clear 4xx (or is dropped at the HTTP
layer), and the proxy stays responsive throughout.

Raw sockets are used where an HTTP client library would refuse to send the bad input.
The body read timeout is shortened to BODY_TIMEOUT s through `proxy_entry.py` (production:
`handlers.BODY_READ_TIMEOUT` = 30 s).
"""

from __future__ import annotations

import asyncio
import json
import re
import resource
import time

import httpx
import pytest

from harness import ProxyProcess, chat, gateway_config, record_result, scaled

BODY_TIMEOUT = 2.0
MAX_BODY = 65536
IDLE_CONNECTIONS = scaled(2000, 5000)


def _raise_nofile(need: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < need:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(need, hard), hard))
    assert resource.getrlimit(resource.RLIMIT_NOFILE)[0] >= need, "cannot raise the open-files limit"


async def raw(port: int, data: bytes | list[bytes], *, gap: float = 0.0, timeout: float = 10.0) -> tuple[int, dict[str, str], bytes]:
    """Send raw bytes (a list is sent piece by piece, `gap` s apart) and read the response
    until the server closes. Returns (status, lower-cased headers, body); status 0 = closed
    without a response."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    buf = b""
    answered = asyncio.Event()

    async def read_all() -> None:
        # Read while still writing: a server that answers early (408/413) and closes would
        # otherwise reset the connection and the kernel would drop the unread answer.
        nonlocal buf
        while True:
            try:
                chunk = await reader.read(65536)
            except ConnectionError:
                break
            if not chunk:
                break
            buf += chunk
            head, sep, rest = buf.partition(b"\r\n\r\n")
            if sep:
                answered.set()
                m = re.search(rb"(?i)\r\ncontent-length: *(\d+)", head)
                if m and len(rest) >= int(m.group(1)):
                    break

    try:
        async with asyncio.timeout(timeout):
            reading = asyncio.create_task(read_all())
            pieces = data if isinstance(data, list) else [data]
            for i, p in enumerate(pieces):
                if answered.is_set() or reading.done():
                    break
                if i and gap:
                    await asyncio.sleep(gap)   # the scenario: a client trickling its upload
                try:
                    writer.write(p)
                    await writer.drain()
                except ConnectionError:
                    break
            await reading
    finally:
        writer.close()
    if not buf:
        return 0, {}, b""
    head, _, body = buf.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = int(lines[0].split()[1])
    headers: dict[str, str] = {}
    for ln in lines[1:]:
        k, _, v = ln.partition(b":")
        headers[k.decode("latin-1").strip().lower()] = v.decode("latin-1").strip()
    return status, headers, body


def post(body: bytes, *, extra_headers: bytes = b"", content_length: int | None = None) -> bytes:
    cl = len(body) if content_length is None else content_length
    return (b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            b"Connection: close\r\n" + extra_headers + b"Content-Length: " + str(cl).encode() + b"\r\n\r\n" + body)


GOOD = json.dumps(chat()).encode()


@pytest.mark.timeout(scaled(90, 180))
async def test_bad_clients_get_clear_4xx_and_proxy_stays_responsive(sim_a, tmp_path):
    _raise_nofile(2 * IDLE_CONNECTIONS + 1000)
    cfg = gateway_config(sim_a, server={"maxBodyBytes": MAX_BODY})
    figures: dict[str, object] = {}
    with ProxyProcess(cfg, tmp_path, env={"DETOUR_TEST_BODY_READ_TIMEOUT": str(BODY_TIMEOUT)}) as proxy:
        port = proxy.port

        async def expect(case: str, data: bytes | list[bytes], status: int, code: str | None = None,
                         **kw: float) -> dict[str, str]:
            t0 = time.monotonic()
            got, headers, body = await raw(port, data, **kw)
            dt = time.monotonic() - t0
            assert got == status, f"{case}: expected {status}, got {got} {body[:300]!r}"
            if code is not None:
                assert json.loads(body)["error"]["code"] == code, f"{case}: {body[:300]!r}"
            figures[case] = {"status": got, "seconds": round(dt, 2)}
            return headers

        # -- malformed bodies: 400 with an OpenAI-format error --------------------------
        await expect("not_json", post(b"{not json"), 400, "invalid_json")
        await expect("empty_body", post(b""), 400)
        await expect("json_array", post(b"[1,2]"), 400)
        await expect("no_model", post(b'{"messages":[{"role":"user","content":"x"}]}'), 400)
        await expect("empty_messages", post(b'{"model":"gpt-4o-mini","messages":[]}'), 400)
        await expect("bad_message", post(b'{"model":"gpt-4o-mini","messages":["x"]}'), 400)
        await expect("stream_not_bool", post(b'{"model":"gpt-4o-mini","messages":[{"role":"user"}],"stream":"yes"}'), 400)
        await expect("unknown_model", post(json.dumps(chat(model="nope")).encode()), 404)
        # 30,000-deep nesting fits under maxBodyBytes, so the parser itself must refuse it (orjson
        # stops at depth 1024) without a crash or a stack overflow; 100,000-deep is refused for size.
        await expect("deep_nesting", post(b'{"model":"gpt-4o-mini","messages":' + b"[" * 30000 + b"]" * 30000 + b"}"),
                     400, "invalid_json")
        await expect("deep_nesting_oversized", post(b'{"model":"gpt-4o-mini","messages":' + b"[" * 100000
                                                    + b"]" * 100000 + b"}", content_length=None), 413)
        # -- invalid UTF-8 ----------------------------------------------------------------
        await expect("invalid_utf8", post(b'{"model":"gpt-4o-mini","messages":[{"role":"user","content":"\xff\xfe\xc3"}]}'),
                     400, "invalid_json")
        await expect("lone_surrogate", post(b'{"model":"gpt-4o-mini","messages":[{"role":"user","content":"\\ud800"}]}'),
                     400, "invalid_json")
        # -- oversized: refused from Content-Length without reading, or while streaming in --
        await expect("oversized_content_length", post(b"", content_length=50 * 1024 * 1024), 413)
        big = b"x" * (2 * MAX_BODY)
        chunked = (b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                   b"Transfer-Encoding: chunked\r\n\r\n")
        pieces = [chunked] + [b"%x\r\n%s\r\n" % (len(big[i:i + 8192]), big[i:i + 8192])
                              for i in range(0, len(big), 8192)] + [b"0\r\n\r\n"]
        await expect("oversized_chunked", pieces, 413)
        # -- slow uploads ---------------------------------------------------------------------
        body_pieces = [GOOD[i:i + 10] for i in range(0, len(GOOD), 10)]
        head = post(b"", content_length=len(GOOD))
        await expect("slow_upload_completes", [head, *body_pieces], 200, gap=min(0.1, BODY_TIMEOUT / 2 / len(body_pieces)))
        await expect("slow_upload_trickle", [head, *body_pieces], 408, "request_timeout", gap=0.5)
        assert figures["slow_upload_trickle"]["seconds"] < BODY_TIMEOUT + 1.5  # type: ignore[index]
        await expect("headers_then_no_body", head, 408, "request_timeout")
        assert figures["headers_then_no_body"]["seconds"] < BODY_TIMEOUT + 1.5  # type: ignore[index]
        # -- header injection -------------------------------------------------------------------
        injected = []
        # CR, LF and NUL inside a header value are refused by the HTTP parser (400). Other bad
        # request ids are served with a fresh id: the bad value is never echoed or forwarded.
        for case, value, want in [("rid_bare_cr", b"abc\rx-injected: 1", 400), ("rid_bare_lf", b"abc\nx-injected: 1", 400),
                                  ("rid_nul", b"abc\x00def", 400), ("rid_invalid_utf8", b"\xff\xfe\xfd", 200),
                                  ("rid_too_long", b"a" * 5000, 200), ("rid_spaces_quotes", b'a b"c<script>', 200),
                                  ("rid_header_split", b"abc\r\nx-injected: 1", 200)]:
            status, headers, body = await raw(port, post(GOOD, extra_headers=b"X-Request-Id: " + value + b"\r\n"))
            assert status == want, f"{case}: expected {want}, got {status} {body[:200]!r}"
            assert "x-injected" not in headers, f"{case}: header injected into the response"
            if status == 200:
                rid = headers["x-request-id"]
                assert re.fullmatch(r"[0-9a-f]{32}", rid) or (case == "rid_header_split" and rid == "abc"), (case, rid)
                last = sim_a.stats()["lastRequest"]["headers"]
                assert last["x-request-id"] == rid and "x-injected" not in last, (case, last)
            injected.append(f"{case}:{status}")
        figures["header_injection"] = injected
        # -- garbage on the wire -----------------------------------------------------------------
        status, _, _ = await raw(port, b"GARBAGE \x00\xff\r\n\r\n")
        assert status == 400, f"garbage request line: {status}"
        status, _, _ = await raw(port, b"POST /v1/chat/completions HTTP/1.1\r\nContent-Length: abc\r\n\r\n")
        assert status == 400, f"non-numeric Content-Length: {status}"

        # -- a client that leaves mid-request: the upstream call is cancelled ----------------------
        sim_a.faults(latency=3)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(post(GOOD))
        await writer.drain()
        await asyncio.to_thread(sim_a.wait, "inFlight", 1)
        writer.close()
        await asyncio.to_thread(sim_a.wait, "clientClosed", 1, 2.0)
        sim_a.clear()

        # -- thousands of idle connections ---------------------------------------------------------
        idle: list[asyncio.StreamWriter] = []
        rss_before_idle = proxy.rss()
        try:
            for i in range(IDLE_CONNECTIONS):
                _, w = await asyncio.open_connection("127.0.0.1", port)
                if i % 10 == 0:   # a tenth are slowloris-style: a partial request, never finished
                    w.write(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n")
                idle.append(w)
            deadline = time.monotonic() + 10
            while proxy.connections()["client"] < IDLE_CONNECTIONS and time.monotonic() < deadline:
                await asyncio.sleep(0.05)  # bounded poll: the proxy accepts the backlog
            held = proxy.connections()["client"]
            assert held >= IDLE_CONNECTIONS, f"proxy holds only {held} of {IDLE_CONNECTIONS} connections"
            async with httpx.AsyncClient(timeout=5) as c:
                t0 = time.monotonic()
                assert (await c.get(proxy.url + "/healthz")).status_code == 200
                health_s = time.monotonic() - t0
                t0 = time.monotonic()
                r = await c.post(proxy.url + "/v1/chat/completions", json=chat())
                chat_s = time.monotonic() - t0
                assert r.status_code == 200
            assert health_s < 1.0 and chat_s < 1.0, (health_s, chat_s)
            figures["idle_connections"] = {"held": held, "healthz_ms": round(health_s * 1000, 1),
                                           "chat_ms": round(chat_s * 1000, 1),
                                           "rss_kib_per_idle_connection":
                                               round((proxy.rss() - rss_before_idle) / held / 1024, 1)}
        finally:
            for w in idle:
                w.close()
        deadline = time.monotonic() + 10
        while proxy.connections()["client"] > 5 and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert proxy.connections()["client"] <= 5, "closed client connections were not released"

        proxy.assert_healthy()
        m = proxy.metrics()
        assert m.get("detour_in_flight_requests") == 0
        figures["rejected_by_status"] = {lab["status"]: int(v) for n, lab, v in m.samples
                                         if n == "detour_rejected_requests_total"}
    record_result("bad_clients", figures)


def test_long_unknown_model_names_neither_grow_memory_nor_echo_back(sim_a, tmp_path):
    """Issue 13: every distinct `model` string was cached (4,096 entries, each as long as the body
    allows) and echoed in the 404, so unauthenticated 404s with huge names grew the proxy's RSS
    without bound (60 x 9 MiB: +540 MiB). 40 names of 2 MiB after a warm-up must leave the proxy
    process within a few MiB (before the fix: +80 MiB), and the 404 quotes a bounded prefix."""
    size = 2 * 1024 * 1024
    cfg = gateway_config(sim_a, server={"maxBodyBytes": 4 * 1024 * 1024})

    def body(name: str) -> bytes:
        return b'{"model":"%s","messages":[{"role":"user","content":"x"}]}' % name.encode()

    with ProxyProcess(cfg, tmp_path) as proxy, httpx.Client(timeout=30) as c:
        url = proxy.url + "/v1/chat/completions"
        for i in range(10):  # allocator warm-up: the first large bodies set the high-water mark
            assert c.post(url, content=body(f"warm-up-{i}" + "x" * size)).status_code == 404
        before = proxy.rss()
        for i in range(40):
            r = c.post(url, content=body(f"{i:03d}" + "m" * size))
            assert r.status_code == 404
            err = r.json()["error"]
            assert err["code"] == "model_not_found"
            assert len(err["message"]) < 512, "the 404 echoes the whole model name"
            assert err["message"].startswith(f"The model '{i:03d}mmm")
        grown = proxy.rss() - before
        assert grown < 16 * 1024 * 1024, f"proxy RSS grew {grown / 2**20:.0f} MiB for 40 unknown model names"
        assert c.post(url, json=chat()).status_code == 200   # configured names are served as before
        proxy.assert_healthy()
