"""The rendered chart: RBAC grants exactly what the operator and proxy need; the operator pod.

Rendering uses the real Helm v4 engine (helm-python-sdk), for the default values and for a values
set with every optional feature on (chartlib.FULL_VALUES).
"""

from __future__ import annotations

from typing import Any

import pytest
import yaml
from kubernetes_validate.utils import latest_version

from chartlib import NAMESPACE, find, find_container, kinds, named_port, render_docs

# The newest Kubernetes the validator knows, and the oldest the chart supports (Chart.yaml kubeVersion).
K8S_VERSIONS = [latest_version(), "1.28.0"]

# RBAC: exactly these grants, nothing else


OPERATOR_RULES = {
    ("detour.dev", "llmproviders", v) for v in ("get", "list", "watch", "patch")} | {
    ("detour.dev", "routingpolicies", v) for v in ("get", "list", "watch", "patch")} | {
    ("detour.dev", "llmproviders/status", v) for v in ("get", "patch", "update")} | {
    ("detour.dev", "routingpolicies/status", v) for v in ("get", "patch", "update")} | {
    ("", r, v) for r in ("configmaps", "secrets")
    for v in ("get", "list", "watch", "create", "patch", "update", "delete")} | {
    ("", "events", v) for v in ("create", "patch")} | {
    ("", "pods", v) for v in ("get", "list", "watch")}
PROXY_RULES = {("", "pods", v) for v in ("get", "list", "watch", "patch")}


def _grants(docs: list[dict[str, Any]]) -> dict[tuple[str, str], set[tuple[str, str, str]]]:
    """(role kind, role name) -> flattened (apiGroup, resource, verb) grants."""
    out: dict[tuple[str, str], set[tuple[str, str, str]]] = {}
    for doc in docs:
        if doc["kind"] not in ("Role", "ClusterRole"):
            continue
        assert "aggregationRule" not in doc
        flat: set[tuple[str, str, str]] = set()
        for rule in doc["rules"]:
            assert set(rule) == {"apiGroups", "resources", "verbs"}, f"unexpected rule fields {rule}"
            for g in rule["apiGroups"]:
                for r in rule["resources"]:
                    for v in rule["verbs"]:
                        assert "*" not in (g, r, v), f"wildcard grant in {doc['metadata']['name']}: {rule}"
                        flat.add((g, r, v))
        out[(doc["kind"], doc["metadata"]["name"])] = flat
    return out


def _bindings(docs: list[dict[str, Any]]) -> dict[tuple[str, str], list[tuple[str, str]]]:
    """(role kind, role name) -> [(sa namespace, sa name)]."""
    out: dict[tuple[str, str], list[tuple[str, str]]] = {}
    for doc in docs:
        if doc["kind"] not in ("RoleBinding", "ClusterRoleBinding"):
            continue
        ref = doc["roleRef"]
        assert ref["apiGroup"] == "rbac.authorization.k8s.io"
        if doc["kind"] == "ClusterRoleBinding":
            assert ref["kind"] == "ClusterRole"
        subjects = [(s["namespace"], s["name"]) for s in doc["subjects"] if s["kind"] == "ServiceAccount"]
        assert len(subjects) == len(doc["subjects"]), "only ServiceAccounts may be bound"
        out.setdefault((ref["kind"], ref["name"]), []).extend(subjects)
    return out


def test_rbac_default_is_namespaced_and_exact(default_docs: list[dict[str, Any]]) -> None:
    assert _grants(default_docs) == {
        ("Role", "detour-operator"): OPERATOR_RULES,
        ("Role", "detour-proxy"): PROXY_RULES,
    }
    assert _bindings(default_docs) == {
        ("Role", "detour-operator"): [(NAMESPACE, "detour-operator")],
        ("Role", "detour-proxy"): [(NAMESPACE, "detour-proxy")],
    }
    for doc in default_docs:
        if doc["kind"] in ("Role", "RoleBinding"):
            assert doc["metadata"]["namespace"] == NAMESPACE


def test_rbac_all_namespaces_with_peering_is_exact(full_docs: list[dict[str, Any]]) -> None:
    # watchAllNamespaces: the operator's grants become a ClusterRole; replicas > 1 adds kopf peering
    # (cluster-wide peering object), and the proxy stays namespaced.
    assert _grants(full_docs) == {
        ("ClusterRole", "detour-operator"): OPERATOR_RULES,
        ("ClusterRole", "detour-operator-peering"): {
            ("kopf.dev", "clusterkopfpeerings", v) for v in ("get", "list", "watch", "patch")},
        ("Role", "detour-proxy"): PROXY_RULES,
    }
    assert _bindings(full_docs) == {
        ("ClusterRole", "detour-operator"): [(NAMESPACE, "detour-operator")],
        ("ClusterRole", "detour-operator-peering"): [(NAMESPACE, "detour-operator")],
        ("Role", "detour-proxy"): [(NAMESPACE, "detour-proxy")],
    }


def test_rbac_namespaced_peering_and_no_shared_health() -> None:
    docs = render_docs({"operator": {"replicas": 2}, "settings": {"sharedHealth": {"enabled": False}}})
    assert _grants(docs) == {
        ("Role", "detour-operator"): OPERATOR_RULES,
        ("Role", "detour-operator-peering"): {("kopf.dev", "kopfpeerings", v) for v in ("get", "list", "watch", "patch")},
    }
    proxy = find(docs, "Deployment", "detour-proxy")["spec"]["template"]["spec"]
    assert proxy["automountServiceAccountToken"] is False  # no API access needed without shared health


def test_rbac_can_be_turned_off() -> None:
    docs = render_docs({"rbac": {"create": False}})
    assert not [d for d in docs if d["kind"] in ("Role", "ClusterRole", "RoleBinding", "ClusterRoleBinding")]


def test_service_accounts_do_not_automount_tokens(any_docs: list[dict[str, Any]]) -> None:
    for sa in kinds(any_docs, "ServiceAccount"):
        assert sa["automountServiceAccountToken"] is False  # pods opt in explicitly


# ---------------------------------------------------------------------------------------------
# ---------------------------------------------------------------------------------------------
# operator


def test_operator_default_is_namespaced_standalone(default_docs: list[dict[str, Any]]) -> None:
    deploy = find(default_docs, "Deployment", "detour-operator")
    c = find_container(deploy, "operator")
    assert deploy["spec"]["replicas"] == 1
    assert deploy["spec"]["strategy"]["type"] == "Recreate"  # never two standalone operators at once
    assert c["command"] == ["detour-operator"]
    assert c["args"] == ["--namespace", NAMESPACE, "--standalone"]
    assert c["image"] == "detour-operator:0.1.0"
    live = c["livenessProbe"]["httpGet"]
    assert (live["path"], named_port(c, live["port"])) == ("/healthz", 8081)
    assert named_port(c, "metrics") == 9090
    assert deploy["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/component"] == "operator"


def test_operator_all_namespaces_with_peering(full_docs: list[dict[str, Any]]) -> None:
    deploy = find(full_docs, "Deployment", "detour-operator")
    c = find_container(deploy, "operator")
    assert deploy["spec"]["replicas"] == 2 and deploy["spec"]["strategy"]["type"] == "RollingUpdate"
    assert c["args"] == ["--all-namespaces", "--peering", "detour", "--verbose"]
    env = {e["name"]: e for e in c["env"]}
    assert env["POD_ID"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}  # kopf peer identity


def test_operator_settings_file(any_docs: list[dict[str, Any]]) -> None:
    deploy = find(any_docs, "Deployment", "detour-operator")
    c = find_container(deploy, "operator")
    env = {e["name"]: e.get("value") for e in c["env"]}
    assert env["DETOUR_SETTINGS_FILE"] == "/etc/detour/settings/settings.yaml"
    mount = next(m for m in c["volumeMounts"] if m["mountPath"] == "/etc/detour/settings")
    vol = next(v for v in deploy["spec"]["template"]["spec"]["volumes"] if v["name"] == mount["name"])
    cm = find(any_docs, "ConfigMap", vol["configMap"]["name"])
    assert set(cm["data"]) == {"settings.yaml"}
    # the pod template changes (rolls) when the settings change
    assert deploy["spec"]["template"]["metadata"]["annotations"]["checksum/settings"]


def _settings(docs: list[dict[str, Any]]) -> dict[str, Any]:
    return yaml.safe_load(find(docs, "ConfigMap", "detour-operator-settings")["data"]["settings.yaml"])


def test_settings_validate_against_the_config_models(any_docs: list[dict[str, Any]]) -> None:
    """The rendered settings use exactly the config's camelCase keys (extra="forbid" models)."""
    from detour_proxy import config as cfg

    settings = _settings(any_docs)
    models = {"health": cfg.Health, "retryBudget": cfg.RetryBudget, "clientAuth": cfg.ClientAuth,
              "server": cfg.Server, "sharedHealth": cfg.SharedHealth}
    assert set(settings) - {"proxyPodSelector"} <= set(models)
    for key, model in models.items():
        if key in settings:
            model.model_validate(settings[key])
    proxy_labels = find(any_docs, "Deployment", "detour-proxy")["spec"]["template"]["metadata"]["labels"]
    for selector in (settings["sharedHealth"]["podSelector"], settings["proxyPodSelector"]):
        terms = dict(t.split("=", 1) for t in selector.split(","))
        assert terms["app.kubernetes.io/component"] == "proxy"
        assert set(terms.items()) <= set(proxy_labels.items()), "the selector must match this release's proxies"


def test_settings_are_accepted_by_the_operator(any_docs: list[dict[str, Any]]) -> None:
    opsettings = pytest.importorskip("detour_operator.settings")
    s = opsettings.OperatorSettings.model_validate(_settings(any_docs))
    assert s.pod_labels()["app.kubernetes.io/component"] == "proxy"


def test_full_settings_carry_the_values(full_docs: list[dict[str, Any]]) -> None:
    s = _settings(full_docs)
    assert s["health"]["slowCall"] == {"threshold": "8s", "ratio": 0.6}
    assert s["clientAuth"]["keys"][0] == {"file": "/etc/detour/client-auth/app1"}
    assert s["sharedHealth"]["replicas"] == 3


def test_default_settings_leave_off_blocks_out(default_docs: list[dict[str, Any]]) -> None:
    s = _settings(default_docs)
    assert "clientAuth" not in s and "slowCall" not in s["health"] and "replicas" not in s["sharedHealth"]
    assert s["sharedHealth"]["enabled"] is True


# ---------------------------------------------------------------------------------------------
