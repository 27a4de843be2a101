"""The rendered chart: optional features, the helm test hook, NOTES and name lengths.

Rendering uses the real Helm v4 engine (helm-python-sdk), for the default values, a values set
with every optional feature on (chartlib.FULL_VALUES) and the kind walkthrough's values
(ci/kind-values.yaml).
"""

from __future__ import annotations

import json
import re
import textwrap
from typing import Any

import pytest
import yaml

from chartlib import CHART_DIR, FULL_VALUES, NAMESPACE, assert_restricted, find, helm, kinds, render_docs, render_notes


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


METRICS_AUTH = {"settings": {"clientAuth": {"keys": [{"file": "/etc/detour/client-auth/app1"}]},
                             "server": {"metricsAuth": True}},
                "proxy": {"clientAuthSecret": {"name": "client-keys"}}}


def _endpoints(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {sm["metadata"]["labels"]["app.kubernetes.io/component"]: sm["spec"]["endpoints"][0]
            for sm in kinds(docs, "ServiceMonitor")}


def test_service_monitor_sends_a_client_key_when_metrics_need_one() -> None:
    docs = render_docs({**METRICS_AUTH, "serviceMonitor": {
        "enabled": True, "authorization": {"secretName": "client-keys", "secretKey": "prometheus"}}})
    endpoints = _endpoints(docs)
    assert endpoints["proxy"]["authorization"] == {"type": "Bearer",
                                                   "credentials": {"name": "client-keys", "key": "prometheus"}}
    assert "authorization" not in endpoints["operator"]  # the operator's /metrics is not behind client keys
    # the Secret the scraper reads is in the ServiceMonitor's namespace (Prometheus resolves it there)
    assert {sm["metadata"]["namespace"] for sm in kinds(docs, "ServiceMonitor")} == {NAMESPACE}


def test_metrics_auth_without_a_scrape_key_fails_the_render() -> None:
    with pytest.raises(Exception, match="serviceMonitor.authorization.secretName"):
        render_docs({**METRICS_AUTH, "serviceMonitor": {"enabled": True}})
    with pytest.raises(Exception, match="needs both secretName and secretKey"):
        render_docs({"serviceMonitor": {"enabled": True, "authorization": {"secretName": "client-keys"}}})
    # open /metrics (the default): no credentials are sent
    assert all("authorization" not in e for e in _endpoints(render_docs({"serviceMonitor": {"enabled": True}})).values())


def test_dashboard_configmap_ships_the_dashboard(full_docs: list[dict[str, Any]]) -> None:
    cm = find(full_docs, "ConfigMap", "detour-dashboard")
    assert cm["metadata"]["namespace"] == "monitoring"
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    shipped = json.loads((CHART_DIR / "dashboards" / "detour.json").read_text())
    assert json.loads(cm["data"]["detour.json"]) == shipped


# Labels Prometheus adds to every scraped series (target labels of a ServiceMonitor scrape).
TARGET_LABELS = {"namespace", "pod", "container", "service", "endpoint", "job", "instance"}
_SELECTOR = re.compile(r"\b(detour_[a-z0-9_]+)\s*(\{[^}]*\})?")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")
_MATCHER = re.compile(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)")


def _exposed_series() -> dict[str, set[str]]:
    """Sample name -> label names, as detour_proxy.metrics exposes them (suffixes included:
    _total, _bucket with `le`, _sum, _count), from a fresh registry with one child per metric."""
    from prometheus_client import CollectorRegistry
    from prometheus_client.metrics import MetricWrapperBase

    from detour_proxy.metrics import Metrics

    m = Metrics(CollectorRegistry())
    for metric in vars(m).values():
        if not isinstance(metric, MetricWrapperBase):
            continue
        names = metric._labelnames  # noqa: SLF001 (the label names a metric was declared with)
        child = metric.labels(*["x"] * len(names)) if names else metric
        for touch in ("inc", "set", "observe"):
            if hasattr(child, touch):
                getattr(child, touch)(1)
                break
    out: dict[str, set[str]] = {}
    for family in m.registry.collect():
        for sample in family.samples:
            out.setdefault(sample.name, set()).update(sample.labels)
    return out


def _dashboard_queries(dash: dict[str, Any]) -> list[str]:
    exprs = [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]
    exprs += [v["query"]["query"] for v in dash.get("templating", {}).get("list", [])
              if isinstance(v.get("query"), dict)]
    return exprs


def test_dashboard_queries_use_metrics_and_labels_the_proxy_exposes() -> None:
    """Every metric name in every PromQL query of the shipped dashboard is a series the proxy
    really exposes (right suffix), and every label it filters or groups by exists on it."""
    series = _exposed_series()
    dash = json.loads((CHART_DIR / "dashboards" / "detour.json").read_text())
    checked = set()
    for expr in _dashboard_queries(dash):
        used = _SELECTOR.findall(expr)
        assert used, f"no detour_ metric in {expr!r}"
        for name, selector in used:
            assert name in series, f"{name} (in {expr!r}) is not exposed; exposed: {sorted(series)}"
            unknown = set(_MATCHER.findall(selector)) - series[name] - TARGET_LABELS
            assert not unknown, f"{name} has no label(s) {unknown} (in {expr!r})"
            checked.add(name)
        for group in _GROUPING.findall(expr):
            for label in filter(None, (x.strip() for x in group.split(","))):
                missing = [n for n, _ in used if label not in series[n] | TARGET_LABELS]
                assert not missing, f"grouping label {label!r} is not on {missing} (in {expr!r})"
        for var_label in re.findall(r"label_values\([^,]+,\s*([a-z_]+)\)", expr):
            assert var_label in series[used[0][0]] | TARGET_LABELS, expr
    # the panels the issue asks for: providers, fallbacks, breakers, TTFT and latency percentiles
    assert {"detour_requests_total", "detour_upstream_attempts_total", "detour_fallbacks_total",
            "detour_breaker_state", "detour_time_to_first_token_seconds_bucket",
            "detour_request_duration_seconds_bucket"} <= checked


def test_dashboard_covers_providers_fallbacks_breakers_and_ttft() -> None:
    from detour_proxy.metrics import BREAKER_VALUES

    dash = json.loads((CHART_DIR / "dashboards" / "detour.json").read_text())
    text = "\n".join(_dashboard_queries(dash))
    assert re.search(r"sum by \(provider, result\) \(rate\(detour_upstream_attempts_total", text)
    assert "histogram_quantile(0.99" in text and "histogram_quantile(0.5" in text
    breaker = next(p for p in dash["panels"] if "detour_breaker_state" in json.dumps(p.get("targets")) and p["type"] == "state-timeline")
    mapping = breaker["fieldConfig"]["defaults"]["mappings"][0]["options"]
    # the value mapping says what the gauge's values mean in the code
    assert {k: v["text"] for k, v in mapping.items()} == {str(v): k for k, v in BREAKER_VALUES.items()}
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    assert dash["uid"] and dash["title"] == "Detour"


def _admits(peer: dict[str, Any], pod_labels: dict[str, str]) -> bool:
    """Does a NetworkPolicyPeer with only a podSelector.matchLabels admit a pod of the policy's namespace?"""
    return set(peer) == {"podSelector"} and peer["podSelector"]["matchLabels"].items() <= pod_labels.items()


def test_network_policies(full_docs: list[dict[str, Any]]) -> None:
    proxy = find(full_docs, "NetworkPolicy", "detour-proxy")
    assert proxy["spec"]["policyTypes"] == ["Ingress", "Egress"]
    assert proxy["spec"]["ingress"][0]["ports"] == [{"port": "http", "protocol": "TCP"}]
    assert proxy["spec"]["egress"] == FULL_VALUES["networkPolicy"]["egress"]
    op = find(full_docs, "NetworkPolicy", "detour-operator")
    assert op["spec"]["policyTypes"] == ["Ingress"]  # egress to the API server stays open
    assert op["spec"]["ingress"][0]["from"] == FULL_VALUES["networkPolicy"]["metricsFrom"]


def test_restricted_proxy_ingress_still_admits_helm_test_and_prometheus(full_docs: list[dict[str, Any]]) -> None:
    """ingressFrom would otherwise block the `helm test` pod and Prometheus scraping /metrics on the
    proxy port."""
    peers = find(full_docs, "NetworkPolicy", "detour-proxy")["spec"]["ingress"][0]["from"]
    np = FULL_VALUES["networkPolicy"]
    for peer in np["ingressFrom"] + np["metricsFrom"]:
        assert peer in peers
    test_pod = find(full_docs, "Pod", "detour-test-readyz")
    assert any(_admits(p, test_pod["metadata"]["labels"]) for p in peers), "the helm test pod is blocked"
    proxy_pod = find(full_docs, "Deployment", "detour-proxy")["spec"]["template"]["metadata"]["labels"]
    assert not any(_admits(p, proxy_pod) for p in peers), "the test-pod rule must not admit every pod"
    # without the test hook, no rule for it
    no_tests = render_docs(FULL_VALUES | {"tests": {"enabled": False}})
    peers = find(no_tests, "NetworkPolicy", "detour-proxy")["spec"]["ingress"][0]["from"]
    assert not any("podSelector" in p for p in peers)


def test_open_proxy_ingress_needs_no_extra_rules() -> None:
    docs = render_docs({"networkPolicy": {"enabled": True,
                                          "metricsFrom": FULL_VALUES["networkPolicy"]["metricsFrom"]}})
    assert "from" not in find(docs, "NetworkPolicy", "detour-proxy")["spec"]["ingress"][0]  # from anywhere


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
        if doc["kind"] not in ("ConfigMap", "Secret", "Role", "ClusterRole", "RoleBinding", "ClusterRoleBinding", "Pod",
                               "ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding"):  # DNS subdomains (253)
            assert len(name) <= 63, f"{doc['kind']} {name}"
        for value in doc["metadata"]["labels"].values():
            assert len(str(value)) <= 63
