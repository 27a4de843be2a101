"""Fixtures for the simulator tests: real sims on 127.0.0.1:0 and a bounded HTTP client.

Sims run in-process on aiohttp's TestServer (real sockets, real HTTP) so tests can both
talk to them over the wire and, where it helps, look at ``handle.sim`` directly.
"""

from __future__ import annotations

from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp.test_utils import TestServer

from detour_sim.server import SIM_KEY, Sim, build_app


class SimHandle:
    def __init__(self, server: TestServer, http: aiohttp.ClientSession) -> None:
        self.server = server
        self.http = http
        self.sim: Sim = server.app[SIM_KEY]
        self.url = f"http://127.0.0.1:{server.port}"

    async def admin(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        data = orjson.dumps(body) if body is not None else None
        async with self.http.request(method, self.url + path, data=data) as r:
            return r.status, await r.json(content_type=None)

    async def faults(self, spec: Any) -> Any:
        status, body = await self.admin("PUT", "/_sim/faults", spec)
        assert status == 200, body
        return body

    async def stats(self) -> dict[str, Any]:
        return (await self.admin("GET", "/_sim/stats"))[1]

    async def wait(self, key: str, at_least: int = 1, timeout: float = 5) -> dict[str, Any]:
        status, body = await self.admin("GET", f"/_sim/wait?key={key}&atLeast={at_least}&timeout={timeout}")
        assert status == 200, f"{key} never reached {at_least}: {body}"
        return body

    async def post(self, path: str, body: Any, headers: dict[str, str] | None = None,
                   fault: Any = None) -> aiohttp.ClientResponse:
        """POST and return the (un-read) response; the caller reads and releases it."""
        h = dict(headers or {})
        if fault is not None:
            h["x-sim-fault"] = orjson.dumps(fault).decode()
        if self.sim.flavor == "anthropic":
            h.setdefault("anthropic-version", "2023-06-01")
        return await self.http.post(self.url + path, data=orjson.dumps(body), headers=h)


@pytest.fixture
async def http():
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
        yield session


@pytest.fixture
async def make_sim(http):
    servers: list[TestServer] = []

    async def _make(flavor: str = "openai", name: str = "s1", **kwargs: Any) -> SimHandle:
        server = TestServer(build_app(flavor, name, **kwargs), host="127.0.0.1", port=0)
        await server.start_server(shutdown_timeout=1.0)
        servers.append(server)
        return SimHandle(server, http)

    yield _make
    for server in servers:
        await server.close()


@pytest.fixture
async def oai(make_sim) -> SimHandle:
    return await make_sim("openai", "oai")


@pytest.fixture
async def ant(make_sim) -> SimHandle:
    return await make_sim("anthropic", "ant")


def chat_body(stream: bool = False, **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"model": "gpt-test", "messages": [{"role": "user", "content": "hello"}]}
    if stream:
        body["stream"] = True
    body.update(extra)
    return body


def messages_body(stream: bool = False, **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"model": "claude-test", "max_tokens": 100,
                            "messages": [{"role": "user", "content": "hello"}]}
    if stream:
        body["stream"] = True
    body.update(extra)
    return body


async def read_events(resp: aiohttp.ClientResponse, limit: int | None = None) -> list[bytes]:
    """Read SSE events (separated by a blank line) as raw bytes; stop after ``limit``."""
    events: list[bytes] = []
    while limit is None or len(events) < limit:
        ev = await resp.content.readuntil(b"\n\n")
        if not ev:
            break
        if not ev.endswith(b"\n\n"):
            events.append(ev)  # trailing partial event
            break
        events.append(ev[:-2])
    return events


def oai_content(events: list[bytes]) -> str:
    """Concatenated delta.content of OpenAI chunk events."""
    out = []
    for ev in events:
        if not ev.startswith(b"data: {"):
            continue
        try:
            data = orjson.loads(ev[6:])
        except orjson.JSONDecodeError:
            continue
        for ch in data.get("choices", []):
            c = ch.get("delta", {}).get("content")
            if c:
                out.append(c)
    return "".join(out)


@pytest.fixture
def helpers():
    """Plain functions, exposed as a fixture so test modules need no sys.path games."""

    class H:
        chat_body = staticmethod(chat_body)
        messages_body = staticmethod(messages_body)
        read_events = staticmethod(read_events)
        oai_content = staticmethod(oai_content)

    return H
