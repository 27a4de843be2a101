"""Provider and client keys, read from env, files or inline values, and re-read when files change.

Kubernetes rotates a mounted Secret by swapping a symlink, so a file-backed key is checked
(one `stat`) at most once per `recheck` seconds and re-read when its identity or mtime
changed. A key's value is never put in a repr, a log line, a metric or an error message.
"""

from __future__ import annotations

import hmac
import logging
import os
import time

from .config import SecretSource

log = logging.getLogger("detour.credentials")


class Credential:
    """A lazily refreshed secret value."""

    __slots__ = ("_source", "_value", "_stamp", "_checked", "_recheck")

    def __init__(self, source: SecretSource, recheck: float = 1.0) -> None:
        self._source = source
        self._value: str | None = None
        self._stamp: tuple[int, int, int] | None = None
        self._checked = -1e18
        self._recheck = recheck
        if source.value is not None:
            self._value = source.value
        elif source.env is not None:
            self._value = os.environ.get(source.env) or None
            if self._value is None:
                log.warning("environment variable %s for a key is not set", source.env)

    def __repr__(self) -> str:
        return f"Credential({self._source!r})"

    @property
    def describe(self) -> str:
        """Where the key comes from (for messages), never its value."""
        return repr(self._source)

    def get(self) -> str | None:
        path = self._source.file
        if path is None:
            return self._value
        now = time.monotonic()
        if now - self._checked < self._recheck:
            return self._value
        self._checked = now
        self._refresh(path)
        return self._value

    def _refresh(self, path: str) -> None:
        try:
            st = os.stat(path)
        except OSError:
            if self._value is not None:
                log.warning("key file %s disappeared; keeping the last value", path)
            return
        stamp = (st.st_ino, st.st_mtime_ns, st.st_size)
        if stamp == self._stamp:
            return
        try:
            with open(path, encoding="utf-8") as fh:
                value = fh.read().strip()
        except OSError as exc:
            log.warning("cannot read key file %s: %s", path, exc.strerror)
            return
        if self._stamp is not None:
            log.info("key file %s changed; using the new key", path)
        self._stamp = stamp
        self._value = value or None

    def force_refresh(self) -> None:
        self._checked = -1e18


class ClientKeys:
    """The keys Detour's own clients must present; compared in constant time."""

    def __init__(self, sources: list[SecretSource]) -> None:
        self._creds = [Credential(s) for s in sources]

    def check(self, authorization: bytes | None) -> bool:
        if not authorization or not authorization[:7].lower() == b"bearer ":
            return False
        presented = authorization[7:].strip()
        ok = False
        for cred in self._creds:
            value = cred.get()
            if value and hmac.compare_digest(presented, value.encode()):
                ok = True
        return ok
