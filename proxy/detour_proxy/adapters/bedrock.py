"""AWS Bedrock adapter (`type: bedrock`): the Converse and ConverseStream APIs, SigV4-signed.

- POST {base}/model/{modelId}/converse (or /converse-stream: a binary event stream, see
  `bedrock_stream`); the model id (or inference profile id / ARN) is URL-encoded into the path.
  Translation: `bedrock_request` (out), `bedrock_response` (answers, streams, errors).
- Auth: the `api_key` the engine passes is either an `AwsKey` (credentials from the AWS chain,
  `transport.aws_auth.AwsCredentials`), and the request is signed with botocore's SigV4
  signer (service `bedrock`, the provider's region), or a plain string: a Bedrock API key,
  sent as `Authorization: Bearer`. Neither is ever in a log line: `UpstreamRequest`'s repr
  masks the auth headers, and `AwsKey`'s repr shows nothing.
- Continuation: Claude on Bedrock continues a trailing assistant turn (prefill, the default
  for model ids naming `anthropic.`); other model families are refused per request.
- Transient statuses: OpenAI's set plus 424 (ModelErrorException / modelStreamErrorException:
  the model failed, another target may not).
"""

from __future__ import annotations

import base64
from typing import Any
from urllib.parse import quote

import orjson

from ..config import ContinuationMode, Provider
from .base import (
    ContinuationUnsupported, Headers, RateLimitInfo, TargetUnavailable, UnsupportedRequest, UpstreamError,
    UpstreamRequest,
)
from .bedrock_request import to_converse
from .bedrock_response import ConverseStreamDecoder, bedrock_error, from_converse
from .errors import OPENAI_TRANSIENT

__all__ = ["BedrockAdapter", "AwsKey", "BEDROCK_TRANSIENT", "sign"]

BEDROCK_TRANSIENT = OPENAI_TRANSIENT | frozenset({424})
SERVICE = "bedrock"
#: The `anthropic_version` of Claude's InvokeModel body on Bedrock (what CountTokens counts).
BEDROCK_ANTHROPIC_VERSION = "bedrock-2023-05-31"


class AwsKey(str):
    """Resolved AWS credentials. The string value is the secret access key, so the engine's
    redaction of provider keys removes it verbatim from any upstream text."""

    access_key: str
    token: str | None

    @classmethod
    def of(cls, access_key: str, secret_key: str, token: str | None = None) -> AwsKey:
        key = cls(secret_key)
        key.access_key = access_key
        key.token = token
        return key

    def __repr__(self) -> str:
        return "AwsKey(***)"

    __str__ = __repr__


def sign(req: UpstreamRequest, key: AwsKey, region: str) -> None:
    """Add SigV4 headers (Authorization, X-Amz-Date, X-Amz-Security-Token) to `req.headers`."""
    from botocore.auth import SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import ReadOnlyCredentials

    creds = ReadOnlyCredentials(key.access_key, str.__str__(key), key.token)
    aws = AWSRequest(method=req.method, url=req.url, data=req.body, headers=dict(req.headers))
    SigV4Auth(creds, SERVICE, region).add_auth(aws)
    for name in ("Authorization", "X-Amz-Date", "X-Amz-Security-Token", "X-Amz-Content-SHA256"):
        value = aws.headers.get(name)
        if value is not None:
            req.headers[name] = value


def is_claude(model: str) -> bool:
    return "anthropic." in model or model.startswith("claude")


class BedrockAdapter:
    label = "bedrock"
    transient_statuses = BEDROCK_TRANSIENT

    def __init__(self, provider: Provider) -> None:
        import botocore.auth  # noqa: F401  (loaded with the config, not on the first request's path)

        self.provider = provider
        self._base = provider.base_url.rstrip("/")
        self._region = provider.region or "us-east-1"
        self._headers = {"Content-Type": "application/json", "Accept": "application/json", **provider.headers}
        self._max_tokens = provider.max_tokens_default
        mode = provider.continuation if provider.continuation is not None else ContinuationMode.prefill
        self.can_continue = mode is not ContinuationMode.none

    def supports(self, kind: str) -> bool:
        return kind == "chat"

    def url(self, model: str, stream: bool) -> str:
        return f"{self._base}/model/{quote(model, safe='')}/{'converse-stream' if stream else 'converse'}"

    def _request(self, model: str, stream: bool, key: str | None, doc: dict[str, Any],
                 trimmed: str = "", url: str | None = None) -> UpstreamRequest:
        if not key:
            raise TargetUnavailable(f"bedrock provider {self.provider.name!r} has no AWS credentials yet")
        headers = self._headers.copy()
        if stream:
            headers["Accept"] = "application/vnd.amazon.eventstream"
        req = UpstreamRequest("POST", url or self.url(model, stream), headers, orjson.dumps(doc), trimmed)
        if isinstance(key, AwsKey):
            sign(req, key, self._region)
        else:
            headers["Authorization"] = f"Bearer {key}"
        return req

    def build_chat(self, body: dict[str, Any], model: str, stream: bool, api_key: str | None,
                   raw: bytes | None = None) -> UpstreamRequest:
        doc, trimmed = to_converse(body, model, self._max_tokens)
        return self._request(model, stream, api_key, doc, trimmed)

    def build_embeddings(self, body: dict[str, Any], model: str, api_key: str | None,
                         raw: bytes | None = None) -> UpstreamRequest:
        raise UnsupportedRequest("bedrock embeddings are not translated")

    def build_continuation(self, body: dict[str, Any], delivered_text: str, model: str,
                           api_key: str | None) -> UpstreamRequest:
        if not self.can_continue or not is_claude(model):
            raise ContinuationUnsupported(f"provider {self.provider.name!r} cannot continue a partial answer "
                                          f"of {model!r}")
        doc, trimmed = to_converse(body, model, self._max_tokens, prefill=delivered_text)
        return self._request(model, True, api_key, doc, trimmed)

    def counts_tokens(self, model: str) -> bool:
        """Claude on Bedrock answers CountTokens (Claude Code's frequent `/v1/messages/count_tokens`)."""
        return is_claude(model)

    def build_count_tokens(self, body: dict[str, Any], model: str, api_key: str | None,
                           beta: str | None = None) -> UpstreamRequest:
        """The client's Anthropic count_tokens body, as the InvokeModel body CountTokens counts
        (no translation: every block type Claude takes is counted as Claude sees it)."""
        doc = {k: v for k, v in body.items() if k != "model"}
        doc["anthropic_version"] = BEDROCK_ANTHROPIC_VERSION
        doc.setdefault("max_tokens", 1)   # InvokeModel's body requires it; it does not change the count
        if beta:
            doc["anthropic_beta"] = [b.strip() for b in beta.split(",") if b.strip()]
        payload = {"input": {"invokeModel": {"body": base64.b64encode(orjson.dumps(doc)).decode()}}}
        return self._request(model, False, api_key, payload,
                             url=f"{self._base}/model/{quote(model, safe='')}/count-tokens")

    def count_tokens_answer(self, status: int, raw: bytes) -> bytes:
        """CountTokens' answer in Anthropic's count_tokens shape (errors as Anthropic errors)."""
        if status == 200:
            doc = orjson.loads(raw)
            return orjson.dumps({"input_tokens": int(doc["inputTokens"])})
        err = bedrock_error(status, {}, raw)
        return orjson.dumps({"type": "error", "error": {"type": err.type, "message": err.message}})

    def parse_response(self, status: int, headers: Headers, raw: bytes) -> bytes:
        return from_converse(raw)

    def parse_error(self, status: int, headers: Headers, raw: bytes, *, api_key: str | None = None,
                    now: float | None = None) -> UpstreamError:
        return bedrock_error(status, headers, raw, api_key=api_key, now=now)

    def rate_limits(self, headers: Headers, *, now: float | None = None) -> RateLimitInfo | None:
        return None   # Bedrock reports no remaining-budget headers

    def stream_decoder(self, include_usage: bool = False, prefix_trim: str = "",
                       model: str = "") -> ConverseStreamDecoder:
        return ConverseStreamDecoder(include_usage=include_usage, prefix_trim=prefix_trim, model=model)
