"""The emulator's gap-fills behave like the real API server (other suites rely on them)."""

from __future__ import annotations

import kubernetes
import pytest
from conftest import NS, G, V

LLMP = {"apiVersion": f"{G}/{V}", "kind": "LLMProvider", "metadata": {"name": "p", "labels": {"a": "1"}},
        "spec": {"baseURL": "https://x"}, "status": {"observedGeneration": 99}}


def test_create_fills_server_fields_and_ignores_status(k8s, custom):
    obj = custom.create_namespaced_custom_object(G, V, NS, "llmproviders", LLMP)
    md = obj["metadata"]
    assert md["uid"] and md["resourceVersion"] and md["creationTimestamp"] and md["generation"] == 1
    assert md["namespace"] == NS and "status" not in obj


def test_status_subresource_isolation_and_generation(k8s, custom):
    custom.create_namespaced_custom_object(G, V, NS, "llmproviders", LLMP)
    # /status changes only status, and does not bump the generation
    obj = custom.patch_namespaced_custom_object_status(G, V, NS, "llmproviders", "p", {
        "status": {"observedGeneration": 1}, "spec": {"baseURL": "https://changed"}})
    assert obj["status"] == {"observedGeneration": 1} and obj["spec"]["baseURL"] == "https://x"
    assert obj["metadata"]["generation"] == 1
    # the main resource ignores status; spec changes bump the generation, metadata changes do not
    obj = custom.patch_namespaced_custom_object(G, V, NS, "llmproviders", "p", {
        "status": {"observedGeneration": 7}, "metadata": {"labels": {"b": "2"}}})
    assert obj["status"] == {"observedGeneration": 1} and obj["metadata"]["generation"] == 1
    obj = custom.patch_namespaced_custom_object(G, V, NS, "llmproviders", "p", {"spec": {"baseURL": "https://y"}})
    assert obj["metadata"]["generation"] == 2


def test_selectors_string_data_namespaces_and_list_metadata(k8s, core):
    core.create_namespaced_secret(NS, {"metadata": {"name": "s", "labels": {"app": "x"}}, "stringData": {"k": "v"}})
    core.create_namespaced_secret(NS, {"metadata": {"name": "t"}, "data": {"k": "dg=="}})
    assert core.read_namespaced_secret("s", NS).data == {"k": "dg=="}
    listed = core.list_namespaced_secret(NS, label_selector="app=x")
    assert [s.metadata.name for s in listed.items] == ["s"] and listed.metadata.resource_version.isdigit()
    assert [s.metadata.name for s in core.list_namespaced_secret(NS, field_selector="metadata.name=t").items] == ["t"]
    assert {n.metadata.name for n in core.list_namespace().items} >= {"default", "kube-system"}
    with pytest.raises(kubernetes.client.ApiException) as exc:
        core.create_namespaced_secret(NS, {"metadata": {"name": "s"}})
    assert exc.value.status == 409
