"""Prompt-cache affinity: the same key goes to the same healthy target on every replica.

Providers cache prompt prefixes per serving instance (OpenAI's `prompt_cache_key`,
Anthropic's cache breakpoints, vLLM prefix caching): a conversation whose turns land on
different targets pays full prompt price each time it moves. Affinity ranks a route's
targets for a key with rendezvous (highest random weight) hashing: each target scores
`-weight / ln(u)`, `u` a uniform draw derived from sha256(key, target identity), and the
best score wins. No shared state is needed (every replica computes the same ranking), a
target that stops admitting (open breaker, sideline, limit) hands only *its own* keys to
their next-ranked target, and they come back when it recovers. Weights are respected: a
target of weight 2 gets twice the keys of one of weight 1.

Ranked are the admitting targets of the best tier: for `priority`, the lowest priority
among admitting candidates; for the other strategies, all admitting weighted candidates.
The rest of the base order (other tiers, targets that do not admit) follows unchanged, so
fallback after the affinity target fails is what the strategy would have done.

Pure: no I/O, no clock; the key is extracted from headers and body here too, so the engine
only hands over what the request carries.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

from detour_proxy import config

from .balancer import Rankable
from .target import TargetKey

__all__ = ["SESSION_HEADER", "affinity_key", "affinity_order", "rank"]

#: The session header every client may send (source `session-header`).
SESSION_HEADER = b"x-detour-session"
_MAX_KEY = 512   # longer keys are hashed: a key is an identity, not a payload


def _bounded(kind: str, value: str) -> str:
    if len(value) > _MAX_KEY:
        value = hashlib.sha256(value.encode()).hexdigest()
    return f"{kind}:{value}"


def affinity_key(settings: config.Affinity, headers: Sequence[tuple[bytes, bytes]] | Mapping[bytes, bytes],
                 body: Mapping[str, Any]) -> str | None:
    """The request's affinity key from the first configured source it carries, or None.

    `headers` are ASGI headers (lower-case names). The key names its source, so a session
    id never collides with a prompt hash."""
    items = headers.items() if isinstance(headers, Mapping) else headers
    wanted: dict[bytes, str] = {}
    S = config.AffinitySource
    if S.session_header in settings.sources:
        wanted[SESSION_HEADER] = "session"
    if S.header in settings.sources and settings.header is not None:
        wanted[settings.header.lower().encode()] = "header"
    found: dict[str, str] = {}
    if wanted:
        for name, value in items:
            kind = wanted.get(name)
            if kind is not None and value and kind not in found:
                found[kind] = value.decode("latin-1")
    for src in settings.sources:
        if src is S.session_header and "session" in found:
            return _bounded("session", found["session"])
        if src is S.header and "header" in found:
            return _bounded("header", found["header"])
        if src is S.prompt_cache_key or src is S.user:
            v = body.get("prompt_cache_key" if src is S.prompt_cache_key else "user")
            if isinstance(v, str) and v:
                return _bounded(src.value, v)
        if src is S.prefix:
            msgs = body.get("messages")
            if isinstance(msgs, list) and msgs:
                head = json.dumps(msgs[:settings.prefix_messages], sort_keys=True, separators=(",", ":"),
                                  ensure_ascii=False, default=str).encode()
                return "prefix:" + hashlib.sha256(head).hexdigest()[:32]
    return None


def _score(key: str, target: TargetKey, weight: int) -> float:
    h = hashlib.sha256(f"{key}\x00{target.provider}\x00{target.model}\x00{target.base_url}".encode()).digest()
    u = (int.from_bytes(h[:8], "big") + 0.5) / 2.0**64   # in (0, 1)
    return -weight / math.log(u)


def rank(key: str, indices: Sequence[int], keys: Sequence[TargetKey], weights: Sequence[int]) -> list[int]:
    """`indices` ranked for `key`, best first (weighted rendezvous hashing; ties by index)."""
    return sorted(indices, key=lambda i: (-_score(key, keys[i], max(weights[i], 0)), i))


def affinity_order(route: config.Route, keys: Sequence[TargetKey], states: Sequence[Rankable],
                   now: float, key: str, base: Sequence[int]) -> list[int]:
    """`base` (the strategy's order of the candidates) with the best tier's admitting
    targets moved to the front, ranked for `key`."""
    targets = route.targets
    admitting = [i for i in base if states[i].admits(now) and targets[i].weight > 0]
    if not admitting:
        return list(base)
    if route.strategy is config.Strategy.priority:
        best = min(targets[i].priority for i in admitting)
        admitting = [i for i in admitting if targets[i].priority == best]
    head = rank(key, admitting, keys, [t.weight for t in targets])
    chosen = set(head)
    return head + [i for i in base if i not in chosen]
