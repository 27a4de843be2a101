"""The Secrets that LLMProviders reference, each read and watched by its name, and nothing else.

Why: the operator used to list and watch every Opaque Secret of its namespace (a kopf index) to
find the few that hold provider keys: every Secret of the namespace (TLS keys, Helm release
data, other applications' passwords) went through its memory, and its RBAC had to allow reading
all of them. Now the reconciler tells `SecretRefs.want` which Secret names the namespace's
LLMProviders reference, and each one gets its own LIST + WATCH with the field selector
`metadata.name=NAME`: the API server sends that Secret's events only. A Secret nobody
references is never requested. That is also the shape RBAC can narrow: `list`/`watch` restricted
by `resourceNames` authorise exactly these single-name requests (the chart's
`operator.secretNames`).

Watches start when a reference appears and stop when the last reference to that Secret goes.
Cost: one LIST per referenced Secret when it is first referenced (and after a broken watch), one
open watch connection each (HTTP/1.1: no connection limit here, so 50 referenced Secrets hold 50
idle connections), and events only when one of them changes.
A change of a watched Secret's `data` calls `on_change(namespace)` (the reconciler re-renders the
namespace); the first read of a newly referenced Secret is awaited by the render that asked for
it (`wait_loaded`), so a render never mistakes a Secret not yet read for a missing one.
Only Opaque Secrets count (as before): a reference to a service-account token, a TLS Secret or
the operator's own `detour-credentials` reads as absent.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import Counter, Gauge

from detour_proxy.cluster.kube_api import ApiError, KubeAPI

log = logging.getLogger("detour_operator.secrets")
WATCHED = Gauge("detour_operator_watched_secrets", "Secrets the operator watches by name (the ones LLMProviders reference).")
SECRET_EVENTS = Counter("detour_operator_secret_events_total",
                        "Watch events of referenced Secrets, by whether their data changed (rerender) or not (unchanged).",
                        ["result"])
#: The server ends a watch after `timeoutSeconds` (300, see KubeAPI.watch_objects); a watch silent
#: for longer than this is presumed broken and re-opened.
IDLE_TIMEOUT = 330.0
RETRY_MAX = 30.0
#: Statuses that are an answer about this Secret (the caller may not read it), not an outage.
DEFINITE = (401, 403)

Key = tuple[str, str]  # (namespace, Secret name)


@dataclass
class _Watch:
    key: Key
    loaded: asyncio.Event = field(default_factory=asyncio.Event)
    data: dict[str, str] | None = None   # the Secret's `data` (base64 values); None: absent
    error: str | None = None             # why it cannot be read (RBAC), while it cannot
    late: bool = False                   # a render stopped waiting for the first read
    task: asyncio.Task[None] | None = None


def _data(obj: dict[str, Any] | None) -> dict[str, str] | None:
    if obj is None or obj.get("type", "Opaque") != "Opaque":
        return None
    labels = (obj.get("metadata") or {}).get("labels") or {}
    if labels.get("app.kubernetes.io/managed-by") == "detour-operator":
        return None  # the operator's own output (detour-credentials) is never an input
    return dict(obj.get("data") or {})


class SecretRefs:
    def __init__(self, on_change: Callable[[str], None],
                 api_factory: Callable[[], KubeAPI] | None = None) -> None:
        self._on_change = on_change
        # No connection limit: every watched Secret keeps its own watch connection open.
        self._api_factory = api_factory or (lambda: KubeAPI.from_environment(
            user_agent="detour-operator/secrets", max_connections=0))
        self._api: KubeAPI | None = None
        self._watches: dict[Key, _Watch] = {}

    # ---- the reconciler's side ----------------------------------------------------------------

    def want(self, namespace: str, names: Iterable[str]) -> None:
        """The Secret names LLMProviders of `namespace` reference now: start watching new ones,
        stop watching (and forget) the ones no longer referenced."""
        wanted = {(namespace, n) for n in names}
        for key in [k for k in self._watches if k[0] == namespace and k not in wanted]:
            w = self._watches.pop(key)
            if w.task is not None:
                w.task.cancel()
            log.info("stopped watching Secret %s/%s (no LLMProvider references it)", *key)
        for key in wanted - self._watches.keys():
            w = self._watches[key] = _Watch(key)
            w.task = asyncio.create_task(self._run(w), name=f"detour-secret-{key[0]}/{key[1]}")
            log.info("watching Secret %s/%s (referenced by an LLMProvider)", *key)
        WATCHED.set(len(self._watches))

    async def wait_loaded(self, namespace: str, names: Iterable[str], timeout: float) -> None:
        """Wait until each named Secret has been read once (found, absent or forbidden). Raises
        TimeoutError if the API server did not answer for one of them within `timeout`."""
        pending = [w for n in names if (w := self._watches.get((namespace, n))) and not w.loaded.is_set()]
        if not pending:
            return
        try:
            await asyncio.wait_for(asyncio.gather(*(w.loaded.wait() for w in pending)), timeout)
        except TimeoutError:
            for w in pending:
                w.late = not w.loaded.is_set()
            raise

    def data(self, namespace: str, name: str) -> dict[str, str] | None:
        w = self._watches.get((namespace, name))
        return dict(w.data) if w is not None and w.data is not None else None

    def error(self, namespace: str, name: str) -> str | None:
        w = self._watches.get((namespace, name))
        return w.error if w is not None else None

    def watched(self) -> set[Key]:
        return set(self._watches)

    async def close(self) -> None:
        for w in self._watches.values():
            if w.task is not None:
                w.task.cancel()
        self._watches.clear()
        WATCHED.set(0)
        if self._api is not None:
            await self._api.close()

    # ---- one Secret's list + watch --------------------------------------------------------------

    def _set(self, w: _Watch, obj: dict[str, Any] | None, error: str | None = None) -> None:
        data = w.data if error is not None else _data(obj)
        changed = (data, error) != (w.data, w.error)
        first = not w.loaded.is_set()
        w.data, w.error = data, error
        w.loaded.set()
        if self._watches.get(w.key) is not w:
            return  # no longer wanted
        if changed and (not first or w.late):
            SECRET_EVENTS.labels("rerender").inc()
            w.late = False
            self._on_change(w.key[0])
        elif not first:
            SECRET_EVENTS.labels("unchanged").inc()

    async def _run(self, w: _Watch) -> None:
        ns, name = w.key
        params = {"fieldSelector": f"metadata.name={name}"}
        failures = 0
        while True:
            try:
                if self._api is None:
                    self._api = await asyncio.to_thread(self._api_factory)
                items, rv = await self._api.list_objects(ns, "secrets", params)
                if failures:
                    log.warning("Secret %s/%s can be read again", ns, name)
                failures = 0
                self._set(w, items[0] if items else None)
                while rv:
                    rv = await self._follow(w, params, rv)
            except ApiError as exc:
                failures += 1
                if failures == 1:
                    log.warning("cannot read Secret %s/%s: %s; retrying", ns, name, exc.reason)
                if exc.status in DEFINITE:
                    self._set(w, None, error=exc.reason)
            except Exception as exc:  # no credentials yet, a malformed answer: retried, never fatal
                failures += 1
                if failures == 1:
                    log.warning("cannot read Secret %s/%s: %s; retrying", ns, name, type(exc).__name__)
            await asyncio.sleep(min(RETRY_MAX, 0.5 * 2 ** min(failures, 6)))

    async def _follow(self, w: _Watch, params: dict[str, str], rv: str) -> str:
        """One watch from `rv`; returns the resourceVersion to resume from, "" to re-list."""
        assert self._api is not None
        async for ev in self._api.watch_objects(w.key[0], "secrets", params, rv, IDLE_TIMEOUT):
            kind, obj = ev.get("type"), ev.get("object") or {}
            if kind == "ERROR":  # 410 Gone: the resourceVersion is too old
                return ""
            rv = str((obj.get("metadata") or {}).get("resourceVersion") or rv)
            if kind == "BOOKMARK":
                continue
            self._set(w, None if kind == "DELETED" else obj)
        return rv
