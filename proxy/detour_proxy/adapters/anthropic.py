"""Anthropic Messages API adapter: translation both ways, plus prefill continuation.

Request translation lives in `anthropic_request`, response and stream translation in
`anthropic_response`; this class holds the per-provider constants (URL, static headers,
default max_tokens) computed once per config.
"""

from __future__ import annotations

from typing import Any

import orjson

from ..config import ContinuationMode, Provider
from .anthropic_request import to_anthropic
from .anthropic_response import AnthropicStreamDecoder, from_anthropic
from .base import (
    ContinuationUnsupported, Headers, UnsupportedRequest, UpstreamRequest,
)
from .errors import ANTHROPIC_TRANSIENT, NormalizedErrors

__all__ = ["AnthropicAdapter", "DEFAULT_ANTHROPIC_VERSION"]

DEFAULT_ANTHROPIC_VERSION = "2023-06-01"
# First API version without sampling parameters (temperature/top_p/top_k are a 400 there).
NO_SAMPLING_VERSION = "2026-10-21"


class AnthropicAdapter(NormalizedErrors):
    label = "anthropic"
    transient_statuses = ANTHROPIC_TRANSIENT

    def __init__(self, provider: Provider) -> None:
        self.provider = provider
        base = provider.base_url.rstrip("/")
        if base.endswith("/v1"):  # users often paste the versioned root
            base = base[:-3]
        self._url = base + "/v1/messages"
        version = provider.api_version or DEFAULT_ANTHROPIC_VERSION
        self._headers = {
            "Content-Type": "application/json", "anthropic-version": version, **provider.headers,
        }
        # ISO dates compare as strings; non-date versions (betas, proxies) keep sampling.
        self._sampling = not (version[:4].isdigit() and version >= NO_SAMPLING_VERSION)
        self._max_tokens = provider.max_tokens_default
        # Anthropic continues a trailing assistant turn natively; `none` opts a provider out.
        self.can_continue = provider.effective_continuation is not ContinuationMode.none

    def supports(self, kind: str) -> bool:
        return kind == "chat"

    def headers(self, api_key: str | None) -> dict[str, str]:
        h = self._headers.copy()
        if api_key:
            h["x-api-key"] = api_key
        return h

    def build_chat(self, body: dict[str, Any], model: str, stream: bool, api_key: str | None,
                   raw: bytes | None = None) -> UpstreamRequest:
        req, trimmed = to_anthropic(body, model, stream, self._max_tokens, sampling=self._sampling)
        return UpstreamRequest("POST", self._url, self.headers(api_key), orjson.dumps(req), trimmed)

    def build_embeddings(self, body: dict[str, Any], model: str, api_key: str | None,
                         raw: bytes | None = None) -> UpstreamRequest:
        raise UnsupportedRequest("anthropic has no embeddings API")

    def build_continuation(self, body: dict[str, Any], delivered_text: str, model: str,
                           api_key: str | None) -> UpstreamRequest:
        """Stream request with `delivered_text` as assistant prefill (right-stripped, see
        `UpstreamRequest.prefix_trim`)."""
        if not self.can_continue:
            raise ContinuationUnsupported(f"provider {self.provider.name!r} cannot continue a partial answer")
        req, trimmed = to_anthropic(body, model, True, self._max_tokens, prefill=delivered_text,
                                    sampling=self._sampling)
        return UpstreamRequest("POST", self._url, self.headers(api_key), orjson.dumps(req), trimmed)

    def parse_response(self, status: int, headers: Headers, raw: bytes) -> bytes:
        """Raises ValueError if `raw` is not an Anthropic message (treat as a bad upstream reply)."""
        return from_anthropic(raw)

    def stream_decoder(self, include_usage: bool = False, prefix_trim: str = "",
                       model: str = "") -> AnthropicStreamDecoder:
        return AnthropicStreamDecoder(include_usage=include_usage, prefix_trim=prefix_trim, model=model)
