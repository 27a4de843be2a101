"""The rendered chart: lint, Kubernetes OpenAPI validation, RBAC, pod specs, optional features.

Rendering uses the real Helm v4 engine (helm-python-sdk), for the default values and for a values
set with every optional feature on (chartlib.FULL_VALUES).
"""

from __future__ import annotations

import json
import re
import textwrap
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from kubernetes_validate.utils import latest_version

from chartlib import CHART_DIR, FULL_VALUES, NAMESPACE, RELEASE, find, helm, kinds, render_docs, render_notes, strip

# The newest Kubernetes the validator knows, and the oldest the chart supports (Chart.yaml kubeVersion).
K8S_VERSIONS = [latest_version(), "1.28.0"]

# ---------------------------------------------------------------------------------------------
# lint


@pytest.mark.parametrize("values", [None, FULL_VALUES], ids=["default", "full"])
def test_lint_passes_strict(values: dict[str, Any] | None) -> None:
    report = helm.lint(CHART_DIR, values, strict=True, namespace=NAMESPACE)
    assert report["errors"] == []
    worse_than_info = [m for m in report["messages"] if m["severity"] >= 2]
    assert worse_than_info == []


def test_chart_metadata_and_crds_are_loaded_by_helm() -> None:
    with helm.Chart.load(CHART_DIR) as chart:
        md = chart.metadata
        assert md["name"] == "detour" and md["apiVersion"] == "v2"
        assert chart.schema is not None, "values.schema.json must ship with the chart"
        crds = chart.crds
    # helm installs crds/ before the templates; they are never templated.
    groups = set()
    for crd in crds:
        doc = yaml.safe_load(crd["data"])
        assert doc["kind"] == "CustomResourceDefinition"
        groups.add((doc["spec"]["group"], doc["spec"]["names"]["plural"]))
    # Detour's two kinds, plus kopf's peering kinds for multi-replica operators.
    assert groups == {("detour.dev", "llmproviders"), ("detour.dev", "routingpolicies"),
                      ("kopf.dev", "kopfpeerings"), ("kopf.dev", "clusterkopfpeerings")}


# ---------------------------------------------------------------------------------------------
# schema validation of every rendered manifest

# ServiceMonitor and HTTPRoute are CRD-defined kinds that kubernetes-validate has no schema for.
# They are checked against these minimal schemas: the subset of the upstream CRDs
# (monitoring.coreos.com/v1 ServiceMonitor, gateway.networking.k8s.io/v1 HTTPRoute) that the
# chart uses, with required fields and no unknown keys.
_META = {"type": "object", "required": ["name", "namespace"],
         "properties": {"name": {"type": "string", "pattern": r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", "maxLength": 63},
                        "namespace": {"type": "string"}, "labels": {"type": "object"},
                        "annotations": {"type": "object"}}, "additionalProperties": False}
CRD_KIND_SCHEMAS: dict[tuple[str, str], dict[str, Any]] = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"): {
        "type": "object", "required": ["apiVersion", "kind", "metadata", "spec"], "additionalProperties": False,
        "properties": {
            "apiVersion": {"const": "monitoring.coreos.com/v1"}, "kind": {"const": "ServiceMonitor"},
            "metadata": _META,
            "spec": {"type": "object", "required": ["selector", "endpoints"], "additionalProperties": False,
                     "properties": {
                         "namespaceSelector": {"type": "object", "additionalProperties": False,
                                               "properties": {"matchNames": {"type": "array", "items": {"type": "string"}},
                                                              "any": {"type": "boolean"}}},
                         "selector": {"type": "object", "required": ["matchLabels"], "additionalProperties": False,
                                      "properties": {"matchLabels": {"type": "object",
                                                                     "additionalProperties": {"type": "string"}}}},
                         "endpoints": {"type": "array", "minItems": 1, "items": {
                             "type": "object", "required": ["port"], "additionalProperties": False,
                             "properties": {"port": {"type": "string"}, "path": {"type": "string"},
                                            "interval": {"type": "string", "pattern": r"^[0-9]+(ms|s|m|h)$"},
                                            "scrapeTimeout": {"type": "string", "pattern": r"^[0-9]+(ms|s|m|h)$"}}}}}}}},
    ("gateway.networking.k8s.io/v1", "HTTPRoute"): {
        "type": "object", "required": ["apiVersion", "kind", "metadata", "spec"], "additionalProperties": False,
        "properties": {
            "apiVersion": {"const": "gateway.networking.k8s.io/v1"}, "kind": {"const": "HTTPRoute"},
            "metadata": _META,
            "spec": {"type": "object", "required": ["parentRefs", "rules"], "additionalProperties": False,
                     "properties": {
                         "parentRefs": {"type": "array", "minItems": 1, "items": {
                             "type": "object", "required": ["name"], "additionalProperties": False,
                             "properties": {k: {"type": "string"} for k in
                                            ("group", "kind", "namespace", "name", "sectionName")} | {"port": {"type": "integer"}}}},
                         "hostnames": {"type": "array", "items": {"type": "string"}},
                         "rules": {"type": "array", "minItems": 1, "items": {
                             "type": "object", "additionalProperties": False,
                             "properties": {
                                 "matches": {"type": "array", "items": {"type": "object"}},
                                 "backendRefs": {"type": "array", "items": {
                                     "type": "object", "required": ["name", "port"], "additionalProperties": False,
                                     "properties": {"name": {"type": "string"},
                                                    "port": {"type": "integer", "minimum": 1, "maximum": 65535}}}},
                                 "timeouts": {"type": "object", "additionalProperties": False,
                                              "properties": {"request": {"type": "string",
                                                                         "pattern": r"^([0-9]{1,5}(h|m|s|ms)){1,4}$"}}}}}}}}}},
}


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_every_manifest_validates_against_kubernetes_openapi(any_docs: list[dict[str, Any]], version: str) -> None:
    builtin = 0
    for doc in any_docs:
        key = (doc["apiVersion"], doc["kind"])
        if key in CRD_KIND_SCHEMAS:
            jsonschema.validate(strip(doc), CRD_KIND_SCHEMAS[key])
            continue
        try:
            kubernetes_validate.validate(strip(doc), version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{doc['__template__']}: {doc['kind']}/{doc['metadata']['name']} invalid for "
                        f"Kubernetes {version}: {exc.message} at {list(exc.path)}")
        builtin += 1
    assert builtin >= 10


def test_every_object_is_namespaced_and_labelled(any_docs: list[dict[str, Any]]) -> None:
    cluster_scoped = {"ClusterRole", "ClusterRoleBinding"}
    for doc in any_docs:
        md = doc["metadata"]
        if doc["kind"] in cluster_scoped:
            assert "namespace" not in md
        elif doc["kind"] == "ConfigMap" and md["name"].endswith("-dashboard"):
            assert md["namespace"] in (NAMESPACE, FULL_VALUES["grafanaDashboard"]["namespace"])
        else:
            assert md["namespace"] == NAMESPACE, doc["kind"]
        labels = md["labels"]
        assert labels["app.kubernetes.io/instance"] == RELEASE
        assert labels["app.kubernetes.io/managed-by"] == "Helm"
        assert labels["app.kubernetes.io/name"] == "detour"


def test_optional_features_are_off_by_default(default_docs: list[dict[str, Any]], full_docs: list[dict[str, Any]]) -> None:
    optional = {"ServiceMonitor", "NetworkPolicy", "Ingress", "HTTPRoute"}
    assert not optional & {d["kind"] for d in default_docs}
    assert not [d for d in default_docs if d["metadata"]["name"].endswith("-dashboard")]
    assert optional <= {d["kind"] for d in full_docs}
    assert len(kinds(full_docs, "ServiceMonitor")) == 2


def test_default_render_has_the_core_objects(default_docs: list[dict[str, Any]]) -> None:
    got = sorted((d["kind"], d["metadata"]["name"]) for d in default_docs)
    assert got == sorted([
        ("ConfigMap", "detour-operator-settings"),
        ("Deployment", "detour-operator"), ("Deployment", "detour-proxy"),
        ("HorizontalPodAutoscaler", "detour-proxy"), ("PodDisruptionBudget", "detour-proxy"),
        ("Pod", "detour-test-readyz"),
        ("Role", "detour-operator"), ("RoleBinding", "detour-operator"),
        ("Role", "detour-proxy"), ("RoleBinding", "detour-proxy"),
        ("Service", "detour"), ("Service", "detour-operator-metrics"),
        ("ServiceAccount", "detour-operator"), ("ServiceAccount", "detour-proxy"),
    ])


# ---------------------------------------------------------------------------------------------
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
# proxy pod spec


def _container(deploy: dict[str, Any], name: str) -> dict[str, Any]:
    containers = deploy["spec"]["template"]["spec"]["containers"]
    return next(c for c in containers if c["name"] == name)


def _port(container: dict[str, Any], port: int | str) -> int:
    if isinstance(port, int):
        return port
    return next(p["containerPort"] for p in container["ports"] if p["name"] == port)


def test_proxy_command_labels_and_ports(any_docs: list[dict[str, Any]]) -> None:
    deploy = find(any_docs, "Deployment", "detour-proxy")
    pod = deploy["spec"]["template"]
    c = _container(deploy, "proxy")
    assert c["command"] == ["detour-proxy"]
    assert c["args"][:7] == ["--config", "/etc/detour/config/config.yaml", "--host", "0.0.0.0", "--port", "8080",
                             "--wait-for-config"]
    assert pod["metadata"]["labels"]["app.kubernetes.io/component"] == "proxy"
    assert deploy["spec"]["selector"]["matchLabels"]["app.kubernetes.io/component"] == "proxy"
    assert set(deploy["spec"]["selector"]["matchLabels"].items()) <= set(pod["metadata"]["labels"].items())
    assert c["ports"] == [{"name": "http", "containerPort": 8080, "protocol": "TCP"}]


def test_proxy_mounts_configmap_and_secret_as_volumes_for_hot_reload(any_docs: list[dict[str, Any]]) -> None:
    deploy = find(any_docs, "Deployment", "detour-proxy")
    spec = deploy["spec"]["template"]["spec"]
    c = _container(deploy, "proxy")
    volumes = {v["name"]: v for v in spec["volumes"]}
    mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
    assert all("subPath" not in m and "subPathExpr" not in m for m in c["volumeMounts"]), \
        "subPath mounts never see ConfigMap/Secret updates"
    cfg = mounts["/etc/detour/config"]
    assert cfg["readOnly"] is True
    assert volumes[cfg["name"]]["configMap"]["name"] == "detour-routing"
    assert volumes[cfg["name"]]["configMap"]["optional"] is True
    assert {"key": "config.yaml", "path": "config.yaml"} in volumes[cfg["name"]]["configMap"]["items"]
    cred = mounts["/etc/detour/credentials"]
    assert cred["readOnly"] is True
    assert volumes[cred["name"]]["secret"]["secretName"] == "detour-credentials"
    assert volumes[cred["name"]]["secret"]["optional"] is True
    # read-only root filesystem: /tmp is the only writable path
    assert "emptyDir" in volumes[mounts["/tmp"]["name"]]


def test_proxy_probes(any_docs: list[dict[str, Any]]) -> None:
    c = _container(find(any_docs, "Deployment", "detour-proxy"), "proxy")
    ready, live = c["readinessProbe"]["httpGet"], c["livenessProbe"]["httpGet"]
    assert (ready["path"], _port(c, ready["port"])) == ("/readyz", 8080)
    assert (live["path"], _port(c, live["port"])) == ("/healthz", 8080)


def test_proxy_downward_api_env(any_docs: list[dict[str, Any]]) -> None:
    env = {e["name"]: e for e in _container(find(any_docs, "Deployment", "detour-proxy"), "proxy")["env"]}
    assert env["POD_NAME"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    assert env["POD_NAMESPACE"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.namespace"}}


def _assert_restricted(pod_spec: dict[str, Any], container: dict[str, Any]) -> None:
    psc, csc = pod_spec["securityContext"], container["securityContext"]
    assert psc["runAsNonRoot"] is True and psc["runAsUser"] == 10001 and psc["runAsUser"] != 0
    assert psc["seccompProfile"] == {"type": "RuntimeDefault"}
    assert csc["runAsNonRoot"] is True
    assert csc["readOnlyRootFilesystem"] is True
    assert csc["allowPrivilegeEscalation"] is False
    assert csc["privileged"] is False
    assert csc["capabilities"] == {"drop": ["ALL"]}
    assert csc["seccompProfile"] == {"type": "RuntimeDefault"}
    assert "hostNetwork" not in pod_spec and "hostPID" not in pod_spec


@pytest.mark.parametrize("deployment,container", [("detour-proxy", "proxy"), ("detour-operator", "operator")])
def test_pods_have_restrictive_security_context_and_resources(any_docs: list[dict[str, Any]], deployment: str,
                                                              container: str) -> None:
    deploy = find(any_docs, "Deployment", deployment)
    c = _container(deploy, container)
    _assert_restricted(deploy["spec"]["template"]["spec"], c)
    for section in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(c["resources"][section]), f"{deployment} {section}"


def _seconds(d: str) -> float:
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
    return sum(float(n) * units[u] for n, u in re.findall(r"([0-9.]+)(ms|s|m|h)", d))


def test_proxy_graceful_shutdown_outlasts_the_longest_stream(any_docs: list[dict[str, Any]]) -> None:
    deploy = find(any_docs, "Deployment", "detour-proxy")
    spec = deploy["spec"]["template"]["spec"]
    c = _container(deploy, "proxy")
    sleep = c["lifecycle"]["preStop"]["exec"]["command"]
    assert sleep[0] == "sleep" and int(sleep[1]) > 0
    settings = yaml.safe_load(find(any_docs, "ConfigMap", "detour-operator-settings")["data"]["settings.yaml"])
    drain = _seconds(settings["server"]["drainTimeout"])
    assert drain >= 60
    assert spec["terminationGracePeriodSeconds"] > int(sleep[1]) + drain
    # rolling updates never take a ready proxy away before its replacement is ready
    assert deploy["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0


def test_too_short_grace_period_is_refused() -> None:
    with pytest.raises(helm.HelmError, match="terminationGracePeriodSeconds"):
        render_docs({"proxy": {"terminationGracePeriodSeconds": 60}})  # < 10s preStop + 5m drain


def test_proxy_topology_spread_selects_its_own_pods(any_docs: list[dict[str, Any]]) -> None:
    deploy = find(any_docs, "Deployment", "detour-proxy")
    spec = deploy["spec"]["template"]["spec"]
    pod_labels = deploy["spec"]["template"]["metadata"]["labels"]
    keys = set()
    for tsc in spec["topologySpreadConstraints"]:
        keys.add(tsc["topologyKey"])
        assert set(tsc["labelSelector"]["matchLabels"].items()) <= set(pod_labels.items())
        assert tsc["labelSelector"]["matchLabels"]["app.kubernetes.io/component"] == "proxy"
    assert keys == {"kubernetes.io/hostname", "topology.kubernetes.io/zone"}


def test_proxy_service_hpa_and_pdb(default_docs: list[dict[str, Any]], full_docs: list[dict[str, Any]]) -> None:
    svc = find(default_docs, "Service", "detour")
    assert svc["spec"]["type"] == "ClusterIP"
    assert svc["spec"]["selector"]["app.kubernetes.io/component"] == "proxy"
    assert svc["spec"]["ports"] == [{"name": "http", "port": 8080, "targetPort": "http", "protocol": "TCP"}]
    hpa = find(default_docs, "HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "detour-proxy"}
    assert [m["type"] for m in hpa["spec"]["metrics"]] == ["Resource"]
    assert hpa["spec"]["metrics"][0]["resource"]["name"] == "cpu"
    assert "replicas" not in find(default_docs, "Deployment", "detour-proxy")["spec"]  # the HPA owns it
    pdb = find(default_docs, "PodDisruptionBudget")
    assert pdb["spec"] == {"maxUnavailable": 1, "selector": find(default_docs, "Deployment", "detour-proxy")["spec"]["selector"]}

    svc = find(full_docs, "Service", "detour")
    assert svc["spec"]["type"] == "NodePort" and svc["spec"]["ports"][0]["nodePort"] == 30080
    pods_metric = find(full_docs, "HorizontalPodAutoscaler")["spec"]["metrics"][1]
    assert pods_metric == {"type": "Pods", "pods": {"metric": {"name": "detour_requests_per_second"},
                                                     "target": {"type": "AverageValue", "averageValue": "150"}}}
    assert find(full_docs, "PodDisruptionBudget")["spec"]["minAvailable"] == "50%"


def test_fixed_replicas_without_autoscaling() -> None:
    docs = render_docs({"proxy": {"autoscaling": {"enabled": False}, "replicas": 3}})
    assert find(docs, "Deployment", "detour-proxy")["spec"]["replicas"] == 3
    assert not kinds(docs, "HorizontalPodAutoscaler")


def test_full_values_reach_the_proxy_pod(full_docs: list[dict[str, Any]]) -> None:
    deploy = find(full_docs, "Deployment", "detour-proxy")
    c = _container(deploy, "proxy")
    assert c["image"] == "ghcr.io/acme/detour-proxy@sha256:" + "a" * 64
    assert c["args"][-2:] == ["--log-level", "info"]
    assert any(m["mountPath"] == "/etc/detour/client-auth" for m in c["volumeMounts"])
    assert {e["name"] for e in c["env"]} == {"POD_NAME", "POD_NAMESPACE", "DETOUR_CLIENT_KEY"}
    assert deploy["spec"]["template"]["spec"]["imagePullSecrets"] == [{"name": "regcred"}]


# ---------------------------------------------------------------------------------------------
# operator


def test_operator_default_is_namespaced_standalone(default_docs: list[dict[str, Any]]) -> None:
    deploy = find(default_docs, "Deployment", "detour-operator")
    c = _container(deploy, "operator")
    assert deploy["spec"]["replicas"] == 1
    assert deploy["spec"]["strategy"]["type"] == "Recreate"  # never two standalone operators at once
    assert c["command"] == ["detour-operator"]
    assert c["args"] == ["--namespace", NAMESPACE, "--standalone"]
    assert c["image"] == "detour-operator:0.1.0"
    live = c["livenessProbe"]["httpGet"]
    assert (live["path"], _port(c, live["port"])) == ("/healthz", 8081)
    assert _port(c, "metrics") == 9090
    assert deploy["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/component"] == "operator"


def test_operator_all_namespaces_with_peering(full_docs: list[dict[str, Any]]) -> None:
    deploy = find(full_docs, "Deployment", "detour-operator")
    c = _container(deploy, "operator")
    assert deploy["spec"]["replicas"] == 2 and deploy["spec"]["strategy"]["type"] == "RollingUpdate"
    assert c["args"] == ["--all-namespaces", "--peering", "detour", "--verbose"]
    env = {e["name"]: e for e in c["env"]}
    assert env["POD_ID"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}  # kopf peer identity


def test_operator_settings_file(any_docs: list[dict[str, Any]]) -> None:
    deploy = find(any_docs, "Deployment", "detour-operator")
    c = _container(deploy, "operator")
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
# optional features, helm test, NOTES


def test_service_monitors_scrape_both_components(full_docs: list[dict[str, Any]]) -> None:
    for sm in kinds(full_docs, "ServiceMonitor"):
        component = sm["metadata"]["labels"]["app.kubernetes.io/component"]
        assert sm["metadata"]["labels"]["release"] == "kube-prometheus-stack"
        svc = next(s for s in kinds(full_docs, "Service")
                   if s["spec"]["selector"] == sm["spec"]["selector"]["matchLabels"]
                   or set(sm["spec"]["selector"]["matchLabels"].items()) <= set(s["metadata"]["labels"].items())
                   and s["metadata"]["labels"]["app.kubernetes.io/component"] == component)
        port_names = {p["name"] for p in svc["spec"]["ports"]}
        assert sm["spec"]["endpoints"][0]["port"] in port_names
        assert sm["spec"]["endpoints"][0]["path"] == "/metrics"


def test_dashboard_configmap_ships_the_dashboard(full_docs: list[dict[str, Any]]) -> None:
    cm = find(full_docs, "ConfigMap", "detour-dashboard")
    assert cm["metadata"]["namespace"] == "monitoring"
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    shipped = json.loads((CHART_DIR / "dashboards" / "detour.json").read_text())
    assert json.loads(cm["data"]["detour.json"]) == shipped


def test_dashboard_covers_providers_fallbacks_breakers_and_ttft() -> None:
    dash = json.loads((CHART_DIR / "dashboards" / "detour.json").read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]
    text = "\n".join(exprs)
    for metric in ("detour_requests_total", "detour_upstream_attempts_total", "detour_fallbacks_total",
                   "detour_breaker_state", "detour_time_to_first_token_seconds_bucket",
                   "detour_request_duration_seconds_bucket"):
        assert metric in text, metric
    assert re.search(r"sum by \(provider, result\) \(rate\(detour_upstream_attempts_total", text)
    assert "histogram_quantile(0.99" in text and "histogram_quantile(0.5" in text
    breaker = next(p for p in dash["panels"] if "detour_breaker_state" in json.dumps(p.get("targets")) and p["type"] == "state-timeline")
    mapping = breaker["fieldConfig"]["defaults"]["mappings"][0]["options"]
    assert {k: v["text"] for k, v in mapping.items()} == {"0": "closed", "1": "half-open", "2": "open"}
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    assert dash["uid"] and dash["title"] == "Detour"


def test_network_policies(full_docs: list[dict[str, Any]]) -> None:
    proxy = find(full_docs, "NetworkPolicy", "detour-proxy")
    assert proxy["spec"]["policyTypes"] == ["Ingress", "Egress"]
    assert proxy["spec"]["ingress"][0]["ports"] == [{"port": "http", "protocol": "TCP"}]
    assert proxy["spec"]["egress"] == FULL_VALUES["networkPolicy"]["egress"]
    op = find(full_docs, "NetworkPolicy", "detour-operator")
    assert op["spec"]["policyTypes"] == ["Ingress"]  # egress to the API server stays open


def test_ingress_and_httproute_target_the_proxy_service(full_docs: list[dict[str, Any]]) -> None:
    ing = find(full_docs, "Ingress")
    backend = ing["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]
    assert backend == {"name": "detour", "port": {"name": "http"}}
    route = find(full_docs, "HTTPRoute")
    assert route["spec"]["rules"][0]["backendRefs"] == [{"name": "detour", "port": 8080}]
    assert route["spec"]["rules"][0]["timeouts"] == {"request": "330s"}


def test_httproute_requires_a_parent() -> None:
    with pytest.raises(helm.HelmError, match="parentRefs"):
        render_docs({"httpRoute": {"enabled": True}})


def test_helm_test_hook_calls_readyz(default_docs: list[dict[str, Any]]) -> None:
    pod = find(default_docs, "Pod", "detour-test-readyz")
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    assert pod["spec"]["restartPolicy"] == "Never"
    c = pod["spec"]["containers"][0]
    script = " ".join(c["command"])
    assert f"http://detour.{NAMESPACE}.svc:8080/readyz" in script
    _assert_restricted(pod["spec"], c)


def test_notes_explain_the_first_provider_and_request() -> None:
    notes = render_notes()
    for needle in ("kind: LLMProvider", "kind: RoutingPolicy", "apiKeySecretRef", "kubectl", "port-forward",
                   "curl", "/v1/chat/completions", "from openai import OpenAI", "base_url=", "examples/k8s/sim/",
                   "helm test"):
        assert needle in notes, needle
    # the inline example in NOTES is itself valid YAML with the right kinds
    block = notes.split("<<'YAML'")[1].split("\n  YAML")[0].split("\n", 1)[1]
    objs = [d for d in yaml.safe_load_all(textwrap.dedent(block)) if d]
    assert [o["kind"] for o in objs] == ["LLMProvider", "RoutingPolicy"]
    nodeport_notes = render_notes({"proxy": {"service": {"type": "NodePort", "nodePort": 30080}}})
    assert "localhost:8080" in nodeport_notes and "port-forward" not in nodeport_notes


def test_names_fit_dns_labels_for_the_longest_release_name() -> None:
    long_release = "r" * 53  # Helm's maximum release name length
    docs = render_docs(FULL_VALUES, name=long_release, namespace="prod")
    for doc in docs:
        name = doc["metadata"]["name"]
        assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", name), name
        if doc["kind"] not in ("ConfigMap", "Secret", "Role", "ClusterRole", "RoleBinding", "ClusterRoleBinding", "Pod"):
            assert len(name) <= 63, f"{doc['kind']} {name}"
        for value in doc["metadata"]["labels"].values():
            assert len(str(value)) <= 63
