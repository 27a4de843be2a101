"""Anthropic flavour: the Messages API (plain, streamed, tool use) and a model list.

Validation mirrors the real API where proxies care about it: ``anthropic-version`` header,
``model``, ``max_tokens`` and ``messages`` are required and their absence is a 400
``invalid_request_error`` in Anthropic's error shape — a gateway translating or relaying
requests must get these right, so the sim must be strict about them. Streams use the real
event sequence with ``event:`` lines so that ``anthropic.AsyncAnthropic`` accumulates them.
The ``content_block_delta`` events of the canonical chunks carry no per-request data and
are fully cached.
"""

from __future__ import annotations

from functools import lru_cache
from typing import TYPE_CHECKING, Any, Sequence

import orjson
from aiohttp import web

from .schema_example import example
from .stream import StreamPlan, send_stream
from .text import content_text, estimate_tokens, split_text, text_tokens

if TYPE_CHECKING:
    from .server import Ctx, Sim

DEFAULT_MODELS = ("claude-sonnet-4-5", "claude-haiku-4-5")

_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    504: "timeout_error",
    529: "overloaded_error",
}


def _event(name: str, data: dict[str, Any]) -> bytes:
    return b"event: " + name.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


@lru_cache(maxsize=4096)
def _text_delta(piece: str) -> bytes:
    return _event("content_block_delta",
                  {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": piece}})


@lru_cache(maxsize=4096)
def _json_delta(piece: str) -> bytes:
    return _event("content_block_delta",
                  {"type": "content_block_delta", "index": 0,
                   "delta": {"type": "input_json_delta", "partial_json": piece}})


_PING = _event("ping", {"type": "ping"})
_BLOCK_STOP = _event("content_block_stop", {"type": "content_block_stop", "index": 0})
_MESSAGE_STOP = _event("message_stop", {"type": "message_stop"})
_THINKING = {"type": "thinking", "thinking": "Let me think.", "signature": "sig-sim"}


def _with_thinking(plan: StreamPlan) -> StreamPlan:
    """The plan with a thinking block at index 0 (the answer's block moves to index 1)."""
    def shift(b: bytes) -> bytes:
        return b.replace(b'"index":0', b'"index":1')
    start, rest = plan.head.split(b"\n\n", 1)
    think = (_event("content_block_start", {"type": "content_block_start", "index": 0,
                                            "content_block": {"type": "thinking", "thinking": "", "signature": ""}})
             + _event("content_block_delta", {"type": "content_block_delta", "index": 0,
                                              "delta": {"type": "thinking_delta", "thinking": _THINKING["thinking"]}})
             + _event("content_block_delta", {"type": "content_block_delta", "index": 0,
                                              "delta": {"type": "signature_delta", "signature": _THINKING["signature"]}})
             + _event("content_block_stop", {"type": "content_block_stop", "index": 0}))
    return StreamPlan(start + b"\n\n" + think + shift(rest), [shift(d) for d in plan.pieces], shift(plan.tail),
                      plan.inband)


_TEXT_BLOCK_START = _event("content_block_start",
                           {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}})


def _has_tool_result(content: Any) -> bool:
    return isinstance(content, list) and any(
        isinstance(b, dict) and b.get("type") == "tool_result" for b in content
    )


class AnthropicAPI:
    flavor = "anthropic"
    garbage_sse = b'event: content_block_delta\ndata: {"type": "content_block_delta", "index": 0, <<<not json\n\n'

    def __init__(self, sim: "Sim", models: Sequence[str] | None) -> None:
        self.sim = sim
        self.models = tuple(models or DEFAULT_MODELS)
        data = [
            {"type": "model", "id": m, "display_name": m, "created_at": "2025-01-01T00:00:00Z"}
            for m in self.models
        ]
        self._models_body = orjson.dumps(
            {"data": data, "has_more": False, "first_id": self.models[0], "last_id": self.models[-1]}
        )

    def routes(self):
        return [
            ("POST", "/v1/messages", self.messages),
            ("POST", "/v1/messages/count_tokens", self.count_tokens),
            ("GET", "/v1/models", self.list_models),
        ]

    # -- errors ---------------------------------------------------------------------
    def default_error_type(self, status: int) -> str:
        if status in _ERROR_TYPES:
            return _ERROR_TYPES[status]
        return "api_error" if status >= 500 else "invalid_request_error"

    def error(
        self, status: int, etype: str, message: str, headers: dict[str, str], rid: str = ""
    ) -> web.Response:
        body = {"type": "error", "error": {"type": etype, "message": message}}
        if rid:
            body["request_id"] = rid
        return web.Response(
            body=orjson.dumps(body), status=status, headers=headers, content_type="application/json"
        )

    def inband_error(self, etype: str | None, message: str | None) -> bytes:
        etype = etype or "overloaded_error"
        msg = message or ("Overloaded" if etype == "overloaded_error" else f"simulated in-band {etype}")
        return _event("error", {"type": "error", "error": {"type": etype, "message": msg}})

    # -- count_tokens ---------------------------------------------------------------
    async def count_tokens(self, ctx: "Ctx", version_header: bool = True) -> web.StreamResponse:
        """`{"input_tokens": N}`: N counts the words of every text in `system` and `messages`
        (deterministic, so a test can predict it); `max_tokens` is refused as Anthropic does."""
        body = ctx.body
        if version_header and "anthropic-version" not in ctx.request.headers:
            return self.error(400, "invalid_request_error", "anthropic-version: header is required", ctx.headers, ctx.rid)
        if not isinstance(body, dict) or not isinstance(body.get("model"), str) or not body.get("messages"):
            return self.error(400, "invalid_request_error", "model and messages are required", ctx.headers, ctx.rid)
        if "max_tokens" in body:
            return self.error(400, "invalid_request_error", "max_tokens: Extra inputs are not permitted",
                              ctx.headers, ctx.rid)
        texts = [body["system"]] if isinstance(body.get("system"), str) else []
        for m in body["messages"]:
            content = m.get("content") if isinstance(m, dict) else None
            if isinstance(content, str):
                texts.append(content)
            elif isinstance(content, list):
                texts += [b.get("text", "") for b in content if isinstance(b, dict) and b.get("type") == "text"]
        return web.Response(body=orjson.dumps({"input_tokens": max(1, sum(len(t.split()) for t in texts))}),
                            headers=ctx.headers, content_type="application/json")

    # -- messages -------------------------------------------------------------------
    async def messages(self, ctx: "Ctx", version_header: bool = True) -> web.StreamResponse:
        """`version_header`: False for Claude on Vertex (the version is in the body there)."""
        headers = ctx.headers
        if version_header and "anthropic-version" not in ctx.request.headers:
            return self.error(400, "invalid_request_error", "anthropic-version: header is required", headers, ctx.rid)
        body = ctx.body
        if not isinstance(body, dict):
            return self.error(400, "invalid_request_error", "request body must be a JSON object", headers, ctx.rid)
        model = body.get("model")
        max_tokens = body.get("max_tokens")
        messages = body.get("messages")
        problem = None
        if not isinstance(model, str) or not model:
            problem = "model: Field required"
        elif isinstance(max_tokens, bool) or not isinstance(max_tokens, int):
            problem = "max_tokens: Field required"
        elif max_tokens < 1:
            problem = "max_tokens: Input should be greater than or equal to 1"
        elif not isinstance(messages, list) or not messages:
            problem = "messages: at least one message is required"
        if problem:
            return self.error(400, "invalid_request_error", problem, headers, ctx.rid)

        sim = self.sim
        n = next(sim.seq)
        last = messages[-1] if isinstance(messages[-1], dict) else {}
        role, content = last.get("role"), last.get("content")
        tools = body.get("tools")
        choice = body.get("tool_choice")
        tool_none = isinstance(choice, dict) and choice.get("type") == "none"
        pieces: Sequence[str] = sim.canon.chunks
        tool: tuple[str, str, str] | None = None
        tool_input: dict[str, Any] = {}
        if role == "assistant":
            pieces = sim.canon.remainder(content_text(content))
        elif role == "user" and tools and isinstance(tools, list) and not tool_none and not _has_tool_result(content):
            # A forced tool (`tool_choice: {type: tool}`) is called; otherwise the first one.
            forced = choice.get("name") if isinstance(choice, dict) and choice.get("type") == "tool" else None
            first = next((t for t in tools if isinstance(t, dict) and t.get("name") == forced),
                         tools[0] if isinstance(tools[0], dict) else {})
            query = content_text(content)
            tool = (f"toolu_{sim.name}_{n}", first.get("name") or "tool", query)
            tool_input = example(first.get("input_schema") or {}, query)
            if not isinstance(tool_input, dict):
                tool_input = {"query": query}
        answer = ctx.fault.answer if ctx.fault is not None else None
        if answer is not None:
            tool = None
            pieces = [] if answer == "empty" else [" ", "\n\n"] if answer == "blank" else pieces
        sim.prompt_cache.observe(messages, sim.stats, body.get("system"))
        stop = "end_turn"
        if tool is not None:
            stop = "tool_use"
        elif len(pieces) > max_tokens:
            pieces, stop = pieces[:max_tokens], "max_tokens"
        mid = f"msg_{sim.name}_{n}"
        input_tokens = estimate_tokens(messages, body.get("system"))
        args = orjson.dumps(tool_input).decode() if tool else ""
        output_tokens = text_tokens(args) if tool else len(pieces)
        # Like Anthropic: a `cache_control` breakpoint writes the prompt cache; extended
        # thinking adds a signed `thinking` block before the answer.
        cached = input_tokens if b'"cache_control"' in orjson.dumps(body) else 0
        usage = {"input_tokens": input_tokens, "output_tokens": output_tokens,
                 "cache_creation_input_tokens": cached, "cache_read_input_tokens": 0}
        thinking = isinstance(body.get("thinking"), dict) and body["thinking"].get("type") == "enabled"

        if body.get("stream") is True:
            plan = self._stream_plan(mid, model, pieces, tool, args, stop, usage,
                                     reasoning_only=answer == "reasoningOnly")
            if thinking:
                plan = _with_thinking(plan)
            return await send_stream(sim, ctx, plan)
        if tool is not None:
            blocks: list[dict[str, Any]] = [
                {"type": "tool_use", "id": tool[0], "name": tool[1], "input": tool_input}
            ]
        elif answer == "reasoningOnly":
            blocks = [{"type": "thinking", "thinking": "".join(pieces), "signature": "sim"}]
        else:
            blocks = [{"type": "text", "text": "".join(pieces)}]
        if thinking:
            blocks.insert(0, dict(_THINKING))
        out = {
            "id": mid, "type": "message", "role": "assistant", "model": model, "content": blocks,
            "stop_reason": stop, "stop_sequence": None, "usage": usage,
        }
        return web.Response(body=orjson.dumps(out), headers=headers, content_type="application/json")

    def _stream_plan(
        self, mid: str, model: str, pieces: Sequence[str], tool: tuple[str, str, str] | None,
        args: str, stop: str, usage: dict[str, int], reasoning_only: bool = False,
    ) -> StreamPlan:
        start = _event("message_start", {"type": "message_start", "message": {
            "id": mid, "type": "message", "role": "assistant", "model": model, "content": [],
            "stop_reason": None, "stop_sequence": None,
            "usage": {**usage, "output_tokens": 1},
        }})
        if reasoning_only:
            block_start = _event("content_block_start", {"type": "content_block_start", "index": 0,
                                                         "content_block": {"type": "thinking", "thinking": ""}})
            encoded = [_event("content_block_delta", {"type": "content_block_delta", "index": 0,
                                                      "delta": {"type": "thinking_delta", "thinking": p}})
                       for p in pieces]
        elif tool is None:
            block_start = _TEXT_BLOCK_START
            encoded = [_text_delta(p) for p in pieces]
        else:
            block_start = _event("content_block_start", {
                "type": "content_block_start", "index": 0,
                "content_block": {"type": "tool_use", "id": tool[0], "name": tool[1], "input": {}},
            })
            encoded = [_json_delta(p) for p in split_text(args, len(self.sim.canon.chunks))]
        delta = _event("message_delta", {
            "type": "message_delta", "delta": {"stop_reason": stop, "stop_sequence": None},
            "usage": {"output_tokens": usage["output_tokens"]},
        })
        return StreamPlan(start + block_start + _PING, encoded, _BLOCK_STOP + delta + _MESSAGE_STOP, self.inband_error)

    async def list_models(self, ctx: "Ctx") -> web.StreamResponse:
        return web.Response(body=self._models_body, headers=ctx.headers, content_type="application/json")
