"""Native forwarding shows the provider's own error text (issue 13, issue 15): every path that
relays it — a native /v1/responses or /v1/messages error body, an in-band stream error before
or after the first token — removes the configured key itself, not only `sk-…`-shaped text."""

from __future__ import annotations

import httpx
import pytest

from support import ProxyServer

KEY = "opaque-gw-credential-7f3a9c"   # no sk-/Bearer shape: only key-based redaction catches it


def _config(sim, kind: str) -> dict:
    base = sim.v1 if kind == "openai" else sim.url
    return {"providers": [{"name": "p", "type": kind, "baseURL": base, "apiKey": {"value": KEY}}],
            "routes": [{"name": "r", "match": {"models": ["m"]}, "targets": [{"provider": "p", "model": "m"}],
                        "retry": {"attempts": 1}}]}


def _request(kind: str, stream: bool) -> tuple[str, dict]:
    if kind == "openai":
        return "/v1/responses", {"model": "m", "input": "hi", "stream": stream}
    return "/v1/messages", {"model": "m", "max_tokens": 50, "stream": stream,
                            "messages": [{"role": "user", "content": "hi"}]}


@pytest.mark.parametrize("kind", ["openai", "anthropic"])
@pytest.mark.parametrize("fault", ["status", "inband-before-first-token", "inband-mid-stream"])
def test_a_key_quoted_by_the_provider_never_reaches_a_native_client(primary, anthropic_sim, kind, fault):
    sim = primary if kind == "openai" else anthropic_sim
    stream = fault != "status"
    if fault == "status":
        sim.faults(status=500, errorMessage=f"bad credential {KEY}")
    else:
        sim.faults(inbandError={"afterChunks": 0 if fault == "inband-before-first-token" else 2,
                                "type": "server_error", "message": f"invalid credential {KEY} here"},
                   chunkDelay=0.02)
    path, body = _request(kind, stream)
    with ProxyServer(_config(sim, kind)) as proxy:
        with httpx.stream("POST", proxy.url + path, json=body, timeout=10,
                          headers={"anthropic-version": "2023-06-01"}) as r:
            text = r.read().decode()
    assert sim.requests(path) >= 1, "the request reached the provider"
    assert "credential" in text, text          # the provider's message is shown ...
    assert KEY not in text, text               # ... without the key
    assert "[redacted]" in text, text
