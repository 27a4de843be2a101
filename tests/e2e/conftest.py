"""End-to-end fixtures: simulated providers (processes) for multi-proxy tests."""

from __future__ import annotations

import pytest

from support import Sim


@pytest.fixture(scope="module")
def sim_a():
    s = Sim("a")
    yield s
    s.stop()


@pytest.fixture(scope="module")
def sim_b():
    s = Sim("b")
    yield s
    s.stop()
