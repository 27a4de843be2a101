"""Shared health: publish this pod's breaker view on its own Pod, merge what peers publish.

Each proxy pod writes one annotation, `detour.dev/health` (format and merge rules in
`health_codec`), on its own Pod with a JSON merge patch, and watches the peer Pods that report an
open breaker, to import those opens.

When it writes (`health_publish`): when the report means something new. A breaker that opens or
closes on *local* evidence is published at once (but never sooner than `minInterval` after the
previous write); request figures are checked every `heartbeat` and written only when they moved
meaningfully; an unchanged report is rewritten once per `keepalive`. An open period imported
from a peer is not news: the importer stays silent.

What it watches: only peers labelled `detour.dev/health-open` (a pod sets the label while its
report holds a local open/half-open breaker, in the same PATCH), metadata only. So at rest the
API server sends peers nothing, and an incident costs one write per pod that saw the failure
itself times N watchers, not N x N. The per-target limits still need the replica count: while
some target has limits, a metadata-only LIST from the watch cache counts the replicas once a
minute (`_census_loop`).

Staleness bound: from the moment a pod opens a breaker to the moment every other pod stops
sending to that target is at most `minInterval` (the publish may be held back that long) plus
one PATCH and watch delivery round-trip (milliseconds in a healthy cluster): with the default
minInterval 0.5 s, under 2 s. A report older than 3 keepalives is ignored.

A peer whose Pod is deleted (or finishes, or drops the open label) is forgotten, and so are the
open periods imported only from it: a target that no other live peer claims and that has no
local evidence against it (the open period is still flagged imported) is closed again at once.

Without API access (no POD_NAME/POD_NAMESPACE, no kubeconfig or service account, RBAC missing,
API server down) the proxy keeps serving on local health only: it logs that once per outage,
sets `detour_shared_health_api_available` to 0 and retries with capped exponential backoff.
The two API channels, publishing (PATCH) and watching (list + watch), are tracked separately:
RBAC may allow one and not the other, and a working channel must not announce "reachable again"
while the other still fails. The gauge is 1 only while both work; one line is logged when the
first channel fails and one when both work again. Nothing here is ever awaited by a request:
the transition hook only sets an event.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import time
from collections.abc import Callable
from typing import Any

from ..state import AppState
from ..config import SharedHealth as SharedHealthSettings
from ..policy import BreakerState, ProbeClaims, TargetKey
from .kube_api import ApiError, KubeAPI
from .health_codec import (ANNOTATION, CodecError, PeerClaims, PeerDoc, PeerTable, decode, encode,
                           identity, merge_into)
from .health_probes import encode_claims, merge_claims
from .health_publish import OPEN_LABEL, fit, reports_open, significant

log = logging.getLogger("detour.shared_health")

MAX_BACKOFF = 30.0
#: How often the replica count is taken while some target has per-replica limits.
CENSUS_INTERVAL = 60.0
#: The API channels whose availability is tracked separately (see the module docstring).
CHANNELS = ("publish", "watch")


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
        self.claims = PeerClaims()
        #: probe claims (policy.probes), this pod's own included: who probes which target
        self.probe_claims = ProbeClaims()
        self.written = asyncio.Event()             # set (and replaced) after every successful write
        self._doc_claims: set[tuple[Any, float]] = set()           # own claims in the last document built
        self.written_claims: set[tuple[Any, float]] = set()        # ...and in the last one written
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._failing: dict[str, str | None] = {}  # channel -> failure reason, None = works
        self._degraded = False                     # a "not available" line was logged
        self._said: set[str] = set()               # "log once" memory
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

    def _set_available(self, channel: str, ok: bool, reason: str = "") -> None:
        """Record whether `channel` (publish / watch) works; log and set the gauge on changes of
        the whole: degraded (some channel fails) or healthy (every channel worked last time)."""
        self._failing[channel] = None if ok else reason
        healthy = all(c in self._failing and self._failing[c] is None for c in CHANNELS)
        self.state.metrics.shared_api.set(1 if healthy else 0)
        if not ok and not self._degraded:
            self._degraded = True
            if self._failing.get("watch", "?") is None:  # only publishing fails
                effect = "peers do not see this pod's health (watching peers still works)"
            elif self._failing.get("publish", "?") is None:
                effect = "serving on local health only (publishing still works)"
            else:
                effect = "serving on local health only"
            log.warning("shared health: Kubernetes API not available (%s); %s, retrying with backoff",
                        reason, effect)
        elif healthy and self._degraded:
            self._degraded = False
            log.warning("shared health: Kubernetes API reachable again; merging peers' health")

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
                     asyncio.create_task(self._census_loop(settings)),
                     asyncio.create_task(self._until_settings_change(settings))]
            try:
                done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for t in tasks:
                    t.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
            crashed = [t.exception() for t in done if not t.cancelled() and t.exception() is not None]
            if crashed:  # a bug, not API trouble: say so, and do not restart in a tight loop
                log.error("shared health: %s; restarting", crashed[0], exc_info=crashed[0])
                await asyncio.sleep(MAX_BACKOFF)

    async def _until_settings_change(self, settings: SharedHealthSettings) -> None:
        while self._settings() == settings:
            await asyncio.sleep(self._config_poll)

    # -- publishing --------------------------------------------------------------------------
    def document(self) -> str:
        settings = self._settings()
        reg = self.state.registry
        mono = self.state.clock.now()
        snaps = reg.snapshot(mono) if reg is not None else []
        wall = self._wall()
        mine = [(k, c.since, c.until) for k, c in self.probe_claims.held_by(self.pod, mono)]
        self._doc_claims = {(k, since) for k, since, _ in mine}
        text = encode(self.pod, snaps, wall_now=wall, mono_now=mono,
                      heartbeat=settings.keepalive if settings else 300.0,
                      probes=encode_claims(mine, wall_now=wall, mono_now=mono))
        text, omitted = fit(text)
        if omitted:
            self._once("too-big", logging.WARNING, "shared health: the report of %d targets exceeds the "
                       "annotation size limit; %d closed targets left out (open ones are kept)",
                       len(snaps), omitted)
        return text

    async def _publish_loop(self, s: SharedHealthSettings) -> None:
        """Write the report when it means something new (`health_publish.significant`: a local
        breaker change at once, figures checked every heartbeat) or once per keepalive."""
        assert self.api is not None
        loop = asyncio.get_running_loop()
        last = -1e18
        written: PeerDoc | None = None
        backoff = 0.0
        self._wake.set()  # publish at once on start (the operator learns we exist)
        while True:
            wait = min(s.heartbeat, last + s.keepalive - loop.time())
            if wait > 0 and not self._wake.is_set():
                try:
                    await asyncio.wait_for(self._wake.wait(), wait)
                except asyncio.TimeoutError:
                    pass
            woken = self._wake.is_set() and written is not None
            # A breaker change waits a random part of minInterval (never longer than minInterval
            # after the previous write): the first replica to write suppresses the others.
            gap = max(last + s.min_interval - loop.time(),
                      random.uniform(0, s.min_interval) if woken else 0.0)
            if gap > 0:
                await asyncio.sleep(gap)
            self._wake.clear()  # transitions after this point trigger the next publish
            text = self.document()
            doc = decode(text)
            announced = self._announced()
            if loop.time() - last < s.keepalive and not significant(written, doc, figures=not woken,
                                                                    announced=announced):
                self.state.metrics.shared_publish.labels("skipped").inc()
                continue
            last = loop.time()
            labels = {OPEN_LABEL: "true" if reports_open(doc, announced) else None}
            try:
                await self.api.patch_annotation(self.namespace, self.pod, ANNOTATION, text, labels=labels)
            except ApiError as exc:
                self.state.metrics.shared_publish.labels("error").inc()
                self._set_available("publish", False, f"patch pod {self.pod}: {exc.reason}")
                backoff = _backoff(backoff)
                await asyncio.sleep(backoff)
                self._wake.set()  # retry soon, do not wait a whole heartbeat
                continue
            backoff = 0.0
            written = doc
            self.publishes += 1
            self.written_claims = self._doc_claims
            self.written.set()
            self.written = asyncio.Event()
            self.state.metrics.shared_publish.labels("success").inc()
            self._set_available("publish", True)
            self._update_peer_gauge()

    def _announced(self) -> frozenset[tuple[Any, ...]]:
        """Identities of the local targets a live peer currently claims open."""
        reg = self.state.registry
        if reg is None:
            return frozenset()
        now = self.state.clock.now()
        return frozenset(identity(k.provider, k.model, k.base_url, k.key_index) for k, _ in reg.items()
                         if self.claims.claimants(k, now))

    def _update_peer_gauge(self) -> None:
        fresh = len(self.peers.fresh(self._wall()))
        gauge = getattr(self.state.metrics, "shared_peers", None)
        if gauge is not None:
            gauge.set(fresh)

    async def _census_loop(self, s: SharedHealthSettings) -> None:
        """Count the proxy replicas for splitting per-target limits, only while some target has
        limits: one metadata-only LIST (from the watch cache) per CENSUS_INTERVAL. Peers are not
        watched for this: the watch sees only pods reporting an open breaker."""
        assert self.api is not None
        params = {"labelSelector": s.pod_selector, "resourceVersion": "0"}
        while True:
            registry = self.state.registry
            if registry is not None and registry.has_limits:
                try:
                    items, _ = await self.api.list_pods(self.namespace, params, metadata_only=True)
                    running = [p for p in items if not (p.get("metadata") or {}).get("deletionTimestamp")]
                    registry.set_peer_count(max(1, len(running)))
                except ApiError:
                    pass  # the watch channel reports API trouble; the last count stays
            await asyncio.sleep(CENSUS_INTERVAL)

    # -- watching peers ----------------------------------------------------------------------
    async def _watch_loop(self, s: SharedHealthSettings) -> None:
        assert self.api is not None
        # Only peers whose report holds an open breaker (the label): at rest nobody is watched.
        params = {"labelSelector": f"{s.pod_selector},{OPEN_LABEL}", "fieldSelector": f"metadata.name!={self.pod}"}
        idle = max(60.0, 3 * s.heartbeat + 10)
        loop = asyncio.get_running_loop()
        backoff = 0.0
        opened = False

        def on_open() -> None:  # the watch request was accepted: the channel works
            nonlocal opened
            opened = True
            self._set_available("watch", True)

        while True:
            opened = False
            try:
                items, rv = await self.api.list_pods(self.namespace, params, metadata_only=True)
                for pod in items:
                    self._on_pod("ADDED", pod)
                listed = {(p.get("metadata") or {}).get("name", "") for p in items}
                for peer in [p for p in self.peers.pods() if p not in listed]:
                    self._forget(peer)
                self._update_peer_gauge()
                backoff = 0.0
                quick = 0.0
                while True:  # re-watch from the last resourceVersion until it is too old
                    gone = False
                    started = loop.time()
                    async with contextlib.aclosing(
                            self.api.watch_pods(self.namespace, params, rv, idle, on_open,
                                                metadata_only=True)) as events:
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
                if opened:  # a watch that worked broke (server restart, proxy idle cut): list again
                    log.debug("shared health: watch ended (%s); listing again", exc.reason)
                    backoff = 0.0
                    await asyncio.sleep(_backoff(0.0))
                    continue
                self._set_available("watch", False, f"watch pods: {exc.reason}")
                backoff = _backoff(backoff)
                await asyncio.sleep(backoff)

    def _on_pod(self, typ: str, obj: dict[str, Any]) -> None:
        md = obj.get("metadata") or {}
        name = md.get("name") or ""
        if not name or name == self.pod:
            return
        phase = (obj.get("status") or {}).get("phase")
        labels = md.get("labels")
        # The pod dropped the open label (its breakers closed): the real API server sends DELETED
        # to a label-selector watch; a MODIFIED without the label means the same.
        unlabelled = labels is not None and OPEN_LABEL not in labels
        if typ == "DELETED" or phase in ("Succeeded", "Failed") or unlabelled:
            self._forget(name)
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
            self._merge_probe_claims(name, doc)
        else:
            self.probe_claims.forget_pod(name)
        self._update_peer_gauge()

    def _merge(self, pod: str, doc: Any) -> None:
        reg = self.state.registry
        if reg is None:
            return
        merged, reason = merge_into(reg, doc, own_pod=self.pod, wall_now=self._wall(),
                                    mono_now=self.state.clock.now(), pod_name=pod, claims=self.claims)
        if reason is not None:
            self._count_ignored(reason)
        if merged:
            self.state.metrics.shared_merge.inc(merged)
            log.info("shared health: imported %d open target(s) from pod %s", merged, pod)

    def _forget(self, pod: str) -> None:
        """`pod` is gone: forget its document and drop the open periods imported only from it.

        Only a breaker that is still OPEN with its open period flagged imported is closed (no
        local failure, probe or Retry-After has touched it since); anything this pod saw itself
        keeps its cooldown. Claims of other live peers keep a target open (their deadline may be
        shorter; a cooldown is never shortened, so the longer one stays)."""
        self.peers.remove(pod)
        self.probe_claims.forget_pod(pod)
        reg = self.state.registry
        now = self.state.clock.now()
        dropped = 0
        for key in self.claims.forget_pod(pod, now):
            st = reg.get(key) if reg is not None else None
            if st is not None and st.drop_import(now):
                dropped += 1
        if dropped:
            log.info("shared health: pod %s is gone; dropped %d open target(s) imported only from it",
                     pod, dropped)

    # -- active probes: one replica at a time (policy.probes, cluster.prober) ---------------------
    def _merge_probe_claims(self, pod: str, doc: PeerDoc) -> None:
        reg = self.state.registry
        if reg is not None:
            merge_claims(self.probe_claims, pod, doc, [k for k, _ in reg.items()], wall_now=self._wall(),
                         mono_now=self.state.clock.now())

    def coordinating(self) -> bool:
        """Do probe claims reach the peers (shared health on, and the last write worked)? If not,
        this replica probes on its own, like a proxy outside Kubernetes (`cluster.prober`)."""
        s = self._settings()
        return bool(s is not None and s.enabled and self.pod and self.namespace and self.api is not None
                    and "publish" in self._failing and self._failing["publish"] is None)

    # what `cluster.prober.claim_probe` needs: publish soon, and learn what was written
    def settings(self) -> SharedHealthSettings | None:
        return self._settings()

    def wall(self) -> float:
        return self._wall()

    def wake(self) -> None:
        self._wake.set()

    def _count_ignored(self, reason: str) -> None:
        counter = getattr(self.state.metrics, "shared_ignored", None)
        if counter is not None:
            counter.labels(reason).inc()


async def start(state: AppState) -> SharedHealthService:
    svc = SharedHealthService(state)
    await svc.start()
    return svc
