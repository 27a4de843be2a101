"""ConfigMap/Secret builders and the change-only patches."""

from __future__ import annotations

from detour_operator import manifests as m

OWNERS = m.owner_references([
    {"kind": "RoutingPolicy", "metadata": {"name": "chat", "uid": "2"}},
    {"kind": "LLMProvider", "metadata": {"name": "openai", "uid": "1"}},
    {"kind": "LLMProvider", "metadata": {"name": "no-uid-yet"}},
])


def test_owner_references_are_sorted_and_complete():
    assert [(o["kind"], o["name"]) for o in OWNERS] == [("LLMProvider", "openai"), ("RoutingPolicy", "chat")]
    assert all(o["apiVersion"] == "detour.dev/v1alpha1" and o["blockOwnerDeletion"] is False for o in OWNERS)


def test_configmap_and_secret_shape():
    cm = m.configmap("ns", b"providers: []\n", "abc", OWNERS)
    assert cm["metadata"]["name"] == "detour-routing" and cm["data"] == {"config.yaml": "providers: []\n"}
    assert cm["metadata"]["annotations"] == {"detour.dev/config-hash": "abc"}
    assert cm["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "detour-operator"
    s = m.secret("ns", {"b": "Yg==", "a": "YQ=="}, OWNERS)
    assert s["metadata"]["name"] == "detour-credentials" and list(s["data"]) == ["a", "b"] and s["type"] == "Opaque"


def test_diff_is_none_when_equal_and_minimal_otherwise():
    want = m.configmap("ns", b"x: 1\n", "h1", OWNERS)
    assert m.diff(None, want) == want
    current = {"metadata": {**want["metadata"], "labels": {**want["metadata"]["labels"], "extra": "kept"},
                            "resourceVersion": "7"}, "data": dict(want["data"])}
    assert m.diff(current, want) is None
    changed = m.diff(current, m.configmap("ns", b"x: 2\n", "h2", OWNERS))
    assert changed == {"metadata": {"annotations": {"detour.dev/config-hash": "h2"}}, "data": {"config.yaml": "x: 2\n"}}


def test_removed_credentials_are_nulled():
    cur = m.secret("ns", {"a": "YQ==", "b": "Yg=="}, OWNERS)
    assert m.diff(cur, m.secret("ns", {"a": "YQ=="}, OWNERS)) == {"data": {"b": None, "a": "YQ=="}}
    assert m.diff(cur, m.secret("ns", {"a": "YQ==", "b": "Yg=="}, OWNERS[:1]))["metadata"]["ownerReferences"] == OWNERS[:1]
