"""The rendered chart: lint, Kubernetes OpenAPI validation of every manifest, the core objects.

Rendering uses the real Helm v4 engine (helm-python-sdk), for the default values, a values set
with every optional feature on (chartlib.FULL_VALUES) and the kind walkthrough's values
(ci/kind-values.yaml).
"""

from __future__ import annotations

from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from kubernetes_validate.utils import latest_version

from chartlib import CHART_DIR, FULL_VALUES, NAMESPACE, RELEASE, helm, kinds, strip

# The newest Kubernetes the validator knows, and the oldest the chart supports (Chart.yaml kubeVersion).
K8S_VERSIONS = [latest_version(), "1.30.0"]  # the chart's kubeVersion floor (ValidatingAdmissionPolicy v1)

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


# schema validation of every rendered manifest


def _chart_crd_schemas() -> dict[tuple[str, str], dict[str, Any]]:
    """(apiVersion, kind) -> openAPIV3Schema of every CRD the chart ships in crds/ (Detour's and
    kopf's peering kinds): the schemas the API server itself applies to those objects."""
    out = {}
    for path in sorted((CHART_DIR / "crds").glob("*.yaml")):
        crd = yaml.safe_load(path.read_text())
        for version in crd["spec"]["versions"]:
            if version.get("served", True):
                key = (f"{crd['spec']['group']}/{version['name']}", crd["spec"]["names"]["kind"])
                out[key] = version["schema"]["openAPIV3Schema"]
    return out


CHART_CRD_SCHEMAS = _chart_crd_schemas()

# ServiceMonitor and HTTPRoute are CRD-defined kinds that kubernetes-validate has no schema for,
# and no package installable here (PyPI, for Python 3.11) ships their upstream CRDs. They are
# checked against these minimal schemas: the subset of the upstream CRDs
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
                                            "scrapeTimeout": {"type": "string", "pattern": r"^[0-9]+(ms|s|m|h)$"},
                                            # SafeAuthorization: type + credentials (a SecretKeySelector)
                                            "authorization": {
                                                "type": "object", "required": ["credentials"], "additionalProperties": False,
                                                "properties": {"type": {"type": "string"}, "credentials": {
                                                    "type": "object", "required": ["name", "key"], "additionalProperties": False,
                                                    "properties": {"name": {"type": "string", "minLength": 1},
                                                                   "key": {"type": "string", "minLength": 1},
                                                                   "optional": {"type": "boolean"}}}}}}}}}}}},
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
        if key in CHART_CRD_SCHEMAS:
            # the CRD's schema covers the body; metadata is validated by the API server's ObjectMeta
            jsonschema.validate({k: v for k, v in strip(doc).items() if k != "metadata"}, CHART_CRD_SCHEMAS[key])
            jsonschema.validate(doc["metadata"], _META | {"required": ["name"]})
            continue
        try:
            kubernetes_validate.validate(strip(doc), version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{doc['__template__']}: {doc['kind']}/{doc['metadata']['name']} invalid for "
                        f"Kubernetes {version}: {exc.message} at {list(exc.path)}")
        builtin += 1
    assert builtin >= 10


def test_every_object_is_namespaced_and_labelled(any_docs: list[dict[str, Any]]) -> None:
    cluster_scoped = {"ClusterRole", "ClusterRoleBinding", "ClusterKopfPeering",
                      "ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding"}
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
        ("ValidatingAdmissionPolicy", "detour-proxy-detour-own-pod-health"),
        ("ValidatingAdmissionPolicyBinding", "detour-proxy-detour-own-pod-health"),
    ])
