"""Provider and client keys, read from env, files or inline values, and re-read when files change.

Kubernetes rotates a mounted Secret by swapping a symlink, so a file-backed key is checked
(one `stat`, through the symlinks) at most once per `recheck` seconds and re-read when its
identity (inode, mtime, size) changed. The config watcher (`reload.ConfigReloader`) sees a key
file change within its poll interval and calls `refresh()` on the credentials reading it
(`file` says which), so a rotation does not wait for the next per-use re-check; the per-use
re-check remains for `--no-watch`.

A file that cannot be read (gone, a directory, not UTF-8) or that is empty keeps the last
good key: a half-written or briefly missing file must not turn every request into a 401. A
changed key is taken only when two reads agree (`stable.Settle`: same inode, mtime, size and
value), so a key file caught mid-write in place never becomes the key, which for a client key
would let its prefix in (issue 13); a new inode (a file renamed into place, a `..data` swap) is
complete at once.
A key's value is never put in a repr, a log line, a metric or an error message.
"""

from __future__ import annotations

import hmac
import logging
import os
import time
from collections.abc import Callable, Iterable

from ._schema import SecretSource
from .stable import Settle

log = logging.getLogger("detour.credentials")

#: Seconds between the per-use `stat`s of a key file (when no watcher calls `refresh()` first).
RECHECK_SECONDS = 1.0


class Credential:
    """A lazily refreshed secret value."""

    __slots__ = ("_source", "_value", "_stamp", "_checked", "_recheck", "_clock", "_problem", "_settle",
                 "on_change")

    def __init__(self, source: SecretSource, recheck: float | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._source = source
        self._value: str | None = None
        self._stamp: tuple[int, int, int] | None = None
        self._checked = -1e18
        self._recheck = RECHECK_SECONDS if recheck is None else recheck
        self._clock = clock
        self._problem: str | None = None  # what is wrong with the file, logged once until fixed
        self._settle: Settle[str] = Settle()
        #: called (no arguments) when a key file's new key replaces the previous one
        self.on_change: Callable[[], None] | None = None
        if source.value is not None:
            self._value = source.value
        elif source.env is not None:
            self._value = os.environ.get(source.env) or None
            if self._value is None:
                log.warning("environment variable %s for a key is not set", source.env)

    def __repr__(self) -> str:
        return f"Credential({self._source!r})"

    __str__ = __repr__

    @property
    def describe(self) -> str:
        """Where the key comes from (for messages), never its value."""
        return repr(self._source)

    @property
    def file(self) -> str | None:
        """The key file this credential reads (None for env and inline keys)."""
        return self._source.file

    def get(self) -> str | None:
        path = self._source.file
        if path is None:
            return self._value
        now = self._clock()
        if now - self._checked < self._recheck:
            return self._value
        self._checked = now
        self._read(path)
        return self._value

    def refresh(self, complete: bool = False) -> None:
        """Re-check the key file now (the watcher saw it change); no-op for env/inline keys.
        `complete`: the change was an atomic `..data` swap, so one read is enough."""
        if self._source.file is not None:
            self._checked = self._clock()
            self._read(self._source.file, complete)

    @property
    def settling(self) -> bool:
        """A changed key waits for the read that confirms it."""
        return self._settle.pending

    def _read(self, path: str, complete: bool = False) -> None:
        try:
            st = os.stat(path)
        except OSError as exc:
            return self._keep(path, exc.strerror or "cannot stat")
        stamp = (st.st_ino, st.st_mtime_ns, st.st_size)
        if stamp == self._stamp:
            return
        try:
            with open(path, encoding="utf-8") as fh:
                value = fh.read().strip()
        except (OSError, UnicodeDecodeError) as exc:
            why = (exc.strerror or type(exc).__name__) if isinstance(exc, OSError) else "not UTF-8"
            return self._keep(path, why)
        if not value:
            return self._keep(path, "empty")  # stamp not recorded: re-read once it is written
        # A new inode is a file renamed into place (editors, a `..data` swap): complete when seen.
        complete = complete or (self._stamp is not None and stamp[0] != self._stamp[0])
        if self._value is not None and self._settle.observe(stamp, value, complete=complete) is None:
            return  # confirmed by the next re-check (watcher poll or `recheck` later), if unchanged
        changed = self._stamp is not None and value != self._value
        if self._stamp is not None:
            log.info("key file %s changed; using the new key", path)
        self._stamp, self._value, self._problem = stamp, value, None
        if changed and self.on_change is not None:
            self.on_change()

    def _keep(self, path: str, problem: str) -> None:
        """The file is unusable: keep the last good key; say so once per problem."""
        if problem != self._problem:
            self._problem = problem
            log.warning("key file %s unusable (%s); %s", path, problem,
                        "keeping the last good key" if self._value is not None else "no key yet")


class ClientKeys:
    """The keys Detour's own clients must present; compared in constant time."""

    def __init__(self, sources: Iterable[SecretSource], recheck: float | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._creds = tuple(Credential(s, recheck, clock) for s in sources)

    @property
    def credentials(self) -> tuple[Credential, ...]:
        """The accepted keys' credentials (the watcher refreshes the file-backed ones)."""
        return self._creds

    def __repr__(self) -> str:
        return f"ClientKeys({', '.join(c.describe for c in self._creds)})"

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
