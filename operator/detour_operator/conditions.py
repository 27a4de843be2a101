"""Status conditions following the Kubernetes API conventions, computed purely.

Why pure and separate: the rules (which condition is False for which problem, when
lastTransitionTime moves, what Ready summarises) are the operator's user interface
(`kubectl wait --for=condition=Ready`, `kubectl describe`), so they are unit-tested on their own.
lastTransitionTime changes only when a condition's status flips; reason/message/observedGeneration
may change without moving it.
"""

from __future__ import annotations

import datetime
from collections.abc import Iterable, Mapping
from typing import Any

from .render import DEGRADED, Problem

ORDER = ("Accepted", "ResolvedRefs", "Programmed", "Ready", "Available")


def now_rfc3339() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def condition(ctype: str, status: bool | None, reason: str, message: str, generation: int | None) -> dict[str, Any]:
    """One condition without lastTransitionTime (that is filled by `merge`)."""
    return {"type": ctype, "status": "Unknown" if status is None else ("True" if status else "False"),
            "reason": reason, "message": message, "observedGeneration": generation}


def merge(old: Iterable[Mapping[str, Any]] | None, new: Iterable[dict[str, Any]], now: str) -> list[dict[str, Any]]:
    """New conditions, keeping each old lastTransitionTime whose status did not flip.

    Conditions of types not in `new` are kept as they were (another writer may own them,
    e.g. the health timer owns Available), and the result is in a fixed type order.
    """
    previous = {c["type"]: c for c in (old or []) if isinstance(c, Mapping) and "type" in c}
    out = {t: dict(c) for t, c in previous.items()}
    for cond in new:
        was = previous.get(cond["type"])
        ltt = was.get("lastTransitionTime") if was and was.get("status") == cond["status"] else None
        out[cond["type"]] = {**cond, "lastTransitionTime": ltt or now}
    rank = {t: i for i, t in enumerate(ORDER)}
    return [out[t] for t in sorted(out, key=lambda t: (rank.get(t, len(ORDER)), t))]


def object_conditions(problems: list[Problem], included: bool, render_error: str | None,
                      generation: int | None, error_reason: str = "NoValidConfig") -> list[dict[str, Any]]:
    """Accepted, ResolvedRefs, Programmed and the Ready summary for one LLMProvider/RoutingPolicy.

    No config hash in any message: a message that names the namespace's config hash changes on
    every edit of *any* object, so every object's status would be rewritten (and an Event posted)
    for one edit. The hash is on the ConfigMap (annotation detour.dev/config-hash) and in
    status.configHash, which moves only when this object's own state is (re)published.
    """
    by_cond = {p.condition: p for p in problems}
    acc = by_cond.get("Accepted")
    accepted = (condition("Accepted", False, acc.reason, acc.message, generation) if acc else
                condition("Accepted", True, "Accepted", "spec is valid", generation))
    refs = by_cond.get("ResolvedRefs")
    if acc:
        resolved = condition("ResolvedRefs", None, "InvalidSpec", "references not checked: the spec is invalid", generation)
    elif refs:
        resolved = condition("ResolvedRefs", False, refs.reason, refs.message, generation)
    else:
        resolved = condition("ResolvedRefs", True, "ResolvedRefs", "all references resolved", generation)
    if included:
        programmed = condition("Programmed", True, "Programmed",
                               "included in the routing config (ConfigMap detour-routing)", generation)
    elif render_error:
        programmed = condition("Programmed", False, error_reason,
                               f"nothing published ({render_error}); the last good config stays", generation)
    else:
        programmed = condition("Programmed", False, "Excluded",
                               "left out of the routing config; see Accepted and ResolvedRefs", generation)
    parts = [accepted, resolved, programmed]
    failing = next((c for c in parts if c["status"] != "True"), None)
    if failing is resolved and refs is not None and refs.reason == DEGRADED and included:
        # Published without some targets: it serves, so Ready stays True, but says what is missing.
        ready = condition("Ready", True, DEGRADED, refs.message, generation)
    elif failing:
        ready = condition("Ready", False, failing["reason"], f"{failing['type']}: {failing['message']}", generation)
    else:
        ready = condition("Ready", True, "Ready", programmed["message"], generation)
    return parts + [ready]


def available_condition(health: Mapping[str, Any] | None, generation: int | None) -> dict[str, Any]:
    """LLMProvider `Available` from its health roll-up."""
    state = (health or {}).get("state", "Unknown")
    breaker = (health or {}).get("breaker", "")
    cut = (health or {}).get("truncatedReports")
    note = (f"; {cut} pod(s) left closed targets out of their report (annotation size limit: "
            "fewer targets per proxy, or fewer models per policy)") if cut else ""
    models = [m for m in (health or {}).get("models") or [] if isinstance(m, Mapping)]
    out = [f"{m.get('name')} ({m.get('readyKeys')}/{m.get('keys')} keys ready)" if m.get("keys", 1) > 1
           else str(m.get("name")) for m in models if m.get("state") == "Unavailable"]
    keys_out = [f"{m.get('name')} {m.get('readyKeys')}/{m.get('keys')} keys ready" for m in models
                if m.get("state") == "Degraded" and m.get("readyKeys", 0) < m.get("keys", 1)]
    if keys_out:
        note = "; " + ", ".join(keys_out) + note
    if out and state != "Unavailable":
        return condition("Available", True, "ModelsUnavailable",
                         f"models unavailable: {', '.join(out)}; the other models serve; breakers: {breaker}{note}",
                         generation)
    if state == "Healthy":
        return condition("Available", True, "Healthy", f"breakers: {breaker}{note}", generation)
    if state == "Degraded":
        return condition("Available", True, "Degraded", f"failure ratio at or above the degraded threshold; "
                         f"breakers: {breaker}{note}", generation)
    if state == "Unavailable":
        return condition("Available", False, "BreakersOpen",
                         f"breakers: {breaker} (opened by these pods, shared with every pod){note}", generation)
    return condition("Available", None, "NoReports", "no fresh health reports from proxy pods" + note, generation)


def merge_patch_apply(target: Any, patch: Any) -> Any:
    """RFC 7386: what the API server holds after merge-patching `target` with `patch`."""
    if not isinstance(patch, Mapping):
        return patch
    out = dict(target) if isinstance(target, Mapping) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = merge_patch_apply(out.get(key), value)
    return out


def _with_removals(current: Any, desired: Any) -> Any:
    """`desired`, plus explicit nulls for the keys of nested objects that `current` has and `desired` lacks."""
    if not isinstance(desired, Mapping):
        return desired
    out = {k: _with_removals(current.get(k) if isinstance(current, Mapping) else None, v) for k, v in desired.items()}
    if isinstance(current, Mapping):
        out.update({k: None for k in current if k not in desired})
    return out


def status_patch(current: Mapping[str, Any] | None, desired: Mapping[str, Any]) -> dict[str, Any] | None:
    """The merge patch that makes status hold `desired`, or None when it already does (patch only on change).

    Why explicit nulls: a merge patch keeps every key it does not mention, so a nested object
    written whole each time (status.health) would keep a key that is no longer desired (an old
    lastError) forever, and the status would never compare equal again (a write on every timer
    tick). Top-level keys that `desired` does not name are left alone (another writer owns them:
    the health timer owns `health`, the reconcile `configHash`); a top-level None removes a key.
    The comparison is with what the server will hold after the patch, not with `desired` itself.
    """
    current = current or {}
    body = {k: _with_removals(current.get(k), v) for k, v in desired.items()}
    return None if merge_patch_apply(current, body) == dict(current) else body


def own_config_hash(known: Mapping[str, Any], conds: list[dict[str, Any]], included: bool,
                    config_hash: str | None) -> str | None:
    """status.configHash: the config in which this object's current state was first published.

    It moves only when this object's own generation or conditions change (or it is first
    published), not when another object's edit produces a new config: otherwise one edit among
    N objects rewrites N statuses. None while the object is not in the published config.
    """
    if not included or not config_hash:
        return None
    had = {c.get("type"): (c.get("status"), c.get("reason"), c.get("observedGeneration"))
           for c in known.get("conditions") or [] if isinstance(c, Mapping)}
    now = {c["type"]: (c["status"], c["reason"], c["observedGeneration"]) for c in conds}
    same = known.get("configHash") and all(had.get(t) == v for t, v in now.items())
    return known["configHash"] if same else config_hash
