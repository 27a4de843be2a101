"""Google flavour: the Gemini API, Vertex AI (Gemini and Claude) and an OAuth token endpoint.

Routes (all behind the shared fault pipeline of :meth:`Sim.wrap`, except the auth routes, which
live in `google_oauth`):
- ``POST /v1beta/models/{model}:generateContent`` / ``:streamGenerateContent?alt=sse`` (the
  Gemini API): an ``x-goog-api-key`` header is required (403 PERMISSION_DENIED without one).
- ``POST /v1/projects/{p}/locations/{l}/publishers/google/models/{model}:generateContent`` /
  ``:streamGenerateContent?alt=sse`` (Vertex Gemini) and ``.../publishers/anthropic/models/
  {model}:rawPredict`` / ``:streamRawPredict`` (Claude on Vertex: the Anthropic Messages body
  without ``model``, with ``anthropic_version: vertex-2023-10-16``; answered by the Anthropic
  flavour's handler). Vertex paths need ``Authorization: Bearer <token this sim issued>``
  (401 UNAUTHENTICATED otherwise, also for an expired token).
- ``POST /token``: Google's OAuth token endpoint for the service-account flow
  (``grant_type=urn:ietf:params:oauth:grant-type:jwt-bearer``). The JWT assertion must be
  RS256-signed by the sim's own service-account key (``GET /_sim/google/service-account``
  hands out a key file whose ``token_uri`` points here) and addressed to this endpoint.
- ``POST /sts/v1/token``: the Security Token Service of workload identity federation
  (``external_account`` credentials): a token-exchange grant whose subject token is
  ``SUBJECT_TOKEN`` (a stand-in for the workload's Kubernetes service-account token).
- ``GET /computeMetadata/v1/instance/service-accounts/default/token`` (and ``GET /``): a GCE
  metadata server for Application Default Credentials (``GCE_METADATA_HOST``/``GCE_METADATA_IP``).
- ``PUT /_sim/google/token`` ``{"lifetime": seconds, "failStatus": 500|null}``: token lifetime
  and an outage of the token endpoint.

Errors use Google's shape ``{"error": {"code", "message", "status"}}``; an injected fault whose
``errorType`` is an Anthropic type (lower case, e.g. ``overloaded_error``) is answered in
Anthropic's shape (what Claude itself says on Vertex), in-band errors of Claude streams too.
"""

from __future__ import annotations

import base64
import re
from typing import TYPE_CHECKING, Any, Sequence

import orjson
from aiohttp import web

from .anthropic_api import AnthropicAPI
from .google_oauth import GoogleOAuth
from .schema_example import example
from .stream import StreamPlan, send_stream
from .text import estimate_tokens, text_tokens

if TYPE_CHECKING:
    from .server import Ctx, Sim

DEFAULT_MODELS = ("gemini-2.5-flash", "gemini-2.5-pro", "claude-sonnet-4-5")
VERTEX_ANTHROPIC_VERSION = "vertex-2023-10-16"
_DATED = re.compile(r"20\d\d-\d\d-\d\d")   # the anthropic SDK's Vertex client sends its API version

_STATUS_WORDS = {
    400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED", 404: "NOT_FOUND",
    409: "ABORTED", 429: "RESOURCE_EXHAUSTED", 499: "CANCELLED", 500: "INTERNAL", 501: "UNIMPLEMENTED",
    503: "UNAVAILABLE", 504: "DEADLINE_EXCEEDED",
}


def _sse(doc: dict[str, Any]) -> bytes:
    return b"data: " + orjson.dumps(doc) + b"\r\n\r\n"


def _text_of_parts(parts: Any) -> str:
    if not isinstance(parts, list):
        return ""
    return "".join(p["text"] for p in parts if isinstance(p, dict) and isinstance(p.get("text"), str))


class GoogleAPI:
    flavor = "google"
    garbage_sse = b'data: {"candidates": [{"content": <<<not json\r\n\r\n'

    def __init__(self, sim: "Sim", models: Sequence[str] | None) -> None:
        self.sim = sim
        self.models = tuple(models or DEFAULT_MODELS)
        self.claude = AnthropicAPI(sim, models)
        self.oauth = GoogleOAuth(sim)

    def reset(self) -> None:
        self.oauth.reset()

    def routes(self):
        return [
            ("POST", "/v1beta/models/{call}", self.gemini_api),
            ("POST", "/v1/models/{call}", self.gemini_api),
            ("POST", "/v1/projects/{project}/locations/{location}/publishers/{publisher}/models/{call}", self.vertex),
        ]

    def extra_routes(self):
        """Routes outside the fault pipeline (auth infrastructure, not the model API)."""
        return self.oauth.routes()

    # -- errors ---------------------------------------------------------------------
    def default_error_type(self, status: int) -> str:
        return _STATUS_WORDS.get(status, "INTERNAL" if status >= 500 else "INVALID_ARGUMENT")

    def error(self, status: int, etype: str, message: str, headers: dict[str, str], rid: str = "") -> web.Response:
        if etype.islower():   # an Anthropic error type: Claude's own answer on Vertex
            return self.claude.error(status, etype, message, headers, rid)
        body = {"error": {"code": status, "message": message, "status": etype}}
        return web.Response(body=orjson.dumps(body), status=status, headers=headers,
                            content_type="application/json")

    def inband_error(self, etype: str | None, message: str | None) -> bytes:
        word = etype or "UNAVAILABLE"
        code = next((c for c, w in _STATUS_WORDS.items() if w == word), 500)
        return _sse({"error": {"code": code, "message": message or "simulated in-band error", "status": word}})

    # -- the Gemini API and Vertex --------------------------------------------------
    async def gemini_api(self, ctx: "Ctx") -> web.StreamResponse:
        if not ctx.request.headers.get("x-goog-api-key"):
            return self.error(403, "PERMISSION_DENIED", "Method doesn't allow unregistered callers (callers "
                              "without established identity). Please use API Key or other form of API "
                              "consumer identity to call this API.", ctx.headers, ctx.rid)
        model, _, method = ctx.request.match_info["call"].partition(":")
        return await self._generate(ctx, model, method)

    async def vertex(self, ctx: "Ctx") -> web.StreamResponse:
        auth = ctx.request.headers.get("authorization", "")
        token = auth[7:] if auth.lower().startswith("bearer ") else ""
        if not self.oauth.valid(token):
            return self.error(401, "UNAUTHENTICATED", "Request had invalid authentication credentials. Expected "
                              "OAuth 2 access token.", ctx.headers, ctx.rid)
        publisher = ctx.request.match_info["publisher"]
        model, _, method = ctx.request.match_info["call"].partition(":")
        if publisher == "google":
            return await self._generate(ctx, model, method)
        if publisher == "anthropic" and model == "count-tokens" and method == "rawPredict":
            return await self._count_tokens(ctx)
        if publisher == "anthropic" and method in ("rawPredict", "streamRawPredict"):
            return await self._raw_predict(ctx, model, method == "streamRawPredict")
        return self.error(404, "NOT_FOUND", f"Publisher model {publisher}/{model}:{method} not found",
                          ctx.headers, ctx.rid)

    async def _count_tokens(self, ctx: "Ctx") -> web.StreamResponse:
        """Claude's count_tokens on Vertex: the Anthropic body, `model` included, plus anthropic_version."""
        body = ctx.body
        version = body.get("anthropic_version") if isinstance(body, dict) else None
        if version != VERTEX_ANTHROPIC_VERSION and not (isinstance(version, str) and _DATED.fullmatch(version)):
            return self.claude.error(400, "invalid_request_error", "anthropic_version: is required", ctx.headers,
                                     ctx.rid)
        ctx.body = {k: v for k, v in body.items() if k != "anthropic_version"}
        return await self.claude.count_tokens(ctx, version_header=False)

    async def _raw_predict(self, ctx: "Ctx", model: str, stream: bool) -> web.StreamResponse:
        body = ctx.body
        if not isinstance(body, dict):
            return self.claude.error(400, "invalid_request_error", "request body must be a JSON object",
                                     ctx.headers, ctx.rid)
        version = body.get("anthropic_version")
        if version != VERTEX_ANTHROPIC_VERSION and not (isinstance(version, str) and _DATED.fullmatch(version)):
            return self.claude.error(400, "invalid_request_error",
                                     f"anthropic_version: must be {VERTEX_ANTHROPIC_VERSION} or a dated API version",
                                     ctx.headers, ctx.rid)
        if "model" in body:
            return self.claude.error(400, "invalid_request_error", "model: Extra inputs are not permitted",
                                     ctx.headers, ctx.rid)
        if bool(body.get("stream")) != stream:
            return self.claude.error(400, "invalid_request_error", "stream must be true exactly for "
                                     "streamRawPredict", ctx.headers, ctx.rid)
        ctx.body = {k: v for k, v in body.items() if k != "anthropic_version"} | {"model": model}
        return await self.claude.messages(ctx, version_header=False)

    async def _generate(self, ctx: "Ctx", model: str, method: str) -> web.StreamResponse:
        if method not in ("generateContent", "streamGenerateContent"):
            return self.error(404, "NOT_FOUND", f"models/{model}:{method} is not found", ctx.headers, ctx.rid)
        stream = method == "streamGenerateContent"
        if stream and ctx.request.query.get("alt") != "sse":
            return self.error(400, "INVALID_ARGUMENT", "this sim streams only with alt=sse", ctx.headers, ctx.rid)
        body = ctx.body
        problem = self._invalid(body) or self._unsigned(body, model)
        if problem:
            return self.error(400, "INVALID_ARGUMENT", problem, ctx.headers, ctx.rid)
        sim = self.sim
        n = next(sim.seq)
        contents = body["contents"]
        last = contents[-1]
        last_parts = last.get("parts") or []
        gc = body.get("generationConfig") or {}
        decls = [d for t in body.get("tools") or [] if isinstance(t, dict)
                 for d in t.get("functionDeclarations") or [] if isinstance(d, dict)]
        fcc = (body.get("toolConfig") or {}).get("functionCallingConfig") or {}
        answered = any(isinstance(p, dict) and "functionResponse" in p for p in last_parts)
        call = None
        query = _text_of_parts(last_parts)
        if decls and fcc.get("mode") != "NONE" and last.get("role") == "user" and not answered:
            allowed = fcc.get("allowedFunctionNames") or []
            decl = next((d for d in decls if d.get("name") in allowed), decls[0])
            args = example(decl.get("parameters") or {}, query)
            call = {"name": decl.get("name") or "tool", "args": args if isinstance(args, dict) else {"query": query}}
        signature = base64.b64encode(f"sim-signature/{sim.name}/{n}".encode()).decode()
        pieces: Sequence[str] = sim.canon.chunks
        if call is None and gc.get("responseMimeType") == "application/json":
            schema = gc.get("responseSchema") or {"type": "object", "properties": {"answer": {"type": "string"}}}
            text = orjson.dumps(example(schema, query)).decode()
            k = max(1, min(len(sim.canon.chunks), len(text)))
            size = -(-len(text) // k)
            pieces = [text[i:i + size] for i in range(0, len(text), size)]
        finish = "STOP"
        max_out = gc.get("maxOutputTokens")
        if call is None and isinstance(max_out, int) and len(pieces) > max_out:
            pieces, finish = pieces[:max_out], "MAX_TOKENS"
        prompt = estimate_tokens([{"content": _text_of_parts(c.get("parts"))} for c in contents])
        out_tokens = text_tokens(orjson.dumps(call["args"]).decode()) if call else len(pieces)
        usage = {"promptTokenCount": prompt, "candidatesTokenCount": out_tokens,
                 "totalTokenCount": prompt + out_tokens}
        rid = f"resp_{sim.name}_{n}"
        meta = {"modelVersion": model, "responseId": rid}
        if stream:
            if call is not None:
                encoded = [_sse({"candidates": [{"content": {"role": "model", "parts": [
                    {"functionCall": call, "thoughtSignature": signature}]},
                                                 "index": 0}], **meta})]
            else:
                encoded = [_sse({"candidates": [{"content": {"role": "model", "parts": [{"text": p}]}, "index": 0}],
                                 **meta}) for p in pieces]
            tail = _sse({"candidates": [{"content": {"role": "model", "parts": [{"text": ""}]},
                                         "finishReason": finish, "index": 0}], "usageMetadata": usage, **meta})
            return await send_stream(sim, ctx, StreamPlan(b"", encoded, tail, self.inband_error))
        parts = [{"functionCall": call, "thoughtSignature": signature}] if call is not None else [{"text": "".join(pieces)}]
        doc = {"candidates": [{"content": {"role": "model", "parts": parts}, "finishReason": finish, "index": 0}],
               "usageMetadata": usage, **meta}
        return web.Response(body=orjson.dumps(doc), headers=ctx.headers, content_type="application/json")

    @staticmethod
    def _unsigned(body: dict[str, Any], model: str) -> str | None:
        """Gemini 3 wants every function call of the history back with its thoughtSignature: one
        this sim issued (``sim-signature/...``) or Google's stand-in for calls of other models."""
        if not model.startswith("gemini-3"):
            return None
        for i, c in enumerate(body["contents"]):
            for p in c["parts"]:
                if "functionCall" not in p:
                    continue
                sig = p.get("thoughtSignature")
                if sig in ("skip_thought_signature_validator", "context_engineering_is_the_way_to_go"):
                    continue
                try:
                    ok = isinstance(sig, str) and base64.b64decode(sig).startswith(b"sim-signature/")
                except ValueError:
                    ok = False
                if not ok:
                    return f"Function call is missing a thought_signature in functionCall parts (contents[{i}])"
        return None

    @staticmethod
    def _invalid(body: Any) -> str | None:
        if not isinstance(body, dict):
            return "request body must be a JSON object"
        if "model" in body or "messages" in body:
            return "Invalid JSON payload received. Unknown name \"model\" or \"messages\""
        contents = body.get("contents")
        if not isinstance(contents, list) or not contents:
            return "* GenerateContentRequest.contents: contents is not specified"
        for i, c in enumerate(contents):
            if not isinstance(c, dict) or c.get("role") not in ("user", "model"):
                return f"contents[{i}].role: must be user or model"
            parts = c.get("parts")
            if not isinstance(parts, list) or not parts:
                return f"contents[{i}].parts: must not be empty"
            for p in parts:
                if not isinstance(p, dict) or not ({"text", "inlineData", "functionCall", "functionResponse",
                                                    "fileData"} & p.keys()):
                    return f"contents[{i}].parts: unknown part"
                if "functionResponse" in p and not isinstance((p["functionResponse"] or {}).get("response"), dict):
                    return f"contents[{i}].parts: functionResponse.response must be an object"
        return None
