"""Simulators are started once per session (process start is the slow part) and reset per test."""

from __future__ import annotations

import pytest

from support import Sim

SIMS = {"primary": "openai", "secondary": "openai", "azure": "openai", "anthropic": "anthropic", "google": "google",
        "bedrock": "bedrock"}


@pytest.fixture(scope="session")
def sims():
    started = {name: Sim(name, flavor) for name, flavor in SIMS.items()}
    yield started
    for s in started.values():
        s.stop()


def _fresh(name: str):
    @pytest.fixture()
    def fixture(sims):
        sims[name].reset()
        return sims[name]
    return fixture


primary = _fresh("primary")
secondary = _fresh("secondary")
azure = _fresh("azure")
anthropic_sim = _fresh("anthropic")
google_sim = _fresh("google")
bedrock_sim = _fresh("bedrock")
