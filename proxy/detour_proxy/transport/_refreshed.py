"""A credential fetched and refreshed in a daemon thread, never on a request's path.

Cloud credential libraries (botocore's chain, google-auth) refresh with blocking I/O. A value
of this kind is returned at once by `get()` while it is valid; past its refresh point `get()`
starts one fetch in a thread and requests keep using the current value meanwhile. Only when
no valid value exists does `get()` return None, and the adapter makes its target ineligible
for that request (it falls back) instead of waiting.

A failed fetch keeps the old value while it is valid, is retried with backoff (doubling to
`max_backoff`) in the background `background_retries` times and afterwards when a request
asks, and is logged once per distinct problem by exception class and a message with the
secrets removed. Subclasses say how to fetch (`_fetch`) and which secrets to redact.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Generic, TypeVar

from ..adapters.errors import redact

__all__ = ["BackgroundRefreshed"]

V = TypeVar("V")


def _timer(delay: float, fn: Callable[[], None]) -> None:
    timer = threading.Timer(max(0.0, delay), fn)
    timer.daemon = True
    timer.start()


class BackgroundRefreshed(Generic[V]):
    """The refresh loop shared by `AwsCredentials` and `GoogleToken`."""

    #: Expiring values: refresh at half their lifetime, but at least this long before expiry.
    max_margin = 300.0
    #: Values without an expiry are fetched again this often (a rotated key is picked up).
    static_recheck = 300.0
    #: A value this close to expiry is not used any more (clock skew, time in flight).
    expiry_guard = 5.0
    max_backoff = 60.0
    background_retries = 6
    #: Thread name prefix and the log's wording of a failure ("cannot get ... from <describe>").
    thread_prefix = "credentials"
    what = "credentials"

    def __init__(self, *, clock: Callable[[], float] = time.time, name: str = "",
                 schedule: Callable[[float, Callable[[], None]], None] | None = None,
                 on_result: Callable[[bool], None] | None = None,
                 log: logging.Logger | None = None) -> None:
        self._clock = clock
        self._name = name
        self._schedule = schedule or _timer
        self.on_result = on_result   # called after each fetch with its success (metrics)
        self._log = log or logging.getLogger("detour.credentials")
        self._lock = threading.Lock()
        self._value: V | None = None
        self._expiry = 0.0        # not used from here on
        self._refresh_at = 0.0
        self._inflight = False
        self._failures = 0
        self._next_try = 0.0
        self._problem: str | None = None
        self._fetched = threading.Event()
        self.refreshes = 0   # successful fetches (tests and debugging)

    # -- what subclasses provide --------------------------------------------------------------
    @property
    def describe(self) -> str:
        raise NotImplementedError

    def _fetch(self, started: float) -> tuple[V, float | None]:
        """One blocking fetch (in the thread): the value and its expiry (epoch s) or None."""
        raise NotImplementedError

    def _secrets(self) -> tuple[str | None, ...]:
        """What must never appear in a logged problem (the current value's secrets)."""
        return (self._value if isinstance(self._value, str) else None,)

    def _failed(self, exc: BaseException) -> None:
        """A fetch failed (called under the lock): e.g. forget cached file contents."""

    def _first_backoff(self) -> float:
        return 1.0

    # -- the public surface -------------------------------------------------------------------
    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.describe})"

    __str__ = __repr__

    @property
    def problem(self) -> str | None:
        """The last fetch failure (class and redacted message), None after a success."""
        return self._problem

    def start(self) -> None:
        """Fetch the first value now (in the background)."""
        self._kick(self._clock(), force=True)

    def wait(self, timeout: float) -> bool:
        """Block until a value was fetched once (tests, tools; never on the event loop)."""
        return self._fetched.wait(timeout)

    def get(self) -> V | None:
        now = self._clock()
        if now >= self._refresh_at:
            self._kick(now)
        value = self._value
        return value if value is not None and now < self._expiry else None

    def refresh(self, complete: bool = False) -> None:
        self._kick(self._clock(), force=True)

    # -- the refresh thread -------------------------------------------------------------------
    def _report(self, ok: bool) -> None:
        if self.on_result is not None:
            try:
                self.on_result(ok)
            except Exception:  # noqa: BLE001  (observability must never break the refresh)
                self._log.exception("provider %s: reporting a %s fetch failed", self._name, self.what)

    def _kick(self, now: float, force: bool = False) -> None:
        with self._lock:
            if self._inflight or (not force and now < self._next_try):
                return
            self._inflight = True
        threading.Thread(target=self._run, name=f"{self.thread_prefix}-{self._name}", daemon=True).start()

    def _run(self) -> None:
        started = self._clock()
        try:
            value, expires = self._fetch(started)
            with self._lock:
                self._value = value
                if expires is None:
                    self._expiry = float("inf")
                    self._refresh_at = started + self.static_recheck
                else:
                    lifetime = max(0.0, expires - started)
                    self._expiry = expires - min(self.expiry_guard, lifetime / 4)
                    self._refresh_at = expires - min(self.max_margin, lifetime / 2)
                self._failures, self._next_try = 0, 0.0
            if self._problem is not None:
                self._log.info("provider %s: the %s works again", self._name, self.describe)
            self._problem = None
            self.refreshes += 1
            self._fetched.set()
            self._report(True)
        except Exception as exc:  # noqa: BLE001  (any failure: keep the old value, retry later)
            problem = f"{type(exc).__name__}: {redact(str(exc), self._secrets())[:300]}"
            with self._lock:
                self._failures += 1
                self._next_try = self._clock() + min(self.max_backoff,
                                                     self._first_backoff() * 2.0 ** (self._failures - 1))
                self._failed(exc)
            if self._failures <= self.background_retries:
                # Keep trying on our own for a while, so a recovered endpoint has a value ready
                # before traffic asks; after that, requests (`get`) trigger the retries.
                self._schedule(self._next_try - self._clock(), lambda: self._kick(self._clock(), force=True))
            if problem != self._problem:
                self._log.warning("provider %s: cannot get %s from the %s: %s",
                                  self._name, self.what, self.describe, problem)
            self._problem = problem
            self._report(False)
        finally:
            with self._lock:
                self._inflight = False
