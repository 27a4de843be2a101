"""Provider dialects: build upstream requests, translate responses, streams and errors.

Pure code (no I/O): the executor sends what `build_*` returns and feeds what comes back to
`parse_*` / `stream_decoder()`. Build one adapter per provider per config with
`adapter_for(provider)` and reuse it; adapters precompute their URLs and static headers.
"""

from __future__ import annotations

from collections.abc import Callable

from ..config import Provider, ProviderType
from .anthropic import AnthropicAdapter
from .azure import AzureOpenAIAdapter
from .bedrock import BedrockAdapter
from .base import (
    Adapter, ContinuationUnsupported, RateLimitInfo, SSEEvent, SSEParser, StreamDecoder,
    StreamEvent, TargetUnavailable, UnsupportedRequest, UpstreamError, UpstreamRequest,
)
from .openai import OpenAIAdapter, OpenAIStreamDecoder
from .gemini import GeminiAdapter
from .shape import check_answer
from .vertex import VertexAdapter

__all__ = [
    "adapter_for", "Adapter", "OpenAIAdapter", "AzureOpenAIAdapter", "AnthropicAdapter",
    "UpstreamRequest", "UpstreamError", "RateLimitInfo", "StreamEvent", "StreamDecoder",
    "OpenAIStreamDecoder", "SSEParser", "SSEEvent", "UnsupportedRequest", "TargetUnavailable", "ContinuationUnsupported",
    "check_answer", "GeminiAdapter", "VertexAdapter", "BedrockAdapter",
]

_ADAPTERS: dict[ProviderType, Callable[[Provider], Adapter]] = {
    ProviderType.openai: OpenAIAdapter,
    ProviderType.openai_compatible: OpenAIAdapter,
    ProviderType.azure_openai: AzureOpenAIAdapter,
    ProviderType.anthropic: AnthropicAdapter,
    ProviderType.gemini: GeminiAdapter,
    ProviderType.vertex: VertexAdapter,
    ProviderType.bedrock: BedrockAdapter,
}


def adapter_for(provider: Provider) -> Adapter:
    """The adapter for a provider's dialect (a new instance; callers keep it per config)."""
    return _ADAPTERS[provider.type](provider)
