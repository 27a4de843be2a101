"""Fixtures of the chart tests (helpers live in chartlib.py, a uniquely named module)."""

from __future__ import annotations

from typing import Any

import pytest

from chartlib import FULL_VALUES, render_docs


@pytest.fixture(scope="session")
def default_docs() -> list[dict[str, Any]]:
    return render_docs()


@pytest.fixture(scope="session")
def full_docs() -> list[dict[str, Any]]:
    return render_docs(FULL_VALUES)


@pytest.fixture(scope="session", params=["default", "full"])
def any_docs(request: pytest.FixtureRequest, default_docs: list[dict[str, Any]],
             full_docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return default_docs if request.param == "default" else full_docs
