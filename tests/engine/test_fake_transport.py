"""The attempt engine through every error branch, over a scripted fake transport (no sockets).

`FakeUpstream` stands in for `transport.Upstream` (the one I/O seam): each target's base URL
has a script of what its next sends do (an answer, a stream, a status, a transport failure, a
timeout). `run_unary` / `run_stream` then run exactly as in production, and each test asserts
what the client gets and which targets were tried. Part of `make check` (the fast tier).
"""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pytest

from detour_proxy.config import parse_config
from detour_proxy.engine import OPENAI, RequestContext, run_stream, run_unary
from detour_proxy.state import AppState
from detour_proxy.transport import BodyTooLarge, Disconnected, ProtocolError

ANSWER = orjson.dumps({"id": "c", "object": "chat.completion", "created": 1, "model": "m",
                       "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"},
                                    "finish_reason": "stop"}],
                       "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}})


def chunk(text: str) -> bytes:
    doc = {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m",
           "choices": [{"index": 0, "delta": {"content": text}, "finish_reason": None}]}
    return b"data: " + orjson.dumps(doc) + b"\n\n"


STREAM = [chunk("hel"), chunk("lo"), b"data: [DONE]\n\n"]


class FakeResponse:
    def __init__(self, status: int, body: bytes | list[bytes] | Exception = b"", headers: dict[str, str] | None = None):
        self.status = status
        self.headers = headers or {}
        self._parts = list(body) if isinstance(body, list) else body
        self.released = self.closed = False

    async def read(self, limit: int) -> bytes:
        if isinstance(self._parts, Exception):
            raise self._parts
        data = self._parts if isinstance(self._parts, bytes) else b"".join(self._parts)
        if len(data) > limit:
            raise BodyTooLarge(f"over the {limit}-byte cap")
        return data

    async def readany(self) -> bytes:
        if isinstance(self._parts, Exception):
            raise self._parts
        if isinstance(self._parts, bytes):
            self._parts = [self._parts]
        part = self._parts.pop(0) if self._parts else b""
        if isinstance(part, Exception):
            raise part
        return part

    def arm_idle(self, idle: float) -> None:
        pass

    def release(self) -> None:
        self.released = True

    def close(self) -> None:
        self.closed = True


class FakeUpstream:
    """`send` plays the next step of the script of the request's target (by base URL)."""

    def __init__(self) -> None:
        self.scripts: dict[str, list[Any]] = {}
        self.sent: list[str] = []

    def script(self, name: str, *steps: Any) -> None:
        self.scripts[f"http://{name}.invalid/v1/chat/completions"] = list(steps)

    async def send(self, req: Any, timeout: Any) -> FakeResponse:
        name = req.url.split("//", 1)[1].split(".", 1)[0]
        self.sent.append(name)
        steps = self.scripts[req.url]
        step = steps.pop(0) if len(steps) > 1 else steps[0]
        if isinstance(step, BaseException):
            raise step
        if step == "hang":
            await asyncio.sleep(3600)
        return step

    async def start(self) -> None:
        pass

    async def close(self) -> None:
        pass


def make(**route: Any) -> tuple[AppState, FakeUpstream]:
    up = FakeUpstream()
    state = AppState(upstream=up)  # type: ignore[arg-type]
    state.install(parse_config({
        "providers": [{"name": n, "type": "openai", "baseURL": f"http://{n}.invalid/v1", "apiKey": {"value": f"sk-{n}"},
                       "timeouts": {"firstToken": "300ms", "total": "2s", "streamIdle": "1s"}}
                      for n in ("a", "b")],
        "routes": [{"name": "chat", "targets": [{"provider": "a", "model": "m"}, {"provider": "b", "model": "m", "priority": 1}],
                    "retry": {"attempts": 2, "backoff": {"initial": "1ms", "max": "2ms"}}, "timeout": "5s", **route}],
        "retryBudget": {"ratio": 1.0, "minPerSecond": 1000},
    }))
    return state, up


def ctx(state: AppState, stream: bool = False) -> RequestContext:
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": stream}
    route = state.gateway.router.match("m")
    return RequestContext(request_id="r", route=route, body=body, raw=orjson.dumps(body), kind="chat",
                          stream=stream, started=0.0, codec=OPENAI)


async def unary(state: AppState) -> tuple[int, dict[str, Any], RequestContext]:
    c = ctx(state)
    reply = await run_unary(state, c)
    return reply.status, orjson.loads(reply.body), c


# --- unary: each failure of the first target falls back to the second ------------------------

FAILURES = {
    "disconnected": Disconnected("ClientConnectorError"),
    "protocol_error": ProtocolError("bad status line"),
    "timeout": TimeoutError(),
    "http_503": FakeResponse(503, b'{"error": {"message": "down", "type": "server_error"}}'),
    "http_529": FakeResponse(529, b'{"error": {"message": "busy"}}'),
    "malformed_choices": FakeResponse(200, b'{"choices": [1]}'),
    "not_json": FakeResponse(200, b"<html>"),
    "error_object_in_200": FakeResponse(200, b'{"error": {"message": "quota", "type": "x"}}'),
    "redirect": FakeResponse(301, b"", {"Location": "https://elsewhere/"}),
    "no_content": FakeResponse(204, b""),
    "oversized": FakeResponse(200, b"x" * (2 * 1024 * 1024)),
    "reset_while_reading": FakeResponse(200, Disconnected("reset")),
    # a token count no counter can take (metrics' bound fast adds leave it to `inc`, which refuses it)
    "negative_usage": FakeResponse(200, ANSWER.replace(b'"prompt_tokens":1', b'"prompt_tokens":-5')),
}


@pytest.mark.parametrize("failure", sorted(FAILURES))
async def test_a_failing_first_target_falls_back_to_the_second(failure):
    state, up = _with_server_cap() if failure == "oversized" else make()
    up.script("a", FAILURES[failure])
    up.script("b", FakeResponse(200, ANSWER))
    status, body, c = await unary(state)
    assert status == 200 and body["choices"][0]["message"]["content"] == "hi"
    assert c.target is not None and c.target.label == "b/m"
    assert up.sent[-1] == "b" and "a" in up.sent


def _with_server_cap() -> tuple[AppState, FakeUpstream]:
    up = FakeUpstream()
    state = AppState(upstream=up)  # type: ignore[arg-type]
    state.install(parse_config({
        "providers": [{"name": n, "type": "openai", "baseURL": f"http://{n}.invalid/v1", "apiKey": {"value": f"sk-{n}"}}
                      for n in ("a", "b")],
        "routes": [{"name": "chat", "targets": [{"provider": "a", "model": "m"}, {"provider": "b", "model": "m", "priority": 1}],
                    "retry": {"attempts": 1}}],
        "server": {"maxResponseBytes": 1024 * 1024},
    }))
    return state, up


async def test_a_request_the_provider_refuses_is_the_clients_error_and_not_retried():
    state, up = make()
    up.script("a", FakeResponse(400, b'{"error": {"message": "bad param", "type": "invalid_request_error", "param": "x"}}'))
    up.script("b", FakeResponse(200, ANSWER))
    status, body, _ = await unary(state)
    assert status == 400 and "bad param" in body["error"]["message"]
    assert up.sent == ["a"]


async def test_a_transient_status_is_retried_on_the_same_target_first():
    state, up = make()
    up.script("a", FakeResponse(503, b"{}"), FakeResponse(200, ANSWER))
    up.script("b", FakeResponse(200, ANSWER))
    status, _, c = await unary(state)
    assert status == 200 and up.sent[0] == "a" and c.attempts >= 2


async def test_every_target_failing_is_a_summarised_upstream_error_naming_each():
    state, up = make()
    up.script("a", Disconnected("ClientConnectorError"))
    up.script("b", FakeResponse(502, b'{"error": {"message": "bad gateway sk-b"}}'))
    status, body, _ = await unary(state)
    assert status in (502, 503)
    msg = body["error"]["message"]
    assert "a/m" in msg and "b/m" in msg and "sk-b" not in msg


async def test_the_deadline_ends_a_hanging_target():
    state, up = make(timeout="300ms")
    up.script("a", "hang")
    up.script("b", "hang")
    status, body, _ = await asyncio.wait_for(unary(state), 5)
    assert status == 504 or "timeout" in orjson.dumps(body).decode().lower()


# --- streams ---------------------------------------------------------------------------------

async def stream(state: AppState) -> tuple[int, bytes, dict[bytes, bytes], RequestContext]:
    c = ctx(state, stream=True)
    sent: list[dict[str, Any]] = []

    async def send(msg: dict[str, Any]) -> None:
        sent.append(msg)

    await run_stream(state, c, send)
    start = next(m for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return start["status"], body, dict(start["headers"]), c


STREAM_FAILURES = {
    "error_event_before_first_token": FakeResponse(200, [b'data: {"error": {"message": "overloaded"}}\n\n']),
    "cut_before_first_token": FakeResponse(200, [b""]),
    "garbage_chunk": FakeResponse(200, [b'data: {"choices": [{"delta": {"content": [1]}}]}\n\n']),
    "http_503": FakeResponse(503, b"{}"),
    "redirect": FakeResponse(302, b"", {"Location": "x"}),
    "disconnected": Disconnected("reset"),
    "reset_mid_read": FakeResponse(200, [Disconnected("reset")]),
    "first_token_timeout": "hang",
}


@pytest.mark.parametrize("failure", sorted(STREAM_FAILURES))
async def test_a_stream_failing_before_its_first_token_falls_back(failure):
    state, up = make()
    up.script("a", STREAM_FAILURES[failure])
    up.script("b", FakeResponse(200, list(STREAM)))
    status, body, headers, _ = await asyncio.wait_for(stream(state), 5)
    assert status == 200 and headers[b"x-detour-target"] == b"b/m"
    assert b'"hel"' in body and body.rstrip().endswith(b"data: [DONE]")
    assert b"event: error" not in body


async def test_a_stream_cut_after_its_first_token_ends_in_an_error_event_not_a_fake_done():
    state, up = make()
    up.script("a", FakeResponse(200, [chunk("hel"), Disconnected("reset")]))
    up.script("b", FakeResponse(200, list(STREAM)))
    status, body, _, _ = await asyncio.wait_for(stream(state), 5)
    assert status == 200 and b'"hel"' in body
    assert b"event: error" in body and b"[DONE]" not in body


async def test_a_stream_every_target_refuses_is_a_clean_error_response():
    state, up = make()
    up.script("a", FakeResponse(503, b"{}"))
    up.script("b", FakeResponse(500, b"{}"))
    status, body, _, _ = await asyncio.wait_for(stream(state), 5)
    assert status >= 500 and "error" in orjson.loads(body)
