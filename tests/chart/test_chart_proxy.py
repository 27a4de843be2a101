"""The rendered chart: the proxy pod spec (volumes, probes, downward API, security, shutdown).

Rendering uses the real Helm v4 engine (helm-python-sdk), for the default values, a values set
with every optional feature on (chartlib.FULL_VALUES) and the kind walkthrough's values
(ci/kind-values.yaml).
"""

from __future__ import annotations

import re
from typing import Any

import pytest
import yaml

from chartlib import assert_restricted, find, find_container, helm, kinds, named_port, render_docs


def test_proxy_command_labels_and_ports(any_docs: list[dict[str, Any]]) -> None:
    deploy = find(any_docs, "Deployment", "detour-proxy")
    pod = deploy["spec"]["template"]
    c = find_container(deploy, "proxy")
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
    c = find_container(deploy, "proxy")
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
    c = find_container(find(any_docs, "Deployment", "detour-proxy"), "proxy")
    ready, live = c["readinessProbe"]["httpGet"], c["livenessProbe"]["httpGet"]
    assert (ready["path"], named_port(c, ready["port"])) == ("/readyz", 8080)
    assert (live["path"], named_port(c, live["port"])) == ("/healthz", 8080)


def test_proxy_downward_api_env(any_docs: list[dict[str, Any]]) -> None:
    env = {e["name"]: e for e in find_container(find(any_docs, "Deployment", "detour-proxy"), "proxy")["env"]}
    assert env["POD_NAME"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    assert env["POD_NAMESPACE"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.namespace"}}


@pytest.mark.parametrize("deployment,container", [("detour-proxy", "proxy"), ("detour-operator", "operator")])
def test_pods_have_restrictive_security_context_and_resources(any_docs: list[dict[str, Any]], deployment: str,
                                                              container: str) -> None:
    deploy = find(any_docs, "Deployment", deployment)
    c = find_container(deploy, container)
    assert_restricted(deploy["spec"]["template"]["spec"], c)
    for section in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(c["resources"][section]), f"{deployment} {section}"


def _seconds(d: str) -> float:
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
    return sum(float(n) * units[u] for n, u in re.findall(r"([0-9.]+)(ms|s|m|h)", d))


def test_proxy_graceful_shutdown_outlasts_the_longest_stream(any_docs: list[dict[str, Any]]) -> None:
    deploy = find(any_docs, "Deployment", "detour-proxy")
    spec = deploy["spec"]["template"]["spec"]
    c = find_container(deploy, "proxy")
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


def test_hpa_min_above_max_is_refused() -> None:
    with pytest.raises(helm.HelmError, match="minReplicas must not exceed"):
        render_docs({"proxy": {"autoscaling": {"minReplicas": 5, "maxReplicas": 3}}})
    # equal is fine: a fixed-size HPA
    hpa = find(render_docs({"proxy": {"autoscaling": {"minReplicas": 3, "maxReplicas": 3}}}), "HorizontalPodAutoscaler")
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (3, 3)


def test_fixed_replicas_without_autoscaling() -> None:
    docs = render_docs({"proxy": {"autoscaling": {"enabled": False}, "replicas": 3}})
    assert find(docs, "Deployment", "detour-proxy")["spec"]["replicas"] == 3
    assert not kinds(docs, "HorizontalPodAutoscaler")


def test_full_values_reach_the_proxy_pod(full_docs: list[dict[str, Any]]) -> None:
    deploy = find(full_docs, "Deployment", "detour-proxy")
    c = find_container(deploy, "proxy")
    assert c["image"] == "ghcr.io/acme/detour-proxy@sha256:" + "a" * 64
    assert c["args"][-2:] == ["--log-level", "info"]
    assert any(m["mountPath"] == "/etc/detour/client-auth" for m in c["volumeMounts"])
    assert {e["name"] for e in c["env"]} == {"POD_NAME", "POD_NAMESPACE", "DETOUR_CLIENT_KEY"}
    assert deploy["spec"]["template"]["spec"]["imagePullSecrets"] == [{"name": "regcred"}]
