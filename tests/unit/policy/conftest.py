"""Shared builders for the policy tests (fixtures, so no package layout is needed)."""

from __future__ import annotations

import pytest

from detour_proxy import config
from detour_proxy.policy import FakeClock, HealthRegistry, TargetKey


def health(window: float = 60.0, slow_call: dict | None = None, **breaker) -> config.Health:
    return config.Health(
        window=window,
        breaker=config.Breaker(**breaker),
        slow_call=config.SlowCall(**slow_call) if slow_call is not None else None,
    )


@pytest.fixture
def make_health():
    return health


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(1000.0)


@pytest.fixture
def key() -> TargetKey:
    return TargetKey("primary", "gpt-4o-mini", "https://primary.example/v1")


@pytest.fixture
def make_state(key):
    """A fresh TargetState with the given breaker settings, plus its transition log."""

    def build(window: float = 60.0, slow_call: dict | None = None, **breaker):
        log: list[tuple[str, str]] = []
        reg = HealthRegistry(health(window, slow_call, **breaker),
                             on_transition=lambda k, old, new: log.append((old.value, new.value)))
        return reg.state(key), log

    return build
