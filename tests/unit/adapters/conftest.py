"""Shared helpers for the adapter tests, exposed as fixtures (no test-package imports needed).

`check_anthropic` is the strict validator of translated requests. The SDK's
`TypeAdapter(MessageCreateParams)` validates `Iterable` fields lazily (a generator that is
never consumed), so on its own it accepts any list of anything; this helper therefore also
validates every message, content block, tool, tool_choice and system block with their own
TypeAdapters, rejects unknown keys (pydantic ignores extras on TypedDicts), and checks the
conversation rules the Messages API enforces at runtime (non-empty, non-blank text blocks
also inside tool results, alternating roles, tool_result blocks first and answering the
previous turn's tool_use, every tool_use answered in the next turn, `tools` declared when
tool blocks are present, no trailing whitespace in a final assistant turn, non-blank stop
sequences).
"""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from anthropic.types import (
    ImageBlockParam, MessageCreateParams, MessageParam, MetadataParam, TextBlockParam,
    ToolChoiceParam, ToolParam, ToolResultBlockParam, ToolUseBlockParam,
)
from anthropic.types.content_block_param import ContentBlockParam
from anthropic.types.message_create_params import MessageCreateParamsBase
from anthropic.types.tool_result_block_param import Content as ToolResultContent
from pydantic import TypeAdapter

from detour_proxy.config import Provider

_TA = {
    "request": TypeAdapter(MessageCreateParams),
    "message": TypeAdapter(MessageParam),
    "block": TypeAdapter(ContentBlockParam),
    "text": TypeAdapter(TextBlockParam),
    "tool": TypeAdapter(ToolParam),
    "tool_choice": TypeAdapter(ToolChoiceParam),
    "metadata": TypeAdapter(MetadataParam),
    "tool_result_item": TypeAdapter(ToolResultContent),
}
_BLOCK_TYPES = {"text": TextBlockParam, "image": ImageBlockParam, "tool_use": ToolUseBlockParam,
                "tool_result": ToolResultBlockParam}
_TOOL_RESULT_ITEM_TYPES = {"text": TextBlockParam, "image": ImageBlockParam}


def _keys(td: Any) -> tuple[frozenset, frozenset]:
    return frozenset(td.__required_keys__), frozenset(td.__required_keys__ | td.__optional_keys__)


def _strict(obj: dict, td: Any, where: str) -> None:
    required, allowed = _keys(td)
    extra = set(obj) - allowed
    assert not extra, f"{where}: unknown keys {sorted(extra)}"
    missing = required - set(obj)
    assert not missing, f"{where}: missing keys {sorted(missing)}"


# Sampling parameters of anthropic-version 2023-06-01 (absent from the 2026-10-21 SDK types).
LEGACY_SAMPLING = {"temperature", "top_p"}


def check_anthropic(req: dict | bytes, legacy_sampling: bool = True) -> dict:
    """Raise (AssertionError or pydantic.ValidationError) unless `req` is a valid Messages request.

    `legacy_sampling` allows temperature/top_p in [0, 1] (API version 2023-06-01)."""
    if isinstance(req, (bytes, bytearray)):
        req = orjson.loads(req)
    _TA["request"].validate_python(req)
    required, allowed = _keys(MessageCreateParamsBase)
    allowed = allowed | {"stream"} | (LEGACY_SAMPLING if legacy_sampling else set())
    assert not set(req) - allowed, f"request: unknown keys {sorted(set(req) - allowed)}"
    for k in LEGACY_SAMPLING & set(req):
        assert isinstance(req[k], float) and 0.0 <= req[k] <= 1.0, f"{k} out of range"
    assert required <= set(req), f"request: missing keys {sorted(required - set(req))}"
    msgs = req["messages"]
    assert isinstance(msgs, list) and msgs, "messages must be a non-empty list"
    if "system" in req:
        sysv = req["system"]
        if isinstance(sysv, list):
            for b in sysv:
                _TA["text"].validate_python(b)
        else:
            assert isinstance(sysv, str) and sysv.strip(), "system must be a non-blank string"
    for t in req.get("tools", []):
        _TA["tool"].validate_python(t)
        _strict(t, ToolParam, "tool")
    if "tool_choice" in req:
        _TA["tool_choice"].validate_python(req["tool_choice"])
        assert "tools" in req, "tool_choice without tools"
    if "metadata" in req:
        _TA["metadata"].validate_python(req["metadata"])
    for s in req.get("stop_sequences", []):
        assert isinstance(s, str) and s.strip(), f"blank stop sequence {s!r}"
    prev_role = None
    prev_tool_ids: set[str] = set()
    for i, m in enumerate(msgs):
        where = f"messages[{i}]"
        _TA["message"].validate_python(m)
        assert set(m) == {"role", "content"}, f"{where}: keys {sorted(m)}"
        assert m["role"] in ("user", "assistant"), f"{where}: role {m['role']!r}"
        assert m["role"] != prev_role, f"{where}: consecutive {m['role']} turns"
        content = m["content"]
        blocks = [{"type": "text", "text": content}] if isinstance(content, str) else content
        assert isinstance(blocks, list) and blocks, f"{where}: empty content"
        seen_other = False
        tool_ids: set[str] = set()
        answered: set[str] = set()
        for j, b in enumerate(blocks):
            bw = f"{where}.content[{j}]"
            _TA["block"].validate_python(b)
            assert b.get("type") in _BLOCK_TYPES, f"{bw}: unexpected block type {b.get('type')!r}"
            _strict(b, _BLOCK_TYPES[b["type"]], bw)
            if b["type"] == "text":
                assert b["text"].strip(), f"{bw}: blank text block"
            if b["type"] == "tool_result":
                assert m["role"] == "user", f"{bw}: tool_result outside a user turn"
                assert not seen_other, f"{bw}: tool_result after other content"
                assert b["tool_use_id"] in prev_tool_ids, f"{bw}: tool_result answers no tool_use"
                answered.add(b["tool_use_id"])
                _check_tool_result_content(b.get("content"), bw)
            else:
                seen_other = True
            if b["type"] == "tool_use":
                assert m["role"] == "assistant", f"{bw}: tool_use outside an assistant turn"
                assert isinstance(b["input"], dict)
                tool_ids.add(b["id"])
            if b["type"] in ("tool_use", "tool_result"):
                assert "tools" in req, f"{bw}: tool blocks in a request without tools"
        assert prev_tool_ids <= answered, f"{where}: tool_use {sorted(prev_tool_ids - answered)} not answered here"
        prev_role, prev_tool_ids = m["role"], tool_ids
    assert not prev_tool_ids, f"tool_use {sorted(prev_tool_ids)} of the last turn never answered"
    last = msgs[-1]
    if last["role"] == "assistant":
        lb = last["content"] if isinstance(last["content"], list) else [{"type": "text", "text": last["content"]}]
        if lb[-1]["type"] == "text":
            assert lb[-1]["text"] == lb[-1]["text"].rstrip(), "final assistant turn ends with whitespace"
    return req


def _check_tool_result_content(content: Any, where: str) -> None:
    """The SDK types leave tool_result `content` an unchecked Iterable: check each item."""
    if content is None:
        return
    if isinstance(content, str):
        assert content.strip(), f"{where}: blank tool_result content"
        return
    assert isinstance(content, list) and content, f"{where}: tool_result content must be a non-empty list"
    for k, item in enumerate(content):
        iw = f"{where}.content[{k}]"
        _TA["tool_result_item"].validate_python(item)
        assert item.get("type") in _TOOL_RESULT_ITEM_TYPES, f"{iw}: unexpected type {item.get('type')!r}"
        _strict(item, _TOOL_RESULT_ITEM_TYPES[item["type"]], iw)
        if item["type"] == "text":
            assert item["text"].strip(), f"{iw}: blank text block"


@pytest.fixture(scope="session")
def anthropic_check():
    return check_anthropic


def make_provider(type_: str = "openai", **kw: Any) -> Provider:
    base = {"openai": "https://api.openai.com/v1", "openai-compatible": "http://vllm:8000/v1",
            "azure-openai": "https://res.openai.azure.com", "anthropic": "https://api.anthropic.com"}[type_]
    data = {"name": kw.pop("name", "p1"), "type": type_, "baseURL": kw.pop("baseURL", base)}
    data.update(kw)
    return Provider.model_validate(data)


@pytest.fixture(scope="session")
def provider():
    return make_provider
