"""OpenAI and OpenAI-compatible providers: the pass-through dialect.

Clients already speak this dialect, so the hot path is to forward the client's own bytes
untouched (when the model name does not change) and to hand stream chunks back byte for byte.
The decoder only *reads* chunks (to find the first token, the delivered text and the end);
it never rewrites them.
"""

from __future__ import annotations

from typing import Any

import orjson

from ..config import ContinuationMode, Provider
from .base import (
    DONE, ContinuationUnsupported, Headers, SSEEvent, SSEParser, SSEStreamDecoder, StreamEvent,
    UpstreamError, UpstreamRequest,
)
from .errors import NormalizedErrors, stream_error

__all__ = ["OpenAIAdapter", "OpenAIStreamDecoder", "serialize_with"]

JSON = "application/json"


def serialize_with(body: dict[str, Any], model: str, stream: bool | None, raw: bytes | None) -> bytes:
    """Bytes of `body` with `model` (and, if given, `stream`) set, reusing `raw` when equal.

    The client's dict is never mutated: a shallow copy is cheap and the executor may build
    several upstream requests (retries, fallbacks) from the same body.
    """
    same_stream = stream is None or bool(body.get("stream", False)) == stream
    if raw is not None and same_stream and body.get("model") == model:
        return raw
    d = dict(body)
    d["model"] = model
    if stream is not None:
        if stream:
            d["stream"] = True
        else:
            d.pop("stream", None)
            d.pop("stream_options", None)  # OpenAI rejects stream_options without stream
    return orjson.dumps(d)


class OpenAIAdapter(NormalizedErrors):
    """`openai` and `openai-compatible` (vLLM, Ollama, DeepSeek, Mistral, ...)."""

    label = "openai"
    auth_header = "Authorization"
    auth_prefix = "Bearer "

    def __init__(self, provider: Provider) -> None:
        self.provider = provider
        self.label = provider.type.value
        base = provider.base_url.rstrip("/")
        self._chat_url = base + "/chat/completions"
        self._embeddings_url = base + "/embeddings"
        self._headers = {"Content-Type": JSON, **provider.headers}
        self.continuation = provider.effective_continuation
        self.can_continue = self.continuation is not ContinuationMode.none

    # -- requests ---------------------------------------------------------------------------
    def supports(self, kind: str) -> bool:
        return kind in ("chat", "embeddings")

    def headers(self, api_key: str | None) -> dict[str, str]:
        h = self._headers.copy()
        if api_key:
            h[self.auth_header] = self.auth_prefix + api_key
        return h

    def chat_url(self, model: str) -> str:
        return self._chat_url

    def embeddings_url(self, model: str) -> str:
        return self._embeddings_url

    def build_chat(self, body: dict[str, Any], model: str, stream: bool, api_key: str | None,
                   raw: bytes | None = None) -> UpstreamRequest:
        return UpstreamRequest("POST", self.chat_url(model), self.headers(api_key),
                               serialize_with(body, model, stream, raw))

    def build_embeddings(self, body: dict[str, Any], model: str, api_key: str | None,
                         raw: bytes | None = None) -> UpstreamRequest:
        return UpstreamRequest("POST", self.embeddings_url(model), self.headers(api_key),
                               serialize_with(body, model, None, raw))

    def build_continuation(self, body: dict[str, Any], delivered_text: str, model: str,
                           api_key: str | None) -> UpstreamRequest:
        """A streaming request whose answer continues `delivered_text` (see ContinuationMode).

        A client's own trailing assistant message (its prefill) is extended rather than
        followed by a second assistant message, since the delivered text continues it.
        """
        mode = self.continuation
        if mode is ContinuationMode.none:
            raise ContinuationUnsupported(f"provider {self.provider.name!r} cannot continue a partial answer")
        messages = list(body.get("messages") or [])
        last = messages[-1] if messages else None
        if (isinstance(last, dict) and last.get("role") == "assistant"
                and isinstance(last.get("content"), str) and not last.get("tool_calls")):
            messages[-1] = {**last, "content": last["content"] + delivered_text}
        else:
            messages.append({"role": "assistant", "content": delivered_text})
        if mode is ContinuationMode.prefix:
            messages[-1] = {**messages[-1], "prefix": True}
        d = dict(body)
        d["model"] = model
        d["messages"] = messages
        d["stream"] = True
        d.pop("n", None)  # one answer is being continued
        if mode is ContinuationMode.continue_final_message:
            d["continue_final_message"] = True
            d["add_generation_prompt"] = False
        return UpstreamRequest("POST", self.chat_url(model), self.headers(api_key), orjson.dumps(d))

    # -- responses --------------------------------------------------------------------------
    def parse_response(self, status: int, headers: Headers, raw: bytes) -> bytes:
        return raw

    def stream_decoder(self, include_usage: bool = False, prefix_trim: str = "",
                       model: str = "") -> OpenAIStreamDecoder:
        # Pass-through: the upstream already honours the client's stream_options, chunks carry
        # their own model, and these adapters never trim a prefill, so the arguments exist only
        # for interface symmetry.
        return OpenAIStreamDecoder(self.label)


def _has_content(delta: dict[str, Any]) -> bool:
    return bool(delta.get("content") or delta.get("refusal") or delta.get("reasoning_content")
                or delta.get("tool_calls"))


class OpenAIStreamDecoder(SSEStreamDecoder):
    """Reads an OpenAI SSE stream without rewriting it.

    A stream that ends without `[DONE]` is truncated (an error event from `close()`), except
    when a `finish_reason` was already seen: some compatible servers omit `[DONE]` and the
    answer is complete at that point.
    """

    __slots__ = ("_sse", "_label", "_finished", "_over")

    def __init__(self, label: str = "openai") -> None:
        self._sse = SSEParser()
        self._label = label
        self._finished = False   # a finish_reason was seen
        self._over = False       # done or error emitted

    def _unterminated(self) -> StreamEvent:
        if self._finished:   # a finish_reason arrived: some servers end without [DONE]
            return DONE
        return StreamEvent.failed(UpstreamError(502, "stream_error", "truncated",
                                                f"{self._label} stream ended before [DONE]"))

    def _events(self, sse_events: list[SSEEvent]) -> list[StreamEvent]:
        out: list[StreamEvent] = []
        for ev in sse_events:
            if self._over:
                break
            data = ev.data.strip()
            if data == b"[DONE]":
                self._over = True
                out.append(DONE)
                continue
            try:
                doc = orjson.loads(data)
            except orjson.JSONDecodeError:
                self._over = True
                out.append(StreamEvent.failed(UpstreamError(
                    502, "stream_error", "bad_chunk", f"{self._label} sent an undecodable stream chunk")))
                continue
            if not isinstance(doc, dict):
                continue
            if "error" in doc or ev.event == "error":
                self._over = True
                out.append(StreamEvent.failed(stream_error(doc.get("error", doc), provider=self._label)))
                continue
            text = ""
            bearing = False
            for choice in doc.get("choices") or ():
                delta = choice.get("delta")
                if isinstance(delta, dict):
                    c = delta.get("content")
                    if c:
                        text += c
                        bearing = True   # what `_has_content` would say, without the call
                    elif not bearing and _has_content(delta):
                        bearing = True
                if choice.get("finish_reason"):
                    self._finished = True
            out.append(StreamEvent("chunk", data, text, bearing))
        return out
