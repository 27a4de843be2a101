"""Gemini API adapter (`type: gemini`): generateContent / streamGenerateContent with an API key.

`baseURL` is the API root (https://generativelanguage.googleapis.com; a pasted `/v1beta` is
taken off); the key travels in `x-goog-api-key`, never in the URL (URLs end up in logs).
Translation lives in `gemini_request` / `gemini_response`, shared with Vertex AI's Gemini.
"""

from __future__ import annotations

from typing import Any

import orjson

from ..config import Provider
from .base import ContinuationUnsupported, Headers, RateLimitInfo, UnsupportedRequest, UpstreamError, UpstreamRequest
from .errors import OPENAI_TRANSIENT
from .gemini_request import to_gemini
from .gemini_response import GeminiStreamDecoder, from_gemini, google_error

__all__ = ["GeminiAdapter", "GOOGLE_TRANSIENT"]

#: Statuses Google documents as transient (429 RESOURCE_EXHAUSTED, 500 INTERNAL, 503 UNAVAILABLE,
#: 504 DEADLINE_EXCEEDED) plus the gateway statuses in between.
GOOGLE_TRANSIENT = OPENAI_TRANSIENT


class GeminiAdapter:
    label = "gemini"
    transient_statuses = GOOGLE_TRANSIENT
    can_continue = False   # Gemini has no documented way to continue a partial model turn

    def __init__(self, provider: Provider) -> None:
        self.provider = provider
        base = provider.base_url.rstrip("/")
        for suffix in ("/v1beta", "/v1"):
            if base.endswith(suffix):
                base = base[: -len(suffix)]
        self._root = base + "/v1beta/models/"
        self._headers = {"Content-Type": "application/json", **provider.headers}

    def supports(self, kind: str) -> bool:
        return kind == "chat"

    def url(self, model: str, stream: bool) -> str:
        return self._root + model + (":streamGenerateContent?alt=sse" if stream else ":generateContent")

    def build_chat(self, body: dict[str, Any], model: str, stream: bool, api_key: str | None,
                   raw: bytes | None = None) -> UpstreamRequest:
        headers = self._headers.copy()
        if api_key:
            headers["x-goog-api-key"] = api_key
        return UpstreamRequest("POST", self.url(model, stream), headers, orjson.dumps(to_gemini(body, model)))

    def build_embeddings(self, body: dict[str, Any], model: str, api_key: str | None,
                         raw: bytes | None = None) -> UpstreamRequest:
        raise UnsupportedRequest(f"{self.label} embeddings are not translated")

    def build_continuation(self, body: dict[str, Any], delivered_text: str, model: str,
                           api_key: str | None) -> UpstreamRequest:
        raise ContinuationUnsupported(f"provider {self.provider.name!r} cannot continue a partial answer")

    def parse_response(self, status: int, headers: Headers, raw: bytes) -> bytes:
        return from_gemini(raw)

    def parse_error(self, status: int, headers: Headers, raw: bytes, *, api_key: str | None = None,
                    now: float | None = None) -> UpstreamError:
        return google_error(status, headers, raw, provider=self.label, api_key=api_key, now=now)

    def rate_limits(self, headers: Headers, *, now: float | None = None) -> RateLimitInfo | None:
        return None   # Google reports no remaining-budget headers

    def stream_decoder(self, include_usage: bool = False, prefix_trim: str = "",
                       model: str = "") -> GeminiStreamDecoder:
        return GeminiStreamDecoder(include_usage=include_usage, model=model, label=self.label)
