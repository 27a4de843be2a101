"""Duration strings (`200ms`, `2s`, `5m`, `1h`, `1m30s`) as they appear in the routing config.

Durations are written as strings so that YAML, CRDs and `kubectl explain` all show the
same human form; internally they are float seconds. Formatting is the exact inverse of
parsing for the canonical forms so that the operator's rendered config is byte-stable.
"""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import BeforeValidator, PlainSerializer, WithJsonSchema

DURATION_PATTERN = r"^([0-9]+(\.[0-9]+)?(ms|s|m|h))+$"
_PART = re.compile(r"([0-9]+(?:\.[0-9]+)?)(ms|s|m|h)")
_UNIT = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(value: Any) -> float:
    """Parse `2s`/`200ms`/`1m30s` (or a bare number of seconds) into float seconds."""
    if isinstance(value, bool):
        raise ValueError("a duration must be a string such as '2s' or '200ms'")
    if isinstance(value, (int, float)):
        if value < 0:
            raise ValueError("a duration cannot be negative")
        return float(value)
    if not isinstance(value, str):
        raise ValueError("a duration must be a string such as '2s' or '200ms'")
    text = value.strip()
    if not re.fullmatch(DURATION_PATTERN, text):
        raise ValueError(f"invalid duration {value!r}: use a number with a unit, e.g. '200ms', '2s', '5m', '1h'")
    return sum(float(n) * _UNIT[u] for n, u in _PART.findall(text))


def format_duration(seconds: float) -> str:
    """Canonical string form: the largest unit that represents the value exactly."""
    ms = round(seconds * 1000)
    if ms % 3_600_000 == 0 and ms:
        return f"{ms // 3_600_000}h"
    if ms % 60_000 == 0 and ms:
        return f"{ms // 60_000}m"
    if ms % 1000 == 0:
        return f"{ms // 1000}s"
    return f"{ms}ms"


Duration = Annotated[
    float,
    BeforeValidator(parse_duration),
    PlainSerializer(format_duration, return_type=str, when_used="json"),
    WithJsonSchema({"type": "string", "pattern": DURATION_PATTERN}),
]
