"""The ASGI application: FastAPI for the control endpoints, lean ASGI for the hot path.

`create_app` returns a FastAPI app whose first middleware dispatches the OpenAI POST
endpoints straight to `OpenAIEndpoints`, before FastAPI's routing and response machinery;
the documented FastAPI routes for those paths exist for the OpenAPI schema only.
"""

from __future__ import annotations

import logging
from contextlib import asynccontextmanager
from typing import Any, AsyncIterator, Awaitable, Callable

import orjson
from fastapi import FastAPI, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from .. import __version__
from ..state import AppState
from ..errors import unauthorized
from .endpoints import HOT_PATHS, OpenAIEndpoints

log = logging.getLogger("detour.app")
Hook = Callable[[AppState], Awaitable[Any]]


class HotPath:
    """The ASGI app uvicorn serves: POST /v1/chat/completions and /v1/embeddings go straight to
    the lean handlers; everything else (lifespan included) goes to the FastAPI app, `self.app`.

    It wraps FastAPI from the outside rather than being added as a middleware: inside, every
    hot request would first pass Starlette's error, telemetry and body-limit middlewares, each
    wrapping `send`/`receive` (a call per streamed chunk) for work the handlers already do
    (they answer unexpected errors with an OpenAI-format 500 and enforce the body limit)."""

    def __init__(self, app: Any, endpoints: OpenAIEndpoints) -> None:
        self.app = app
        self.endpoints = endpoints

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            kind = HOT_PATHS.get(scope["path"])
            if kind is not None:
                await self.endpoints(scope, receive, send, kind)
                return
        await self.app(scope, receive, send)


def create_app(state: AppState, *, on_startup: list[Hook] | None = None,
               on_shutdown: list[Hook] | None = None) -> HotPath:
    """The ASGI app: the hot path in front of the FastAPI app (models, health, metrics, docs)."""
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await state.upstream.start()
        for hook in on_startup or ():
            await hook(state)
        try:
            yield
        finally:
            state.draining = True
            for hook in on_shutdown or ():
                await hook(state)
            await state.upstream.close()

    # FastAPI's own OpenTelemetry layer (0.16x) is off: it would check the global providers on
    # every request (~3 us, hot path included); Detour's spans come from `tracing`.
    app = FastAPI(title="Detour", version=__version__, lifespan=lifespan,
                  description="OpenAI-compatible reliability gateway for LLM calls.",
                  telemetry={"tracing": False, "metrics": False, "logs": False})
    app.state.detour = state

    @app.post("/v1/chat/completions", tags=["openai"], summary="Chat completions (stream and non-stream)")
    async def chat_completions() -> None:  # pragma: no cover - served by HotPath
        raise RuntimeError("served by the HotPath middleware")

    @app.post("/v1/embeddings", tags=["openai"], summary="Embeddings")
    async def embeddings() -> None:  # pragma: no cover - served by HotPath
        raise RuntimeError("served by the HotPath middleware")

    @app.get("/v1/models", tags=["openai"])
    async def models(request: Request) -> Response:
        gw = state.gateway
        # The model list is part of the OpenAI surface: with clientAuth it needs a key too.
        if gw is not None and gw.client_keys is not None and not gw.client_keys.check(
                request.headers.get("authorization", "").encode("latin-1") or None):
            err = unauthorized()
            state.metrics.rejected.labels(str(err.status)).inc()
            return Response(err.body(), status_code=err.status, media_type="application/json")
        ids = gw.model_ids if gw else []
        data = [{"id": m, "object": "model", "created": 0, "owned_by": "detour"} for m in ids]
        return Response(orjson.dumps({"object": "list", "data": data}), media_type="application/json")

    @app.get("/healthz", tags=["ops"])
    async def healthz() -> Response:
        return Response(b'{"status":"ok"}', media_type="application/json")

    @app.get("/readyz", tags=["ops"])
    async def readyz() -> Response:
        gw = state.gateway
        doc = {"status": "ready" if state.ready else "not ready",
               "configHash": gw.hash if gw else None, "draining": state.draining}
        if state.reload_error:
            doc["lastReloadError"] = state.reload_error
        return Response(orjson.dumps(doc), status_code=200 if state.ready else 503,
                        media_type="application/json")

    @app.get("/metrics", tags=["ops"])
    async def metrics() -> Response:
        return Response(generate_latest(state.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return HotPath(app, OpenAIEndpoints(state))
