"""Fixtures for tests against the real control plane (see realkube.py for the API).

`cluster` (session): the work tree's cluster, started if it is not up (`make cluster` keeps one up
between runs; one started here is stopped at the end). `namespace`: a fresh namespace per test,
deleted afterwards without waiting.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from cluster.realkube import ROOT, Cluster


@pytest.fixture(scope="session")
def cluster() -> Iterator[Cluster]:
    c = Cluster.ensure()
    yield c
    if c.started:
        c.stop()


@pytest.fixture(scope="session")
def crds(cluster: Cluster) -> Cluster:
    """The work tree's CRDs, installed the way docs/kubernetes.md says to upgrade them (Helm
    installs crds/ only with a release and never upgrades them): server-side apply that takes
    over the fields, so an older copy left by an earlier run or another manager is replaced."""
    cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(ROOT / "helm/detour/crds"))
    cluster.kubectl("wait", "--for=condition=Established", "--timeout=60s",
                    "crd/llmproviders.detour.dev", "crd/routingpolicies.detour.dev")
    return cluster


@pytest.fixture
def namespace(cluster: Cluster) -> Iterator[str]:
    name = f"t-{uuid.uuid4().hex[:8]}"
    cluster.kubectl("create", "namespace", name)
    yield name
    cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)
