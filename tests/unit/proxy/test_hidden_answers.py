"""What counts as a failure hidden in a 200, and as a context-length error (issue 16)."""

from __future__ import annotations

import orjson
import pytest

from detour_proxy.adapters import UpstreamError
from detour_proxy.config import HiddenFailure
from detour_proxy.engine._hidden import answer_failure, chunk_opens_gate, is_context_error, stream_failure

BOTH = frozenset({HiddenFailure.empty, HiddenFailure.reasoning_only})
EMPTY = frozenset({HiddenFailure.empty})


def answer(finish: str = "stop", **message) -> dict:
    return {"object": "chat.completion", "choices": [
        {"index": 0, "finish_reason": finish, "message": {"role": "assistant", **message}}]}


def chunk(**delta) -> bytes:
    return orjson.dumps({"object": "chat.completion.chunk", "choices": [{"index": 0, "delta": delta}]})


@pytest.mark.parametrize(("message", "kinds", "verdict"), [
    ({"content": ""}, BOTH, "empty"),
    ({"content": " \n\t"}, BOTH, "empty"),
    ({"content": None}, BOTH, "empty"),
    ({"content": [{"type": "text", "text": "  "}]}, BOTH, "empty"),
    ({"content": None, "reasoning_content": "thinking..."}, BOTH, "reasoning-only"),
    ({"content": "", "reasoning": "thinking..."}, BOTH, "reasoning-only"),
    ({"content": None, "reasoning_content": "thinking..."}, EMPTY, None),   # not asked for
    ({"content": ""}, frozenset({HiddenFailure.reasoning_only}), None),
    ({"content": "Hello"}, BOTH, None),
    ({"content": None, "tool_calls": [{"id": "c", "type": "function",
                                       "function": {"name": "f", "arguments": "{}"}}]}, BOTH, None),
    ({"content": None, "refusal": "I can't help with that."}, BOTH, None),
    ({"content": None, "function_call": {"name": "f", "arguments": "{}"}}, BOTH, None),
])
def test_answer_verdicts(message, kinds, verdict):
    assert answer_failure(answer(**message), kinds) == verdict


def test_content_filtered_empty_answer_is_not_failed_over():
    assert answer_failure(answer("content_filter", content=""), BOTH) is None


def test_stream_gate_opens_only_on_real_output():
    assert not chunk_opens_gate(chunk(content="  "), BOTH)
    assert not chunk_opens_gate(chunk(reasoning_content="hm"), BOTH)
    assert chunk_opens_gate(chunk(reasoning_content="hm"), EMPTY)
    assert chunk_opens_gate(chunk(content="Hi"), BOTH)
    assert chunk_opens_gate(chunk(tool_calls=[{"index": 0, "function": {"arguments": "{"}}]), BOTH)
    assert stream_failure([chunk(role="assistant", content=""), chunk(content=" ")], BOTH) == "empty"
    assert stream_failure([chunk(reasoning_content="a"), chunk(reasoning_content="b")], BOTH) == "reasoning-only"
    assert stream_failure([chunk(content=" ")], frozenset({HiddenFailure.reasoning_only})) is None


@pytest.mark.parametrize(("status", "code", "message"), [
    (400, "context_length_exceeded", "This model's maximum context length is 8192 tokens."),      # OpenAI
    (400, "context_length_exceeded", "Azure: This model's maximum context length is 128000"),      # Azure
    (400, "invalid_request_error", "anthropic 400: invalid_request_error: prompt is too long: 210342 tokens > 200000 maximum"),
    (400, "INVALID_ARGUMENT", "The input token count (1200345) exceeds the maximum number of tokens allowed (1048576)."),
    (400, "ValidationException", "Input is too long for requested model."),                      # Bedrock
    (400, "BadRequestError", "This model's maximum context length is 4096 tokens. However, you requested 5000"),  # vLLM
    (200, "invalid_request_error", "prompt is too long: 300000 tokens > 200000 maximum"),          # inside a 200
])
def test_context_length_errors_of_each_provider(status, code, message):
    assert is_context_error(status, UpstreamError(status, "invalid_request_error", code, message, None))


@pytest.mark.parametrize(("status", "message"), [
    (429, "Rate limit reached for gpt-4o on tokens per min (TPM): Limit 30000, Used 29000, Requested 5000."),
    (400, "messages: Input should be a valid list"),
    (503, "context length service overloaded"),
])
def test_other_errors_are_not_context_errors(status, message):
    assert not is_context_error(status, UpstreamError(status, "x", "x", message, None))
