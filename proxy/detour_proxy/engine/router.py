"""Route matching, compiled once per config.

Model patterns become one regex per route; when no route looks at headers or metadata the
answer depends on the model alone and is cached. The cache is bounded in count and in key
length: model names come from unauthenticated clients, and a name longer than `_CACHE_KEY_MAX`
(no real model id is) is matched every time rather than kept (issue 13: 4,096 entries of up to
`maxBodyBytes` each grew RSS past the chart's memory limit). Header and metadata conditions are checked only for routes
that declare them, and metadata is parsed only if some route needs it.
"""

from __future__ import annotations

import fnmatch
import re
from typing import TYPE_CHECKING, Any, Mapping

import orjson

if TYPE_CHECKING:
    from .gateway import RouteRuntime

_CACHE_LIMIT = 4096
_CACHE_KEY_MAX = 256   # characters: 4,096 x 256 bounds the cache near 1 MiB


class _CompiledRoute:
    __slots__ = ("runtime", "model_re", "headers", "metadata")

    def __init__(self, runtime: RouteRuntime) -> None:
        m = runtime.route.match
        self.runtime = runtime
        self.model_re = re.compile("|".join(f"(?:{fnmatch.translate(p)})" for p in m.models)) if m.models else None
        # Header names are lower-cased by ASGI servers; values are compared byte for byte (UTF-8:
        # latin-1 would fail to build a gateway for a non-latin-1 value in the config).
        self.headers = tuple((k.lower().encode(), v.encode()) for k, v in m.headers.items())
        self.metadata = tuple(m.metadata.items())

    def model_ok(self, model: str) -> bool:
        return self.model_re is None or self.model_re.match(model) is not None


class Router:
    def __init__(self, routes: list[RouteRuntime]) -> None:
        self._routes = [_CompiledRoute(r) for r in routes]
        self.uses_headers = any(r.headers for r in self._routes)
        self.uses_metadata = any(r.metadata for r in self._routes)
        self._model_only = not (self.uses_headers or self.uses_metadata)
        self._cache: dict[str, RouteRuntime | None] = {}
        self._candidates: dict[str, tuple[_CompiledRoute, ...]] = {}

    def match(self, model: str, headers: Mapping[bytes, bytes] | None = None,
              body: dict[str, Any] | None = None) -> RouteRuntime | None:
        if self._model_only:
            try:
                return self._cache[model]
            except KeyError:
                pass
            found = next((r.runtime for r in self._routes if r.model_ok(model)), None)
            if len(self._cache) < _CACHE_LIMIT and len(model) <= _CACHE_KEY_MAX:
                self._cache[model] = found
            return found
        # The model part of every match is cached too: per request only the header and metadata
        # conditions of the routes whose patterns take this model are checked, and the metadata
        # is parsed only when one of them has metadata conditions.
        cands = self._candidates.get(model)
        if cands is None:
            cands = tuple(r for r in self._routes if r.model_ok(model))
            if len(self._candidates) < _CACHE_LIMIT and len(model) <= _CACHE_KEY_MAX:
                self._candidates[model] = cands
        metadata: dict[str, Any] | None = None
        for r in cands:
            if r.headers and not _headers_hold(r.headers, headers):
                continue
            if r.metadata:
                if metadata is None:
                    metadata = request_metadata(headers, body)
                if not _metadata_holds(r.metadata, metadata):
                    continue
            return r.runtime
        return None

    def conditions_for(self, model: str) -> list[str]:
        """Names of the routes that serve `model` but whose header/metadata conditions this
        request did not meet (for the 404's message; off the hot path)."""
        return [r.runtime.route.name for r in self._routes if r.model_ok(model) and (r.headers or r.metadata)]


def _headers_hold(conditions: tuple[tuple[bytes, bytes], ...], headers: Mapping[bytes, bytes] | None) -> bool:
    if headers is None:
        return False
    for name, value in conditions:
        if headers.get(name) != value:
            return False
    return True


def _metadata_holds(conditions: tuple[tuple[str, str], ...], metadata: dict[str, Any]) -> bool:
    for key, value in conditions:
        if _meta_str(metadata.get(key)) != value:
            return False
    return True


def _meta_str(value: Any) -> str | None:
    """A metadata value as the config writes it: strings as is, JSON scalars in JSON spelling
    (`true`, `1`, `1.5`); null, objects and arrays never match."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return str(value)
    return None


def request_metadata(headers: Mapping[bytes, bytes] | None, body: dict[str, Any] | None) -> dict[str, Any]:
    """Metadata from the `x-detour-metadata` JSON header, overlaid on the OpenAI `metadata` field
    (the header wins on a key both set). A header that is not a JSON object is ignored."""
    out: dict[str, Any] = {}
    if body is not None and isinstance(body.get("metadata"), dict):
        out.update(body["metadata"])
    raw = headers.get(b"x-detour-metadata") if headers is not None else None
    if raw:
        try:
            parsed = orjson.loads(raw)
        except orjson.JSONDecodeError:
            parsed = None
        if isinstance(parsed, dict):
            out.update(parsed)
    return out
