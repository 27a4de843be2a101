"""Process-wide state: the current `Gateway` plus what outlives config generations.

Health, breakers, the retry budget, the upstream session and metrics live here for the
life of the process. `install()` swaps in a new gateway in one assignment: a request reads
`state.gateway` once when it starts and keeps that generation to the end.
"""

from __future__ import annotations

import logging
import random
from pathlib import Path
from typing import Any, Callable

from .config import ConfigError, RoutingConfig, load_config
from .metrics import Metrics
from .policy import Clock, HealthRegistry, MonotonicClock, RetryBudget, TargetKey
from .engine import Gateway, build_gateway
from .transport import Upstream

log = logging.getLogger("detour.state")


class AppState:
    def __init__(self, *, config_path: str | Path | None = None, clock: Clock | None = None,
                 rng: random.Random | None = None, metrics: Metrics | None = None,
                 upstream: Upstream | None = None) -> None:
        self.config_path = Path(config_path) if config_path else None
        self.clock: Clock = clock or MonotonicClock()
        self.rng = rng or random.Random()
        self.metrics = metrics or Metrics()
        self.upstream = upstream or Upstream()
        self.gateway: Gateway | None = None
        self.registry: HealthRegistry | None = None
        self.budget: RetryBudget | None = None
        self.draining = False
        self.reload_error: str | None = None
        self.transition_hooks: list[Callable[[TargetKey, object, object], None]] = []
        self.services: dict[str, Any] = {}  # background services by name (reload, shared health)

    def _on_transition(self, key: TargetKey, old: object, new: object) -> None:
        state = getattr(new, "value", str(new))
        if self.registry is not None and self.registry.get(key) is None:
            # A forgotten target (removed by a reload) seen by a request still on the old
            # gateway: its metrics are gone, and a (provider, model) now served from another
            # baseURL must not take this stale state.
            return
        gauge = state
        if self.registry is not None and self._several_keys(key):
            # The gauge is per (provider, model): with several keys it shows the best key's state
            # (the model serves while any key does); the log names the key by its index.
            gauge = _best(self.registry, key, self.clock.now())
        self.metrics.breaker_changed(key.provider, key.model, state, gauge)
        log.warning("breaker %s/%s%s: %s -> %s", key.provider, key.model,
                    f" key {key.key_index}" if self._several_keys(key) else "", getattr(old, "value", old), state)
        for hook in self.transition_hooks:
            hook(key, old, new)

    def _several_keys(self, key: TargetKey) -> bool:
        gw = self.gateway
        prov = gw.providers.get(key.provider) if gw is not None else None
        return prov is not None and len(prov.key_credentials) > 1

    def install(self, config: RoutingConfig) -> Gateway:
        """Build a gateway for `config` and make it current (health state carries over)."""
        if self.registry is None:
            self.registry = HealthRegistry(config.health, self.clock, on_transition=self._on_transition)
        if self.budget is None or (self.gateway is not None and self.gateway.config.retry_budget != config.retry_budget):
            self.budget = RetryBudget(config.retry_budget, self.clock)
        gw = build_gateway(config, registry=self.registry, budget=self.budget, metrics=self.metrics,
                           rng=self.rng, clock=self.clock, previous=self.gateway)
        self.gateway = gw
        self.metrics.set_config(gw.hash)
        now = self.clock.now()
        self.metrics.retain({r.route.name for r in gw.routes},
                            {(t.key.provider, t.key.model): _best(self.registry, t.key, now)
                             for r in gw.routes for t in r.targets})
        return gw

    def load_and_install(self) -> Gateway:
        """Load the config file; an invalid file raises ConfigError and changes nothing."""
        if self.config_path is None:
            raise ConfigError("no config file")
        config = load_config(self.config_path)
        return self.install(config)

    @property
    def ready(self) -> bool:
        return self.gateway is not None and not self.draining


_RANK = {"closed": 0, "half-open": 1, "open": 2}


def _best(registry: HealthRegistry, key: TargetKey, now: float) -> str:
    """The best breaker state among the keys of `key`'s (provider, model, baseURL)."""
    states = [st.breaker_state(now).value for k, st in registry.items()
              if k.provider == key.provider and k.model == key.model and k.base_url == key.base_url]
    return min(states, key=_RANK.__getitem__) if states else "closed"
