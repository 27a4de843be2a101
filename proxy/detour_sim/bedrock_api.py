"""Bedrock flavour: Converse and ConverseStream with SigV4 checked, plus STS for web identity.

- `POST /model/{modelId}/converse` and `/converse-stream` (the binary
  `application/vnd.amazon.eventstream` framing, events `messageStart`, `contentBlockStart`,
  `contentBlockDelta`, `contentBlockStop`, `messageStop`, `metadata`; in-band faults are
  exception messages such as `modelStreamErrorException` or `throttlingException`).
- Auth: every request must be SigV4-signed (service `bedrock`) with a key the sim knows
  (`ACCESS_KEY`/`SECRET_KEY`, or session credentials it issued through STS, which also need
  their `X-Amz-Security-Token`), or carry `Authorization: Bearer API_KEY` (a Bedrock API key).
  The signature is recomputed with botocore's signer over the request as received: a wrong
  secret gets Bedrock's 403 `InvalidSignatureException`, an unknown key 403
  `UnrecognizedClientException`, a missing signature 403 `MissingAuthenticationTokenException`.
- `POST /sts` (outside the fault pipeline; point `AWS_ENDPOINT_URL_STS` at it):
  AssumeRoleWithWebIdentity: any non-empty `WebIdentityToken` with a `RoleArn` gets fresh
  session credentials lasting `sts_seconds` (default 3600).
- Errors: `{"message": ...}` with `x-amzn-ErrorType: <Name>:http://internal.amazon.com/coral/...`.
"""

from __future__ import annotations

import datetime as dt
import itertools
import struct
import zlib
from functools import lru_cache
from typing import TYPE_CHECKING, Any, Sequence
from urllib.parse import parse_qs

import orjson
from aiohttp import web

from .schema_example import example
from .stream import StreamPlan, send_stream
from .text import content_text, estimate_tokens, split_text, text_tokens

if TYPE_CHECKING:
    from .server import Ctx, Sim

ACCESS_KEY = "AKIDSIMBEDROCK0001"
SECRET_KEY = "sim-bedrock-secret-key"
API_KEY = "bedrock-api-key-sim"
DEFAULT_MODELS = ("anthropic.claude-sonnet-4-5-v1:0",)
EVENTSTREAM = "application/vnd.amazon.eventstream"

_ERROR_NAMES = {
    400: "ValidationException", 403: "AccessDeniedException", 404: "ResourceNotFoundException",
    408: "ModelTimeoutException", 424: "ModelErrorException", 429: "ThrottlingException",
    500: "InternalServerException", 503: "ServiceUnavailableException",
}


def encode_event(headers: dict[str, str], payload: bytes) -> bytes:
    h = b"".join(bytes([len(k)]) + k.encode() + b"\x07" + struct.pack(">H", len(v.encode())) + v.encode()
                 for k, v in headers.items())
    prelude = struct.pack(">II", 16 + len(h) + len(payload), len(h))
    prelude += struct.pack(">I", zlib.crc32(prelude))
    msg = prelude + h + payload
    return msg + struct.pack(">I", zlib.crc32(msg))


def event(name: str, data: dict[str, Any]) -> bytes:
    return encode_event({":event-type": name, ":content-type": "application/json", ":message-type": "event"},
                        orjson.dumps(data))


def exception_event(name: str, message: str) -> bytes:
    return encode_event({":exception-type": name, ":content-type": "application/json", ":message-type": "exception"},
                        orjson.dumps({"message": message}))


@lru_cache(maxsize=4096)
def _text_delta(piece: str) -> bytes:
    return event("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": piece}, "p": "abc"})


def _tool_delta(piece: str) -> bytes:
    return event("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"toolUse": {"input": piece}}})


class BedrockAPI:
    flavor = "bedrock"
    # a frame whose CRCs do not match: what a corrupted stream looks like
    garbage_sse = b"\x00\x00\x00\x20\x00\x00\x00\x00\xde\xad\xbe\xef" + b"\x00" * 20

    def __init__(self, sim: "Sim", models: Sequence[str] | None) -> None:
        self.sim = sim
        self.models = tuple(models or DEFAULT_MODELS)
        self.keys: dict[str, tuple[str, str | None]] = {ACCESS_KEY: (SECRET_KEY, None)}
        self.sts_seconds = 3600
        self._sts_seq = itertools.count(1)
        self.sts_calls = 0

    def routes(self):
        return [
            ("POST", "/model/{model}/converse", self.converse),
            ("POST", "/model/{model}/converse-stream", self.converse),
            ("POST", "/model/{model}/count-tokens", self.count_tokens),
        ]

    def extra_routes(self):
        return [("POST", "/sts", self.sts), ("POST", "/sts/", self.sts),
                ("GET", "/_sim/bedrock", self.admin_get), ("PUT", "/_sim/bedrock", self.admin_put)]

    def reset(self) -> None:
        self.keys = {ACCESS_KEY: (SECRET_KEY, None)}
        self.sts_seconds = 3600
        self.sts_calls = 0

    async def admin_get(self, request: web.Request) -> web.Response:
        return web.Response(body=orjson.dumps({"stsCalls": self.sts_calls, "stsSeconds": self.sts_seconds}),
                            content_type="application/json")

    async def admin_put(self, request: web.Request) -> web.Response:
        """`{"stsSeconds": N}`: lifetime of the session credentials STS issues from now on."""
        doc = await request.json()
        if isinstance(doc.get("stsSeconds"), int):
            self.sts_seconds = doc["stsSeconds"]
        return await self.admin_get(request)

    # -- errors ---------------------------------------------------------------------
    def default_error_type(self, status: int) -> str:
        return _ERROR_NAMES.get(status) or ("InternalServerException" if status >= 500 else "ValidationException")

    def error(self, status: int, etype: str, message: str, headers: dict[str, str], rid: str = "") -> web.Response:
        h = dict(headers)
        h["x-amzn-ErrorType"] = f"{etype}:http://internal.amazon.com/coral/com.amazon.bedrock/"
        if rid:
            h["x-amzn-RequestId"] = rid
        return web.Response(body=orjson.dumps({"message": message}), status=status, headers=h,
                            content_type="application/json")

    def inband_error(self, etype: str | None, message: str | None) -> bytes:
        name = etype or "modelStreamErrorException"
        return exception_event(name, message or f"simulated {name}")

    # -- auth -----------------------------------------------------------------------
    def _auth_problem(self, request: web.Request, raw: bytes) -> tuple[str, str] | None:
        auth = request.headers.get("Authorization", "")
        if auth.startswith("Bearer "):
            return None if auth[7:] == API_KEY else ("UnrecognizedClientException", "The API key is invalid.")
        if not auth.startswith("AWS4-HMAC-SHA256 "):
            return ("MissingAuthenticationTokenException", "Missing Authentication Token")
        fields = dict(p.strip().split("=", 1) for p in auth[len("AWS4-HMAC-SHA256 "):].split(",") if "=" in p)
        scope = fields.get("Credential", "").split("/")
        if len(scope) != 5 or scope[3] != "bedrock" or scope[4] != "aws4_request":
            return ("IncompleteSignatureException", "Credential scope is malformed")
        known = self.keys.get(scope[0])
        if known is None:
            return ("UnrecognizedClientException", "The security token included in the request is invalid.")
        secret, token = known
        if token is not None and request.headers.get("X-Amz-Security-Token") != token:
            return ("UnrecognizedClientException", "The security token included in the request is invalid.")
        amz_date = request.headers.get("X-Amz-Date", "")
        try:
            when = dt.datetime.strptime(amz_date, "%Y%m%dT%H%M%SZ").replace(tzinfo=dt.timezone.utc)
        except ValueError:
            return ("IncompleteSignatureException", "X-Amz-Date is missing or malformed")
        if abs((dt.datetime.now(dt.timezone.utc) - when).total_seconds()) > 300:
            return ("InvalidSignatureException", "Signature expired")
        from botocore.auth import SigV4Auth
        from botocore.awsrequest import AWSRequest
        from botocore.credentials import ReadOnlyCredentials

        signed = fields.get("SignedHeaders", "").split(";")
        headers = {k: v for k, v in request.headers.items() if k.lower() in signed}
        url = f"http://{request.headers.get('Host', request.host)}{request.raw_path}"
        req = AWSRequest(method=request.method, url=url, data=raw, headers=headers)
        req.context["timestamp"] = amz_date
        signer = SigV4Auth(ReadOnlyCredentials(scope[0], secret, token), scope[3], scope[2])
        canonical = signer.canonical_request(req)
        expected = signer.signature(signer.string_to_sign(req, canonical), req)
        if expected != fields.get("Signature"):
            return ("InvalidSignatureException", "The request signature we calculated does not match the "
                    "signature you provided. Check your AWS Secret Access Key and signing method.")
        return None

    # -- count tokens -----------------------------------------------------------------
    async def count_tokens(self, ctx: "Ctx") -> web.StreamResponse:
        """CountTokens: `{"inputTokens": N}`, N = the words of every text in `system` and
        `messages` (as the Anthropic flavour counts). `input.invokeModel.body` is Claude's
        InvokeModel body (base64), which needs `anthropic_version: bedrock-2023-05-31`;
        `input.converse` is a Converse body."""
        request = ctx.request
        problem = self._auth_problem(request, await request.read())
        if problem is not None:
            return self.error(403, problem[0], problem[1], ctx.headers, ctx.rid)
        inp = ctx.body.get("input") if isinstance(ctx.body, dict) else None
        doc: Any = None
        if isinstance(inp, dict) and isinstance(inp.get("invokeModel"), dict):
            import base64
            try:
                doc = orjson.loads(base64.b64decode(inp["invokeModel"].get("body", ""), validate=True))
            except (ValueError, orjson.JSONDecodeError):
                doc = None
            if isinstance(doc, dict) and doc.get("anthropic_version") != "bedrock-2023-05-31":
                return self.error(400, "ValidationException", "anthropic_version: bedrock-2023-05-31 is required",
                                  ctx.headers, ctx.rid)
        elif isinstance(inp, dict) and isinstance(inp.get("converse"), dict):
            doc = inp["converse"]
        if not isinstance(doc, dict) or not isinstance(doc.get("messages"), list) or not doc["messages"]:
            return self.error(400, "ValidationException", "input: a body with messages is required", ctx.headers, ctx.rid)
        system = doc.get("system")
        texts = [system] if isinstance(system, str) else [b.get("text", "") for b in system or () if isinstance(b, dict)]
        for m in doc["messages"]:
            texts.append(content_text(m.get("content") if isinstance(m, dict) else None))
        n = max(1, sum(len(t.split()) for t in texts))
        return web.Response(body=orjson.dumps({"inputTokens": n}), headers=ctx.headers, content_type="application/json")

    # -- converse -------------------------------------------------------------------
    async def converse(self, ctx: "Ctx") -> web.StreamResponse:
        request = ctx.request
        problem = self._auth_problem(request, await request.read())
        if problem is not None:
            return self.error(403, problem[0], problem[1], ctx.headers, ctx.rid)
        body = ctx.body
        messages = body.get("messages") if isinstance(body, dict) else None
        bad = None
        if not isinstance(messages, list) or not messages:
            bad = "messages: at least one message is required"
        elif any(not isinstance(m, dict) or m.get("role") not in ("user", "assistant")
                 or not isinstance(m.get("content"), list) or not m["content"] for m in messages):
            bad = "messages: each message needs role user|assistant and non-empty content"
        elif messages[0].get("role") != "user":
            bad = "A conversation must start with a user message."
        elif "model" in body or "stream" in body:
            bad = "Malformed input request: extraneous key [model/stream] is not permitted"
        if bad:
            return self.error(400, "ValidationException", bad, ctx.headers, ctx.rid)
        sim = self.sim
        n = next(sim.seq)
        last = messages[-1]
        cfg = body.get("toolConfig") or {}
        tools = [t.get("toolSpec") for t in cfg.get("tools") or () if isinstance(t, dict)]
        inference = body.get("inferenceConfig") or {}
        max_tokens = inference.get("maxTokens") or 4096
        pieces: Sequence[str] = sim.canon.chunks
        tool: tuple[str, str] | None = None
        tool_input: Any = {}
        has_result = any("toolResult" in b for b in last["content"] if isinstance(b, dict))
        if last["role"] == "assistant":
            pieces = sim.canon.remainder(content_text(last["content"]))
        elif tools and not has_result:
            forced = (cfg.get("toolChoice") or {}).get("tool", {}).get("name")
            spec = next((t for t in tools if t and t.get("name") == forced), tools[0] or {})
            query = content_text(last["content"])
            tool = (f"tooluse_{sim.name}_{n}", spec.get("name") or "tool")
            tool_input = example((spec.get("inputSchema") or {}).get("json") or {}, query)
            if not isinstance(tool_input, dict):
                tool_input = {"query": query}
        stop = "tool_use" if tool else "end_turn"
        if tool is None and len(pieces) > max_tokens:
            pieces, stop = pieces[:max_tokens], "max_tokens"
        args = orjson.dumps(tool_input).decode() if tool else ""
        system = " ".join(b.get("text", "") for b in body.get("system") or () if isinstance(b, dict))
        usage = {"inputTokens": estimate_tokens(messages, system or None),
                 "outputTokens": text_tokens(args) if tool else len(pieces)}
        usage["totalTokens"] = usage["inputTokens"] + usage["outputTokens"]
        if request.path.endswith("/converse-stream"):
            return await send_stream(sim, ctx, self._plan(pieces, tool, args, stop, usage))
        block = ({"toolUse": {"toolUseId": tool[0], "name": tool[1], "input": tool_input}} if tool
                 else {"text": "".join(pieces)})
        out = {"output": {"message": {"role": "assistant", "content": [block]}}, "stopReason": stop,
               "usage": usage, "metrics": {"latencyMs": 1}}
        return web.Response(body=orjson.dumps(out), headers=ctx.headers, content_type="application/json")

    def _plan(self, pieces: Sequence[str], tool: tuple[str, str] | None, args: str, stop: str,
              usage: dict[str, int]) -> StreamPlan:
        head = event("messageStart", {"role": "assistant"})
        if tool is None:
            encoded = [_text_delta(p) for p in pieces]
        else:
            head += event("contentBlockStart", {"contentBlockIndex": 0,
                                                "start": {"toolUse": {"toolUseId": tool[0], "name": tool[1]}}})
            encoded = [_tool_delta(p) for p in split_text(args, len(self.sim.canon.chunks))]
        tail = (event("contentBlockStop", {"contentBlockIndex": 0}) + event("messageStop", {"stopReason": stop})
                + event("metadata", {"usage": usage, "metrics": {"latencyMs": 1}}))
        return StreamPlan(head, encoded, tail, self.inband_error, EVENTSTREAM)

    # -- STS --------------------------------------------------------------------------
    async def sts(self, request: web.Request) -> web.StreamResponse:
        form = {k: v[0] for k, v in parse_qs((await request.read()).decode()).items()}
        if form.get("Action") != "AssumeRoleWithWebIdentity" or not form.get("RoleArn") \
                or not form.get("WebIdentityToken"):
            body = ("<ErrorResponse><Error><Type>Sender</Type><Code>InvalidIdentityToken</Code>"
                    "<Message>missing web identity token or role</Message></Error></ErrorResponse>")
            return web.Response(status=400, body=body.encode(), content_type="text/xml")
        self.sts_calls += 1
        i = next(self._sts_seq)
        akid, secret, token = f"ASIASIMSTS{i:08d}", f"sts-secret-{i}", f"sts-session-token-{i}"
        self.keys[akid] = (secret, token)
        expires = (dt.datetime.now(dt.timezone.utc) + dt.timedelta(seconds=self.sts_seconds)).strftime("%Y-%m-%dT%H:%M:%SZ")
        xml = (
            '<AssumeRoleWithWebIdentityResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/">'
            "<AssumeRoleWithWebIdentityResult><Credentials>"
            f"<AccessKeyId>{akid}</AccessKeyId><SecretAccessKey>{secret}</SecretAccessKey>"
            f"<SessionToken>{token}</SessionToken><Expiration>{expires}</Expiration></Credentials>"
            "<SubjectFromWebIdentityToken>system:serviceaccount:detour:detour-proxy</SubjectFromWebIdentityToken>"
            f"<AssumedRoleUser><Arn>{form['RoleArn']}/sim</Arn><AssumedRoleId>AROASIM:sim</AssumedRoleId>"
            "</AssumedRoleUser></AssumeRoleWithWebIdentityResult>"
            f"<ResponseMetadata><RequestId>sts-{i}</RequestId></ResponseMetadata></AssumeRoleWithWebIdentityResponse>"
        )
        return web.Response(body=xml.encode(), content_type="text/xml")
