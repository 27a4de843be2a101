"""Shared health: publish this pod's breaker view on its own Pod, merge what peers publish.

Each proxy pod writes one annotation, `detour.dev/health` (format and merge rules in
`shared_health_codec`), on its own Pod with a JSON merge patch, and watches the Pods of its
Deployment (`sharedHealth.podSelector`) to import the open breakers its peers report.

When it writes: at once (but never sooner than `sharedHealth.minInterval` after the previous
write) when a breaker opens or closes on *local* evidence, else every `heartbeat`. An open period
imported from a peer does not trigger a write (it would only echo the peer). So the API server
sees about N/heartbeat writes per second from N pods plus a burst bounded by N/minInterval
during an incident, never anything per request; and one long-lived watch per pod.

Staleness bound: from the moment a pod opens a breaker to the moment every other pod stops
sending to that target is at most `minInterval` (the publish may be held back that long) plus
one PATCH and watch delivery round-trip (milliseconds in a healthy cluster): with the default
minInterval 0.5 s, under 2 s. A peer that stops publishing is ignored after 3 of its heartbeats.

Without API access (no POD_NAME/POD_NAMESPACE, no kubeconfig or service account, RBAC missing,
API server down) the proxy keeps serving on local health only: it logs that once per outage,
sets `detour_shared_health_api_available` to 0 and retries with capped exponential backoff.
Nothing here is ever awaited by a request: the transition hook only sets an event.

Why raw aiohttp and not the official client's sync API in a thread: the watch is a stream that
lives for minutes; in a thread it would pin an executor worker and could not be cancelled on
shutdown (uvicorn's loop close waits for the default executor). aiohttp is already the proxy's
I/O library, is cancellable, and needs three calls (list, watch, patch). The official
`kubernetes` package is still used for what it is good at: reading the kubeconfig or the
in-cluster service account (server, CA, client certs, token, token refresh) into a
`Configuration`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import ssl
import time
from collections.abc import AsyncIterator, Callable
from typing import Any
from urllib.parse import quote

import aiohttp
import orjson

from .app_state import AppState
from .config import SharedHealth as SharedHealthSettings
from .policy import BreakerState, TargetKey
from .shared_health_codec import (ANNOTATION, CodecError, PeerTable, decode, encode, merge_into)

log = logging.getLogger("detour.shared_health")

MAX_BACKOFF = 30.0


class ApiError(Exception):
    """The API server refused or could not be reached; `reason` is a short, secret-free label."""

    def __init__(self, reason: str, status: int | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status


class KubeAPI:
    """The three Pod calls shared health needs, over one aiohttp session."""

    def __init__(self, host: str, *, token: Callable[[], str | None] = lambda: None,
                 ssl_context: ssl.SSLContext | bool | None = None, timeout: float = 5.0) -> None:
        self.host = host.rstrip("/")
        self._token = token
        self._ssl = ssl_context
        self._timeout = timeout
        self._session: aiohttp.ClientSession | None = None

    @classmethod
    def from_environment(cls) -> KubeAPI:
        """In-cluster service account when running in a Pod, else $KUBECONFIG / ~/.kube/config.
        Blocking (file reads, maybe an exec plugin): call it in a thread."""
        from kubernetes import client, config  # imported lazily: only when shared health is on

        cfg = client.Configuration()
        if os.environ.get("KUBERNETES_SERVICE_HOST"):
            config.load_incluster_config(client_configuration=cfg)
        else:
            config.load_kube_config(client_configuration=cfg, persist_config=False)
        ctx: ssl.SSLContext | bool | None = None
        if cfg.host.startswith("https"):
            if cfg.verify_ssl:
                ctx = ssl.create_default_context(cafile=cfg.ssl_ca_cert or None)
                if cfg.assert_hostname is False:
                    ctx.check_hostname = False
            else:
                ctx = False
            if cfg.cert_file:
                if ctx is False:
                    ctx = ssl.create_default_context()
                    ctx.check_hostname = False
                    ctx.verify_mode = ssl.CERT_NONE
                ctx.load_cert_chain(cfg.cert_file, cfg.key_file)

        def token() -> str | None:
            # Calls the refresh hook of in-cluster configs (bound service account tokens rotate).
            return cfg.get_api_key_with_prefix("authorization")

        return cls(cfg.host, token=token, ssl_context=ctx)

    def _sess(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(ssl=self._ssl if self._ssl is not None else True, limit=4),
                json_serialize=lambda o: orjson.dumps(o).decode())
        return self._session

    def _headers(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        h = {"Accept": "application/json", "User-Agent": "detour-proxy/shared-health"}
        tok = self._token()
        if tok:
            h["Authorization"] = tok
        if extra:
            h.update(extra)
        return h

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    @staticmethod
    async def _check(resp: aiohttp.ClientResponse) -> None:
        if resp.status >= 400:
            reason = {401: "unauthorized", 403: "forbidden (RBAC: the proxy needs get/list/watch/patch on pods)",
                      404: "not found"}.get(resp.status, f"HTTP {resp.status}")
            raise ApiError(reason, resp.status)

    async def patch_annotation(self, namespace: str, pod: str, key: str, value: str) -> None:
        url = f"{self.host}/api/v1/namespaces/{quote(namespace)}/pods/{quote(pod)}"
        body = orjson.dumps({"metadata": {"annotations": {key: value}}})
        try:
            async with self._sess().patch(
                    url, data=body, timeout=aiohttp.ClientTimeout(total=self._timeout),
                    headers=self._headers({"Content-Type": "application/merge-patch+json"})) as resp:
                await self._check(resp)
                await resp.read()
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
            raise ApiError(f"unreachable ({type(exc).__name__})") from None

    async def list_pods(self, namespace: str, params: dict[str, str]) -> tuple[list[dict[str, Any]], str]:
        url = f"{self.host}/api/v1/namespaces/{quote(namespace)}/pods"
        try:
            async with self._sess().get(url, params=params, headers=self._headers(),
                                        timeout=aiohttp.ClientTimeout(total=self._timeout * 2)) as resp:
                await self._check(resp)
                doc = orjson.loads(await resp.read())
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError, orjson.JSONDecodeError) as exc:
            raise ApiError(f"unreachable ({type(exc).__name__})") from None
        rv = str((doc.get("metadata") or {}).get("resourceVersion") or "")
        return list(doc.get("items") or []), rv

    async def watch_pods(self, namespace: str, params: dict[str, str], resource_version: str,
                         idle_timeout: float) -> AsyncIterator[dict[str, Any]]:
        """Watch events (`{"type", "object"}`) until the server ends the stream or it is idle
        for `idle_timeout` seconds (then the caller re-watches)."""
        url = f"{self.host}/api/v1/namespaces/{quote(namespace)}/pods"
        q = dict(params, watch="true", timeoutSeconds="300", allowWatchBookmarks="true")
        if resource_version:
            q["resourceVersion"] = resource_version
        timeout = aiohttp.ClientTimeout(total=None, connect=self._timeout, sock_read=idle_timeout)
        try:
            async with self._sess().get(url, params=q, headers=self._headers(), timeout=timeout) as resp:
                await self._check(resp)
                buf = b""
                async for chunk in resp.content.iter_any():
                    buf += chunk
                    while b"\n" in buf:
                        line, buf = buf.split(b"\n", 1)
                        if line.strip():
                            yield orjson.loads(line)
        except (aiohttp.ClientError, OSError, orjson.JSONDecodeError) as exc:
            raise ApiError(f"watch broken ({type(exc).__name__})") from None
        except asyncio.TimeoutError:
            return  # idle: re-watch


def _backoff(prev: float) -> float:
    return min(MAX_BACKOFF, max(0.5, prev * 2))


class SharedHealthService:
    """Publisher + peer watcher; follows `config.sharedHealth` across reloads."""

    def __init__(self, state: AppState, *, pod: str | None = None, namespace: str | None = None,
                 api_factory: Callable[[], KubeAPI] | None = None,
                 wall: Callable[[], float] = time.time, config_poll: float = 1.0) -> None:
        self.state = state
        self.pod = pod if pod is not None else os.environ.get("POD_NAME", "")
        self.namespace = namespace if namespace is not None else os.environ.get("POD_NAMESPACE", "")
        self._api_factory = api_factory or KubeAPI.from_environment
        self._wall = wall
        self._config_poll = config_poll
        self.api: KubeAPI | None = None
        self.peers = PeerTable()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._available: bool | None = None   # None: not known yet
        self._said: set[str] = set()          # "log once" memory
        self.publishes = 0

    # -- lifecycle ---------------------------------------------------------------------------
    async def start(self) -> None:
        self.state.transition_hooks.append(self._on_transition)
        self._task = asyncio.create_task(self._supervise(), name="detour-shared-health")

    async def stop(self) -> None:
        if self._on_transition in self.state.transition_hooks:
            self.state.transition_hooks.remove(self._on_transition)
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):
                pass
        if self.api is not None:
            await self.api.close()

    def _settings(self) -> SharedHealthSettings | None:
        gw = self.state.gateway
        return gw.config.shared_health if gw is not None else None

    def _once(self, key: str, level: int, msg: str, *args: Any) -> None:
        if key not in self._said:
            self._said.add(key)
            log.log(level, msg, *args)

    def _set_available(self, ok: bool, reason: str = "") -> None:
        self.state.metrics.shared_api.set(1 if ok else 0)
        if ok and self._available is False:
            log.warning("shared health: Kubernetes API reachable again; merging peers' health")
        elif not ok and self._available is not False:
            log.warning("shared health: Kubernetes API not available (%s); serving on local health "
                        "only, retrying with backoff", reason)
        self._available = ok

    # -- breaker transitions (called on the request path: must only flag) --------------------
    def _on_transition(self, key: TargetKey, old: object, new: object) -> None:
        if new is BreakerState.OPEN:
            reg = self.state.registry
            st = reg.get(key) if reg is not None else None
            if st is not None and st.breaker.imported:
                return  # learned from a peer: publishing it would only echo the peer
        elif new is not BreakerState.CLOSED:
            return  # OPEN -> HALF_OPEN is time-driven: peers derive it from openUntil
        self._wake.set()

    # -- supervision -------------------------------------------------------------------------
    async def _supervise(self) -> None:
        self.state.metrics.shared_api.set(0)
        while True:
            settings = self._settings()
            if settings is None or not settings.enabled:
                await asyncio.sleep(self._config_poll)
                continue
            if not self.pod or not self.namespace:
                self._once("env", logging.WARNING, "shared health: POD_NAME/POD_NAMESPACE not set "
                           "(downward API); serving on local health only")
                self.state.metrics.shared_api.set(0)
                await asyncio.sleep(self._config_poll)
                continue
            if self.api is None:
                try:
                    self.api = await asyncio.to_thread(self._api_factory)
                except Exception as exc:  # no kubeconfig, no service account...
                    self._once("creds", logging.WARNING, "shared health: no Kubernetes credentials "
                               "(%s); serving on local health only", type(exc).__name__)
                    self.state.metrics.shared_api.set(0)
                    await asyncio.sleep(10 * self._config_poll)
                    continue
            tasks = [asyncio.create_task(self._publish_loop(settings)),
                     asyncio.create_task(self._watch_loop(settings)),
                     asyncio.create_task(self._until_settings_change(settings))]
            try:
                await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for t in tasks:
                    t.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)

    async def _until_settings_change(self, settings: SharedHealthSettings) -> None:
        while self._settings() == settings:
            await asyncio.sleep(self._config_poll)

    # -- publishing --------------------------------------------------------------------------
    def document(self) -> str:
        settings = self._settings()
        reg = self.state.registry
        mono = self.state.clock.now()
        snaps = reg.snapshot(mono) if reg is not None else []
        return encode(self.pod, snaps, wall_now=self._wall(), mono_now=mono,
                      heartbeat=settings.heartbeat if settings else 10.0)

    async def _publish_loop(self, s: SharedHealthSettings) -> None:
        assert self.api is not None
        loop = asyncio.get_running_loop()
        last = -1e18
        backoff = 0.0
        self._wake.set()  # publish at once on start (peers learn we exist)
        while True:
            wait = last + s.heartbeat - loop.time()
            if wait > 0 and not self._wake.is_set():
                try:
                    await asyncio.wait_for(self._wake.wait(), wait)
                except asyncio.TimeoutError:
                    pass
            gap = last + s.min_interval - loop.time()
            if gap > 0:
                await asyncio.sleep(gap)
            self._wake.clear()  # transitions after this point trigger the next publish
            doc = self.document()
            last = loop.time()
            try:
                await self.api.patch_annotation(self.namespace, self.pod, ANNOTATION, doc)
            except ApiError as exc:
                self.state.metrics.shared_publish.labels("error").inc()
                self._set_available(False, f"patch pod {self.pod}: {exc.reason}")
                backoff = _backoff(backoff)
                await asyncio.sleep(backoff)
                self._wake.set()  # retry soon, do not wait a whole heartbeat
                continue
            backoff = 0.0
            self.publishes += 1
            self.state.metrics.shared_publish.labels("success").inc()
            self._set_available(True)
            self._update_peer_gauge()

    def _update_peer_gauge(self) -> None:
        fresh = len(self.peers.fresh(self._wall()))
        gauge = getattr(self.state.metrics, "shared_peers", None)
        if gauge is not None:
            gauge.set(fresh)
        # Per-target limits are split across the replicas we can see (this pod + fresh peers).
        registry = self.state.registry
        if registry is not None:
            registry.set_peer_count(fresh + 1 if fresh else None)

    # -- watching peers ----------------------------------------------------------------------
    async def _watch_loop(self, s: SharedHealthSettings) -> None:
        assert self.api is not None
        params = {"labelSelector": s.pod_selector, "fieldSelector": f"metadata.name!={self.pod}"}
        idle = max(60.0, 3 * s.heartbeat + 10)
        loop = asyncio.get_running_loop()
        backoff = 0.0
        while True:
            try:
                items, rv = await self.api.list_pods(self.namespace, params)
                for pod in items:
                    self._on_pod("ADDED", pod)
                self.peers.retain((p.get("metadata") or {}).get("name", "") for p in items)
                self._update_peer_gauge()
                backoff = 0.0
                quick = 0.0
                while True:  # re-watch from the last resourceVersion until it is too old
                    gone = False
                    started = loop.time()
                    async with contextlib.aclosing(
                            self.api.watch_pods(self.namespace, params, rv, idle)) as events:
                        async for ev in events:
                            typ = ev.get("type")
                            obj = ev.get("object") or {}
                            if typ == "ERROR":
                                gone = True  # 410 Gone (or another error): list again
                                break
                            new_rv = (obj.get("metadata") or {}).get("resourceVersion")
                            if new_rv:
                                rv = str(new_rv)
                            if typ in ("ADDED", "MODIFIED", "DELETED"):
                                self._on_pod(typ, obj)
                    if gone:
                        break
                    # A server that ends watches at once must not be hammered with reconnects.
                    quick = _backoff(quick) if loop.time() - started < 1.0 else 0.0
                    if quick:
                        await asyncio.sleep(quick)
                await asyncio.sleep(0.2)  # ERROR (e.g. 410 Gone): list again, not in a tight loop
            except ApiError as exc:
                self._set_available(False, f"watch pods: {exc.reason}")
                backoff = _backoff(backoff)
                await asyncio.sleep(backoff)

    def _on_pod(self, typ: str, obj: dict[str, Any]) -> None:
        md = obj.get("metadata") or {}
        name = md.get("name") or ""
        if not name or name == self.pod:
            return
        phase = (obj.get("status") or {}).get("phase")
        if typ == "DELETED" or phase in ("Succeeded", "Failed"):
            self.peers.remove(name)
            self._update_peer_gauge()
            return
        raw = (md.get("annotations") or {}).get(ANNOTATION)
        if not self.peers.changed(name, raw):
            return
        doc = None
        if raw:
            try:
                doc = decode(raw)
            except CodecError as exc:
                self._count_ignored("invalid")
                self._once(f"bad:{name}", logging.WARNING,
                           "shared health: ignoring pod %s's annotation: %s", name, exc)
        self.peers.update(name, raw, doc)
        if doc is not None:
            self._merge(name, doc)
        self._update_peer_gauge()

    def _merge(self, pod: str, doc: Any) -> None:
        reg = self.state.registry
        if reg is None:
            return
        merged, reason = merge_into(reg, doc, own_pod=self.pod, wall_now=self._wall(),
                                    mono_now=self.state.clock.now(), pod_name=pod)
        if reason is not None:
            self._count_ignored(reason)
        if merged:
            self.state.metrics.shared_merge.inc(merged)
            log.info("shared health: imported %d open target(s) from pod %s", merged, pod)

    def _count_ignored(self, reason: str) -> None:
        counter = getattr(self.state.metrics, "shared_ignored", None)
        if counter is not None:
            counter.labels(reason).inc()


async def start(state: AppState) -> SharedHealthService:
    svc = SharedHealthService(state)
    await svc.start()
    return svc
