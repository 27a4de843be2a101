"""Inbound API formats other than OpenAI chat completions: codecs for the engine's seam.

`responses` (POST /v1/responses, OpenAI Responses API) and `messages` (POST /v1/messages,
Anthropic Messages API) each translate the client's request into the canonical chat form
(`engine.codec`) and encode answers, stream chunks and errors back into the client's format,
so both endpoints get the chat endpoint's retries, fallback, breakers and stream gate.
A codec instance is made per request (`new_codec(kind)`): stream encoding keeps state.
"""

from __future__ import annotations

from .messages import MessagesCodec
from .responses import ResponsesCodec

__all__ = ["MessagesCodec", "ResponsesCodec", "new_codec", "INBOUND_KINDS"]

#: request kind (server.endpoints) -> codec class
INBOUND_KINDS: dict[str, type[ResponsesCodec] | type[MessagesCodec]] = {
    "responses": ResponsesCodec, "messages": MessagesCodec}


def new_codec(kind: str) -> ResponsesCodec | MessagesCodec:
    return INBOUND_KINDS[kind]()
