"""kopf handlers: thin adapters from Kubernetes events to `reconcile.Reconciler`.

Why this shape: every LLMProvider/RoutingPolicy event only means "namespace N may need
re-rendering", so handlers unpack the event and ask the reconciler to re-render that namespace
(serialized and coalesced per namespace). All state comes from kopf indexes, filled from the watch
streams kopf already runs, so no handler lists objects from the API per event.

Secrets are not watched by kopf: it can only watch a whole resource, and the operator must not
list or watch Secrets no LLMProvider references. The reconciler watches each referenced Secret
by name (secret_refs.py) and re-renders on its changes.

Why `on.event` and not on.create/update/delete: those make kopf persist its own state in each
object (a `last-handled-configuration` annotation with the whole spec, progress annotations), one
or two extra PATCHes per object per change, and a spec near the annotation size limit would loop
on 422 forever. The reconciler needs none of it: it re-renders from the indexes, and
`Reconciler.spec_changed` drops the events of status-only writes (generation unchanged). The
health roll-up follows the proxy Pods' events (`Reconciler.health_soon`) rather than a kopf timer
per LLMProvider, so kopf adds no finalizer to any object: deleting one never waits for the
operator.

Settings are read at import (`DETOUR_SETTINGS_FILE`), because kopf decorators need the proxy pod
selector when the module is loaded.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import kopf

from . import health, specs
from .readiness import Readiness
from .reconcile import Indexes, Reconciler, start_metrics
from .settings import load_settings

SETTINGS = load_settings()
G, V = specs.GROUP, specs.VERSION
LLMP, RPOL = "llmproviders", "routingpolicies"


def _slim(body: Any, kind: str) -> dict[str, Any]:
    """What the reconciler needs of an object (kept in the index; no managedFields etc.)."""
    md = body.get("metadata", {})
    return {"apiVersion": specs.API_VERSION, "kind": kind, "spec": dict(body.get("spec") or {}),
            "status": dict(body.get("status") or {}),
            "metadata": {k: md.get(k) for k in ("name", "namespace", "uid", "generation", "deletionTimestamp")}}


@kopf.on.startup()
async def startup(settings: kopf.OperatorSettings, memo: kopf.Memo, logger: logging.Logger, **_: Any) -> None:
    settings.persistence.finalizer = "detour.dev/finalizer"
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix="detour.dev")
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix="detour.dev", key="last-handled-configuration")
    settings.posting.level = logging.WARNING  # our own Events are explicit; no "handler succeeded" spam
    settings.watching.server_timeout = 300
    # No namespace/CRD observation: the chart's RBAC grants neither (kopf would warn), `--namespace`
    # takes exact names, and the CRDs are installed with the chart before the operator starts (they
    # are discovered once at startup; a CRD installed later needs an operator restart).
    settings.scanning.disabled = True
    memo.detour = Reconciler(SETTINGS)
    start_metrics(int(os.environ.get("DETOUR_OPERATOR_METRICS_PORT", "9090")), logger)
    # /readyz (cli.py sets the endpoint; kopf run without the wrapper serves none).
    if endpoint := os.environ.get("DETOUR_OPERATOR_READINESS"):
        namespaces = [n for n in os.environ.get("DETOUR_OPERATOR_NAMESPACES", "").split(",") if n]
        memo.readiness = Readiness(os.environ.get("DETOUR_OPERATOR_PEERING") or None, namespaces)
        await memo.readiness.start(endpoint)


@kopf.on.cleanup()
async def cleanup(memo: kopf.Memo, **_: Any) -> None:
    if getattr(memo, "readiness", None) is not None:
        await memo.readiness.stop()
    if getattr(memo, "detour", None) is not None:
        await memo.detour.close()


# ---- indexes: the operator's view of the cluster ---------------------------------------------

@kopf.index(G, V, LLMP)
def providers_idx(namespace: str, body: kopf.Body, **_: Any) -> dict[str, Any]:
    return {namespace: _slim(body, "LLMProvider")}


@kopf.index(G, V, RPOL)
def policies_idx(namespace: str, body: kopf.Body, **_: Any) -> dict[str, Any]:
    return {namespace: _slim(body, "RoutingPolicy")}


@kopf.index("v1", "pods", labels=SETTINGS.pod_labels(), annotations={health.ANNOTATION: kopf.PRESENT})
def proxy_pods_idx(namespace: str, name: str, annotations: kopf.Annotations, **_: Any) -> dict[str, Any]:
    return {namespace: {"metadata": {"name": name, "annotations": {health.ANNOTATION: annotations[health.ANNOTATION]}}}}


# ---- triggers ------------------------------------------------------------------------------

@kopf.on.event(G, V, LLMP)
async def provider_changed(type: str | None, body: kopf.Body, namespace: str, memo: kopf.Memo,
                           logger: logging.Logger, **kwargs: Any) -> None:
    if memo.detour.spec_changed(type, body):
        await memo.detour.request(namespace, "LLMProvider", Indexes.from_kwargs(kwargs), logger)


@kopf.on.event(G, V, RPOL)
async def policy_changed(type: str | None, body: kopf.Body, namespace: str, memo: kopf.Memo,
                         logger: logging.Logger, **kwargs: Any) -> None:
    if memo.detour.spec_changed(type, body):
        await memo.detour.request(namespace, "RoutingPolicy", Indexes.from_kwargs(kwargs), logger)


@kopf.on.event("v1", "pods", labels=SETTINGS.pod_labels(), annotations={health.ANNOTATION: kopf.PRESENT})
async def proxy_report_changed(namespace: str, memo: kopf.Memo, logger: logging.Logger, **kwargs: Any) -> None:
    memo.detour.health_soon(namespace, Indexes.from_kwargs(kwargs), logger)
