"""A value that satisfies a JSON schema, as a model answering with a tool would produce.

The Anthropic simulator fills a forced tool's input with it, so structured-output clients
(`openai` `parse`, pydantic models) can be tested through a fallback to Anthropic. It covers
what pydantic and the OpenAI SDK emit: objects, arrays, scalars, enums/const, anyOf/oneOf/
allOf and local `$ref`s into `$defs`/`definitions`.
"""

from __future__ import annotations

from typing import Any


def example(schema: Any, text: str = "", root: Any = None, depth: int = 0) -> Any:
    root = schema if root is None else root
    if not isinstance(schema, dict) or depth > 20:
        return None
    ref = schema.get("$ref")
    if isinstance(ref, str) and ref.startswith("#/"):
        target: Any = root
        for part in ref[2:].split("/"):
            target = target.get(part) if isinstance(target, dict) else None
        return example(target, text, root, depth + 1)
    if "const" in schema:
        return schema["const"]
    if isinstance(schema.get("enum"), list) and schema["enum"]:
        return schema["enum"][0]
    for key in ("anyOf", "oneOf"):
        options = schema.get(key)
        if isinstance(options, list) and options:
            usable = [o for o in options if not (isinstance(o, dict) and o.get("type") == "null")]
            return example((usable or options)[0], text, root, depth + 1)
    if isinstance(schema.get("allOf"), list) and schema["allOf"]:
        merged: dict[str, Any] = {}
        for part in schema["allOf"]:
            value = example(part, text, root, depth + 1)
            if isinstance(value, dict):
                merged.update(value)
        return merged
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind == "object" or (kind is None and "properties" in schema):
        props = schema.get("properties")
        if not isinstance(props, dict) or not props:
            return {"query": text}
        return {name: example(sub, text, root, depth + 1) for name, sub in props.items()}
    if kind == "array":
        return [example(schema.get("items") or {}, text, root, depth + 1)]
    if kind == "string":
        return text or "text"
    if kind == "integer":
        return max(1, int(schema.get("minimum", 1)))
    if kind == "number":
        return float(schema.get("minimum", 1.5))
    if kind == "boolean":
        return True
    if kind == "null":
        return None
    return text
