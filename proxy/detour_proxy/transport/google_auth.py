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
import time
from collections.abc import Callable
from typing import Any

from ._refreshed import BackgroundRefreshed

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


class GoogleToken(BackgroundRefreshed[str]):
    """A lazily refreshed Google OAuth access token (the `Credential` interface: `get`, `file`,
    `describe`, `refresh`)."""

    max_margin = MAX_MARGIN
    expiry_guard = EXPIRY_GUARD
    max_backoff = MAX_BACKOFF
    background_retries = BACKGROUND_RETRIES
    thread_prefix = "google-token"
    what = "a Google access token"

    def __init__(self, credentials_file: str | None, *, scopes: tuple[str, ...] = (CLOUD_PLATFORM,),
                 clock: Callable[[], float] = time.time, name: str = "",
                 schedule: Callable[[float, Callable[[], None]], None] | None = None,
                 on_result: Callable[[bool], None] | None = None) -> None:
        super().__init__(clock=clock, name=name, schedule=schedule, on_result=on_result, log=log)
        self._file = credentials_file
        self._scopes = scopes
        self._creds: Any = None
        self._stamp: tuple[int, int, int] | None = None

    @property
    def describe(self) -> str:
        return f"google credentials file {self._file}" if self._file else "google application default credentials"

    @property
    def file(self) -> str | None:
        return self._file

    def refresh(self, complete: bool = False) -> None:
        """The credentials file changed: load it again and fetch a token with it."""
        with self._lock:
            self._creds = None
        self._kick(self._clock(), force=True)

    def _first_backoff(self) -> float:
        return FIRST_BACKOFF   # read at call time: tests shorten it

    def _failed(self, exc: BaseException) -> None:
        if self._file is not None and isinstance(exc, (OSError, ValueError)):
            self._creds = None   # re-read the file next time

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

    def _fetch(self, started: float) -> tuple[str, float | None]:
        from google.auth.transport.requests import Request

        creds = self._load()
        creds.refresh(Request())
        token = creds.token
        if not isinstance(token, str) or not token:
            raise ValueError("the credentials gave no access token")
        self._creds = creds
        expiry = creds.expiry
        if isinstance(expiry, dt.datetime):   # google-auth: naive UTC
            return token, expiry.replace(tzinfo=dt.timezone.utc).timestamp()
        return token, started + 3600.0
