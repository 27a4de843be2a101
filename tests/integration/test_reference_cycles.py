"""A finished request leaves nothing for the cyclic garbage collector (issue 13: no loss in
req/s). A reference cycle through one object of a request (a closure over `self` stored on
`self`) keeps the whole request graph — relay, context, upstream request, the ASGI cycle and
transport — alive until the next GC pass; at 16 concurrent streams that cost ~5% throughput.
Real HTTP on loopback; `gc.DEBUG_SAVEALL` shows what the collector had to free."""

from __future__ import annotations

import gc

import httpx
import pytest

from support import ProxyServer, chat_body, two_provider_config


def _detour_garbage() -> list[str]:
    gc.collect()
    found = sorted({type(o).__qualname__ for o in gc.garbage
                    if (type(o).__module__ or "").startswith("detour_proxy")})
    gc.garbage.clear()
    return found


@pytest.mark.parametrize("stream", [False, True], ids=["unary", "stream"])
@pytest.mark.parametrize("fallback", [False, True], ids=["served", "fallback"])
def test_a_finished_request_leaves_no_cycle_behind(primary, secondary, stream, fallback):
    if fallback:
        primary.faults(status=503)
    with ProxyServer(two_provider_config(primary, secondary)) as proxy, httpx.Client(timeout=10) as client:
        for _ in range(3):   # warm-up: first-use caches are not per-request garbage
            assert client.post(proxy.v1 + "/chat/completions", json=chat_body(stream=stream)).status_code == 200
        gc.collect()
        gc.set_debug(gc.DEBUG_SAVEALL)
        try:
            gc.garbage.clear()
            for _ in range(10):
                r = client.post(proxy.v1 + "/chat/completions", json=chat_body(stream=stream))
                assert r.status_code == 200
            assert _detour_garbage() == []
        finally:
            gc.set_debug(0)
            gc.garbage.clear()
