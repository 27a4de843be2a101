"""Application assembly: the per-sim state and the request pipeline shared by both flavours.

Every provider request goes through :meth:`Sim.wrap`: count it, read and record the body,
pick a fault (``x-sim-fault`` header or installed rules), apply the faults that happen
before a response exists (latency, reset, status, malformed body), then hand a :class:`Ctx`
to the flavour's handler. Keeping this in one place is what makes a fault mean the same
thing on ``/v1/chat/completions``, ``/v1/embeddings`` and ``/v1/messages``.

``handler_cancellation`` is enabled through ``handler_args`` so that it holds however the
app is run (CLI, ``aiohttp.test_utils``, an embedding test's own ``AppRunner``): it is how a
stalled or slow stream learns promptly that its client went away.
"""

from __future__ import annotations

import asyncio
import itertools
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Sequence

import orjson
from aiohttp import web

from .faults import FAULT_HEADER, Fault, FaultBook, FaultError
from .prompt_cache import PromptCache
from .stats import Stats
from .stream import abort_connection, client_gone
from .text import DEFAULT_CHUNKS, DEFAULT_EMBEDDING_DIMS, DEFAULT_REPLY, Canon

FLAVORS = ("openai", "anthropic", "google", "bedrock")
GARBAGE_JSON = b'{"id": "broken", "object": <<<not json'
CLIENT_MAX_SIZE = 64 * 1024 * 1024

@dataclass(slots=True)
class Ctx:
    """What a flavour handler needs about one request."""

    request: web.Request
    body: Any
    fault: Fault | None
    headers: dict[str, str]  # response headers to send (request id, sim name, rate limits)
    rid: str
    closed: bool = False  # set by the stream writer when it saw the client go away


Handler = Callable[[Ctx], Awaitable[web.StreamResponse]]


class Sim:
    """State of one simulated provider: config, canonical reply, stats, faults."""

    def __init__(
        self,
        flavor: str,
        name: str,
        reply: str = DEFAULT_REPLY,
        chunks: int = DEFAULT_CHUNKS,
        chunk_delay: float = 0.0,
        embedding_dims: int = DEFAULT_EMBEDDING_DIMS,
        models: Sequence[str] | None = None,
    ) -> None:
        if flavor not in FLAVORS:
            raise ValueError(f"flavor must be one of {FLAVORS}, got {flavor!r}")
        self.flavor = flavor
        self.name = name
        self.canon = Canon(reply, chunks)
        self.chunk_delay = float(chunk_delay)
        self.embedding_dims = int(embedding_dims)
        self.stats = Stats()
        self.prompt_cache = PromptCache()
        self.faults = FaultBook()
        self.seq = itertools.count(1)
        if flavor == "openai":
            from .openai_api import OpenAIAPI

            self.api: Any = OpenAIAPI(self, models)
        elif flavor == "bedrock":
            from .bedrock_api import BedrockAPI

            self.api = BedrockAPI(self, models)
        elif flavor == "google":
            from .google_api import GoogleAPI

            self.api = GoogleAPI(self, models)
        else:
            from .anthropic_api import AnthropicAPI

            self.api = AnthropicAPI(self, models)

    def info(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "flavor": self.flavor,
            "reply": self.canon.text,
            "chunks": list(self.canon.chunks),
            "chunkDelay": self.chunk_delay,
            "embeddingDims": self.embedding_dims,
        }

    def wrap(self, handler: Handler) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        stats, faults, name, api = self.stats, self.faults, self.name, self.api
        seq = self.seq
        anthropic = self.flavor == "anthropic"

        async def provider_handler(request: web.Request) -> web.StreamResponse:
            headers = request.headers
            path = request.path
            stats.request_started(request.method, path, headers, request.query_string)
            ctx: Ctx | None = None
            try:
                rid = headers.get("x-request-id") or f"req_{name}_{next(seq)}"
                out = {"x-request-id": rid, "x-detour-sim": name}
                if anthropic:
                    out["request-id"] = rid
                body: Any = None
                bad_json = False
                if request.body_exists:
                    raw = await request.read()
                    if raw:
                        try:
                            body = orjson.loads(raw)
                        except orjson.JSONDecodeError:
                            body = raw.decode("utf-8", "replace")
                            bad_json = True
                stats.record_body(body)
                fault_header = headers.get(FAULT_HEADER)
                try:
                    fault = faults.pick(path, fault_header, request_key(headers),
                                        body.get("model") if isinstance(body, dict) else None) \
                        if (faults.rules or fault_header) else None
                except FaultError as exc:
                    return api.error(400, "invalid_request_error", str(exc), out, rid)
                if fault is not None:
                    stats.bump("faultsInjected")
                    if fault.rate_limit:
                        out.update(fault.rate_limit)
                    early = await self._pre_response_faults(request, fault, out, rid)
                    if early is not None:
                        return early
                if bad_json:
                    return api.error(400, "invalid_request_error", "request body is not valid JSON", out, rid)
                ctx = Ctx(request, body, fault, out, rid)
                return await handler(ctx)
            except asyncio.CancelledError:
                # handler_cancellation: the client went away while we were awaiting.
                if client_gone(request):
                    stats.bump("clientClosed")
                raise
            finally:
                if ctx is not None and ctx.closed:
                    stats.bump("clientClosed")
                stats.request_finished()

        return provider_handler

    async def _pre_response_faults(
        self, request: web.Request, fault: Fault, out: dict[str, str], rid: str
    ) -> web.StreamResponse | None:
        """Faults that act before any response exists; None means "carry on"."""
        if fault.latency:
            await asyncio.sleep(fault.latency)
        if fault.reset:
            abort_connection(request)
            # Never reaches the client; aiohttp swallows the write error on the dead socket.
            return web.Response(status=502)
        if fault.context_length:
            headers = dict(out)
            status = fault.status if fault.status is not None else 400
            return web.Response(status=status, body=orjson.dumps(context_error(self.flavor, status)),
                                headers=headers, content_type="application/json")
        if fault.body is not None or (fault.status is not None and fault.status < 400):
            # An answer that is not an error response: a body of the wrong shape, a redirect,
            # 202/204/304, an error object on a 200, a raw SSE script. Sent exactly as given.
            headers = dict(out)
            if fault.location is not None:
                headers["location"] = fault.location
            status = fault.status if fault.status is not None else 200
            body = (fault.body or "").encode() if status not in (204, 304) else None
            return web.Response(status=status, body=body, headers=headers,
                                content_type=fault.content_type or "application/json" if body is not None else None)
        if fault.status is not None:
            headers = dict(out)
            if fault.retry_after is not None:
                headers["retry-after"] = fault.retry_after
            if fault.retry_after_ms is not None:
                headers["retry-after-ms"] = fault.retry_after_ms
            etype = fault.error_type or self.api.default_error_type(fault.status)
            msg = fault.error_message or f"simulated {fault.status} from {self.name}"
            return self.api.error(fault.status, etype, msg, headers, rid)
        if fault.malformed == "body":
            return web.Response(body=GARBAGE_JSON, headers=out, content_type="application/json")
        return None


def context_error(flavor: str, status: int) -> dict[str, Any]:
    """The provider's own context-length error body (status 200: the same text inside a 200)."""
    if flavor == "anthropic":
        return {"type": "error", "error": {"type": "invalid_request_error",
                                           "message": "prompt is too long: 210342 tokens > 200000 maximum"}}
    if flavor == "google":
        return {"error": {"code": 400, "status": "INVALID_ARGUMENT", "message":
                          "The input token count (1200345) exceeds the maximum number of tokens allowed (1048576)."}}
    return {"error": {"message": "This model's maximum context length is 8192 tokens. However, your messages "
                                 "resulted in 9123 tokens. Please reduce the length of the messages.",
                      "type": "invalid_request_error", "param": "messages", "code": "context_length_exceeded"}}


SIM_KEY = web.AppKey("detour_sim", Sim)


def build_app(
    flavor: str = "openai",
    name: str = "sim",
    reply: str = DEFAULT_REPLY,
    chunks: int = DEFAULT_CHUNKS,
    chunk_delay: float = 0.0,
    embedding_dims: int = DEFAULT_EMBEDDING_DIMS,
    models: Sequence[str] | None = None,
) -> web.Application:
    """Build the aiohttp application of one sim. ``app[SIM_KEY]`` is its :class:`Sim`."""
    from .admin import add_admin_routes

    sim = Sim(flavor, name, reply, chunks, chunk_delay, embedding_dims, models)
    app = web.Application(
        client_max_size=CLIENT_MAX_SIZE,
        handler_args={"handler_cancellation": True},
    )
    app[SIM_KEY] = sim
    add_admin_routes(app, sim)
    for method, path, handler in sim.api.routes():
        app.router.add_route(method, path, sim.wrap(handler))
    for method, path, handler in getattr(sim.api, "extra_routes", list)():
        app.router.add_route(method, path, handler)   # auth infrastructure: no provider faults

    async def not_found(ctx: Ctx) -> web.StreamResponse:
        msg = f"Unknown request URL: {ctx.request.method} {ctx.request.path}"
        return sim.api.error(404, sim.api.default_error_type(404), msg, ctx.headers, ctx.rid)

    app.router.add_route("*", "/{tail:.*}", sim.wrap(not_found))
    return app


def json_response(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    """orjson-encoded response; several times faster than ``web.json_response``."""
    return web.Response(
        body=orjson.dumps(data), status=status, headers=headers, content_type="application/json"
    )


def request_key(headers: Any) -> str | None:
    """The API key a request carries (Bearer token, x-api-key, x-goog-api-key or Azure's api-key),
    for faults restricted to some keys (`keys`)."""
    auth = headers.get("authorization")
    if auth is not None:
        return auth[7:] if auth[:7].lower() == "bearer " else auth
    return headers.get("x-api-key") or headers.get("x-goog-api-key") or headers.get("api-key")
