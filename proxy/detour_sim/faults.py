"""Fault rules: parsing/validation and per-request selection.

A *fault set* is one JSON object (or a list of them, first match wins). It is validated
strictly when it is installed — an unknown field or a wrong type is a 400 — because a typo
in a resilience test that silently injects nothing would make the test pass for the wrong
reason. Selection is O(rules) with no allocation on the happy path (no rules installed),
which keeps the sim fast enough to serve as the benchmark's upstream.

``rate`` draws come from a ``random.Random`` per rule, seeded with ``seed`` when given, so a
test can predict exactly which requests of a sequence are hit.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

import orjson

FAULT_HEADER = "x-sim-fault"
#: `answer` fault modes: a 200 (streamed or not) that carries no usable answer
ANSWER_MODES = ("empty", "blank", "reasoningOnly")


class FaultError(ValueError):
    """A fault specification is invalid (reported to the caller as HTTP 400)."""


def _num(name: str, v: Any, lo: float = 0.0, hi: float | None = None) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise FaultError(f"{name}: expected a number, got {v!r}")
    if v < lo or (hi is not None and v > hi):
        raise FaultError(f"{name}: {v!r} out of range")
    return float(v)


def _int(name: str, v: Any, lo: int = 0) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        raise FaultError(f"{name}: expected an integer, got {v!r}")
    if v < lo:
        raise FaultError(f"{name}: must be >= {lo}")
    return v


def _str(name: str, v: Any) -> str:
    if not isinstance(v, str):
        raise FaultError(f"{name}: expected a string, got {v!r}")
    return v


@dataclass(slots=True)
class InbandError:
    after_chunks: int = 0
    type: str | None = None
    message: str | None = None


@dataclass(slots=True)
class Fault:
    """One fault rule. Field names mirror the JSON (camelCase) in ``spec``."""

    spec: dict[str, Any] = field(default_factory=dict)
    status: int | None = None
    rate: float = 1.0
    seed: Any = None
    retry_after: str | None = None
    retry_after_ms: str | None = None
    error_type: str | None = None
    error_message: str | None = None
    latency: float = 0.0
    ttft: float = 0.0
    chunk_delay: float | None = None
    reset: bool = False
    reset_after: int | None = None
    cut_after: int | None = None
    stall_after: int | None = None
    malformed: str | None = None
    malformed_after: int = 0
    inband: InbandError | None = None
    rate_limit: dict[str, str] | None = None
    body: str | None = None
    content_type: str | None = None
    location: str | None = None
    count: int | None = None
    paths: tuple[str, ...] | None = None
    keys: frozenset[str] | None = None  # only requests sent with one of these API keys
    models: frozenset[str] | None = None  # only requests whose body names one of these models
    answer: str | None = None          # "empty" | "blank" | "reasoningOnly": a 200 with no real answer
    context_length: bool = False       # the flavour's context-length error (status: 400 unless given)
    remaining: int | None = None
    rng: random.Random | None = None

    @property
    def touches_stream(self) -> bool:
        """True if this fault changes how a stream is written (else the fast path is used)."""
        return bool(
            self.ttft
            or self.chunk_delay is not None
            or self.reset_after is not None
            or self.cut_after is not None
            or self.stall_after is not None
            or self.malformed == "sse"
            or self.inband is not None
        )

    def matches(self, path: str, key: str | None = None, model: str | None = None) -> bool:
        if self.keys is not None and key not in self.keys:
            return False
        if self.models is not None and model not in self.models:
            return False
        if self.paths is None:
            return True
        for p in self.paths:
            if p == path or (p.endswith("*") and path.startswith(p[:-1])):
                return True
        return False

    def to_json(self) -> dict[str, Any]:
        out = dict(self.spec)
        if self.remaining is not None:
            out["remaining"] = self.remaining
        return out


def parse_fault(spec: Any) -> Fault:
    """Validate one fault object and build a :class:`Fault`."""
    if not isinstance(spec, dict):
        raise FaultError("a fault must be a JSON object")
    f = Fault(spec=dict(spec))
    for key, v in spec.items():
        if key == "status":
            f.status = _int(key, v, 100)
            if f.status > 599:
                raise FaultError("status: must be < 600")
        elif key == "rate":
            f.rate = _num(key, v, 0.0, 1.0)
        elif key == "seed":
            f.seed = v
        elif key == "retryAfter":
            if isinstance(v, bool) or not isinstance(v, (str, int, float)):
                raise FaultError("retryAfter: expected a string")
            f.retry_after = str(v)
        elif key == "retryAfterMs":
            f.retry_after_ms = str(int(_num(key, v)))
        elif key == "errorType":
            f.error_type = _str(key, v)
        elif key == "errorMessage":
            f.error_message = _str(key, v)
        elif key == "latency":
            f.latency = _num(key, v)
        elif key == "ttft":
            f.ttft = _num(key, v)
        elif key == "chunkDelay":
            f.chunk_delay = _num(key, v)
        elif key == "reset":
            if not isinstance(v, bool):
                raise FaultError("reset: expected a boolean")
            f.reset = v
        elif key == "resetAfterChunks":
            f.reset_after = _int(key, v)
        elif key == "cutAfterChunks":
            f.cut_after = _int(key, v)
        elif key == "stallAfterChunks":
            f.stall_after = _int(key, v)
        elif key == "malformed":
            if v not in ("body", "sse"):
                raise FaultError('malformed: expected "body" or "sse"')
            f.malformed = v
        elif key == "malformedAfterChunks":
            f.malformed_after = _int(key, v)
        elif key == "inbandError":
            if not isinstance(v, dict):
                raise FaultError("inbandError: expected an object")
            unknown = set(v) - {"afterChunks", "type", "message"}
            if unknown:
                raise FaultError(f"inbandError: unknown fields {sorted(unknown)}")
            f.inband = InbandError(
                after_chunks=_int("inbandError.afterChunks", v.get("afterChunks", 0)),
                type=_str("inbandError.type", v["type"]) if "type" in v else None,
                message=_str("inbandError.message", v["message"]) if "message" in v else None,
            )
        elif key == "rateLimit":
            if not isinstance(v, dict):
                raise FaultError("rateLimit: expected an object of header: value")
            f.rate_limit = {str(k): str(val) for k, val in v.items()}
        elif key == "body":
            f.body = v if isinstance(v, str) else orjson.dumps(v).decode()
        elif key == "contentType":
            f.content_type = _str(key, v)
        elif key == "location":
            f.location = _str(key, v)
        elif key == "count":
            f.count = _int(key, v, 1)
            f.remaining = f.count
        elif key == "answer":
            if v not in ANSWER_MODES:
                raise FaultError(f"answer: expected one of {list(ANSWER_MODES)}")
            f.answer = v
        elif key == "contextLength":
            if not isinstance(v, bool):
                raise FaultError("contextLength: expected a boolean")
            f.context_length = v
        elif key == "paths":
            if not isinstance(v, list) or not all(isinstance(p, str) for p in v):
                raise FaultError("paths: expected a list of strings")
            f.paths = tuple(v)
        elif key == "keys":
            if not isinstance(v, list) or not v or not all(isinstance(k, str) and k for k in v):
                raise FaultError("keys: expected a non-empty list of API keys")
            f.keys = frozenset(v)
        elif key == "models":
            if not isinstance(v, list) or not v or not all(isinstance(m, str) and m for m in v):
                raise FaultError("models: expected a non-empty list of model names")
            f.models = frozenset(v)
        else:
            raise FaultError(f"unknown fault field {key!r}")
    f.rng = random.Random(f.seed) if f.seed is not None else random.Random()
    return f


def parse_fault_set(spec: Any) -> list[Fault]:
    """A fault set is an object (one rule; ``{}`` = none) or a list of rules."""
    if isinstance(spec, dict):
        return [parse_fault(spec)] if spec else []
    if isinstance(spec, list):
        return [parse_fault(s) for s in spec]
    raise FaultError("fault set must be a JSON object or a list of objects")


class FaultBook:
    """The active fault rules of one sim."""

    __slots__ = ("rules",)

    def __init__(self) -> None:
        self.rules: list[Fault] = []

    def replace(self, rules: list[Fault]) -> None:
        self.rules = rules

    def clear(self) -> None:
        self.rules = []

    def to_json(self) -> dict[str, Any]:
        return {"active": bool(self.rules), "rules": [r.to_json() for r in self.rules]}

    def pick(self, path: str, header: str | None, key: str | None = None,
             model: str | None = None) -> Fault | None:
        """The fault to apply to this request, or None.

        A ``x-sim-fault`` header overrides the installed rules for this request only (its
        ``count`` is ignored, ``rate``/``paths`` are honoured). Installed rules are tried in
        order; a rule's ``count`` is consumed only when it is actually applied. `key` is the API
        key the request was sent with (a rule with ``keys`` applies only to those), `model` the
        body's ``model`` (a rule with ``models`` applies only to those).
        """
        if header is not None:
            try:
                spec = orjson.loads(header)
            except orjson.JSONDecodeError as exc:
                raise FaultError(f"{FAULT_HEADER}: invalid JSON: {exc}") from None
            f = parse_fault(spec)
            if not f.matches(path, key, model) or (f.rate < 1.0 and f.rng.random() >= f.rate):
                return None
            return f
        if not self.rules:
            return None
        for f in self.rules:
            if not f.matches(path, key, model):
                continue
            if f.rate < 1.0 and f.rng.random() >= f.rate:
                continue
            if f.remaining is not None:
                f.remaining -= 1
                if f.remaining <= 0:
                    self.rules = [r for r in self.rules if r is not f]
            return f
        return None
