"""The Responses API's stored-response endpoints: GET/DELETE /v1/responses/{id},
POST /v1/responses/{id}/cancel, GET /v1/responses/{id}/input_items.

A response created with `store` or `background` lives at the provider that made it, so these
are not generations to fail over: they go to that provider. Detour remembers which provider
served each response it forwarded natively (`inbound.native`); for an id it did not see
(another replica, a restart) the providers that serve the Responses API are asked in config
order until one knows it (a 404 moves on). The provider's key is used, never the client's;
the answer is the provider's, as is. Non-streamed only (`stream=true` on GET is refused)."""

from __future__ import annotations

import asyncio
import re
from typing import TYPE_CHECKING, Any


from ..adapters import UpstreamRequest
from ..adapters.errors import redact
from ..errors import error_body
from ..inbound import native
from ..transport import TransportError

if TYPE_CHECKING:
    from ..state import AppState

__all__ = ["STORED_PATH", "serve_stored"]

#: /v1/responses/{id}[/cancel|/input_items]
STORED_PATH = re.compile(r"^/v1/responses/([A-Za-z0-9_\-]{1,200})(/cancel|/input_items)?$")
_METHODS = {None: ("GET", "DELETE"), "/cancel": ("POST",), "/input_items": ("GET",)}
_JSON = [(b"content-type", b"application/json")]
_LIMIT = 16 << 20


async def _reply(send: Any, status: int, body: bytes, extra: list[tuple[bytes, bytes]] | None = None) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [*_JSON, (b"content-length", str(len(body)).encode()), *(extra or ())]})
    await send({"type": "http.response.body", "body": body, "more_body": False})


async def serve_stored(state: AppState, scope: dict[str, Any], send: Any, m: re.Match[str]) -> None:
    rid, tail = m.group(1), m.group(2)
    method = scope["method"]
    gw = state.gateway
    if gw is None or state.draining:
        return await _reply(send, 503, error_body("Detour is not ready.", "upstream_error", "not_ready"))
    if method not in _METHODS[tail]:
        return await _reply(send, 405, error_body(f"Method {method} is not allowed here.", "invalid_request_error",
                                                  "method_not_allowed"))
    auth = next((v for k, v in scope["headers"] if k == b"authorization"), None)
    if gw.client_keys is not None and not gw.client_keys.check(auth):
        return await _reply(send, 401, error_body("Invalid or missing API key.", "invalid_request_error",
                                                  "invalid_api_key"))
    query = scope.get("query_string", b"").decode("latin-1")
    if "stream=true" in query:
        return await _reply(send, 400, error_body("Streaming a stored response is not supported by Detour; "
                                                  "retrieve it without stream.", "invalid_request_error",
                                                  "unsupported_by_route"))
    owner = native.stored_by(rid)
    provs = [p for p in gw.providers.values() if p.config.serves_responses and (owner is None or p.config.name == owner)]
    if not provs:
        return await _reply(send, 404, error_body(f"No provider of this gateway serves the Responses API, so "
                                                  f"response '{rid}' cannot be found.", "invalid_request_error",
                                                  "not_found"))
    last: tuple[int, bytes] = (404, error_body(f"Response with id '{rid}' not found.", "invalid_request_error",
                                               "not_found"))
    for prov in provs:
        headers = prov.adapter.headers(prov.api_key())   # type: ignore[attr-defined]
        req = UpstreamRequest(method, native.stored_url(prov.config, f"/{rid}{tail or ''}", query), headers,
                              b"" if method != "POST" else b"{}")
        try:
            async with asyncio.timeout(prov.config.timeouts.total):
                resp = await state.upstream.send(req, prov.client_timeout)
                try:
                    raw = await resp.read(_LIMIT)
                finally:
                    resp.close()
        except (TimeoutError, TransportError) as exc:
            last = (502, error_body(f"Provider {prov.config.name} could not be reached ({type(exc).__name__}).",
                                    "upstream_error", "upstream_connect_error"))
            continue
        if resp.status == 404 and owner is None:
            continue   # not this provider's response: ask the next
        if resp.status == 200 and method != "DELETE":
            native.remember_response(rid, prov.config.name)
        elif resp.status != 200:   # provider error text: never with a configured key in it
            keys = {p.api_key() for p in gw.providers.values()}
            raw = redact(raw.decode("utf-8", "replace"), keys).encode()
        return await _reply(send, resp.status, raw, [(b"x-detour-provider", prov.config.name.encode())])
    await _reply(send, *last)
