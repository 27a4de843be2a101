"""A simulated prompt cache, per sim instance: did this instance see this conversation's prefix?

Providers cache prompt prefixes per serving instance, so a conversation whose turns land on
different instances (or providers) pays the full prompt each time it moves. The sim models
that coarsely: the *prefix* of a request is its system prompt and first message (the part a
conversation's turns share); a request is a hit when this instance served the same prefix
before (an LRU of `capacity` prefixes). Counted in the stats as `promptCacheHits` and
`promptCacheMisses` (requests with nothing before their first message are not counted), so a
benchmark can compare hit rates with and without prompt-cache affinity.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from typing import Any

import orjson

from .stats import Stats


class PromptCache:
    __slots__ = ("capacity", "_seen")

    def __init__(self, capacity: int = 100_000) -> None:
        self.capacity = capacity
        self._seen: OrderedDict[bytes, None] = OrderedDict()

    def clear(self) -> None:
        self._seen.clear()

    def observe(self, messages: Any, stats: Stats, system: Any = None) -> None:
        """Count one request as a hit or a miss and remember its prefix."""
        if not isinstance(messages, list) or not messages:
            return
        head = messages[:2] if system is None else [system, messages[0]]
        if len(head) < 2:
            return
        key = hashlib.blake2b(orjson.dumps(head, option=orjson.OPT_SORT_KEYS), digest_size=16).digest()
        seen = self._seen
        if key in seen:
            seen.move_to_end(key)
            stats.bump("promptCacheHits")
            return
        stats.bump("promptCacheMisses")
        seen[key] = None
        if len(seen) > self.capacity:
            seen.popitem(last=False)
