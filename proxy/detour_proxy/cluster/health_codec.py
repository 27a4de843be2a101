"""Pure helpers of shared health: the `detour.dev/health` annotation format and the merge rules.

No I/O and no clock reads: every function takes the wall-clock time (`wall_now`, seconds since
the epoch) and, where local state is touched, the engine's monotonic time (`mono_now`). The
service in `shared_health.py` does the API calls and passes the clocks in, so these rules are
unit-tested with a `FakeClock` (tests/unit/shared_health/).

Format (one compact JSON document per pod, see docs/architecture.md)::

    {"version": 1, "pod": "detour-proxy-7c9f-abcde", "updated": "2026-11-25T15:00:00.250Z",
     "heartbeatSeconds": 10,
     "targets": [{"provider": "primary", "model": "gpt-4o-mini", "endpoint": "3f2a9c1e",
                  "state": "open", "openUntil": "2026-11-25T15:00:30.250Z", "failureRatio": 0.62,
                  "requests": 40, "lastError": "http_503", "lastErrorAt": "2026-11-25T14:59:58Z"}]}

`endpoint` is the first 8 hex digits of sha256(baseURL), so (provider, model, endpoint) names the
same `TargetKey` on every replica without publishing URLs. A provider with several API keys has
one entry per (model, key) with `"key": <index in apiKeys>` (absent for index 0): the index,
never the key or any part of it. Times are RFC 3339 UTC with
milliseconds (cooldowns in tests are shorter than a second matters). An open period learned only
from peers carries `"imported": true` and is never imported again by anyone (no echo: a
target would otherwise stay open by pods re-importing each other's copies).

Merge rules (`plan_imports`):
- our own pod's document is ignored;
- a document whose `updated` is older than 3 x its `heartbeatSeconds` is stale and ignored
  (a peer that stopped publishing, hung, or whose clock lags by more than that);
- only `state: open` entries with `openUntil` in the future, not `imported`, are imported; a
  peer's closed/half-open news never ends a local cooldown (only a local probe does);
- clock skew is bounded: the imported cooldown is min(openUntil - wall_now, openUntil - updated,
  maxCooldown). `openUntil - updated` is measured on the peer's own clock, so a peer whose clock
  runs ahead cannot stretch a cooldown beyond what it announced; `maxCooldown` caps everything.
- a peer that is gone (Pod deleted or finished) takes its claims with it: `PeerClaims` remembers
  which pod claimed which target open until when, and `forget_pod` names the targets no other
  live claim still covers, so the service can drop opens that were imported only from that pod.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar, cast

import orjson

__all__ = ["ANNOTATION", "VERSION", "STALE_HEARTBEATS", "CodecError", "PeerEntry", "PeerDoc",
           "endpoint_id", "format_time", "parse_time", "encode", "decode", "plan_imports",
           "is_stale", "PeerTable", "PeerClaims", "identity", "entry_identity", "local_identities", "merge_into"]

ANNOTATION = "detour.dev/health"
VERSION = 1
#: A peer whose last publish is older than this many of its heartbeats is ignored.
STALE_HEARTBEATS = 3

K = TypeVar("K")


class CodecError(ValueError):
    """An annotation that is not a valid health document (ignored, never fatal)."""


def endpoint_id(base_url: str) -> str:
    """First 8 hex digits of sha256(baseURL): compares endpoints without publishing URLs."""
    return hashlib.sha256(base_url.encode()).hexdigest()[:8]


def identity(provider: str, model: str, base_url: str, key_index: int = 0) -> tuple[Any, ...]:
    """The published identity of a target: (provider, model, endpoint id), plus the key's index
    for a provider's second and later API keys."""
    ident: tuple[Any, ...] = (provider, model, endpoint_id(base_url))
    return ident + (key_index,) if key_index else ident


def entry_identity(e: PeerEntry) -> tuple[Any, ...]:
    """`identity` of a decoded entry."""
    ident: tuple[Any, ...] = (e.provider, e.model, e.endpoint)
    return ident + (e.key,) if e.key else ident


def format_time(wall: float) -> str:
    t = _dt.datetime.fromtimestamp(wall, tz=_dt.timezone.utc)
    return t.strftime("%Y-%m-%dT%H:%M:%S.") + f"{t.microsecond // 1000:03d}Z"


def parse_time(text: Any) -> float | None:
    """RFC 3339 (with or without fraction, `Z` or an offset) -> epoch seconds; None if invalid."""
    if not isinstance(text, str) or not text:
        return None
    s = text.strip()
    if s.endswith(("Z", "z")):
        s = s[:-1] + "+00:00"
    try:
        t = _dt.datetime.fromisoformat(s)
    except ValueError:
        return None
    if t.tzinfo is None:
        t = t.replace(tzinfo=_dt.timezone.utc)
    return t.timestamp()


@dataclass(frozen=True, slots=True)
class PeerEntry:
    provider: str
    model: str
    endpoint: str
    state: str
    open_until: float | None        # wall clock
    failure_ratio: float
    requests: int
    last_error: str | None
    last_error_at: float | None      # wall clock
    imported: bool
    key: int = 0                     # index of the provider's API key (apiKeys), 0 for the first/only


@dataclass(frozen=True, slots=True)
class PeerDoc:
    pod: str
    updated: float                   # wall clock of the publish
    heartbeat: float
    targets: tuple[PeerEntry, ...]
    #: the report's probe claims as published (`health_probes.decode_claims` reads them)
    probes: Any = None


def _state_value(state: Any) -> str:
    return str(getattr(state, "value", state))


def encode(pod: str, snapshots: Iterable[Any], *, wall_now: float, mono_now: float,
           heartbeat: float, probes: list[dict[str, Any]] | None = None) -> str:
    """This pod's view as the annotation value. `snapshots` are `TargetSnapshot`s whose times
    are on the monotonic clock; `wall = wall_now + (t - mono_now)`. `probes`: the live probe
    claims, already encoded (`health_probes.encode_claims`)."""

    def wall(t: float | None) -> str | None:
        if t is None or not math.isfinite(t):
            return None
        return format_time(wall_now + (t - mono_now))

    targets = []
    for s in sorted(snapshots, key=lambda s: s.key):
        entry: dict[str, Any] = {
            "provider": s.key.provider, "model": s.key.model, "endpoint": endpoint_id(s.key.base_url),
            "state": _state_value(s.state),
        }
        if getattr(s.key, "key_index", 0):
            entry["key"] = s.key.key_index
        if s.open_until is not None and _state_value(s.state) == "open":
            entry["openUntil"] = wall(s.open_until)
        if s.imported:
            entry["imported"] = True
        entry["failureRatio"] = round(float(s.failure_ratio), 3)
        entry["requests"] = int(s.requests)
        if s.last_error:
            entry["lastError"] = s.last_error
            at = wall(s.last_error_at)
            if at:
                entry["lastErrorAt"] = at
        targets.append(entry)
    doc = {"version": VERSION, "pod": pod, "updated": format_time(wall_now),
           "heartbeatSeconds": heartbeat, "targets": targets}
    if probes:
        doc["probes"] = probes
    return orjson.dumps(doc).decode()


def decode(text: str | bytes) -> PeerDoc:
    """Parse an annotation value; raises CodecError when it is not a version-1 health document.
    Unknown fields are ignored (newer writers may add some); bad entries are skipped."""
    try:
        doc = orjson.loads(text)
    except orjson.JSONDecodeError:
        raise CodecError("not JSON") from None
    if not isinstance(doc, dict):
        raise CodecError("not an object")
    if doc.get("version") != VERSION:
        raise CodecError(f"unsupported version {doc.get('version')!r}")
    updated = parse_time(doc.get("updated"))
    if updated is None:
        raise CodecError("missing or invalid 'updated'")
    hb = doc.get("heartbeatSeconds")
    if not isinstance(hb, (int, float)) or isinstance(hb, bool) or not hb > 0 or not math.isfinite(hb):
        raise CodecError("missing or invalid 'heartbeatSeconds'")
    raw_targets = doc.get("targets") or []
    if not isinstance(raw_targets, list):
        raise CodecError("'targets' is not a list")
    entries = []
    for t in raw_targets:
        if not isinstance(t, dict):
            continue
        provider, model, endpoint, state = (t.get("provider"), t.get("model"), t.get("endpoint"),
                                            t.get("state"))
        if not all(isinstance(x, str) and x for x in (provider, model, endpoint, state)):
            continue
        ratio = t.get("failureRatio", 0.0)
        reqs = t.get("requests", 0)
        key = t.get("key", 0)
        if not isinstance(key, int) or isinstance(key, bool) or key < 0:
            continue
        entries.append(PeerEntry(
            provider=cast(str, provider), model=cast(str, model), endpoint=cast(str, endpoint),
            state=cast(str, state),
            open_until=parse_time(t.get("openUntil")),
            failure_ratio=float(ratio) if isinstance(ratio, (int, float)) else 0.0,
            requests=int(reqs) if isinstance(reqs, (int, float)) else 0,
            last_error=t.get("lastError") if isinstance(t.get("lastError"), str) else None,
            last_error_at=parse_time(t.get("lastErrorAt")),
            imported=t.get("imported") is True, key=key,
        ))
    pod = doc.get("pod")
    pod = pod if isinstance(pod, str) else ""
    return PeerDoc(pod=pod, updated=updated, heartbeat=float(hb), targets=tuple(entries),
                   probes=doc.get("probes"))


def is_stale(doc: PeerDoc, wall_now: float) -> bool:
    """Older than STALE_HEARTBEATS of the peer's own heartbeat (a clock ahead of ours is fresh)."""
    return wall_now - doc.updated > STALE_HEARTBEATS * doc.heartbeat


def plan_imports(doc: PeerDoc, *, own_pod: str, wall_now: float,
                 local: Mapping[tuple[Any, ...], K], max_cooldown: float,
                 pod_name: str | None = None) -> tuple[list[tuple[K, float]], str | None]:
    """What to import from one peer document: `([(key, seconds_from_now), ...], reason)`.

    `local` maps `identity(...)` -> the local key for every target this pod serves; entries for
    targets we do not serve are skipped. `pod_name` is the Pod the annotation was read from (it
    wins over the document's own `pod` field). `reason` is None when the document was
    considered, else why it was ignored: `own`, `stale`.
    """
    pod = pod_name or doc.pod
    if pod == own_pod:
        return [], "own"
    if is_stale(doc, wall_now):
        return [], "stale"
    out: list[tuple[K, float]] = []
    for e in doc.targets:
        if e.state != "open" or e.imported or e.open_until is None:
            continue
        key = local.get(entry_identity(e))
        if key is None:
            continue
        remaining = min(e.open_until - wall_now, e.open_until - doc.updated, max_cooldown)
        if remaining > 0:
            out.append((key, remaining))
    return out, None


class PeerTable:
    """The last document seen from each peer Pod (pure bookkeeping, no clock of its own)."""

    def __init__(self) -> None:
        self._docs: dict[str, PeerDoc | None] = {}
        self._raw: dict[str, str | None] = {}

    def changed(self, pod: str, raw: str | None) -> bool:
        """Is `raw` different from the last annotation value seen for `pod`?"""
        return pod not in self._raw or self._raw[pod] != raw

    def update(self, pod: str, raw: str | None, doc: PeerDoc | None) -> None:
        self._raw[pod] = raw
        self._docs[pod] = doc

    def remove(self, pod: str) -> None:
        self._raw.pop(pod, None)
        self._docs.pop(pod, None)

    def retain(self, pods: Iterable[str]) -> None:
        keep = set(pods)
        for p in [p for p in self._raw if p not in keep]:
            self.remove(p)

    def fresh(self, wall_now: float) -> list[str]:
        """Peers with a document that is not stale."""
        return sorted(p for p, d in self._docs.items() if d is not None and not is_stale(d, wall_now))

    def pods(self) -> list[str]:
        return sorted(self._raw)

    def get(self, pod: str) -> PeerDoc | None:
        return self._docs.get(pod)


class PeerClaims:
    """Which peer pods claimed which targets open, and until when (engine's monotonic clock).

    Kept so that a peer's claims can be withdrawn when its Pod is deleted: an open period
    imported only from a pod that no longer exists is evidence nobody stands behind any more.
    Expired claims are pruned as they are seen, so the table stays O(targets x peers).
    """

    def __init__(self) -> None:
        self._by_key: dict[Any, dict[str, float]] = {}

    def record(self, key: Any, pod: str, until: float, now: float) -> None:
        pods = self._by_key.setdefault(key, {})
        pods[pod] = max(pods.get(pod, -math.inf), until)
        for p in [p for p, u in pods.items() if u <= now]:
            del pods[p]

    def claimants(self, key: Any, now: float) -> list[str]:
        """Pods whose claim on `key` has not expired."""
        return sorted(p for p, u in self._by_key.get(key, {}).items() if u > now)

    def forget_pod(self, pod: str, now: float) -> list[Any]:
        """Withdraw `pod`'s claims; the keys it claimed (live) that no other live claim covers."""
        orphaned = []
        for key in list(self._by_key):
            pods = self._by_key[key]
            until = pods.pop(pod, None)
            if until is not None and until > now and not any(u > now for u in pods.values()):
                orphaned.append(key)
            if not any(u > now for u in pods.values()):
                del self._by_key[key]
        return orphaned


def local_identities(keys: Iterable[Any]) -> dict[tuple[Any, ...], Any]:
    """`identity -> TargetKey` for the local targets (keys are `TargetKey`s)."""
    return {identity(k.provider, k.model, k.base_url, getattr(k, "key_index", 0)): k for k in keys}


def merge_into(registry: Any, doc: PeerDoc, *, own_pod: str, wall_now: float, mono_now: float,
               pod_name: str | None = None, claims: PeerClaims | None = None) -> tuple[int, str | None]:
    """Apply one peer document to a `HealthRegistry`: `(entries merged, ignore reason)`.

    A merged entry is an `import_open` that changed local state (opened, or lengthened an
    imported open); `TargetState.import_open` itself never shortens a cooldown and bounds the
    deadline to `maxCooldown` from `mono_now` again. Every planned import, merged or not, is
    recorded in `claims` (the pod stands behind that open period too).
    """
    local = local_identities(k for k, _ in registry.items())
    plan, reason = plan_imports(doc, own_pod=own_pod, wall_now=wall_now, local=local,
                                max_cooldown=registry.health.breaker.max_cooldown, pod_name=pod_name)
    merged = 0
    for key, remaining in plan:
        st = registry.get(key)
        if st is not None and st.import_open(mono_now + remaining, mono_now):
            merged += 1
        if claims is not None:
            claims.record(key, pod_name or doc.pod, mono_now + remaining, mono_now)
    return merged, reason
