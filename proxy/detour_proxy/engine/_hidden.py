"""Failures hidden in a 200, and prompts too long for a target's context window.

A provider under stress sometimes answers 200 with nothing in it: no content (or only
whitespace), or reasoning and no answer. And a prompt too long for a model is a 400 (or an
error object inside a 200) that another target with a larger context would serve. Routes
opt in per kind (`hiddenFailures`); this module decides, on the *canonical* answer (every
adapter's output is an OpenAI `chat.completion` / chunk), so it holds for every provider type:

- `empty`: no choice carries non-blank content, a tool call, a function call, audio or a
  refusal (and none carries reasoning). Tool-call-only answers are not empty. An answer the
  provider's content filter emptied (`finish_reason: content_filter`) is not failed over: a
  gateway must not shop a filtered prompt around until some provider answers it.
- `reasoning-only`: reasoning (`reasoning_content` / `reasoning`) but no content, tool call
  or refusal.
- `context-window`: the provider's context-length error (OpenAI/Azure `context_length_exceeded`,
  Anthropic "prompt is too long", Bedrock "input is too long", Gemini "input token count ...
  exceeds", vLLM "maximum context length") on a 400/413, inside a 200 body, or as an in-band
  stream error. It becomes an HTTP_ERROR 400 outcome with `error_class` `context_window`:
  the request's fault, so no breaker counts it; the planner moves the request to a target
  with a larger `contextWindow`.

Streams: the first-token gate opens only on a chunk that makes the answer non-empty in the
route's sense (with `reasoning-only`, reasoning deltas are held back until content arrives),
so a stream that ends blank or with reasoning only fails over before the client saw anything.
"""

from __future__ import annotations

import re
from typing import Any

import orjson

from ..adapters import UpstreamError
from ..config import HiddenFailure
from ..policy import CONTEXT_WINDOW, Outcome, OutcomeKind
from ._context import Result

__all__ = ["answer_failure", "chunk_opens_gate", "stream_failure", "context_result", "hidden_result",
           "is_context_error"]

EMPTY = HiddenFailure.empty
REASONING_ONLY = HiddenFailure.reasoning_only
CONTEXT = HiddenFailure.context_window

_CONTEXT_CODES = frozenset({"context_length_exceeded", "context_window_exceeded"})
_CONTEXT_TEXT = re.compile(
    r"context[ _-]?length|context[ _-]window|prompt is too long|input is too long"
    r"|input token count.{0,40}exceeds|exceeds the maximum number of tokens|maximum prompt length",
    re.IGNORECASE)
#: statuses a context-length error comes with (200: an error object in a 200 body)
_CONTEXT_STATUSES = frozenset({200, 400, 413, 422})


def is_context_error(status: int, err: UpstreamError) -> bool:
    """The provider says the prompt does not fit the model's context window."""
    if status not in _CONTEXT_STATUSES:
        return False
    return err.code in _CONTEXT_CODES or bool(_CONTEXT_TEXT.search(err.message))


def context_result(err: UpstreamError, started: float, now: float, ttft: float | None = None) -> Result:
    """A context-length refusal: the request's fault (status 400 never counts against a
    target), marked so the planner looks for a larger context."""
    if err.status != 400:
        err = UpstreamError(400, err.type or "invalid_request_error", err.code or "context_length_exceeded",
                            err.message, None)
    return Result(Outcome(OutcomeKind.HTTP_ERROR, status=400, duration=now - started, ttft=ttft,
                          error_class=CONTEXT_WINDOW, message=err.message), err)


def _text(v: Any) -> str:
    if isinstance(v, str):
        return v
    if isinstance(v, list):   # content parts
        return "".join(p.get("text") or "" for p in v if isinstance(p, dict) and isinstance(p.get("text"), str))
    return ""


def _judge(parts: list[dict[str, Any]], kinds: frozenset[HiddenFailure]) -> str | None:
    """`parts`: the messages (or deltas) of an answer. None when it is a real answer."""
    reasoning = False
    for m in parts:
        if (_text(m.get("content")).strip() or m.get("tool_calls") or m.get("function_call")
                or m.get("refusal") or m.get("audio")):
            return None
        if _text(m.get("reasoning_content")).strip() or _text(m.get("reasoning")).strip():
            reasoning = True
    if reasoning:
        return "reasoning-only" if REASONING_ONLY in kinds else None
    return "empty" if EMPTY in kinds else None


def answer_failure(doc: Any, kinds: frozenset[HiddenFailure]) -> str | None:
    """What makes this (shape-checked) chat completion a hidden failure: 'empty',
    'reasoning-only', or None."""
    choices = doc.get("choices") if isinstance(doc, dict) else None
    if not isinstance(choices, list):
        return None
    msgs = [c["message"] for c in choices if isinstance(c, dict) and isinstance(c.get("message"), dict)]
    if any(isinstance(c, dict) and c.get("finish_reason") == "content_filter" for c in choices):
        return None
    return _judge(msgs, kinds)


def _deltas(payload: bytes) -> list[dict[str, Any]] | None:
    """The deltas of a chunk; None when it is not ours to judge (content_filter, not JSON)."""
    try:
        doc = orjson.loads(payload)
    except orjson.JSONDecodeError:
        return None
    choices = doc.get("choices") if isinstance(doc, dict) else None
    if not isinstance(choices, list):
        return []
    if any(isinstance(c, dict) and c.get("finish_reason") == "content_filter" for c in choices):
        return None
    return [c["delta"] for c in choices if isinstance(c, dict) and isinstance(c.get("delta"), dict)]


def chunk_opens_gate(payload: bytes, kinds: frozenset[HiddenFailure]) -> bool:
    """Does this content-bearing chunk make the answer non-empty in the route's sense?
    (Asked only before the gate opens, so later chunks are never parsed.)"""
    deltas = _deltas(payload)
    return True if deltas is None else _has_output(deltas, kinds)


def stream_failure(payloads: list[bytes], kinds: frozenset[HiddenFailure]) -> str | None:
    """A stream ended before any chunk opened the gate: is what it sent a hidden failure?"""
    parts: list[dict[str, Any]] = []
    for p in payloads:
        d = _deltas(p)
        if d is None:
            return None
        parts.extend(d)
    return _judge(parts, kinds)


def _has_output(deltas: list[dict[str, Any]], kinds: frozenset[HiddenFailure]) -> bool:
    for d in deltas:
        if (_text(d.get("content")).strip() or d.get("tool_calls") or d.get("function_call")
                or d.get("refusal") or d.get("audio")):
            return True
        if REASONING_ONLY not in kinds and (_text(d.get("reasoning_content")).strip()
                                            or _text(d.get("reasoning")).strip()):
            return True
    return False


def hidden_result(label: str, what: str, started: float, now: float, stream: bool = False) -> Result:
    """The target's failure: it answered 200 with an empty or reasoning-only completion."""
    noun = "stream" if stream else "answer"
    desc = "no content" if what == "empty" else "reasoning but no content"
    why = f"{label} sent a 200 {noun} with {desc}"
    code = "empty_answer" if what == "empty" else "reasoning_only_answer"
    return Result(Outcome(OutcomeKind.STREAM_ERROR, duration=now - started, error_class=code, message=why),
                  UpstreamError(502, "upstream_error", code, why, None))
