"""Lean ASGI handlers for the OpenAI endpoints (the hot path).

A FastAPI route with a StreamingResponse costs ~40% of throughput on one core, so
`/v1/chat/completions` and `/v1/embeddings` are plain ASGI: read the body once, parse it
once with orjson, read only what routing needs, and forward the original bytes when the
provider needs no rewrite. Everything else (models, health, metrics, docs) is FastAPI.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import time
import traceback
from typing import TYPE_CHECKING, Any


from .. import tracing
from ..errors import ClientError, model_not_found, not_ready, too_large, unauthorized
from ..engine import OPENAI, InboundCodec, RequestContext, run_stream, run_unary, skipped_headers
from ..inbound import INBOUND_KINDS, MessagesCodec
from ..inbound._common import load_object
from .count_tokens import count_tokens
from ..policy import REQUEST_ERROR_STATUSES, affinity_key

if TYPE_CHECKING:
    from ..state import AppState

access_log = logging.getLogger("detour.access")
error_log = logging.getLogger("detour.handlers")
_REQUEST_ID = re.compile(rb"^[A-Za-z0-9._:\-]{1,128}$")
_CLIENT_FAULT = REQUEST_ERROR_STATUSES   # a provider refused the request itself (policy's one list)
HOT_PATHS = {"/v1/chat/completions": "chat", "/v1/embeddings": "embeddings",
             "/chat/completions": "chat", "/embeddings": "embeddings",
             "/v1/responses": "responses", "/responses": "responses", "/v1/messages": "messages",
             "/v1/messages/count_tokens": "count_tokens"}
BODY_READ_TIMEOUT = 30.0
WATCH_AFTER = 0.05   # seconds into a request before a client disconnect is watched for


class ClientGone(Exception):
    """The client disconnected before its request was read."""


class OpenAIEndpoints:
    """ASGI callable serving the hot paths; `kind` comes from HOT_PATHS."""

    def __init__(self, state: AppState) -> None:
        self.state = state

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any, kind: str) -> None:
        state = self.state
        started = time.perf_counter()
        request_id: str | None = None
        content_length = -1
        authorization: bytes | None = None
        api_key: bytes | None = None
        headers: dict[bytes, bytes] | None = None
        gw = state.gateway
        want_headers = gw is not None and gw.router.uses_headers
        for name, value in scope["headers"]:
            if name == b"content-length":
                content_length = int(value) if value.isdigit() else -1
            elif name == b"authorization":
                authorization = value
            elif name == b"x-api-key":
                api_key = value
            elif name == b"x-request-id" and _REQUEST_ID.match(value):
                request_id = value.decode()
        if want_headers or (gw is not None and gw.router.uses_metadata):
            headers = dict(scope["headers"])
        if request_id is None:
            request_id = _new_request_id()
        inbound = INBOUND_KINDS.get(kind, MessagesCodec if kind == "count_tokens" else None)
        client = None if inbound is None else inbound()   # the client's own API format, if not OpenAI
        codec: InboundCodec = OPENAI if client is None else client
        if isinstance(client, MessagesCodec):
            if authorization is None and api_key is not None:
                authorization = b"Bearer " + api_key   # Anthropic clients send their key as x-api-key
            for name, value in scope["headers"]:
                if name == b"anthropic-beta":
                    client.beta = value.decode("latin-1")
        try:
            if gw is None or state.draining:
                raise not_ready()
            if gw.client_keys is not None and not gw.client_keys.check(authorization):
                raise unauthorized()
            limit = gw.config.server.max_body_bytes
            if content_length > limit:
                raise too_large(limit)
            raw = await _read_body(receive, limit)
            body = load_object(raw) if kind == "count_tokens" else codec.parse(raw, kind)
            model = body["model"]
            route = gw.router.match(model, headers, body)
            if route is None:
                raise model_not_found(model, gw.router.conditions_for(model))
            if kind == "count_tokens":
                status, reply_headers, answer, target = await count_tokens(
                    state, route, body, request_id, client.beta if isinstance(client, MessagesCodec) else None)
                reply_headers += [(b"x-request-id", request_id.encode()),
                                  (b"content-length", str(len(answer)).encode())]
                if target is not None:
                    reply_headers.append((b"x-detour-target", target.encode()))
                await send({"type": "http.response.start", "status": status, "headers": reply_headers})
                await send({"type": "http.response.body", "body": answer, "more_body": False})
                _log(request_id, route.route.name, target, 0, status, started, "count_tokens", kind)
                return
        except ClientError as exc:
            state.metrics.rejected.labels(str(exc.status)).inc()
            status, err = exc.status, exc.body()
            if client is not None:
                status = client.client_status(status)
                err = _client_body(codec, status, codec.error(exc.message, exc.type, exc.code))
            await _respond(send, status, err, request_id)
            _log(request_id, None, None, 0, status, started, "rejected", kind)
            return
        except ClientGone:
            # Nothing was routed: counted with the refusals (499, nginx's "client closed request").
            state.metrics.rejected.labels("499").inc()
            _log(request_id, None, None, 0, 499, started, "cancelled", kind)
            return
        stream = kind != "embeddings" and body.get("stream") is True
        if inbound is None:
            ctx = RequestContext(request_id=request_id, route=route, body=body, raw=raw, kind=kind,
                                 stream=stream, started=started)
        else:   # the client's bytes: sent as is to native targets, sized for token limits (never
            # reused as a translated body: `prepare` serialises the canonical body for those)
            ctx = RequestContext(request_id=request_id, route=route, body=body, raw=raw,
                                 kind="chat", stream=stream, started=started, codec=codec)
        if route.route.affinity is not None:
            ctx.affinity_key = affinity_key(route.route.affinity, scope["headers"], body)
        rm = route.metrics
        rm.add_in_flight(1)
        tracing.start_request(ctx)
        watch = _DisconnectWatch(receive, asyncio.current_task())
        outcome = "cancelled"
        status = 499
        try:
            if stream:
                outcome = await run_stream(state, ctx, send)
                status = ctx.status or 200
                if status in _CLIENT_FAULT:
                    outcome = "client_error"
            else:
                reply = await run_unary(state, ctx)
                if client is not None and reply.status != 200:
                    reply.status = client.client_status(reply.status)
                    reply.body = _client_body(codec, reply.status, reply.body)
                status = reply.status
                outcome = ("success" if status == 200 else "client_error" if status in _CLIENT_FAULT
                           else "upstream_error")
                reply.headers.append((b"x-request-id", request_id.encode()))
                reply.headers.append((b"x-detour-attempts", str(ctx.attempts).encode()))
                reply.headers.extend(skipped_headers(ctx))
                if ctx.target is not None:
                    reply.headers.append((b"x-detour-target", ctx.target.label.encode()))
                    if ctx.target.key_label is not None:   # several API keys: which one (its index)
                        reply.headers.append((b"x-detour-key", ctx.target.key_label))
                reply.headers.append((b"content-length", str(len(reply.body)).encode()))
                ctx.status = status
                await send({"type": "http.response.start", "status": status, "headers": reply.headers})
                await send({"type": "http.response.body", "body": reply.body, "more_body": False})
        except asyncio.CancelledError:
            if not watch.gone:
                raise
            if watch.task is not None:
                watch.task.uncancel()  # our own cancellation: the client left, nothing more to send
        except Exception as exc:  # a bug: answer in the OpenAI format, log it once, keep serving
            outcome = "error"
            status = await _internal_error(send, exc, request_id, route.route.name, stream, ctx.status, codec)
        finally:
            watch.stop()
            rm.add_in_flight(-1)
            elapsed = time.perf_counter() - started
            rm.observe_duration(elapsed)
            rm.count_outcome[outcome](1)
            if ctx.trace is not None:   # (tracing off: not even the call)
                tracing.end_request(ctx, status, outcome)
            _log(request_id, route.route.name, ctx.target.label if ctx.target else None, ctx.attempts,
                 status, started, outcome, kind, stream)


def _new_request_id() -> str:
    """A random UUID4 as 32 hex digits, like `uuid.uuid4().hex` at a fraction of its cost."""
    b = bytearray(os.urandom(16))
    b[6] = (b[6] & 0x0F) | 0x40   # version 4
    b[8] = (b[8] & 0x3F) | 0x80   # RFC 4122 variant
    return b.hex()


class _DisconnectWatch:
    """Cancels the request's task when its client disconnects, which cancels the upstream call.

    The watcher (a task blocked in `receive()`) starts only `WATCH_AFTER` seconds into the
    request, from a timer: most requests are done sooner and never pay for creating and
    cancelling a task, and a client that leaves is still noticed within `WATCH_AFTER`."""

    __slots__ = ("receive", "task", "gone", "_timer", "_watcher")

    def __init__(self, receive: Any, task: asyncio.Task[Any] | None) -> None:
        self.receive = receive
        self.task = task
        self.gone = False
        self._watcher: asyncio.Task[None] | None = None
        self._timer: asyncio.TimerHandle | None = asyncio.get_running_loop().call_later(WATCH_AFTER, self._start)

    def _start(self) -> None:
        self._timer = None
        self._watcher = asyncio.get_running_loop().create_task(self._watch())

    async def _watch(self) -> None:
        while True:
            message = await self.receive()
            if message["type"] == "http.disconnect":
                self.gone = True
                if self.task is not None:
                    self.task.cancel()
                return

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        if self._watcher is not None:
            self._watcher.cancel()


async def _read_body(receive: Any, limit: int) -> bytes:
    try:
        # The first receive is bounded too: a client that sends its headers and then no body
        # (slowloris) would otherwise hold the request open forever (tests/resilience).
        async with asyncio.timeout(BODY_READ_TIMEOUT):
            message = await receive()
            if message["type"] == "http.disconnect":
                raise ClientGone()
            body: bytes = message.get("body", b"")
            if not message.get("more_body"):
                if len(body) > limit:
                    raise too_large(limit)
                return body
            chunks = [body]
            size = len(body)
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    raise ClientGone()
                part = message.get("body", b"")
                size += len(part)
                if size > limit:
                    raise too_large(limit)
                chunks.append(part)
                if not message.get("more_body"):
                    return b"".join(chunks)
    except TimeoutError:
        raise ClientError(408, "The request body was not received in time.", "invalid_request_error",
                          "request_timeout") from None


def _client_body(codec: Any, status: int, body: bytes) -> bytes:
    """An error body in the client's format for the status it gets (Anthropic types errors by status)."""
    fix = getattr(codec, "reply_body", None)
    return fix(status, body) if fix is not None else body


async def _internal_error(send: Any, exc: Exception, request_id: str, route: str, stream: bool,
                          started_status: int, codec: Any = OPENAI) -> int:
    """Log an unexpected exception once and tell the client, if it can still be told; returns
    the status the client got. `started_status` is the status already sent (0: nothing sent,
    so the client gets a clean 500). The log line has the exception's type and frames but
    not its message (it could quote the request); the client gets neither."""
    error_log.error("internal error while serving a request", extra={"fields": {
        "request_id": request_id, "route": route, "error_type": type(exc).__name__,
        "traceback": "".join(traceback.format_tb(exc.__traceback__))}})
    message = f"Detour failed to serve this request (internal error); it has been logged with request id {request_id}."
    body = _client_body(codec, 500, codec.error(message, "internal_error", "internal_error"))
    try:
        if not started_status:
            await _respond(send, 500, body, request_id)
            return 500
        if stream:  # an error event and no end marker, so SDKs raise instead of truncating silently
            err = {"message": message, "type": "internal_error", "code": "internal_error"}
            await send({"type": "http.response.body", "body": codec.stream_error(err), "more_body": False})
        else:
            await send({"type": "http.response.body", "body": b"", "more_body": False})
    except RuntimeError:
        pass  # the response was already complete: nothing more can be said
    return started_status or 500


async def _respond(send: Any, status: int, body: bytes, request_id: str) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"x-request-id", request_id.encode()),
                            (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body, "more_body": False})


def _log(request_id: str, route: str | None, target: str | None, attempts: int, status: int,
         started: float, outcome: str, kind: str, stream: bool = False) -> None:
    if access_log.isEnabledFor(logging.INFO):
        access_log.info("request", extra={"fields": {
            "request_id": request_id, "route": route, "target": target, "attempts": attempts,
            "status": status, "outcome": outcome, "kind": kind, "stream": stream,
            "latency_ms": round((time.perf_counter() - started) * 1000, 2)}})
