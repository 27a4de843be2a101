"""Run the real `detour-proxy` CLI in a subprocess, plus a test-only introspection endpoint.

The resilience suite needs to see inside the proxy process (live asyncio tasks) without
sharing its GIL with the load generator. This wrapper runs `detour_proxy.cli.main` unchanged
and only wraps the ASGI app it builds with a tiny middleware answering
`GET /_test/introspect` (everything else is passed through untouched, lifespan included).

`DETOUR_TEST_BODY_READ_TIMEOUT` (seconds) overrides `handlers.BODY_READ_TIMEOUT` so the
slow-upload scenario does not have to wait the production 30 s.
"""

from __future__ import annotations

import asyncio
import gc
import os
from typing import Any

import orjson

import detour_proxy.cli as cli
from detour_proxy.server import endpoints as handlers

_create_app = cli.create_app


def _create_app_with_introspection(state: Any, **kw: Any) -> Any:
    app = _create_app(state, **kw)

    async def wrapped(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["path"] == "/_test/introspect":
            tasks = asyncio.all_tasks()
            doc = {"tasks": len(tasks),
                   "task_names": sorted({getattr(t.get_coro(), "__qualname__", "?") for t in tasks}),
                   "gc_objects": len(gc.get_objects())}
            await send({"type": "http.response.start", "status": 200,
                        "headers": [(b"content-type", b"application/json")]})
            await send({"type": "http.response.body", "body": orjson.dumps(doc)})
            return
        await app(scope, receive, send)

    return wrapped


if __name__ == "__main__":
    if os.environ.get("DETOUR_TEST_BODY_READ_TIMEOUT"):
        handlers.BODY_READ_TIMEOUT = float(os.environ["DETOUR_TEST_BODY_READ_TIMEOUT"])
    cli.create_app = _create_app_with_introspection
    cli.main()
