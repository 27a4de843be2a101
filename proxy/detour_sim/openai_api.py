"""OpenAI flavour: chat completions (plain, streamed, tool calls), embeddings, models.

Shapes follow what api.openai.com returns closely enough that ``openai.AsyncOpenAI``
parses them into ``ChatCompletion`` / ``ChatCompletionChunk`` / ``CreateEmbeddingResponse``.
Stream chunks are assembled from pre-encoded byte fragments (a per-request prefix with id,
created and model, and cached ``delta`` encodings of the canonical chunks) because the sim
is the benchmark's "fast upstream" and must not be the bottleneck.
"""

from __future__ import annotations

import time
from functools import lru_cache
from typing import TYPE_CHECKING, Any, Sequence

import orjson
from aiohttp import web

from .responses_api import ResponsesAPI
from .stream import StreamPlan, send_stream
from .text import content_text, embedding, estimate_tokens, split_text, text_tokens

if TYPE_CHECKING:
    from .server import Ctx, Sim

DEFAULT_MODELS = ("gpt-4o-mini", "gpt-4o", "text-embedding-3-small")

_ERROR_DEFAULTS = {
    400: ("invalid_request_error", None),
    401: ("invalid_request_error", "invalid_api_key"),
    403: ("permission_error", None),
    404: ("invalid_request_error", "not_found"),
    408: ("timeout", None),
    409: ("conflict", None),
    413: ("invalid_request_error", "request_too_large"),
    429: ("requests", "rate_limit_exceeded"),
    500: ("server_error", None),
    502: ("server_error", "bad_gateway"),
    503: ("server_error", "service_unavailable"),
    504: ("server_error", "timeout"),
}

_DONE = b"data: [DONE]\n\n"


@lru_cache(maxsize=4096)
def _content_delta(piece: str) -> bytes:
    return orjson.dumps({"content": piece})


@lru_cache(maxsize=4096)
def _reasoning_delta(piece: str) -> bytes:
    return orjson.dumps({"reasoning_content": piece})


@lru_cache(maxsize=4096)
def _args_delta(piece: str) -> bytes:
    return orjson.dumps({"tool_calls": [{"index": 0, "function": {"arguments": piece}}]})


class OpenAIAPI:
    flavor = "openai"
    garbage_sse = b'data: {"id": "chatcmpl-garbage", "choices": [{"delta": {"content": <<<not json\n\n'

    def __init__(self, sim: "Sim", models: Sequence[str] | None) -> None:
        self.sim = sim
        self.fingerprint = f"fp_detour_sim_{sim.name}"
        self.models = tuple(models or DEFAULT_MODELS)
        self._models_body = orjson.dumps(
            {
                "object": "list",
                "data": [
                    {"id": m, "object": "model", "created": 1700000000, "owned_by": sim.name}
                    for m in self.models
                ],
            }
        )

    def routes(self):
        return [
            ("POST", "/v1/chat/completions", self.chat),
            ("POST", "/v1/embeddings", self.embeddings),
            ("POST", "/v1/responses", self._responses.create),
            ("GET", "/v1/responses/{rid}", self._responses.retrieve),
            ("DELETE", "/v1/responses/{rid}", self._responses.delete),
            # Azure's Responses API: the deployment in the body's model, api-version required.
            ("POST", "/openai/responses", self._azure_responses),
            ("GET", "/v1/models", self.list_models),
            # Azure OpenAI shape: the deployment in the path, api-version required.
            ("POST", "/openai/deployments/{deployment}/chat/completions", self._azure(self.chat)),
            ("POST", "/openai/deployments/{deployment}/embeddings", self._azure(self.embeddings)),
        ]

    @property
    def _responses(self) -> ResponsesAPI:
        api = self.__dict__.get("_responses_api")
        if api is None:
            api = self.__dict__["_responses_api"] = ResponsesAPI(self)
        return api

    async def _azure_responses(self, ctx: "Ctx") -> web.StreamResponse:
        if not ctx.request.query.get("api-version"):
            return self.error(400, "invalid_request_error", "api-version query parameter is required", ctx.headers)
        return await self._responses.create(ctx)

    def _azure(self, handler):
        """Serve Azure deployment URLs with the OpenAI handlers (model = deployment)."""

        async def azure_handler(ctx: "Ctx") -> web.StreamResponse:
            if not ctx.request.query.get("api-version"):
                return self.error(400, "invalid_request_error", "api-version query parameter is required",
                                  ctx.headers)
            if isinstance(ctx.body, dict):
                ctx.body = {**ctx.body, "model": ctx.request.match_info["deployment"]}
            return await handler(ctx)

        return azure_handler

    # -- errors ---------------------------------------------------------------------
    def default_error_type(self, status: int) -> str:
        if status in _ERROR_DEFAULTS:
            return _ERROR_DEFAULTS[status][0]
        return "server_error" if status >= 500 else "invalid_request_error"

    def error(
        self, status: int, etype: str, message: str, headers: dict[str, str], rid: str = "",
        param: str | None = None,
    ) -> web.Response:
        code = _ERROR_DEFAULTS.get(status, (None, None))[1]
        if etype != self.default_error_type(status):
            code = etype
        body = {"error": {"message": message, "type": etype, "param": param, "code": code}}
        return web.Response(
            body=orjson.dumps(body), status=status, headers=headers, content_type="application/json"
        )

    def inband_error(self, etype: str | None, message: str | None) -> bytes:
        etype = etype or "server_error"
        err = {"message": message or f"simulated in-band {etype}", "type": etype, "param": None, "code": etype}
        return b"data: " + orjson.dumps({"error": err}) + b"\n\n"

    # -- chat -----------------------------------------------------------------------
    async def chat(self, ctx: "Ctx") -> web.StreamResponse:
        body = ctx.body
        if not isinstance(body, dict):
            return self.error(400, "invalid_request_error", "request body must be a JSON object", ctx.headers)
        model = body.get("model")
        messages = body.get("messages")
        if not isinstance(model, str) or not model:
            return self.error(400, "invalid_request_error", "you must provide a model parameter",
                              ctx.headers, param="model")
        if not isinstance(messages, list) or not messages:
            return self.error(400, "invalid_request_error", "'messages' must be a non-empty array",
                              ctx.headers, param="messages")
        sim = self.sim
        last = messages[-1] if isinstance(messages[-1], dict) else {}
        role = last.get("role")
        tool: tuple[str, str, str] | None = None
        pieces: Sequence[str] = sim.canon.chunks
        n = next(sim.seq)
        if role == "assistant":
            pieces = sim.canon.remainder(content_text(last.get("content")))
        elif role == "user" and body.get("tools") and body.get("tool_choice") != "none":
            first = body["tools"][0] if isinstance(body["tools"], list) else {}
            fn = first.get("function") if isinstance(first, dict) else None
            name = (fn or {}).get("name") or (first.get("name") if isinstance(first, dict) else None) or "tool"
            args = orjson.dumps({"query": content_text(last.get("content"))}).decode()
            tool = (f"call_{sim.name}_{n}", name, args)
        answer = ctx.fault.answer if ctx.fault is not None else None
        if answer is not None:
            tool = None
            pieces = [] if answer == "empty" else [" ", "\n\n"] if answer == "blank" else pieces
        sim.prompt_cache.observe(messages, sim.stats)
        finish = "stop"
        if tool is not None:
            finish = "tool_calls"
        else:
            limit = body.get("max_completion_tokens") or body.get("max_tokens")
            if isinstance(limit, int) and 0 < limit < len(pieces):
                pieces, finish = pieces[:limit], "length"
        cid = f"chatcmpl-{sim.name}-{n}"
        created = int(time.time())
        prompt_tokens = estimate_tokens(messages)
        completion_tokens = text_tokens(tool[2]) if tool else len(pieces)
        usage = {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        }
        if body.get("stream") is True:
            opts = body.get("stream_options")
            include_usage = isinstance(opts, dict) and opts.get("include_usage") is True
            plan = self._stream_plan(cid, created, model, pieces, tool, finish, usage, include_usage,
                                     reasoning=answer == "reasoningOnly")
            return await send_stream(sim, ctx, plan)
        if tool is not None:
            message: dict[str, Any] = {
                "role": "assistant", "content": None, "refusal": None, "annotations": [],
                "tool_calls": [{"id": tool[0], "type": "function",
                                "function": {"name": tool[1], "arguments": tool[2]}}],
            }
        elif answer == "reasoningOnly":
            message = {"role": "assistant", "content": None, "refusal": None, "annotations": [],
                       "reasoning_content": "".join(pieces)}
        else:
            message = {"role": "assistant", "content": "".join(pieces), "refusal": None, "annotations": []}
        out = {
            "id": cid,
            "object": "chat.completion",
            "created": created,
            "model": model,
            "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": finish}],
            "usage": usage,
            "system_fingerprint": self.fingerprint,
        }
        return web.Response(body=orjson.dumps(out), headers=ctx.headers, content_type="application/json")

    def _stream_plan(
        self, cid: str, created: int, model: str, pieces: Sequence[str],
        tool: tuple[str, str, str] | None, finish: str, usage: dict[str, int], include_usage: bool,
        reasoning: bool = False,
    ) -> StreamPlan:
        prefix = b"".join((
            b'data: {"id":', orjson.dumps(cid), b',"object":"chat.completion.chunk","created":',
            str(created).encode(), b',"model":', orjson.dumps(model),
            b',"system_fingerprint":', orjson.dumps(self.fingerprint),
            b',"choices":[{"index":0,"delta":',
        ))
        usage_null = b',"usage":null' if include_usage else b""
        suffix = b',"logprobs":null,"finish_reason":null}]' + usage_null + b"}\n\n"
        if tool is None:
            head_delta = b'{"role":"assistant","content":"","refusal":null}'
            delta = _reasoning_delta if reasoning else _content_delta
            encoded = [prefix + delta(p) + suffix for p in pieces]
        else:
            head_delta = orjson.dumps({
                "role": "assistant", "content": None, "refusal": None,
                "tool_calls": [{"index": 0, "id": tool[0], "type": "function",
                                "function": {"name": tool[1], "arguments": ""}}],
            })
            arg_pieces = split_text(tool[2], len(self.sim.canon.chunks))
            encoded = [prefix + _args_delta(p) + suffix for p in arg_pieces]
        tail = [prefix, b'{},"logprobs":null,"finish_reason":"', finish.encode(), b'"}]', usage_null, b"}\n\n"]
        if include_usage:
            tail.append(b"data: " + orjson.dumps({
                "id": cid, "object": "chat.completion.chunk", "created": created, "model": model,
                "system_fingerprint": self.fingerprint, "choices": [], "usage": usage,
            }) + b"\n\n")
        tail.append(_DONE)
        return StreamPlan(prefix + head_delta + suffix, encoded, b"".join(tail))

    # -- embeddings / models --------------------------------------------------------
    async def embeddings(self, ctx: "Ctx") -> web.StreamResponse:
        body = ctx.body
        if not isinstance(body, dict) or not isinstance(body.get("model"), str):
            return self.error(400, "invalid_request_error", "you must provide a model parameter",
                              ctx.headers, param="model")
        inp = body.get("input")
        if isinstance(inp, str):
            items: list[Any] = [inp]
        elif isinstance(inp, list) and inp and all(isinstance(x, int) for x in inp):
            items = [inp]
        elif isinstance(inp, list) and inp and all(isinstance(x, (str, list)) for x in inp):
            items = inp
        else:
            return self.error(400, "invalid_request_error", "'input' must be a string or a non-empty array",
                              ctx.headers, param="input")
        dims = body.get("dimensions")
        if not isinstance(dims, int) or dims <= 0:
            dims = self.sim.embedding_dims
        as_b64 = body.get("encoding_format") == "base64"
        data = [
            {"object": "embedding", "index": i, "embedding": embedding(it, dims, as_b64)}
            for i, it in enumerate(items)
        ]
        tokens = sum(text_tokens(it) if isinstance(it, str) else len(it) for it in items)
        out = {
            "object": "list", "data": data, "model": body["model"],
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }
        return web.Response(body=orjson.dumps(out), headers=ctx.headers, content_type="application/json")

    async def list_models(self, ctx: "Ctx") -> web.StreamResponse:
        return web.Response(body=self._models_body, headers=ctx.headers, content_type="application/json")
