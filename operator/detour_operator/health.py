"""Roll up the proxies' `detour.dev/health` Pod annotations into LLMProvider `status.health`.

Pure: annotations and a wall-clock `now` in, status dicts out. The annotation format is the
shared-health contract in docs/architecture.md. A pod's report is ignored when its `updated` is
older than 3 x its `heartbeatSeconds` (the pod is gone or stuck; its view is no longer evidence).
Numbers are rounded so that an unchanged picture produces an identical status (no patch churn).
"""

from __future__ import annotations

import datetime
import json
from collections.abc import Iterable, Mapping
from typing import Any

ANNOTATION = "detour.dev/health"
OPEN_STATES = {"open", "half-open"}


def parse_time(text: Any) -> datetime.datetime | None:
    if not isinstance(text, str):
        return None
    try:
        t = datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return t if t.tzinfo else t.replace(tzinfo=datetime.timezone.utc)


def parse_report(text: str | None) -> dict[str, Any] | None:
    """A pod's health report, or None if absent/garbled/of an unknown version."""
    if not text:
        return None
    try:
        doc = json.loads(text)
    except ValueError:
        return None
    if not isinstance(doc, dict) or doc.get("version") != 1 or not isinstance(doc.get("targets"), list):
        return None
    return doc


def fresh(report: Mapping[str, Any], now: datetime.datetime) -> bool:
    updated = parse_time(report.get("updated"))
    heartbeat = report.get("heartbeatSeconds") or 10
    if updated is None or not isinstance(heartbeat, (int, float)):
        return False
    return (now - updated).total_seconds() <= 3 * float(heartbeat)


def next_stale(reports: Iterable[Mapping[str, Any]], now: datetime.datetime) -> float | None:
    """Seconds until the first report that is fresh at `now` turns stale (None: none is fresh)."""
    out = None
    for report in reports:
        updated = parse_time(report.get("updated"))
        heartbeat = report.get("heartbeatSeconds") or 10
        if updated is None or not isinstance(heartbeat, (int, float)) or not fresh(report, now):
            continue
        left = 3 * float(heartbeat) - (now - updated).total_seconds()
        out = left if out is None else min(out, left)
    return out


#: Longest `modelsReady` string (a printer column): the rest is summarised as `+N more`.
MODELS_READY_MAX = 120


def _models(entries: list[Mapping[str, Any]], keys: int, degraded_ratio: float) -> list[dict[str, Any]]:
    """Per-model roll-up: which (model, key) targets are open, from every fresh pod's entries.

    A (model, key) is open when a pod opened it on its own evidence (every pod imports that open
    within the staleness bound, so every pod avoids it). `keys` is how many API keys the provider
    lists (a model may be reported with fewer: a key never used yet is ready)."""
    by_model: dict[str, dict[str, Any]] = {}
    for t in entries:
        model = t.get("model")
        if not isinstance(model, str) or not model:
            continue
        m = by_model.setdefault(model, {"open": set(), "seen": set(), "requests": 0, "failures": 0.0})
        key = t.get("key", 0)
        key = key if isinstance(key, int) and not isinstance(key, bool) and key >= 0 else 0
        m["seen"].add(key)
        if t.get("state") in OPEN_STATES and not t.get("imported"):
            m["open"].add(key)
        n = int(t.get("requests") or 0)
        m["requests"] += n
        m["failures"] += float(t.get("failureRatio") or 0.0) * n
    out = []
    for model in sorted(by_model):
        m = by_model[model]
        total = max(keys, max(m["seen"]) + 1)
        opened = len(m["open"])
        ratio = m["failures"] / m["requests"] if m["requests"] else 0.0
        state = ("Unavailable" if opened >= total else
                 "Degraded" if opened or ratio >= degraded_ratio else "Healthy")
        out.append({"name": model, "state": state, "keys": total, "readyKeys": total - opened})
    return out


def models_ready(models: list[Mapping[str, Any]], limit: int = MODELS_READY_MAX) -> str:
    """`kubectl get llmp`'s Models column: `model ready/total` (keys, or 1 for a provider with one
    key) for each model, unavailable ones first so they are never the part cut off."""
    ordered = sorted(models, key=lambda m: (m["state"] != "Unavailable", m["state"] != "Degraded", m["name"]))
    parts = [f"{m['name']} {m['readyKeys']}/{m['keys']}" for m in ordered]
    text = ", ".join(parts)
    if len(text) <= limit:
        return text
    shown: list[str] = []
    for n, part in enumerate(parts):
        rest = f", +{len(parts) - n} more"
        if len(", ".join(shown + [part])) + len(rest) > limit:
            return ", ".join(shown) + rest if shown else f"{len(parts)} models"
        shown.append(part)
    return text


def rollup(reports: Iterable[Mapping[str, Any]], provider: str, now: datetime.datetime,
           degraded_ratio: float = 0.5, keys: int = 1) -> dict[str, Any]:
    """`status.health` of one provider from the fresh reports of all proxy pods.

    `breaker` counts the pods that saw the provider fail themselves (an open period a pod
    imported from a peer is flagged `imported`; importers do not even publish it). Since every
    pod imports a peer's open breaker within the staleness bound, one such pod means every pod
    avoids that target. Health is per (model, key) (`models`): the provider is `Unavailable`
    only when no model has a ready key, and `Degraded` while some model or key is out (a failing
    model does not take its provider's other models down). `keys`: API keys the provider lists.
    """
    pods = opened = requests = truncated = 0
    failures = 0.0
    entries: list[Mapping[str, Any]] = []
    last: tuple[datetime.datetime, str, str] | None = None
    for report in reports:
        if not fresh(report, now):
            continue
        truncated += bool(report.get("omitted"))
        targets = [t for t in report["targets"] if isinstance(t, dict) and t.get("provider") == provider]
        if not targets:
            continue
        pods += 1
        opened += any(t.get("state") in OPEN_STATES and not t.get("imported") for t in targets)
        entries.extend(targets)
        for t in targets:
            n = int(t.get("requests") or 0)
            requests += n
            failures += float(t.get("failureRatio") or 0.0) * n
            at = parse_time(t.get("lastErrorAt"))
            if t.get("lastError") and at is not None and (last is None or at > last[0]):
                last = (at, str(t["lastError"]), str(t["lastErrorAt"]))
    ratio = round(failures / requests, 3) if requests else 0.0
    models = _models(entries, keys, degraded_ratio)
    if pods == 0:
        state = "Unknown"
    elif models and all(m["state"] == "Unavailable" for m in models):
        state = "Unavailable"
    elif opened or ratio >= degraded_ratio or any(m["state"] != "Healthy" for m in models):
        state = "Degraded"
    else:
        state = "Healthy"
    # No error in the window: lastError/lastErrorAt are absent. The status patch then sends explicit
    # nulls for them (conditions.status_patch), since a merge patch keeps keys it does not mention.
    health: dict[str, Any] = {"state": state, "breaker": f"{opened}/{pods} open", "requests": requests,
                              "failureRatio": ratio, "pods": pods}
    if last is not None:
        health["lastError"], health["lastErrorAt"] = last[1], last[2]
    if models:
        health["models"] = models
        health["modelsReady"] = models_ready(models)
    if truncated:
        health["truncatedReports"] = truncated
    return health


def reports_from_pods(pods: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Parsed reports of pods given as objects with metadata.annotations."""
    out = []
    for pod in pods:
        report = parse_report(((pod.get("metadata") or {}).get("annotations") or {}).get(ANNOTATION))
        if report is not None:
            out.append(report)
    return out


#: A roll-up's figures are rewritten only when they moved this much (see `settle`).
RATIO_STEP = 0.05
REQUESTS_STEP = 0.25
ERROR_AT_STEP = 60.0


def settle(previous: Mapping[str, Any] | None, rolled: dict[str, Any]) -> dict[str, Any]:
    """`rolled`, with the figures that move on every tick kept at their `previous` values unless
    they moved meaningfully: so an unchanged picture gives an identical status and no PATCH.

    Why: request counts and failure ratios change with every request, so a roll-up written as
    is would patch every LLMProvider every `healthInterval` (and echo to every watcher) while
    nothing a user acts on changed. State, breaker counts, pods and the error class are always
    current; `requests` is rewritten when it moved by 25 % (or crossed zero), `failureRatio` by
    0.05, and `lastErrorAt` when the error class changed or it is a minute newer.
    """
    if not previous or any(previous.get(k) != rolled.get(k)
                           for k in ("state", "breaker", "pods", "lastError", "truncatedReports", "models")):
        return rolled
    out = dict(rolled)
    old_n, new_n = int(previous.get("requests") or 0), int(rolled.get("requests") or 0)
    if (old_n == 0) == (new_n == 0) and abs(new_n - old_n) < REQUESTS_STEP * max(old_n, 1):
        out["requests"] = old_n
    old_r = float(previous.get("failureRatio") or 0.0)
    if abs(float(rolled.get("failureRatio") or 0.0) - old_r) < RATIO_STEP:
        out["failureRatio"] = previous.get("failureRatio", 0.0)
    old_at, new_at = parse_time(previous.get("lastErrorAt")), parse_time(rolled.get("lastErrorAt"))
    if old_at is not None and new_at is not None and (new_at - old_at).total_seconds() < ERROR_AT_STEP:
        out["lastErrorAt"] = previous["lastErrorAt"]
    return out
