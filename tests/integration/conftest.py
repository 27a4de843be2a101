"""Simulators are started once per session (process start is the slow part) and reset per test."""

from __future__ import annotations

import pytest

from support import Sim


@pytest.fixture(scope="session")
def sims():
    started = {
        "primary": Sim("primary"),
        "secondary": Sim("secondary"),
        "azure": Sim("azure"),
        "anthropic": Sim("anthropic", "anthropic"),
    }
    yield started
    for s in started.values():
        s.stop()


@pytest.fixture()
def primary(sims):
    sims["primary"].reset()
    return sims["primary"]


@pytest.fixture()
def secondary(sims):
    sims["secondary"].reset()
    return sims["secondary"]


@pytest.fixture()
def azure(sims):
    sims["azure"].reset()
    return sims["azure"]


@pytest.fixture()
def anthropic_sim(sims):
    sims["anthropic"].reset()
    return sims["anthropic"]
