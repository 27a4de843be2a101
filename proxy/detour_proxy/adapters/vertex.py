"""Google Vertex AI adapter (`type: vertex`): Claude through rawPredict, Gemini through generateContent.

One provider is one project and location; the publisher of each request follows the model
name (`claude-*` -> anthropic, anything else -> google) unless the provider pins `publisher`.
- anthropic: POST {base}/v1/projects/{project}/locations/{location}/publishers/anthropic/models/
  {model}:rawPredict (or :streamRawPredict); the body is the Anthropic Messages body of the
  Anthropic adapter without `model` and with `anthropic_version: vertex-2023-10-16` (or the
  provider's `apiVersion`); answers,
  streams and errors are Anthropic's (529 overloaded included). Continuation is a prefill, as
  on Anthropic.
- google: .../publishers/google/models/{model}:generateContent (or :streamGenerateContent?alt=sse)
  with the Gemini translation; errors in Google's format.
Vertex's own front end answers Google-format errors for both (quota, permissions), so errors
are read by shape. The stream decoder is created before the engine says which model it is
for, so it picks its dialect from the stream's first bytes: Anthropic's streams open with an
`event:` line, Gemini's with `data:`.

Auth: the `api_key` the engine passes is the current OAuth access token of the provider's
Google credentials (`transport.google_auth.GoogleToken`), sent as a bearer token.
"""

from __future__ import annotations

from typing import Any

import orjson

from ..config import ContinuationMode, Provider, VertexPublisher
from .anthropic import NO_SAMPLING_VERSION
from .anthropic_request import to_anthropic
from .anthropic_response import AnthropicStreamDecoder, from_anthropic
from .base import (
    ContinuationUnsupported, Headers, RateLimitInfo, StreamEvent, TargetUnavailable, UnsupportedRequest, UpstreamError,
    UpstreamRequest,
)
from .errors import ANTHROPIC_TRANSIENT, normalize_error
from .gemini_request import to_gemini
from .gemini_response import GeminiStreamDecoder, from_gemini, google_error, is_google_error

__all__ = ["VertexAdapter", "VERTEX_ANTHROPIC_VERSION", "publisher_for"]

VERTEX_ANTHROPIC_VERSION = "vertex-2023-10-16"
_SNIFF_LIMIT = 4096


def publisher_for(provider: Provider, model: str) -> VertexPublisher:
    if provider.publisher is not None:
        return provider.publisher
    return VertexPublisher.anthropic if model.startswith("claude") else VertexPublisher.google


class VertexAdapter:
    label = "vertex"
    transient_statuses = ANTHROPIC_TRANSIENT   # 529 from Claude; Google's transient set is a subset

    def __init__(self, provider: Provider) -> None:
        self.provider = provider
        base = provider.base_url.rstrip("/")
        if base.endswith("/v1"):
            base = base[:-3]
        self._root = f"{base}/v1/projects/{provider.project}/locations/{provider.location}/publishers/"
        self._headers = {"Content-Type": "application/json", **provider.headers}
        self._max_tokens = provider.max_tokens_default
        # `apiVersion` overrides the body's anthropic_version (dated versions from 2026-10-21 on
        # reject sampling parameters, as on Anthropic's own API).
        self._version = provider.api_version or VERTEX_ANTHROPIC_VERSION
        v = self._version
        self._sampling = not (v[:4].isdigit() and v >= NO_SAMPLING_VERSION)
        mode = provider.continuation
        if mode is None:
            mode = (ContinuationMode.prefill if provider.publisher is not VertexPublisher.google
                    else ContinuationMode.none)
        # Claude continues a trailing assistant turn; Gemini targets are refused per request.
        self.can_continue = mode is not ContinuationMode.none

    def supports(self, kind: str) -> bool:
        return kind == "chat"

    def _request(self, url: str, token: str | None, doc: dict[str, Any], trimmed: str = "") -> UpstreamRequest:
        headers = self._headers.copy()
        if token:
            headers["Authorization"] = f"Bearer {token}"
        return UpstreamRequest("POST", url, headers, orjson.dumps(doc), trimmed)

    def _claude(self, body: dict[str, Any], model: str, stream: bool, token: str | None,
                prefill: str | None = None) -> UpstreamRequest:
        req, trimmed = to_anthropic(body, model, stream, self._max_tokens, prefill=prefill, sampling=self._sampling)
        del req["model"]
        req["anthropic_version"] = self._version
        url = f"{self._root}anthropic/models/{model}:{'streamRawPredict' if stream else 'rawPredict'}"
        return self._request(url, token, req, trimmed)

    def build_chat(self, body: dict[str, Any], model: str, stream: bool, api_key: str | None,
                   raw: bytes | None = None) -> UpstreamRequest:
        if not api_key:
            raise TargetUnavailable(f"vertex provider {self.provider.name!r} has no Google access token yet")
        if publisher_for(self.provider, model) is VertexPublisher.anthropic:
            return self._claude(body, model, stream, api_key)
        method = "streamGenerateContent?alt=sse" if stream else "generateContent"
        return self._request(f"{self._root}google/models/{model}:{method}", api_key, to_gemini(body, model))

    def build_embeddings(self, body: dict[str, Any], model: str, api_key: str | None,
                         raw: bytes | None = None) -> UpstreamRequest:
        raise UnsupportedRequest("vertex embeddings are not translated")

    def counts_tokens(self, model: str) -> bool:
        """Claude on Vertex answers Anthropic's count_tokens (`count-tokens:rawPredict`)."""
        return publisher_for(self.provider, model) is VertexPublisher.anthropic

    def build_count_tokens(self, body: dict[str, Any], model: str, api_key: str | None,
                           beta: str | None = None) -> UpstreamRequest:
        """An Anthropic count_tokens body (the client's, with the target's model) for Vertex."""
        if not api_key:
            raise TargetUnavailable(f"vertex provider {self.provider.name!r} has no Google access token yet")
        req = self._request(f"{self._root}anthropic/models/count-tokens:rawPredict", api_key,
                            {**body, "model": model, "anthropic_version": self._version})
        if beta:
            req.headers["anthropic-beta"] = beta
        return req

    def build_continuation(self, body: dict[str, Any], delivered_text: str, model: str,
                           api_key: str | None) -> UpstreamRequest:
        if not self.can_continue or publisher_for(self.provider, model) is not VertexPublisher.anthropic:
            raise ContinuationUnsupported(f"provider {self.provider.name!r} cannot continue a partial answer "
                                          f"of {model!r}")
        if not api_key:
            raise TargetUnavailable(f"vertex provider {self.provider.name!r} has no Google access token yet")
        return self._claude(body, model, True, api_key, prefill=delivered_text)

    def parse_response(self, status: int, headers: Headers, raw: bytes) -> bytes:
        doc = orjson.loads(raw)
        if isinstance(doc, dict) and doc.get("type") == "message":
            return from_anthropic(raw)
        return from_gemini(raw)

    def parse_error(self, status: int, headers: Headers, raw: bytes, *, api_key: str | None = None,
                    now: float | None = None) -> UpstreamError:
        if is_google_error(raw):
            return google_error(status, headers, raw, provider=self.label, api_key=api_key, now=now)
        return normalize_error(status, headers, raw, provider=self.label, api_key=api_key, now=now)

    def rate_limits(self, headers: Headers, *, now: float | None = None) -> RateLimitInfo | None:
        return None

    def stream_decoder(self, include_usage: bool = False, prefix_trim: str = "",
                       model: str = "") -> VertexStreamDecoder:
        return VertexStreamDecoder(include_usage, prefix_trim, model)


class VertexStreamDecoder:
    """Holds bytes until the stream's first field name says Anthropic (`event:`) or Gemini
    (`data:`), then hands everything to that dialect's decoder."""

    __slots__ = ("_args", "_inner", "_buf")

    def __init__(self, include_usage: bool, prefix_trim: str, model: str) -> None:
        self._args = (include_usage, prefix_trim, model)
        self._inner: AnthropicStreamDecoder | GeminiStreamDecoder | None = None
        self._buf = b""

    def _pick(self, final: bool) -> AnthropicStreamDecoder | GeminiStreamDecoder | None:
        head = self._buf.lstrip()
        while head.startswith(b":"):          # SSE comments / keep-alives
            nl = head.find(b"\n")
            if nl < 0:
                break
            head = head[nl + 1:].lstrip()
        include_usage, trim, model = self._args
        if head.startswith(b"event:"):
            self._inner = AnthropicStreamDecoder(include_usage=include_usage, prefix_trim=trim, model=model)
        elif head.startswith(b"data:") or final or len(self._buf) > _SNIFF_LIMIT or \
                (len(head) >= 6 and not head.startswith((b"e", b"d", b":"))):
            self._inner = GeminiStreamDecoder(include_usage=include_usage, model=model, label="vertex")
        return self._inner

    def feed(self, data: bytes) -> list[StreamEvent]:
        inner = self._inner
        if inner is None:
            self._buf += data
            inner = self._pick(False)
            if inner is None:
                return []
            data, self._buf = self._buf, b""
        return inner.feed(data)

    def close(self) -> list[StreamEvent]:
        inner = self._inner
        if inner is None:
            inner = self._pick(True)
            assert inner is not None   # final: a dialect is always chosen
            out = inner.feed(self._buf) if self._buf else []
            return out + inner.close()
        return inner.close()
