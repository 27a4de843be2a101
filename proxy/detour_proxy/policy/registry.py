"""All target states of a proxy process, keyed by `TargetKey`, across config reloads.

A reload builds new routes and planners, but the registry (and so every breaker, window,
latency estimate and rate-limit count) stays: only targets that no route names any more are
dropped (`retain`). It also installs each target's `limits`, split across replicas.
"""

from __future__ import annotations

from collections.abc import Iterable

from detour_proxy import config

from .breaker import BreakerState
from .target import TargetKey, TargetSnapshot, TargetState, TransitionCallback

__all__ = ["HealthRegistry", "merge_limits"]


def merge_limits(a: config.Limits | None, b: config.Limits | None) -> config.Limits | None:
    """The stricter of two limits, field by field (None = no limit)."""
    if a is None or b is None:
        return a if b is None else b

    def low(x: int | None, y: int | None) -> int | None:
        return y if x is None else x if y is None else min(x, y)

    return config.Limits(requests_per_minute=low(a.requests_per_minute, b.requests_per_minute),
                         tokens_per_minute=low(a.tokens_per_minute, b.tokens_per_minute))


class HealthRegistry:
    """All target states of a proxy, keyed by `TargetKey`, created on demand.

    `clock` is kept for callers that need "now" alongside the registry (the shared-health
    publisher); the registry itself only uses the `now` it is given.
    """

    def __init__(self, health: config.Health, clock: object | None = None,
                 on_transition: TransitionCallback | None = None) -> None:
        self.health = health
        self.clock = clock
        self.on_transition = on_transition
        self._states: dict[TargetKey, TargetState] = {}
        self._limits: dict[TargetKey, config.Limits] = {}
        #: `sharedHealth.replicas` from the config (used when no peers are visible).
        self.configured_replicas: int | None = None
        #: Proxy replicas seen through shared health (this one included); None = unknown.
        self.peer_replicas: int | None = None

    @property
    def replicas(self) -> int:
        """How many replicas share each target's limits: the shared-health peer count when
        known, else `sharedHealth.replicas`, else 1."""
        return self.peer_replicas or self.configured_replicas or 1

    def set_limits(self, limits: dict[TargetKey, config.Limits],
                   configured_replicas: int | None = None) -> None:
        """Install `Target.limits` per target (after a reload). A key that several routes
        name with different limits gets the smallest value of each field."""
        self.configured_replicas = configured_replicas
        self._limits = dict(limits)
        self._apply_limits()

    @property
    def has_limits(self) -> bool:
        """Some target has per-replica limits (so the replica count matters)."""
        return bool(self._limits)

    def set_peer_count(self, replicas: int | None) -> None:
        """Shared health saw this many proxy replicas (self included); re-splits the limits."""
        replicas = replicas if replicas is None or replicas >= 1 else None
        if replicas != self.peer_replicas:
            self.peer_replicas = replicas
            self._apply_limits()

    def _apply_limits(self) -> None:
        n = self.replicas
        for key, st in self._states.items():
            st.set_limits(self._limits.get(key), n)

    def state(self, key: TargetKey) -> TargetState:
        st = self._states.get(key)
        if st is None:
            st = self._states[key] = TargetState(key, self.health, self._notify)
            if key in self._limits:
                st.set_limits(self._limits[key], self.replicas)
        return st

    def get(self, key: TargetKey) -> TargetState | None:
        return self._states.get(key)

    def _notify(self, key: TargetKey, old: BreakerState, new: BreakerState) -> None:
        # Looked up at call time so a callback installed after construction still fires.
        if self.on_transition is not None:
            self.on_transition(key, old, new)

    def renew_key(self, provider: str, key_index: int, now: float) -> int:
        """The provider's `key_index`-th API key was replaced: every target on it starts afresh
        (`TargetState.key_renewed`). Returns how many targets that touched."""
        touched = [st for k, st in self._states.items() if k.provider == provider and k.key_index == key_index]
        for st in touched:
            st.key_renewed(now)
        return len(touched)

    def retain(self, keys: Iterable[TargetKey]) -> None:
        """Forget targets no longer in the config (after a reload)."""
        keep = set(keys)
        for k in [k for k in self._states if k not in keep]:
            del self._states[k]

    def update_settings(self, health: config.Health) -> None:
        self.health = health
        for st in self._states.values():
            st.update_settings(health)

    def items(self) -> list[tuple[TargetKey, TargetState]]:
        return list(self._states.items())

    def snapshot(self, now: float) -> list[TargetSnapshot]:
        return [st.snapshot(now) for st in self._states.values()]

    def __len__(self) -> int:
        return len(self._states)

    def __contains__(self, key: object) -> bool:
        return key in self._states
