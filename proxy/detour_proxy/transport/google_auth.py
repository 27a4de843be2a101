"""Google access tokens for `vertex` providers, fetched and refreshed off the event loop.

google-auth refreshes with blocking HTTP (its `requests` transport), so a token is never
fetched on a request's path: `GoogleToken.get()` returns the cached token at once and, when
the token is past the refresh point (half its lifetime, at most 5 minutes before expiry), starts
one refresh in a daemon thread. Requests keep using the current token meanwhile; only when no
unexpired token exists does `get()` return None, and the vertex adapter then makes the target
ineligible for that request (it falls back, the reason is in the error summary) instead of
waiting. A failed refresh is retried with backoff (1 s doubling to 60 s) and logged once per
distinct problem, by exception class and a redacted message: the token itself is never in a
log, an error, a metric or status (the engine also redacts it, as `api_key()`, from upstream
text).

Where the credentials come from:
- `credentials_file` (`Provider.credentialsFile`): google-auth's `load_credentials_from_file`,
  so a service-account key (its `token_uri` is where the signed JWT assertion goes) and an
  `external_account` config (workload identity federation) both work. The file is re-read when
  it changes (the reload watcher calls `refresh()`, as for API key files).
- none: Application Default Credentials (`google.auth.default()`): GKE workload identity and
  Compute Engine through the metadata server (`GCE_METADATA_HOST` moves it),
  `GOOGLE_APPLICATION_CREDENTIALS`, gcloud's user credentials.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import threading
import time
from collections.abc import Callable
from typing import Any

from ..adapters.errors import redact

log = logging.getLogger("detour.google_auth")

__all__ = ["GoogleToken", "CLOUD_PLATFORM"]

CLOUD_PLATFORM = "https://www.googleapis.com/auth/cloud-platform"
#: Refresh at half the token's lifetime, but at least this long before expiry (Google's tokens last 1 h).
MAX_MARGIN = 300.0
#: A token this close to expiry is not sent any more (clock skew, time in flight).
EXPIRY_GUARD = 5.0
FIRST_BACKOFF = 1.0
MAX_BACKOFF = 60.0
#: Failed fetches retried in the background (1 + 2 + 4 + 8 + 16 + 32 s) before only use retries.
BACKGROUND_RETRIES = 6


_AWS_SUBJECT_TOKEN_TYPE = "urn:ietf:params:aws:token-type:aws4_request"


def _from_file(path: str, scopes: list[str]) -> Any:
    """Credentials from a JSON file. `external_account` configs are built directly: google-auth's
    `load_credentials_from_file` would also look up the project ID (a Cloud Resource Manager
    call, with its own failure modes), which Detour does not need: the provider names it."""
    with open(path, encoding="utf-8") as fh:
        info = json.load(fh)
    if isinstance(info, dict) and info.get("type") == "external_account":
        if info.get("subject_token_type") == _AWS_SUBJECT_TOKEN_TYPE:
            from google.auth import aws
            return aws.Credentials.from_info(info, scopes=scopes)  # type: ignore[no-untyped-call]
        if (info.get("credential_source") or {}).get("executable") is not None:
            from google.auth import pluggable
            return pluggable.Credentials.from_info(info, scopes=scopes)  # type: ignore[no-untyped-call]
        from google.auth import identity_pool
        return identity_pool.Credentials.from_info(info, scopes=scopes)  # type: ignore[no-untyped-call]
    import google.auth

    creds, _ = google.auth.load_credentials_from_file(path, scopes=scopes)  # type: ignore[no-untyped-call]
    return creds


def _timer(delay: float, fn: Callable[[], None]) -> None:
    timer = threading.Timer(max(0.0, delay), fn)
    timer.daemon = True
    timer.start()


class GoogleToken:
    """A lazily refreshed Google OAuth access token (the `Credential` interface: `get`, `file`,
    `describe`, `refresh`)."""

    def __init__(self, credentials_file: str | None, *, scopes: tuple[str, ...] = (CLOUD_PLATFORM,),
                 clock: Callable[[], float] = time.time, name: str = "",
                 schedule: Callable[[float, Callable[[], None]], None] | None = None,
                 on_result: Callable[[bool], None] | None = None) -> None:
        self._file = credentials_file
        self._scopes = scopes
        self._clock = clock
        self._name = name
        self._schedule = schedule or _timer
        self.on_result = on_result   # called after each fetch with its success (metrics)
        self._lock = threading.Lock()
        self._creds: Any = None
        self._stamp: tuple[int, int, int] | None = None
        self._token: str | None = None
        self._expiry = 0.0        # not sent from here on (expiry minus a guard for skew and flight time)
        self._refresh_at = 0.0
        self._inflight = False
        self._failures = 0
        self._next_try = 0.0
        self._problem: str | None = None
        self._fetched = threading.Event()
        self.refreshes = 0   # successful fetches (tests and debugging)

    def __repr__(self) -> str:
        return f"GoogleToken({self.describe})"

    __str__ = __repr__

    @property
    def describe(self) -> str:
        return f"google credentials file {self._file}" if self._file else "google application default credentials"

    @property
    def file(self) -> str | None:
        return self._file

    @property
    def problem(self) -> str | None:
        """The last refresh failure (class and redacted message), None after a success."""
        return self._problem

    def start(self) -> None:
        """Fetch the first token now (in the background)."""
        self._kick(self._clock(), force=True)

    def wait(self, timeout: float) -> bool:
        """Block until a token was fetched once (tests, tools; never on the event loop)."""
        return self._fetched.wait(timeout)

    def get(self) -> str | None:
        now = self._clock()
        if now >= self._refresh_at:
            self._kick(now)
        token = self._token
        return token if token is not None and now < self._expiry else None

    def refresh(self, complete: bool = False) -> None:
        """The credentials file changed: load it again and fetch a token with it."""
        with self._lock:
            self._creds = None
        self._kick(self._clock(), force=True)

    def _report(self, ok: bool) -> None:
        if self.on_result is not None:
            try:
                self.on_result(ok)
            except Exception:  # noqa: BLE001  (observability must never break the refresh)
                log.exception("provider %s: reporting a token fetch failed", self._name)

    # -- the refresh thread -------------------------------------------------------------------
    def _kick(self, now: float, force: bool = False) -> None:
        with self._lock:
            if self._inflight or (not force and now < self._next_try):
                return
            self._inflight = True
        threading.Thread(target=self._run, name=f"google-token-{self._name}", daemon=True).start()

    def _load(self) -> Any:
        import google.auth

        if self._file is None:
            creds, _ = google.auth.default(scopes=list(self._scopes))
            return creds
        st = os.stat(self._file)
        stamp = (st.st_ino, st.st_mtime_ns, st.st_size)
        if self._creds is not None and stamp == self._stamp:
            return self._creds
        creds = _from_file(self._file, list(self._scopes))
        self._stamp = stamp
        return creds

    def _run(self) -> None:
        from google.auth.transport.requests import Request

        started = self._clock()
        try:
            creds = self._load()
            creds.refresh(Request())
            token = creds.token
            if not isinstance(token, str) or not token:
                raise ValueError("the credentials gave no access token")
            expiry = creds.expiry
            if isinstance(expiry, dt.datetime):   # google-auth: naive UTC
                expires = expiry.replace(tzinfo=dt.timezone.utc).timestamp()
            else:
                expires = started + 3600.0
            lifetime = max(0.0, expires - started)
            with self._lock:
                self._creds = creds
                self._token, self._expiry = token, expires - min(EXPIRY_GUARD, lifetime / 4)
                self._refresh_at = expires - min(MAX_MARGIN, lifetime / 2)
                self._failures, self._next_try = 0, 0.0
            if self._problem is not None:
                log.info("provider %s: %s work again", self._name, self.describe)
            self._problem = None
            self.refreshes += 1
            self._fetched.set()
            self._report(True)
        except Exception as exc:  # noqa: BLE001  (any failure: keep the old token, retry later)
            problem = f"{type(exc).__name__}: {redact(str(exc), (self._token,))[:300]}"
            with self._lock:
                self._failures += 1
                self._next_try = self._clock() + min(MAX_BACKOFF, FIRST_BACKOFF * 2.0 ** (self._failures - 1))
                if self._file is not None and isinstance(exc, (OSError, ValueError)):
                    self._creds = None   # re-read the file next time
            if self._failures <= BACKGROUND_RETRIES:
                # Keep trying on our own for a while, so a recovered endpoint has a token ready
                # before traffic asks; after that, requests (`get`) trigger the retries.
                self._schedule(self._next_try - self._clock(), lambda: self._kick(self._clock(), force=True))
            if problem != self._problem:
                log.warning("provider %s: cannot get a Google access token from %s: %s",
                            self._name, self.describe, problem)
            self._problem = problem
            self._report(False)
        finally:
            with self._lock:
                self._inflight = False
