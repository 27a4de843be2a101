"""Per-namespace reconcile: indexes -> render -> publish ConfigMap/Secret -> patch statuses -> Events.

Why one reconciler per operator: every change in a namespace (a provider, a policy, a referenced
Secret) can change every object's status there, so the unit of work is the namespace. Requests
are serialized per namespace and coalesced: a request that arrives while a render runs is
served by one later render that sees all changes so far (debounce without sleeping).

Writes happen only on change: the ConfigMap/Secret are compared with what the API has, statuses
with the last status we know (our own last write, else the index's view), so unchanged inputs
cause no writes at all (no proxy reloads, no watch-event echo loops).
"""

from __future__ import annotations

import asyncio
import collections
import datetime
import logging
import os
from dataclasses import dataclass
from typing import Any

import kopf
import kubernetes
from prometheus_client import Counter, start_http_server

from . import conditions, health, manifests, render, specs
from .secret_refs import SecretRefs
from .settings import OperatorSettings

RECONCILES = Counter("detour_operator_reconcile_total", "Namespace reconciles by trigger kind and result.",
                     ["kind", "result"])
ERRORS = Counter("detour_operator_reconcile_errors_total", "Reconciles that failed (and will be retried).")
OBJECT_EVENTS = Counter("detour_operator_object_events_total",
                        "LLMProvider/RoutingPolicy watch events, by whether they can change the config (rerender) "
                        "or only touched status/metadata (ignored).", ["result"])
HEALTH_ROLLUPS = Counter("detour_operator_health_rollups_total",
                         "Health roll-ups of one LLMProvider by the timer, by whether its status was patched.",
                         ["result"])
MERGE = "application/merge-patch+json"
#: Status PATCHes in flight at once during one reconcile (hundreds of objects on the first render).
STATUS_CONCURRENCY = 8
RETRY_BASE, RETRY_MAX = 1.0, 60.0
#: How long a render waits for the first read of a newly referenced Secret before it gives up
#: (and is retried): it never renders a Secret not yet read as a missing one.
SECRET_LOAD_TIMEOUT = 15.0
PLURAL = {"LLMProvider": "llmproviders", "RoutingPolicy": "routingpolicies"}
_metrics_started = False


def start_metrics(port: int, logger: logging.Logger) -> None:
    global _metrics_started
    if port and not _metrics_started:
        start_http_server(port)
        _metrics_started = True
        logger.info("metrics on :%d/metrics", port)


@dataclass
class Indexes:
    """The kopf indexes a reconcile reads (see handlers.py for what each holds)."""

    providers: Any
    policies: Any
    pods: Any

    @classmethod
    def from_kwargs(cls, kwargs: dict[str, Any]) -> Indexes:
        return cls(kwargs["providers_idx"], kwargs["policies_idx"], kwargs["proxy_pods_idx"])

    def objects(self, index: Any, namespace: str) -> list[dict[str, Any]]:
        return [dict(v) for v in index.get(namespace, [])]


async def _bounded(coros: list[Any], limit: int) -> None:
    """Await `coros` with at most `limit` running at once; the first error is raised after all ran."""
    sem = asyncio.Semaphore(limit)

    async def one(coro: Any) -> None:
        async with sem:
            await coro

    results = await asyncio.gather(*(one(c) for c in coros), return_exceptions=True)
    errors = [r for r in results if isinstance(r, BaseException)]
    if errors:
        raise errors[0]


def _api_client() -> kubernetes.client.ApiClient:
    conf = kubernetes.client.Configuration()
    try:
        kubernetes.config.load_incluster_config(client_configuration=conf)
    except kubernetes.config.ConfigException:
        kubernetes.config.load_kube_config(config_file=os.environ.get("KUBECONFIG"), client_configuration=conf)
    return kubernetes.client.ApiClient(conf)


def _ref(obj: dict[str, Any]) -> dict[str, Any]:
    """An Event's involvedObject."""
    md = obj["metadata"]
    return {"apiVersion": specs.API_VERSION, "kind": obj["kind"],
            "metadata": {"name": md["name"], "namespace": md["namespace"], "uid": md["uid"]}}


class Reconciler:
    def __init__(self, settings: OperatorSettings, api: kubernetes.client.ApiClient | None = None,
                 secret_refs: SecretRefs | None = None) -> None:
        self.settings = settings
        self.api = api or _api_client()
        self.core = kubernetes.client.CoreV1Api(self.api)
        self.custom = kubernetes.client.CustomObjectsApi(self.api)
        self.locks: dict[str, asyncio.Lock] = collections.defaultdict(asyncio.Lock)
        self.dirty: set[str] = set()
        self.statuses: dict[str, dict[str, Any]] = {}  # uid -> status as of our last write
        self.seen: dict[str, tuple[Any, bool]] = {}   # uid -> (generation, being deleted) last rendered
        self.health_tasks: dict[str, asyncio.Task[None]] = {}
        self.health_idx: dict[str, Indexes] = {}
        self.health_last: dict[str, float] = {}
        self.health_timers: dict[str, asyncio.TimerHandle] = {}
        self.health_dirty: set[str] = set()
        self.failures: dict[str, int] = {}          # namespace -> failed reconciles in a row
        self.retries: set[asyncio.Task[None]] = set()
        # The Secrets LLMProviders reference, watched one by one (never the namespace's others).
        self.secret_refs = secret_refs or SecretRefs(self._secret_changed)
        self.last: dict[str, tuple[Indexes, logging.Logger]] = {}  # namespace -> what its last request passed

    async def close(self) -> None:
        for task in self.health_tasks.values():
            task.cancel()
        for timer in self.health_timers.values():
            timer.cancel()
        await self.secret_refs.close()
        self.api.close()

    def _secret_changed(self, ns: str) -> None:
        """A referenced Secret's data changed (or it appeared/went): re-render its namespace."""
        if ns not in self.last:
            return
        idx, logger = self.last[ns]
        task = asyncio.get_running_loop().create_task(self._retry(ns, idx, logger, "Secret"))
        self.retries.add(task)
        task.add_done_callback(self.retries.discard)

    def spec_changed(self, event_type: str | None, body: Any) -> bool:
        """Whether a watch event of an LLMProvider/RoutingPolicy can change the rendered config:
        new object, new generation (spec edit), deletion started, or gone. Events of status and
        metadata writes (ours, kopf's finalizer) keep the generation and are dropped here."""
        md = body.get("metadata") or {}
        uid = md.get("uid") or f"{md.get('namespace')}/{md.get('name')}"
        if event_type == "DELETED":
            self.seen.pop(uid, None)
            self.statuses.pop(uid, None)
        else:
            key = (md.get("generation"), bool(md.get("deletionTimestamp")))
            if self.seen.get(uid) == key:
                OBJECT_EVENTS.labels("ignored").inc()
                return False
            self.seen[uid] = key
        OBJECT_EVENTS.labels("rerender").inc()
        return True

    async def request(self, namespace: str, kind: str, indexes: Indexes, logger: logging.Logger) -> None:
        """Re-render `namespace` once after this call; coalesces with renders queued behind a running one."""
        self.dirty.add(namespace)
        self.last[namespace] = (indexes, logger)
        async with self.locks[namespace]:
            if namespace not in self.dirty:
                return  # a render that started after our request already covered it
            self.dirty.discard(namespace)
            try:
                result = await self._reconcile(namespace, indexes, logger)
            except Exception:
                ERRORS.inc()
                RECONCILES.labels(kind, "error").inc()
                self._retry_later(namespace, indexes, logger)
                raise
            self.failures.pop(namespace, None)
            RECONCILES.labels(kind, result).inc()

    def _retry_later(self, ns: str, idx: Indexes, logger: logging.Logger) -> None:
        """kopf does not retry event handlers: a failed render (API server down, 5xx) is retried
        here with capped exponential backoff until one succeeds."""
        n = self.failures[ns] = self.failures.get(ns, 0) + 1
        delay = min(RETRY_MAX, RETRY_BASE * 2 ** (n - 1))
        logger.warning("reconcile of %s failed (%d in a row); retrying in %.0f s", ns, n, delay)
        loop = asyncio.get_running_loop()
        loop.call_later(delay, lambda: self.retries.add(
            loop.create_task(self._retry(ns, idx, logger))))

    async def _retry(self, ns: str, idx: Indexes, logger: logging.Logger, kind: str = "Retry") -> None:
        try:
            await self.request(ns, kind, idx, logger)
        except Exception:
            pass  # counted, logged and rescheduled by request()

    async def _reconcile(self, ns: str, idx: Indexes, logger: logging.Logger) -> str:
        providers = idx.objects(idx.providers, ns)
        policies = idx.objects(idx.policies, ns)
        refs = set().union(*(render.secret_names(p) for p in providers))
        self.secret_refs.want(ns, refs)
        await self.secret_refs.wait_loaded(ns, refs, SECRET_LOAD_TIMEOUT)
        secrets = {n: d for n in refs if (d := self.secret_refs.data(ns, n)) is not None}
        unreadable = {n: e for n in refs if (e := self.secret_refs.error(ns, n))}
        # Rendering validates every object (pydantic): in a thread, so a namespace with hundreds
        # of objects does not stall kopf's event loop (watch streams, other namespaces, timers).
        result = await asyncio.to_thread(render.render, providers, policies, secrets, self.settings, ns, unreadable)
        outcome = "invalid"
        if result.config is not None:
            owners = manifests.owner_references(
                o for o in providers + policies if (o["kind"], o["metadata"]["name"]) in result.included)
            assert result.config_yaml is not None and result.config_hash is not None
            changed = await self._publish(ns, manifests.secret(ns, result.credentials, owners),
                                          manifests.configmap(ns, result.config_yaml, result.config_hash, owners))
            outcome = "published" if changed else "unchanged"
            if changed:
                logger.info("published routing config %s to %s/%s", result.config_hash, ns, manifests.CONFIGMAP)
        else:
            if result.error:
                logger.warning("nothing published in %s: %s (the last good config stays)", ns, result.error)
            await self._prune_credentials(ns, result.credentials)
        now = conditions.now_rfc3339()
        writes = []
        for obj in providers + policies:
            if obj["metadata"].get("deletionTimestamp"):
                continue
            key = (obj["kind"], obj["metadata"]["name"])
            gen = obj["metadata"].get("generation")
            conds = conditions.object_conditions(result.problems.get(key, []), key in result.included,
                                                 result.error, gen, result.error_reason)
            known = self.statuses.get(obj["metadata"]["uid"]) or obj.get("status") or {}
            status = {"observedGeneration": gen,
                      "configHash": conditions.own_config_hash(known, conds, key in result.included,
                                                               result.config_hash)}
            if obj["kind"] == render.RPOL:
                status["targets"] = render.target_summary(obj)
            writes.append(self._patch_status(obj, status, conds, now, logger, events=True))
        await _bounded(writes, STATUS_CONCURRENCY)
        if idx.pods is not None:
            self.health_soon(ns, idx, logger)  # new providers get their Available condition
        return outcome

    async def _prune_credentials(self, ns: str, resolvable: dict[str, str]) -> None:
        """Nothing is published: the last good ConfigMap stays, but the credentials Secret keeps
        only the keys that still resolve (a deleted provider's key, or one removed from its
        Secret, must not outlive its source). The config may still name a pruned key file; the
        proxies then fail that provider's calls, which is what deleting it asked for."""
        current = await self._read(ns, "Secret", manifests.SECRET)
        if current is None:
            return
        have = current.get("data") or {}
        desired = {**current, "data": {k: resolvable[k] for k in have if k in resolvable}}
        await self._write(ns, current, desired)

    async def _publish(self, ns: str, secret: dict[str, Any], configmap: dict[str, Any]) -> bool:
        """Write the credentials Secret and the ConfigMap so that the config never names a missing key.

        Order: the Secret with the union of its old and new keys, then the ConfigMap, then the
        Secret pruned to the new keys. A new provider's key file therefore exists before the
        config points at it, and a removed provider's key file goes only after the config
        stopped pointing at it. Each step writes only if it changes something.
        """
        current_secret = await self._read(ns, "Secret", manifests.SECRET)
        current_cm = await self._read(ns, "ConfigMap", manifests.CONFIGMAP)
        changed, current_secret = await self._write(ns, current_secret,
                                                    manifests.with_retained_keys(secret, current_secret))
        changed |= (await self._write(ns, current_cm, configmap))[0]
        changed |= (await self._write(ns, current_secret, secret))[0]
        return changed

    async def _read(self, ns: str, kind: str, name: str) -> dict[str, Any] | None:
        read = self.core.read_namespaced_config_map if kind == "ConfigMap" else self.core.read_namespaced_secret
        try:
            return self.api.sanitize_for_serialization(await asyncio.to_thread(read, name, ns))
        except kubernetes.client.ApiException as exc:
            if exc.status != 404:
                raise
            return None

    async def _write(self, ns: str, current: dict[str, Any] | None, obj: dict[str, Any],
                     ) -> tuple[bool, dict[str, Any] | None]:
        """Create or merge-patch `obj` if it differs from `current`: (changed, what the server holds now)."""
        patch = manifests.diff(current, obj)
        if patch is None:
            return False, current
        name, kind = obj["metadata"]["name"], obj["kind"]
        if current is None:
            create = (self.core.create_namespaced_config_map if kind == "ConfigMap"
                      else self.core.create_namespaced_secret)
            fresh = await asyncio.to_thread(create, ns, obj)
        else:
            update = (self.core.patch_namespaced_config_map if kind == "ConfigMap"
                      else self.core.patch_namespaced_secret)
            fresh = await asyncio.to_thread(update, name, ns, patch, _content_type=MERGE)
        return True, self.api.sanitize_for_serialization(fresh)

    async def _patch_status(self, obj: dict[str, Any], status: dict[str, Any], new_conds: list[dict[str, Any]],
                            now: str, logger: logging.Logger, events: bool = False) -> bool:
        """Merge conditions into the last known status and patch it if anything changed (True if patched)."""
        md = obj["metadata"]
        known = self.statuses.get(md["uid"]) or obj.get("status") or {}
        merged = conditions.merge(known.get("conditions"), new_conds, now)
        patch = conditions.status_patch(known, {**status, "conditions": merged})
        if patch is None:
            return False
        fresh = await asyncio.to_thread(
            self.custom.patch_namespaced_custom_object_status, specs.GROUP, specs.VERSION, md["namespace"],
            PLURAL[obj["kind"]], md["name"], {"status": patch}, _content_type=MERGE)
        self.statuses[md["uid"]] = dict(fresh.get("status") or conditions.merge_patch_apply(known, patch))
        if events:
            self._post_events(obj, known.get("conditions") or [], merged)
        return True

    def _post_events(self, obj: dict[str, Any], old: list[dict[str, Any]], new: list[dict[str, Any]]) -> None:
        before = {c["type"]: c for c in old}
        after = {c["type"]: c for c in new}
        ready, was = after.get("Ready"), before.get("Ready")
        if ready and (not was or (was["status"], was["reason"]) != (ready["status"], ready["reason"])):
            if ready["status"] == "True" and ready["reason"] == render.DEGRADED:
                kopf.event(_ref(obj), type="Warning", reason="Degraded", message=ready["message"])
            elif ready["status"] == "True":
                kopf.event(_ref(obj), type="Normal", reason="Accepted", message="accepted and included in the routing config")
            else:
                kopf.event(_ref(obj), type="Warning", reason="Rejected", message=ready["message"])

    def health_soon(self, ns: str, idx: Indexes, logger: logging.Logger) -> None:
        """Roll up the namespace's health reports soon: at most once per `healthInterval`.

        Why not a timer per LLMProvider: a kopf timer needs a finalizer on every object (deleting
        one then hangs while the operator is down) and wakes every object every interval, whether
        or not any report changed. Reports change only when a proxy publishes (on change, see
        shared health), so the roll-up follows the proxy Pods' events, coalesced per namespace,
        plus one wake-up when the next fresh report turns stale.
        """
        self.health_idx[ns] = idx
        self.health_dirty.add(ns)
        task = self.health_tasks.get(ns)
        if task is None or task.done():
            self.health_tasks[ns] = asyncio.create_task(self._health_later(ns, logger), name=f"detour-health-{ns}")

    async def _health_later(self, ns: str, logger: logging.Logger) -> None:
        loop = asyncio.get_running_loop()
        while ns in self.health_dirty:  # a report that changes during a roll-up gets one more
            wait = self.health_last.get(ns, -1e18) + self.settings.health_interval - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            self.health_dirty.discard(ns)
            self.health_last[ns] = loop.time()
            try:
                stale_in = await self.health(ns, self.health_idx[ns], logger)
            except Exception:
                logger.exception("health roll-up of %s failed; retrying at the next report", ns)
                continue
            if (timer := self.health_timers.pop(ns, None)) is not None:
                timer.cancel()
            if stale_in is not None:  # a report will age out with no event to say so: look again then
                self.health_timers[ns] = loop.call_later(
                    stale_in + 0.01, lambda: self.health_soon(ns, self.health_idx[ns], logger))

    async def health(self, ns: str, idx: Indexes, logger: logging.Logger) -> float | None:
        """Roll up the proxy pods' health reports into every LLMProvider's status in `ns`; returns
        the seconds until the next fresh report turns stale (None if there is none)."""
        async with self.locks[ns]:
            reports = health.reports_from_pods(idx.objects(idx.pods, ns))
            now = datetime.datetime.now(datetime.timezone.utc)
            for obj in idx.objects(idx.providers, ns):
                if obj["metadata"].get("deletionTimestamp"):
                    continue
                name = obj["metadata"]["name"]
                known = self.statuses.get(obj["metadata"]["uid"]) or obj.get("status") or {}
                keys = max(1, len(specs.secret_refs(obj.get("spec"))))   # API keys: health per (model, key)
                rolled = health.settle(known.get("health"),
                                       health.rollup(reports, name, now, self.settings.degraded_failure_ratio, keys))
                gen = obj["metadata"].get("generation")
                patched = await self._patch_status(obj, {"health": rolled},
                                                   [conditions.available_condition(rolled, gen)],
                                                   conditions.now_rfc3339(), logger)
                HEALTH_ROLLUPS.labels("patched" if patched else "unchanged").inc()
            return health.next_stale(reports, now)
