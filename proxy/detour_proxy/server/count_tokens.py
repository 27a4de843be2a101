"""POST /v1/messages/count_tokens: answered by a target that can count (an Anthropic target, or
Claude on Vertex AI through `count-tokens:rawPredict`).

Counting tokens is a question about one provider's tokenizer, not a generation, so it does
not go through the attempt engine: the route's Anthropic targets are asked in priority order
(the client's body with the target's model; the provider's key, never the client's), skipping
targets whose breaker or limits do not admit a request right now, and moving on after a
transport failure, 429 or 5xx. A route with no Anthropic target answers 400 in Anthropic's
error format with the reason (another provider's count would be a different number)."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

import orjson

from ..adapters.base import is_retryable_status
from ..adapters.anthropic import AnthropicAdapter
from ..adapters.vertex import VertexAdapter
from ..adapters.bedrock import BedrockAdapter
from ..adapters import UnsupportedRequest, UpstreamRequest
from ..errors import bad_request
from ..inbound.messages import anthropic_status
from ..transport import TransportError

if TYPE_CHECKING:
    from ..engine import RouteRuntime
    from ..state import AppState

__all__ = ["count_tokens"]

_JSON = [(b"content-type", b"application/json")]


def _error(status: int, message: str, type_: str) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    return status, list(_JSON), orjson.dumps({"type": "error", "error": {"type": type_, "message": message}})


async def count_tokens(state: AppState, route: RouteRuntime, body: dict[str, Any], request_id: str,
                       beta: str | None = None) -> tuple[int, list[tuple[bytes, bytes]], bytes, str | None]:
    """(status, headers, body, target label) of the answer."""
    if not isinstance(body.get("messages"), list) or not body["messages"]:
        raise bad_request("messages: at least one message is required.", param="messages")
    targets = [tr for tr in route.targets if isinstance(tr.provider.adapter, AnthropicAdapter)
               or (isinstance(tr.provider.adapter, (VertexAdapter, BedrockAdapter))
                   and tr.provider.adapter.counts_tokens(tr.target.model))]
    if not targets:
        return (*_error(400, f"No target of route '{route.route.name}' can count tokens: only Anthropic targets "
                        "answer /v1/messages/count_tokens (another provider's tokenizer gives other numbers).",
                        "invalid_request_error"), None)
    last: tuple[int, list[tuple[bytes, bytes]], bytes] | None = None
    for tr in sorted(targets, key=lambda t: t.target.priority):
        if not tr.state.admits(state.clock.now()):
            continue
        prov = tr.provider
        if isinstance(prov.adapter, (VertexAdapter, BedrockAdapter)):
            try:
                req = prov.adapter.build_count_tokens(body, tr.target.model, prov.api_key(), beta)
            except UnsupportedRequest:   # no Google access token yet: the next target counts
                continue
            req.headers["x-request-id"] = request_id
        else:
            headers = prov.adapter.headers(prov.api_key())   # type: ignore[attr-defined]
            headers["x-request-id"] = request_id
            if beta:
                headers["anthropic-beta"] = beta
            url = prov.adapter._url + "/count_tokens"   # type: ignore[attr-defined]
            req = UpstreamRequest("POST", url, headers, orjson.dumps({**body, "model": tr.target.model}))
        try:
            async with asyncio.timeout(prov.config.timeouts.total):
                resp = await state.upstream.send(req, prov.client_timeout)
                try:
                    raw = await resp.read(1 << 20)
                finally:
                    resp.close()
        except (TimeoutError, TransportError) as exc:
            last = _error(529, f"{tr.label} could not be reached to count tokens ({type(exc).__name__}).",
                          "overloaded_error")
            continue
        if resp.status == 200 or not is_retryable_status(resp.status):
            if isinstance(prov.adapter, BedrockAdapter):   # CountTokens' shape -> Anthropic's
                try:
                    raw = prov.adapter.count_tokens_answer(resp.status, raw)
                except (ValueError, KeyError, TypeError):
                    last = _error(529, f"{tr.label} sent a count Detour cannot read.", "overloaded_error")
                    continue
            return resp.status, list(_JSON), raw, tr.label
        status = anthropic_status(resp.status)
        last = _error(status, f"{tr.label} answered {resp.status} to count_tokens.",
                      "overloaded_error" if status == 529 else "rate_limit_error" if status == 429 else "api_error")
    return (*(last or _error(529, f"No Anthropic target of route '{route.route.name}' admits a request right now.",
                             "overloaded_error")), None)
