"""Active probes: when a target with an open breaker and no traffic is due for a probe, and which
replica sends it.

Why: a breaker closes only after a successful probe, and without active probes the probe is a
real client request. A target that failed while nobody used it stays open (half-open, in
`kubectl get llmp`) until the next client request pays for the probe. With a provider's
`activeProbes` enabled, the proxy sends a tiny completion instead, when all of these hold
(`probe_due`):

- the breaker's cooldown is over (half-open) and it would admit a probe now: a free probe slot,
  no sideline, the target's limits admit. A probe never shortens a cooldown, so its rate is at
  most one per cooldown, which doubles on every failed probe up to `maxCooldown`;
- the target saw no attempt (client request or probe) for `interval`: traffic probes by itself;
- no peer replica holds a live claim on it (`ProbeClaims`).

One replica at a time: a replica that wants to probe publishes a claim (target, since, until)
through shared health, waits long enough for a peer's simultaneous claim to arrive, and probes
only if its claim wins (`ProbeClaims.winner`: the earliest `since`, ties by pod name). Every
replica compares the same published figures, so they agree on the winner. A claim lasts one
`interval` (one probe per interval across the replicas) and expires by itself, so a replica that
dies while probing holds nothing for long.

Pure: every call takes `now` (the engine's monotonic clock); `since` is the claimant's wall
clock as published, used only to order claims.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable
from dataclasses import dataclass

from .breaker import BreakerState
from .target import TargetState

__all__ = ["ProbeClaim", "ProbeClaims", "probe_due"]


def probe_due(state: TargetState, now: float, interval: float, *, claimed_by_peer: bool = False) -> bool:
    """Is `state`'s target due for an active probe at `now` (see the module docstring)?"""
    if claimed_by_peer:
        return False
    if state.breaker_state(now) is not BreakerState.HALF_OPEN or not state.admits(now):
        return False
    return now - state.last_attempt >= interval


@dataclass(frozen=True, slots=True)
class ProbeClaim:
    """One replica's claim to probe one target."""

    pod: str
    since: float    # the claimant's wall clock when it claimed (orders claims; same figure everywhere)
    until: float    # engine clock: the claim is void from then on

    @property
    def rank(self) -> tuple[float, str]:
        return (self.since, self.pod)


class ProbeClaims:
    """Live probe claims per target, this replica's own included."""

    def __init__(self) -> None:
        self._by_key: dict[Hashable, dict[str, ProbeClaim]] = {}

    def claim(self, key: Hashable, pod: str, since: float, until: float) -> ProbeClaim:
        c = ProbeClaim(pod, since, until)
        self._by_key.setdefault(key, {})[pod] = c
        return c

    def withdraw(self, key: Hashable, pod: str) -> None:
        pods = self._by_key.get(key)
        if pods is not None:
            pods.pop(pod, None)
            if not pods:
                del self._by_key[key]

    def replace_pod(self, pod: str, claims: Iterable[tuple[Hashable, float, float]], now: float) -> None:
        """`pod`'s published claims are now exactly `claims` ((key, since, until) each): a peer's
        report carries its whole current set."""
        self.forget_pod(pod)
        for key, since, until in claims:
            if until > now:
                self.claim(key, pod, since, until)

    def forget_pod(self, pod: str) -> None:
        for key in [k for k, pods in self._by_key.items() if pod in pods]:
            self.withdraw(key, pod)

    def live(self, key: Hashable, now: float) -> list[ProbeClaim]:
        """The live claims on `key`, best first (earliest `since`, then pod name)."""
        pods = self._by_key.get(key)
        if not pods:
            return []
        for p in [p for p, c in pods.items() if c.until <= now]:
            del pods[p]
        if not pods:
            del self._by_key[key]
            return []
        return sorted(pods.values(), key=lambda c: c.rank)

    def winner(self, key: Hashable, now: float) -> str | None:
        """The pod whose live claim on `key` wins, or None when nobody claims it."""
        live = self.live(key, now)
        return live[0].pod if live else None

    def claimed_by_other(self, key: Hashable, pod: str, now: float) -> bool:
        """Does a pod other than `pod` hold a live claim on `key`?"""
        return any(c.pod != pod for c in self.live(key, now))

    def held_by(self, pod: str, now: float) -> list[tuple[Hashable, ProbeClaim]]:
        """`pod`'s live claims (what this replica publishes)."""
        out = []
        for key in list(self._by_key):
            for c in self.live(key, now):
                if c.pod == pod:
                    out.append((key, c))
        return out
