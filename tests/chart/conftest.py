"""Fixtures of the chart tests (helpers live in chartlib.py, a uniquely named module)."""

from __future__ import annotations

from typing import Any

import pytest

from chartlib import FULL_VALUES, KIND_VALUES, render_docs


@pytest.fixture(scope="session")
def default_docs() -> list[dict[str, Any]]:
    return render_docs()


@pytest.fixture(scope="session")
def full_docs() -> list[dict[str, Any]]:
    return render_docs(FULL_VALUES)


@pytest.fixture(scope="session")
def kind_docs() -> list[dict[str, Any]]:
    """The values docs/kubernetes.md installs on kind (helm/detour/ci/kind-values.yaml)."""
    return render_docs(KIND_VALUES)


@pytest.fixture(scope="session", params=["default", "full", "kind"])
def any_docs(request: pytest.FixtureRequest, default_docs: list[dict[str, Any]],
             full_docs: list[dict[str, Any]], kind_docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return {"default": default_docs, "full": full_docs, "kind": kind_docs}[request.param]
