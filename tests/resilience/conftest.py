"""Resilience suite fixtures: simulators as real processes (started once, reset per test)."""

from __future__ import annotations

import pytest

from support import Sim


@pytest.fixture(scope="session")
def res_sims():
    started = {"a": Sim("res-a"), "b": Sim("res-b")}
    yield started
    for s in started.values():
        s.stop()


def _fresh(sim: Sim) -> Sim:
    sim.reset()
    return sim


@pytest.fixture()
def sim_a(res_sims):
    return _fresh(res_sims["a"])


@pytest.fixture()
def sim_b(res_sims):
    return _fresh(res_sims["b"])
