"""The inbound seam: how a client's API format meets the format-neutral engine.

The engine works on one canonical form: an OpenAI chat-completions (or embeddings) request
body as a dict, OpenAI `chat.completion` JSON for answers and `chat.completion.chunk` JSON for
stream chunks (what every adapter translates to and from). An `InboundCodec` sits between
the client's format and that form: it parses the client's request into the canonical body,
and encodes what the engine produces (an answer, stream chunks, the end of a stream, an
error of Detour's own, a provider's refusal) back into the client's format. The OpenAI
endpoints use `OPENAI`, the identity codec; another inbound API (POST /v1/responses,
POST /v1/messages) plugs in by providing its own codec to `RequestContext(codec=...)` and
gets the same retries, fallback, breakers, streaming gate and continuation.
"""

from __future__ import annotations

from typing import Any, Protocol

import orjson

from ..adapters import UpstreamError
from ..errors import bad_request, error_body

__all__ = ["InboundCodec", "OpenAICodec", "OPENAI", "SSE_HEADERS"]

SSE_HEADERS = [(b"content-type", b"text/event-stream; charset=utf-8"), (b"cache-control", b"no-cache"),
               (b"x-accel-buffering", b"no")]
_JSON = [(b"content-type", b"application/json")]
_DONE = b"data: [DONE]\n\n"


class InboundCodec(Protocol):
    """One client-facing API format. Every method is pure (no I/O)."""

    #: response headers of a successful non-streamed answer and of a stream
    json_headers: list[tuple[bytes, bytes]]
    stream_headers: list[tuple[bytes, bytes]]

    def parse(self, raw: bytes, kind: str) -> dict[str, Any]:
        """The client's bytes -> the canonical request body; raises `ClientError` (400)."""
        ...

    def answer(self, body: bytes) -> bytes:
        """A canonical `chat.completion` (or embeddings) JSON document -> the client's answer."""
        ...

    def chunks(self, payloads: list[bytes]) -> bytes:
        """Canonical `chat.completion.chunk` documents -> bytes of the client's stream."""
        ...

    def done(self) -> bytes:
        """The end of a complete stream."""
        ...

    def stream_error(self, error: dict[str, Any]) -> bytes:
        """An in-band error ending a started stream (`error` holds message/type/code/...)."""
        ...

    def error(self, message: str, type_: str, code: str | None = None) -> bytes:
        """An error of Detour's own, as a whole response body."""
        ...

    def upstream_error(self, err: UpstreamError) -> bytes:
        """A provider's refusal passed to the client (already normalised and redacted)."""
        ...


class OpenAICodec:
    """The OpenAI chat-completions/embeddings format: the canonical form itself."""

    json_headers = _JSON
    stream_headers = SSE_HEADERS

    def parse(self, raw: bytes, kind: str) -> dict[str, Any]:
        if not raw:
            raise bad_request("The request body is empty; send a JSON object.")
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise bad_request(f"The request body is not valid JSON: {exc.args[0] if exc.args else exc}",
                              code="invalid_json") from None
        if not isinstance(body, dict):
            raise bad_request("The request body must be a JSON object.")
        model = body.get("model")
        if not isinstance(model, str) or not model:
            raise bad_request("You must provide a model parameter.", param="model")
        if kind == "chat":
            messages = body.get("messages")
            if not isinstance(messages, list) or not messages:
                raise bad_request("'messages' must be a non-empty array.", param="messages")
            for m in messages:   # a loop, not any(<genexpr>): this runs on every request
                if not isinstance(m, dict) or not isinstance(m.get("role"), str):
                    raise bad_request("Each message must be an object with a 'role'.", param="messages")
            if "stream" in body and not isinstance(body["stream"], bool):
                raise bad_request("'stream' must be a boolean.", param="stream")
        elif "input" not in body:
            raise bad_request("You must provide an input parameter.", param="input")
        return body

    def answer(self, body: bytes) -> bytes:
        return body

    def chunks(self, payloads: list[bytes]) -> bytes:
        parts: list[bytes] = []
        for p in payloads:
            parts += (b"data: ", p, b"\n\n")
        return b"".join(parts)

    def done(self) -> bytes:
        return _DONE

    def stream_error(self, error: dict[str, Any]) -> bytes:
        return b"event: error\ndata: " + orjson.dumps({"error": error}) + b"\n\n"

    def error(self, message: str, type_: str, code: str | None = None) -> bytes:
        return error_body(message, type_, code)

    def upstream_error(self, err: UpstreamError) -> bytes:
        return err.to_openai_body()


OPENAI = OpenAICodec()
