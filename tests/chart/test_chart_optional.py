"""The rendered chart: optional features, the helm test hook, NOTES and name lengths.

Rendering uses the real Helm v4 engine (helm-python-sdk), for the default values and for a values
set with every optional feature on (chartlib.FULL_VALUES).
"""

from __future__ import annotations

import json
import re
import textwrap
from typing import Any

import pytest
import yaml
from kubernetes_validate.utils import latest_version

from chartlib import CHART_DIR, FULL_VALUES, NAMESPACE, assert_restricted, find, helm, kinds, render_docs, render_notes

# The newest Kubernetes the validator knows, and the oldest the chart supports (Chart.yaml kubeVersion).
K8S_VERSIONS = [latest_version(), "1.28.0"]

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
    assert_restricted(pod["spec"], c)


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
