"""The objects the operator publishes per namespace: ConfigMap `detour-routing`, Secret `detour-credentials`.

Pure builders plus `diff_*` helpers that say what to patch. Why owner references to *every*
included LLMProvider/RoutingPolicy: the Kubernetes garbage collector deletes a dependent only when
all its owners are gone, so the published config disappears exactly when the namespace's last
Detour object does (and never while one still exists). Owners are sorted so unchanged inputs give
identical metadata (no churn).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from . import specs

CONFIGMAP = "detour-routing"
SECRET = "detour-credentials"
CONFIG_KEY = "config.yaml"
HASH_ANNOTATION = "detour.dev/config-hash"
LABELS = {"app.kubernetes.io/name": "detour", "app.kubernetes.io/component": "routing-config",
          "app.kubernetes.io/managed-by": "detour-operator"}


def owner_references(owners: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """ownerReferences to LLMProvider/RoutingPolicy objects (dicts with kind + metadata.name/uid)."""
    refs = [{"apiVersion": specs.API_VERSION, "kind": o["kind"], "name": o["metadata"]["name"],
             "uid": o["metadata"]["uid"], "blockOwnerDeletion": False, "controller": False}
            for o in owners if o.get("metadata", {}).get("uid")]
    return sorted(refs, key=lambda r: (r["kind"], r["name"], r["uid"]))


def configmap(namespace: str, config_yaml: bytes, config_hash: str, owners: list[dict[str, Any]]) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": CONFIGMAP, "namespace": namespace, "labels": dict(LABELS),
                         "annotations": {HASH_ANNOTATION: config_hash}, "ownerReferences": owners},
            "data": {CONFIG_KEY: config_yaml.decode()}}


def secret(namespace: str, credentials: Mapping[str, str], owners: list[dict[str, Any]]) -> dict[str, Any]:
    """Credentials Secret; values are already base64 (copied from the referenced Secrets' data)."""
    return {"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
            "metadata": {"name": SECRET, "namespace": namespace, "labels": dict(LABELS), "ownerReferences": owners},
            "data": dict(sorted(credentials.items()))}


def with_retained_keys(desired: dict[str, Any], current: Mapping[str, Any] | None) -> dict[str, Any]:
    """`desired` Secret that still carries the keys `current` has and `desired` drops.

    Written before the ConfigMap (see Reconciler._publish): the old config may still name those
    key files until the new ConfigMap is out. Values of kept keys come from `desired`.
    """
    have = (current or {}).get("data") or {}
    retained = {k: v for k, v in have.items() if k not in desired.get("data", {})}
    return {**desired, "data": dict(sorted({**retained, **desired.get("data", {})}.items()))}


def diff(current: Mapping[str, Any] | None, desired: Mapping[str, Any]) -> dict[str, Any] | None:
    """A merge patch turning `current` into `desired` (labels/annotations/owners/data), or None if equal.

    Keys of `data` that are no longer desired are set to null (removed); labels and annotations
    set by others are left alone.
    """
    if current is None:
        return dict(desired)
    cur_md, want_md = current.get("metadata") or {}, desired["metadata"]
    patch: dict[str, Any] = {}
    md: dict[str, Any] = {}
    for field in ("labels", "annotations"):
        want = want_md.get(field) or {}
        have = cur_md.get(field) or {}
        changed = {k: v for k, v in want.items() if have.get(k) != v}
        if changed:
            md[field] = changed
    if (cur_md.get("ownerReferences") or []) != want_md.get("ownerReferences", []):
        md["ownerReferences"] = want_md.get("ownerReferences", [])
    if md:
        patch["metadata"] = md
    have_data, want_data = current.get("data") or {}, desired.get("data") or {}
    if have_data != want_data:
        patch["data"] = {**{k: None for k in have_data if k not in want_data}, **want_data}
    return patch or None
