"""Shape checks of canonical (OpenAI-format) answers, before one is handed to a client.

A provider (or a proxy in front of it) can answer 200 with valid JSON of the wrong shape:
`{"choices": [1]}`, `usage` as a list, an error object instead of a completion. Passing it
on breaks the client's SDK in ways that look like Detour's fault, and the next target is
never tried. `check_answer` names what is wrong (or returns None); the engine then treats
the answer as that target's failure. Cheap on purpose: a few type tests on the top levels,
no schema walk (the client SDK tolerates unknown fields, so only what it reads is checked).
"""

from __future__ import annotations

from typing import Any

__all__ = ["check_answer"]


def check_answer(kind: str, doc: Any) -> str | None:
    """What makes `doc` not a usable `chat.completion` / embeddings list (None: it is).
    Runs on every answer: plain type tests inlined (no helper calls)."""
    if not isinstance(doc, dict):
        return "a body that is not a JSON object"
    if doc.get("error") is not None:
        return "an error object instead of an answer"
    usage = doc.get("usage")
    if usage is not None and not isinstance(usage, dict):
        return "a malformed 'usage'"
    if kind == "embeddings":
        data = doc.get("data")
        if not isinstance(data, list) or not all(
                isinstance(d, dict) and isinstance(d.get("embedding"), (list, str)) for d in data):
            return "a malformed 'data' list"
        return None
    choices = doc.get("choices")
    if not isinstance(choices, list):
        return "no 'choices' list"
    for c in choices:
        if not isinstance(c, dict):
            return "a choice that is not an object"
        m = c.get("message")
        if not isinstance(m, dict):
            return "a choice without a 'message' object"
        v = m.get("content")
        if v is not None and not isinstance(v, str):
            return "a malformed 'message'"
        v = m.get("refusal")
        if v is not None and not isinstance(v, str):
            return "a malformed 'message'"
        v = m.get("tool_calls")
        if v is not None and not isinstance(v, list):
            return "a malformed 'message'"
    return None
