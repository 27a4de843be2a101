"""When a pod's health report is worth a write, and how it stays under the annotation size limit.

Pure (no I/O, no clock reads), so the rules are unit-tested on their own.

Why publish on change only: every write of the annotation is a watch event for every watcher of
the Pod. Written on a fixed heartbeat, N pods cost N/heartbeat writes per second at rest and,
when every pod watches every other, N²/heartbeat watch events (4,000/s at 200 replicas). So a
report is written when it *means* something new (`significant`), plus a rare keepalive:

- a breaker state change on local evidence, a new local open period: at once (the service holds
  it back to `minInterval` after the previous write);
- request figures that moved meaningfully (requests by 25 %, failure ratio by 0.05) or a new
  error class, checked once per `heartbeat`;
- otherwise once per `keepalive` (readers drop a report 3 keepalives old).

An open period imported from a peer is not news: the importer stays silent (its peers have the
same report from the same source). Nor is a local open of a target that a live peer has already
announced open, and a local open waits a random part of `minInterval` before it is written, so
when every replica sees an outage at once, the first write suppresses most others (as in
multicast NACK suppression): a handful of writes, each an event for N watchers, instead of N.

`reports_open` says whether a report carries a local open/half-open breaker (or a probe claim,
`health_probes`): the pod then labels itself `detour.dev/health-open`, and peers watch only
labelled pods, so at rest nobody receives anything. A new probe claim is news at once; a claim
that ended is not (it expires by itself where it was read).

Size: all annotations of one object together may hold 256 KiB. `fit` keeps a report under
`MAX_REPORT_BYTES` by leaving out, in turn, closed targets without errors, then every closed
target, then whatever does not fit; the document says how many it left out (`omitted`), so
readers (the operator's roll-up) can say so instead of the PATCH failing with 422 forever.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson

from .health_codec import PeerDoc, PeerEntry, entry_identity
from .health_probes import decode_claims

__all__ = ["OPEN_LABEL", "MAX_REPORT_BYTES", "significant", "reports_open", "fit"]

#: Label a pod carries while its report holds a locally observed open/half-open breaker.
OPEN_LABEL = "detour.dev/health-open"
#: Room left for other annotations (kubectl's last-applied, ...) under the 256 KiB total.
MAX_REPORT_BYTES = 200 * 1024
REQUESTS_STEP = 0.25
RATIO_STEP = 0.05
_OPEN = ("open", "half-open")


Identity = tuple[Any, ...]  # (provider, model, endpoint[, key index]): health_codec.identity


def _ident(e: PeerEntry) -> Identity:
    return entry_identity(e)


def _local_state(e: PeerEntry, announced: frozenset[Identity] = frozenset()) -> str:
    """The state peers need to hear about: an imported open is nobody's news (the source published
    it), and neither is a local open of a target a live peer has already announced open (its peers
    already avoid it: one announcement is enough, N would cost N x N watch events)."""
    if e.imported or (e.state == "open" and _ident(e) in announced):
        return "closed"
    return e.state


def _news(e: PeerEntry, announced: frozenset[Identity] = frozenset()) -> tuple[Any, ...]:
    """What changes the meaning of an entry (figures are compared with a tolerance instead)."""
    state = _local_state(e, announced)
    return (state, e.open_until if state == "open" else None)


def significant(previous: PeerDoc | None, doc: PeerDoc, *, figures: bool = True,
                announced: frozenset[Identity] = frozenset()) -> bool:
    """Is `doc` worth a write, given the `previous` report that was written? Request figures
    count only when `figures` (at a heartbeat, not at a breaker change); opens of `announced`
    targets are no news."""
    if previous is None:
        return True
    if _claims(doc) - _claims(previous):
        return True   # a new probe claim: peers must see it before the probe goes (an ended one is not news)
    before = {_ident(e): e for e in previous.targets}
    now = {_ident(e): e for e in doc.targets}
    if before.keys() != now.keys():
        return True
    for key, e in now.items():
        old = before[key]
        if _news(e, announced) != _news(old):
            return True
        if not figures:
            continue
        if e.last_error != old.last_error:
            return True
        if (old.requests == 0) != (e.requests == 0) or \
                abs(e.requests - old.requests) >= REQUESTS_STEP * max(old.requests, 1):
            return True
        if abs(e.failure_ratio - old.failure_ratio) >= RATIO_STEP:
            return True
    return False


def reports_open(doc: PeerDoc, announced: frozenset[Identity] = frozenset()) -> bool:
    """Does the report hold an open or half-open breaker this pod saw itself (not imported, not
    already announced by a live peer), or a probe claim (peers watch only labelled pods)?"""
    return any(_local_state(e, announced) in _OPEN for e in doc.targets) or bool(_claims(doc))


def _claims(doc: PeerDoc) -> set[tuple[Any, ...]]:
    """The probe claims of a report: (target identity, since)."""
    return {(e.identity, e.since) for e in decode_claims(doc.probes)}


def fit(text: str, limit: int = MAX_REPORT_BYTES) -> tuple[str, int]:
    """`text` (an encoded report) cut down to `limit` bytes: `(text, targets left out)`."""
    if len(text.encode()) <= limit:
        return text, 0
    doc = orjson.loads(text)
    targets: list[dict[str, Any]] = doc["targets"]
    total = len(targets)
    keeps: tuple[Callable[[dict[str, Any]], bool], ...] = (lambda t: t.get("state") != "closed" or bool(t.get("lastError")),
             lambda t: t.get("state") != "closed" and not t.get("imported"))
    for keep in keeps:
        targets = [t for t in targets if keep(t)]
        doc["targets"], doc["omitted"] = targets, total - len(targets)
        out = orjson.dumps(doc)
        if len(out) <= limit:
            return out.decode(), total - len(targets)
    # Still too large (thousands of open targets): as many as fit, in the encoder's order.
    size = len(orjson.dumps({**doc, "targets": [], "omitted": total}))
    kept = []
    for t in targets:
        size += len(orjson.dumps(t)) + 1
        if size > limit:
            break
        kept.append(t)
    doc["targets"], doc["omitted"] = kept, total - len(kept)
    return orjson.dumps(doc).decode(), total - len(kept)
