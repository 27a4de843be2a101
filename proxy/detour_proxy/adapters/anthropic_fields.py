"""Which OpenAI request fields an Anthropic target can carry, and how `response_format` travels.

Kept apart from `anthropic_request` (the reshaping of messages) because it is the contract a
client relies on during failover: a field is translated, dropped with a stated reason, or
makes the target ineligible (the request goes to another target, or the client gets a 400
naming the field); none is dropped silently. docs/adapters.md renders this as a table.
"""

from __future__ import annotations

from typing import Any

from .base import UnsupportedRequest

__all__ = ["ANSWER_TOOL", "DROPPED", "INELIGIBLE", "TRANSLATED", "answer_tool", "check_eligible"]

#: Fields translated into Anthropic's own (see anthropic_request's docstring for the details).
TRANSLATED = (
    "model", "messages", "max_tokens", "max_completion_tokens", "temperature", "top_p", "stop", "stream",
    "stream_options", "user", "tools", "tool_choice", "parallel_tool_calls", "response_format",
)

#: The tool that carries a `response_format` (see the module docstring); reserved.
ANSWER_TOOL = "detour_structured_output"

#: Request fields with no Anthropic counterpart that are not sent, and why that is safe.
DROPPED = {
    "frequency_penalty": "a sampling hint; Anthropic has no repetition penalty",
    "presence_penalty": "a sampling hint; Anthropic has no repetition penalty",
    "seed": "best-effort determinism; Anthropic has no seed",
    "logit_bias": "a sampling hint; Anthropic has no token biases",
    "service_tier": "OpenAI's processing tier",
    "store": "OpenAI's stored completions",
    "metadata": "OpenAI's stored-completion tags (Detour still routes on them)",
    "prediction": "a latency optimisation (predicted output); the answer is the same without it",
    "prompt_cache_key": "OpenAI's cache routing hint; Anthropic caches by prefix",
    "safety_identifier": "OpenAI's abuse-tracking id (`user` is sent as metadata.user_id)",
    "reasoning_effort": "OpenAI reasoning models' effort; the Anthropic target's own default applies",
    "verbosity": "a length hint for OpenAI reasoning models",
}

#: Request fields that make an Anthropic target ineligible when set, and why.
INELIGIBLE = {
    "logprobs": "anthropic returns no log probabilities",
    "top_logprobs": "anthropic returns no log probabilities",
    "audio": "anthropic answers with no audio",
    "modalities": "anthropic answers with text only",
    "web_search_options": "OpenAI's web search is a model feature anthropic does not have here",
}


def check_eligible(body: dict[str, Any]) -> None:
    for name, why in INELIGIBLE.items():
        value = body.get(name)
        if name == "modalities" and isinstance(value, list) and all(m == "text" for m in value):
            continue
        if value is not None and value is not False and not (name == "top_logprobs" and value == 0):
            raise UnsupportedRequest(f"`{name}` is not supported: {why}")


def answer_tool(response_format: Any) -> dict[str, Any] | None:
    """`response_format` as the tool the model must answer with (None: plain text)."""
    if response_format is None:
        return None
    kind = response_format.get("type") if isinstance(response_format, dict) else None
    if kind == "text":
        return None
    if kind == "json_object":
        return {"name": ANSWER_TOOL, "description": "Give your final answer as a JSON object with this tool.",
                "input_schema": {"type": "object", "additionalProperties": True}}
    if kind == "json_schema":
        js = response_format.get("json_schema")
        schema = js.get("schema") if isinstance(js, dict) else None
        if schema is None:
            schema = {"type": "object", "additionalProperties": True}
        if not isinstance(schema, dict) or schema.get("type", "object") != "object":
            raise UnsupportedRequest("response_format: anthropic tool input (the structured answer) must be a "
                                     "JSON object: the schema's root must have type object")
        name = js.get("name") if isinstance(js, dict) else None
        desc = js.get("description") if isinstance(js, dict) else None
        text = f"Give your final answer with this tool: its input is the answer ({name or 'response'})."
        if isinstance(desc, str) and desc:
            text += " " + desc
        return {"name": ANSWER_TOOL, "description": text, "input_schema": {"type": "object", **schema}}
    raise UnsupportedRequest(f"response_format type {kind!r} is not supported")
