"""The ASGI application: FastAPI for the control endpoints, lean ASGI for the hot path.

`create_app` returns a FastAPI app whose first middleware dispatches the OpenAI POST
endpoints straight to `OpenAIEndpoints`, before FastAPI's routing and response machinery;
the documented FastAPI routes for those paths exist for the OpenAPI schema only.

Every answer is in the OpenAI error format, FastAPI's own included: an unknown path is a 404,
a known path with the wrong method a 405 with `Allow`. With `clientAuth` set, the interactive
docs and the OpenAPI schema are not served (they describe the gateway to anyone who asks), and
`server.metricsAuth` puts `/metrics` behind the client keys too.
"""

from __future__ import annotations

import logging
from contextlib import asynccontextmanager
from typing import Any, AsyncIterator, Awaitable, Callable

import orjson
from fastapi import FastAPI, Request, Response
from starlette.exceptions import HTTPException
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from .. import __version__
from ..state import AppState
from ..errors import ClientError, echo, error_body, unauthorized
from .endpoints import HOT_PATHS, OpenAIEndpoints
from .stored_responses import STORED_PATH, serve_stored

log = logging.getLogger("detour.app")
Hook = Callable[[AppState], Awaitable[Any]]
#: FastAPI's documentation endpoints: not served while clientAuth is set.
DOC_PATHS = frozenset({"/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json"})
_STATUS_CODES = {404: "not_found", 405: "method_not_allowed"}


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
        if scope["type"] == "http":
            path = scope["path"]
            if path.startswith("/v1/responses/"):
                m = STORED_PATH.match(path)
                if m is not None:
                    await serve_stored(self.endpoints.state, scope, send, m)
                    return
            if path in HOT_PATHS:   # every hot path is POST-only, whichever API it serves
                await _send_json(send, 405, _not_allowed(scope["method"], path), [(b"allow", b"POST")])
                return
            if path in DOC_PATHS:
                gw = self.endpoints.state.gateway
                if gw is not None and gw.client_keys is not None:
                    await _send_json(send, 404, _not_found(path))
                    return
        await self.app(scope, receive, send)


def _not_found(path: str) -> bytes:
    return error_body(f"Unknown path '{echo(path)}' on this Detour gateway.", "invalid_request_error", "not_found")


def _not_allowed(method: str, path: str) -> bytes:
    return error_body(f"Method {echo(method)} is not allowed on '{echo(path)}'.", "invalid_request_error",
                      "method_not_allowed")


async def _send_json(send: Any, status: int, body: bytes, extra: list[tuple[bytes, bytes]] | None = None) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            *(extra or ())]})
    await send({"type": "http.response.body", "body": body, "more_body": False})


def _http_error(request: Request, exc: Exception) -> Response:
    """Starlette's own refusals (no such path, wrong method) in the OpenAI error format."""
    assert isinstance(exc, HTTPException)
    if exc.status_code == 404:
        body = _not_found(request.url.path)
    elif exc.status_code == 405:
        body = _not_allowed(request.method, request.url.path)
    else:
        body = error_body(str(exc.detail), "invalid_request_error", _STATUS_CODES.get(exc.status_code))
    return Response(body, status_code=exc.status_code, headers=exc.headers, media_type="application/json")


def _refusal(state: AppState, err: ClientError) -> Response:
    state.metrics.rejected.labels(str(err.status)).inc()
    return Response(err.body(), status_code=err.status, media_type="application/json")


def _authorized(state: AppState, request: Request) -> bool:
    """True when no client key is needed or the request carries one."""
    gw = state.gateway
    return gw is None or gw.client_keys is None or gw.client_keys.check(
        request.headers.get("authorization", "").encode("latin-1") or None)


def _model(model_id: str) -> dict[str, Any]:
    return {"id": model_id, "object": "model", "created": 0, "owned_by": "detour"}


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
    app.add_exception_handler(HTTPException, _http_error)

    @app.post("/v1/chat/completions", tags=["openai"], summary="Chat completions (stream and non-stream)")
    async def chat_completions() -> None:  # pragma: no cover - served by HotPath
        raise RuntimeError("served by the HotPath middleware")

    @app.post("/v1/embeddings", tags=["openai"], summary="Embeddings")
    async def embeddings() -> None:  # pragma: no cover - served by HotPath
        raise RuntimeError("served by the HotPath middleware")

    @app.get("/v1/models", tags=["openai"])
    async def models(request: Request) -> Response:
        # The model list is part of the OpenAI surface: with clientAuth it needs a key too.
        if not _authorized(state, request):
            return _refusal(state, unauthorized())
        gw = state.gateway
        data = [_model(m) for m in (gw.model_ids if gw else [])]
        return Response(orjson.dumps({"object": "list", "data": data}), media_type="application/json")

    @app.get("/v1/models/{model_id:path}", tags=["openai"])
    async def model(model_id: str, request: Request) -> Response:
        if not _authorized(state, request):
            return _refusal(state, unauthorized())
        gw = state.gateway
        if gw is None or model_id not in gw.model_ids:
            return _refusal(state, ClientError(
                404, f"The model '{echo(model_id)}' does not exist on this gateway.",
                "invalid_request_error", "model_not_found", "model"))
        return Response(orjson.dumps(_model(model_id)), media_type="application/json")

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
    async def metrics(request: Request) -> Response:
        gw = state.gateway
        if gw is not None and gw.config.server.metrics_auth and not _authorized(state, request):
            return _refusal(state, unauthorized())
        return Response(generate_latest(state.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return HotPath(app, OpenAIEndpoints(state))
