"""Request/stream counters and the long-poll used by ``GET /_sim/wait``.

Tests must not sleep-and-hope: they await "the sim saw the client go away" or "the sim got
3 requests". Waiters are futures registered per (key, threshold) and resolved from the
counter updates themselves, so there is no polling loop and no cost when nobody waits.
``lastRequest`` is stored raw (headers object, query string, parsed body) and only rendered — with
credentials redacted — when someone asks, to keep the hot path cheap.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Any, Mapping
from urllib.parse import parse_qsl

REDACTED_HEADERS = frozenset({"authorization", "x-api-key", "x-goog-api-key", "api-key", "proxy-authorization"})

COUNTERS = (
    "total",
    "inFlight",
    "streamsStarted",
    "streamsCompleted",
    "streamsClientClosed",
    "streamsCut",
    "streamsReset",
    "streamsStalled",
    "streamsInbandError",
    "clientClosed",
    "faultsInjected",
    "tokensIssued",
    "tokensRefused",
    "promptCacheHits",
    "promptCacheMisses",
)


class Stats:
    """Counters of one sim. All mutation happens on the event loop thread."""

    def __init__(self) -> None:
        self._waiters: list[tuple[str, int | None, int | None, asyncio.Future]] = []
        self.in_flight = 0
        self.reset()

    def reset(self) -> None:
        # inFlight is a gauge of what is really happening, so it survives a reset.
        self.requests: dict[str, int] = {}
        self.c = {k: 0 for k in COUNTERS if k != "inFlight"}
        self.request_ids: deque[str] = deque(maxlen=100)
        self._last: tuple[str, str, Mapping[str, str], Any, str] | None = None

    # -- updates --------------------------------------------------------------------
    def request_started(self, method: str, path: str, headers: Mapping[str, str], query: str = "") -> None:
        self.requests[path] = self.requests.get(path, 0) + 1
        self.c["total"] += 1
        self.in_flight += 1
        self._last = (method, path, headers, None, query)
        rid = headers.get("x-request-id")
        if rid is not None:
            self.request_ids.append(rid)
        if self._waiters:
            self._notify()

    def record_body(self, body: Any) -> None:
        if self._last is not None:
            self._last = self._last[:3] + (body,) + self._last[4:]

    def request_finished(self) -> None:
        self.in_flight -= 1
        if self._waiters:
            self._notify()

    def bump(self, key: str, n: int = 1) -> None:
        self.c[key] += n
        if self._waiters:
            self._notify()

    # -- reads ----------------------------------------------------------------------
    def value(self, key: str) -> int:
        if key == "inFlight":
            return self.in_flight
        if key.startswith("requests."):
            return self.requests.get(key[len("requests.") :], 0)
        return self.c[key]

    @staticmethod
    def valid_key(key: str) -> bool:
        return key in COUNTERS or key.startswith("requests.")

    def last_request(self) -> dict[str, Any] | None:
        if self._last is None:
            return None
        method, path, headers, body, query = self._last
        hdrs: dict[str, str] = {}
        for k, v in headers.items():
            lk = k.lower()
            hdrs[lk] = "<redacted>" if lk in REDACTED_HEADERS else v
        auth = any(h in hdrs for h in REDACTED_HEADERS)
        return {"method": method, "path": path, "query": dict(parse_qsl(query, keep_blank_values=True)),
                "headers": hdrs, "body": body, "authSent": auth}

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"requests": dict(self.requests)}
        out.update(self.c)
        out["inFlight"] = self.in_flight
        out["lastRequest"] = self.last_request()
        out["requestIds"] = list(self.request_ids)
        return out

    # -- waiting --------------------------------------------------------------------
    def _reached(self, key: str, at_least: int | None, at_most: int | None) -> bool:
        v = self.value(key)
        return (at_least is None or v >= at_least) and (at_most is None or v <= at_most)

    async def wait_for(self, key: str, at_least: int | None, timeout: float, at_most: int | None = None) -> bool:
        """True once ``key`` >= ``at_least`` (and <= ``at_most``); False after ``timeout`` s."""
        if self._reached(key, at_least, at_most):
            return True
        fut = asyncio.get_running_loop().create_future()
        entry = (key, at_least, at_most, fut)
        self._waiters.append(entry)
        try:
            await asyncio.wait_for(asyncio.shield(fut), timeout)
            return True
        except asyncio.TimeoutError:
            return False
        finally:
            if entry in self._waiters:
                self._waiters.remove(entry)

    def _notify(self) -> None:
        keep = []
        for entry in self._waiters:
            key, at_least, at_most, fut = entry
            if fut.done():
                continue
            if self._reached(key, at_least, at_most):
                fut.set_result(None)
            else:
                keep.append(entry)
        self._waiters = keep
