"""Probe claims in the `detour.dev/health` annotation: which replica is about to probe which target.

Pure (no I/O, no clock reads). A pod that wants to send an active probe (`cluster.prober`,
`policy.probes`) lists the claim in its report::

    "probes": [{"provider": "primary", "model": "gpt-4o-mini", "endpoint": "3f2a9c1e",
                "since": "2026-11-25T15:00:00.250Z", "until": "2026-11-25T15:01:00.250Z"}]

(`"key": N` too for a provider's later API keys, as in `targets`). Peers that see a live claim
skip that target; when two replicas claimed at once, the earliest `since` wins (ties: pod name)
on every replica, since each compares the same published figures. A claim ends by itself at
`until`: a replica that dies holds nothing for long. Skew is bounded as for imported opens: a
claim lasts at most min(until - now, until - the report's `updated`, `max_hold`) here.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, cast

from .health_codec import PeerDoc, endpoint_id, format_time, is_stale, local_identities, parse_time

__all__ = ["ProbeEntry", "MAX_CLAIM_HOLD", "encode_claims", "decode_claims", "plan_claims", "merge_claims"]

#: The longest a peer's probe claim is honoured, whatever it says.
MAX_CLAIM_HOLD = 3600.0


@dataclass(frozen=True, slots=True)
class ProbeEntry:
    provider: str
    model: str
    endpoint: str
    since: float      # wall clock
    until: float      # wall clock
    key: int = 0      # index of the provider's API key (0: the first or only one)

    @property
    def identity(self) -> tuple[Any, ...]:
        ident: tuple[Any, ...] = (self.provider, self.model, self.endpoint)
        return ident + (self.key,) if self.key else ident


def encode_claims(claims: Iterable[tuple[Any, float, float]], *, wall_now: float,
                  mono_now: float) -> list[dict[str, Any]]:
    """The `probes` list of a report: `claims` are (TargetKey, since_wall, until_mono)."""
    out = []
    for key, since, until in sorted(claims, key=lambda c: tuple(c[0])):
        if until <= mono_now:
            continue
        entry: dict[str, Any] = {"provider": key.provider, "model": key.model,
                                 "endpoint": endpoint_id(key.base_url)}
        if getattr(key, "key_index", 0):
            entry["key"] = key.key_index
        entry["since"] = format_time(since)
        entry["until"] = format_time(wall_now + (until - mono_now))
        out.append(entry)
    return out


def decode_claims(raw: Any) -> tuple[ProbeEntry, ...]:
    """The `probes` of a report (`PeerDoc.probes`, as published); entries of the wrong shape are
    skipped (never fatal)."""
    if not isinstance(raw, list):
        return ()
    out = []
    for t in raw:
        if not isinstance(t, dict):
            continue
        provider, model, endpoint = t.get("provider"), t.get("model"), t.get("endpoint")
        if not all(isinstance(x, str) and x for x in (provider, model, endpoint)):
            continue
        since, until = parse_time(t.get("since")), parse_time(t.get("until"))
        key = t.get("key", 0)
        if since is None or until is None or not isinstance(key, int) or isinstance(key, bool) or key < 0:
            continue
        out.append(ProbeEntry(cast(str, provider), cast(str, model), cast(str, endpoint), since, until, key))
    return tuple(out)


def plan_claims(entries: Iterable[ProbeEntry], *, updated: float, wall_now: float, mono_now: float,
                local: Mapping[tuple[Any, ...], Hashable], max_hold: float) -> list[tuple[Hashable, float, float]]:
    """A peer's live claims on targets this pod serves: (local key, since_wall, until_mono)."""
    out = []
    for e in entries:
        key = local.get(e.identity)
        if key is None:
            continue
        remaining = min(e.until - wall_now, e.until - updated, max_hold)
        if remaining > 0:
            out.append((key, e.since, mono_now + remaining))
    return out


def merge_claims(table: Any, pod: str, doc: PeerDoc, keys: Iterable[Any], *, wall_now: float,
                 mono_now: float) -> None:
    """Replace `pod`'s claims in `table` (`policy.ProbeClaims`) with those of its report `doc`;
    a stale report (`health_codec.is_stale`) claims nothing. `keys`: the local `TargetKey`s."""
    if is_stale(doc, wall_now):
        table.forget_pod(pod)
        return
    planned = plan_claims(decode_claims(doc.probes), updated=doc.updated, wall_now=wall_now,
                          mono_now=mono_now, local=local_identities(keys), max_hold=MAX_CLAIM_HOLD)
    table.replace_pod(pod, planned, mono_now)
