"""Hot reload: follow the config file and the key files it names, swap the gateway atomically.

Kubernetes updates a mounted ConfigMap/Secret by writing a new timestamped directory and
swapping the `..data` symlink in one rename, so the file's path never changes but what it
resolves to does; editors and `kubectl cp`-style tools rename a temp file over it. Both are
seen by polling: every `interval` (0.5 s) each watched path is `stat`ed through its symlinks
(inode, device, mtime, size) together with the target of a `..data` link in its directory;
every few polls the content is hashed as well (file systems with coarse mtimes). watchfiles or
inotify would save a few stat calls per second but would add a dependency and miss symlink swaps
in parent directories unless set up with care; the polling cost is negligible.

A change is taken only once two reads agree (`config.stable.Settle`): a poll that sees the
file changed in place re-reads it at the next poll and loads it only if inode, mtime, size and
content are unchanged, so a half-written file that happens to parse is never installed (issue
13); a file renamed into place (new inode) or a `..data` symlink swap (Kubernetes) arrived
whole and is loaded at once. The bytes
hashed are the bytes parsed. A config written in place that lacks `clientAuth` while the serving
one has it is refused (a file cut before its `clientAuth` block parses fine and would serve
requests without a key): turning client auth off that way takes an explicit `clientAuth: null`;
a file renamed into place or a `..data` swap (the operator's ConfigMap) cannot be cut short and is
taken as written.

On a change of the config file: read and validate it in a worker thread
(`config.parse_config`), then `AppState.install` in the event loop, which builds the new
`Gateway` and swaps it in with one assignment. Requests that already hold the old gateway
finish on it; health, breakers and latency statistics live in the long-lived `HealthRegistry`
keyed by (provider, model, baseURL), so targets whose identity did not change keep them.
A config that parses to the same effective config (same hash) is not re-installed.

An invalid config is refused: the old gateway keeps serving,
`detour_config_reload_total{result="error"}` counts it, one log line says why (field paths and
messages only, never values), and `state.reload_error` shows it in `/readyz`, which stays 200.
The next valid write clears it.

Key files: this watcher `stat`s them like the config file and, on a change (and at the next
poll, which confirms a changed key: `Credential` takes a new key only when two reads agree), calls
`Credential.refresh()` on every credential whose `file` it is, so the new key is used from the
next request on, without a reload (a key is not part of the config hash). `Credential` also
re-stats its file at most once a second on use, which covers `--no-watch`.

`SIGHUP` forces a reload (even with `--no-watch`). With `--wait-for-config` the proxy starts
unready and becomes ready when the file appears and is valid.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import re
import signal
import threading
from pathlib import Path
from typing import Any

from ..state import AppState
from ..config import ConfigError, RoutingConfig, config_hash, parse_config
from ..config.stable import Settle

log = logging.getLogger("detour.reload")

#: Re-hash the watched files' content every this many polls even if `stat` shows no change.
HASH_EVERY = 4


def _signature(path: str) -> tuple[Any, ...] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    try:
        data_link = os.readlink(os.path.join(os.path.dirname(path) or ".", "..data"))
    except OSError:
        data_link = None
    return (st.st_ino, st.st_dev, st.st_mtime_ns, st.st_size, data_link)


def _renamed(old: tuple[Any, ...] | None, new: tuple[Any, ...]) -> bool:
    """The file arrived whole by a rename: a new inode or device, or a swapped `..data` link
    (an in-place rewrite keeps the inode and may be read half-written)."""
    return old is not None and (new[:2] != old[:2] or (new[4] is not None and new[4] != old[4]))


def _content_hash(path: str) -> str | None:
    try:
        return hashlib.sha256(Path(path).read_bytes()).hexdigest()
    except OSError:
        return None


def one_line(message: str, limit: int = 600) -> str:
    """A config error as one log line. YAML errors quote the offending text (which could be a
    key pasted by mistake): keep only their position."""
    if "not YAML/JSON" in message:
        pos = re.findall(r"line \d+, column \d+", message)
        message = "invalid routing config: not YAML/JSON" + (f" (at {pos[-1]})" if pos else "")
    text = "; ".join(part.strip() for part in message.splitlines() if part.strip())
    text = text.replace("invalid routing config:;", "invalid routing config:")
    return text if len(text) <= limit else text[: limit - 3] + "..."


def credential_files(config: RoutingConfig | None) -> list[str]:
    if config is None:
        return []
    files = [k.file for p in config.providers for k in p.key_sources if k.file]
    files += [p.credentials_file for p in config.providers if p.credentials_file]   # vertex (Google credentials)
    if config.client_auth is not None:
        files += [k.file for k in config.client_auth.keys if k.file]
    return sorted(set(files))


class ConfigReloader:
    """Polls the config and key files; `reload()` is also what SIGHUP calls."""

    def __init__(self, state: AppState, *, watch: bool = True, interval: float = 0.5) -> None:
        if state.config_path is None:
            raise ValueError("hot reload needs AppState.config_path")
        self.state = state
        self.path = str(state.config_path)
        self.watch = watch
        self.interval = interval
        self._task: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()
        self._sig: tuple[Any, ...] | None = None
        self._content: str | None = None
        self._cred_sigs: dict[str, tuple[Any, ...] | None] = {}
        self._cred_unsettled: set[str] = set()
        self._settle: Settle[bool] = Settle()
        self._sighup = False
        self._missing_logged = False
        self.reloads = 0

    # -- lifecycle ---------------------------------------------------------------------------
    async def start(self) -> None:
        self._sig = _signature(self.path)
        self._content = _content_hash(self.path) if self.state.gateway is not None else None
        self._track_credentials()
        if threading.current_thread() is threading.main_thread():
            try:
                asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, self._on_sighup)
                self._sighup = True
            except (NotImplementedError, RuntimeError, ValueError):  # pragma: no cover - platform
                pass
        if self.watch or self.state.gateway is None:
            self._task = asyncio.create_task(self._run(), name="detour-config-watch")

    async def stop(self) -> None:
        if self._sighup:
            try:
                asyncio.get_running_loop().remove_signal_handler(signal.SIGHUP)
            except Exception:  # pragma: no cover
                pass
            self._sighup = False
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):
                pass

    def _on_sighup(self) -> None:
        log.info("SIGHUP: reloading %s", self.path)
        asyncio.get_running_loop().create_task(self.reload(reason="SIGHUP", force=True))

    # -- polling -----------------------------------------------------------------------------
    async def _run(self) -> None:
        n = 0
        while True:
            await asyncio.sleep(self.interval)
            n += 1
            try:
                if self.watch or self.state.gateway is None:
                    await self._poll_config(rehash=n % HASH_EVERY == 0)
                if self.watch:
                    self._poll_credentials()
                if not self.watch and self.state.gateway is not None:
                    return  # --no-watch with --wait-for-config: the config arrived, stop polling
            except asyncio.CancelledError:
                raise
            except Exception:  # never let the watcher die
                log.exception("config watcher error")

    async def _poll_config(self, rehash: bool) -> None:
        sig = _signature(self.path)
        if sig is None:
            if self._sig is not None and not self._missing_logged:
                self._missing_logged = True
                log.warning("config file %s is gone; still serving config %s", self.path,
                            self.state.gateway.hash if self.state.gateway else None)
            self._sig = None
            return
        self._missing_logged = False
        if sig == self._sig and not rehash and not self._settle.pending:
            return
        content = _content_hash(self.path)
        if sig == self._sig and content == self._content:
            self._settle.reset()
            return
        if content == self._content and self.state.gateway is not None and self.state.reload_error is None:
            self._sig = sig  # touched, not changed
            self._settle.reset()
            return
        swapped = _renamed(self._sig, sig)
        if self._settle.observe((sig, content), True, complete=swapped) is None:
            return  # changed in place: load it once the next poll reads the same
        await self.reload(reason="file changed", expect=content, whole=swapped)

    def _track_credentials(self) -> None:
        gw = self.state.gateway
        files = credential_files(gw.config if gw else None)
        self._cred_sigs = {f: self._cred_sigs.get(f, _signature(f)) for f in files}

    def _poll_credentials(self) -> None:
        changed = []
        swapped: dict[str, bool] = {}
        for f, old in list(self._cred_sigs.items()):
            new = _signature(f)
            if new != old:
                self._cred_sigs[f] = new
                if new is not None:
                    changed.append(f)
                    swapped[f] = _renamed(old, new)
            elif f in self._cred_unsettled:
                changed.append(f)  # the confirming read of a change seen at the last poll
        self._cred_unsettled = set(changed)
        if changed:
            self.refresh_credentials(changed, swapped={f for f in changed if swapped.get(f)})

    def refresh_credentials(self, files: list[str], swapped: set[str] | None = None) -> int:
        """Re-read the credentials that read `files` now; returns how many were refreshed.
        `swapped`: files changed by a `..data` symlink swap (complete when seen)."""
        gw = self.state.gateway
        if gw is None:
            return 0
        wanted = set(files)
        creds = [p.credential for p in gw.providers.values() if p.credential is not None]
        creds += [c for p in gw.providers.values() for c in p.key_credentials[1:]]   # apiKeys
        if gw.client_keys is not None:
            creds += gw.client_keys.credentials
        refreshed = 0
        for cred in creds:
            if cred.file in wanted:
                cred.refresh(complete=cred.file in (swapped or ()))
                refreshed += 1
        log.info("key file(s) changed: %s", ", ".join(sorted(wanted)))
        return refreshed

    # -- reloading ---------------------------------------------------------------------------
    async def reload(self, reason: str = "requested", force: bool = False, expect: str | None = None,
                     whole: bool = False) -> bool:
        """Load, validate and install the config file. True if a new gateway was installed.
        `expect`: the content hash the watcher confirmed; if the file no longer has it, it is
        being written again and is judged at the next poll. `whole`: the file arrived by a rename
        or `..data` swap, so it cannot be cut short (a config without clientAuth is then taken
        as written: the operator renders none when client auth is turned off)."""
        async with self._lock:
            sig_before = _signature(self.path)
            metrics = self.state.metrics
            try:
                config, content = await asyncio.to_thread(self._load)
                if expect is not None and content != expect:
                    return False
                if not whole:
                    self._keeps_client_auth(config)
            except ConfigError as exc:
                if not force and _signature(self.path) != sig_before:
                    return False  # still being written: judge it at the next poll
                self._sig, self._content = sig_before, _content_hash(self.path)
                msg = one_line(str(exc))
                self.state.reload_error = msg
                metrics.config_reloads.labels("error").inc()
                log.error("config reload refused (%s), still serving %s: %s", reason,
                          self.state.gateway.hash if self.state.gateway else "nothing", msg)
                return False
            self._sig, self._content = sig_before, content
            self.state.reload_error = None
            old = self.state.gateway
            new_hash = config_hash(config)
            if old is not None and old.hash == new_hash and not force:
                self._track_credentials()
                return False
            try:
                gw = self.state.install(config)
            except Exception as exc:  # a bug in building: keep the old gateway
                self.state.reload_error = f"cannot build the new config: {type(exc).__name__}"
                metrics.config_reloads.labels("error").inc()
                log.exception("config reload failed (%s); still serving the old config", reason)
                return False
            self._track_credentials()
            self.reloads += 1
            metrics.config_reloads.labels("success").inc()
            log.info("config reloaded (%s): %s -> %s", reason, old.hash if old else None, gw.hash)
            return True

    def _load(self) -> tuple[RoutingConfig, str]:
        try:
            data = Path(self.path).read_bytes()
        except OSError as exc:
            raise ConfigError(f"cannot read config {self.path}: {exc.strerror}") from None
        return parse_config(data), hashlib.sha256(data).hexdigest()

    def _keeps_client_auth(self, config: RoutingConfig) -> None:
        """Refuse a config that is silent about clientAuth while the serving one requires keys."""
        gw = self.state.gateway
        if (gw is not None and gw.config.client_auth is not None
                and "client_auth" not in config.model_fields_set):
            raise ConfigError("invalid routing config: clientAuth: missing while the serving config requires "
                              "client keys (a truncated file?); write 'clientAuth: null' to turn client auth off")
