"""The chart's ValidatingAdmissionPolicy on the real API server (issue 14, point 6): a proxy's
ServiceAccount token, bound to its Pod as the kubelet mounts it, may change only that Pod's
`detour.dev/health` annotation and `detour.dev/health-open` label. RBAC alone (patch pods in the
namespace) would let it rewrite any Pod, the operator's included."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import orjson
import pytest

from cluster.realkube import Cluster, wait_for
from cluster.scale_support import PROXY_SA, install_chart_rbac

LABELS = {"app.kubernetes.io/component": "proxy"}


def pod(name: str, sa: str, labels: dict[str, str]) -> dict:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "labels": labels},
            "spec": {"serviceAccountName": sa, "automountServiceAccountToken": False,
                     "containers": [{"name": "c", "image": "detour-proxy:test"}]}}


@pytest.fixture
def pods(cluster: Cluster, namespace: str) -> Iterator[Cluster]:
    admission = install_chart_rbac(cluster, namespace)
    cluster.apply([pod("proxy-1", PROXY_SA, LABELS), pod("proxy-2", PROXY_SA, LABELS),
                   pod("operator-1", "detour-operator", {"app.kubernetes.io/component": "operator"})], ns=namespace)
    yield cluster
    cluster.kubectl("delete", *admission, "--ignore-not-found", check=False)


def patch(cluster: Cluster, ns: str, token: str, name: str, metadata: dict) -> httpx.Response:
    """A merge patch as the proxy sends it (no GET first)."""
    return httpx.patch(f"{cluster.server}/api/v1/namespaces/{ns}/pods/{name}",
                       content=orjson.dumps({"metadata": metadata}),
                       headers={"Authorization": f"Bearer {token}", "Content-Type": "application/merge-patch+json"},
                       verify=str(cluster.dir / "pki" / "ca.crt"), timeout=10)


def test_a_proxy_may_change_only_its_own_pods_health(pods: Cluster, namespace: str) -> None:
    ns = namespace
    token = pods.token(PROXY_SA, ns, pod="proxy-1")  # what the kubelet mounts into proxy-1
    # A new policy is enforced once the API server's policy informer has it (about a second).
    wait_for(lambda: patch(pods, ns, token, "operator-1", {"annotations": {"detour.dev/health": "{}"}})
             .status_code == 403, 30, "the admission policy to be enforced")
    own = patch(pods, ns, token, "proxy-1", {"annotations": {"detour.dev/health": "{}"},
                                             "labels": {"detour.dev/health-open": "true"}})
    assert own.status_code == 200, own.text
    assert patch(pods, ns, token, "proxy-1", {"labels": {"detour.dev/health-open": None}}).status_code == 200

    refused = {
        "a peer's Pod": ("proxy-2", {"annotations": {"detour.dev/health": "{}"}}),
        "the operator's Pod": ("operator-1", {"annotations": {"detour.dev/health": "{}"}}),
        "another annotation": ("proxy-1", {"annotations": {"example.com/x": "1"}}),
        "another label": ("proxy-1", {"labels": {"app.kubernetes.io/component": "operator"}}),
        "another label value": ("proxy-1", {"labels": {"detour.dev/health-open": "yes"}}),
        "a finalizer": ("proxy-1", {"finalizers": ["example.com/keep"]}),
    }
    for what, (name, metadata) in refused.items():
        r = patch(pods, ns, token, name, metadata)
        assert r.status_code == 403 and "ValidatingAdmissionPolicy" in r.text, (what, r.status_code, r.text)

    # A token not bound to a Pod changes nothing, not even a health annotation.
    unbound = pods.token(PROXY_SA, ns)
    r = patch(pods, ns, unbound, "proxy-1", {"annotations": {"detour.dev/health": "{}"}})
    assert r.status_code == 403 and "its own Pod" in r.text, r.text
    # Others (the operator, an admin) are not affected by the policy.
    pods.kubectl("annotate", "pod", "proxy-2", "example.com/by-admin=1", ns=ns)
