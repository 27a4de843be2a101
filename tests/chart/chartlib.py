"""Helpers of the chart tests: the chart rendered by the real Helm v4 engine.

`helm_python` (PyPI: helm-python-sdk) binds Helm's Go SDK through a shared library shipped in the
wheel: rendering, linting and values-schema validation run offline, no helm binary, no cluster.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

helm = pytest.importorskip("helm_python", reason="helm-python-sdk is a test dependency (pip install -e '.[test]')")

ROOT = Path(__file__).resolve().parents[2]
CHART_DIR = ROOT / "helm" / "detour"
RELEASE = "detour"
NAMESPACE = "detour"
# The values of the kind walkthrough (docs/kubernetes.md, README): NodePort 30080, small requests.
KIND_VALUES_FILE = CHART_DIR / "ci" / "kind-values.yaml"
KIND_VALUES: dict[str, Any] = yaml.safe_load(KIND_VALUES_FILE.read_text())

# Every optional feature on, and every mode that changes RBAC or the pod specs switched.
FULL_VALUES: dict[str, Any] = {
    "commonLabels": {"team": "platform"},
    "imagePullSecrets": [{"name": "regcred"}],
    "image": {"registry": "ghcr.io/acme", "tag": "1.2.3", "pullPolicy": "Always"},
    "settings": {
        "health": {"window": "2m", "slowCall": {"threshold": "8s", "ratio": 0.6},
                   "breaker": {"cooldown": "15s", "maxCooldown": "10m"}},
        "retryBudget": {"ratio": 0.1, "minPerSecond": 2, "window": "20s"},
        "clientAuth": {"keys": [{"file": "/etc/detour/client-auth/app1"}, {"env": "DETOUR_CLIENT_KEY"}]},
        "server": {"maxBodyBytes": 2097152, "drainTimeout": "2m"},
        "sharedHealth": {"enabled": True, "heartbeat": "5s", "minInterval": "250ms", "replicas": 3},
    },
    "proxy": {
        "image": {"digest": "sha256:" + "a" * 64},
        "extraArgs": ["--log-level", "info"],
        "extraEnv": [{"name": "DETOUR_CLIENT_KEY", "valueFrom": {"secretKeyRef": {"name": "client-keys", "key": "app2"}}}],
        "clientAuthSecret": {"name": "client-keys"},
        "podAnnotations": {"example.com/team": "platform"},
        "podLabels": {"tier": "gateway"},
        "priorityClassName": "system-cluster-critical",
        "terminationGracePeriodSeconds": 200,
        "service": {"type": "NodePort", "nodePort": 30080, "annotations": {"example.com/lb": "internal"}},
        "autoscaling": {"requestsPerSecond": {"enabled": True, "averageValue": "150"}},
        "podDisruptionBudget": {"minAvailable": "50%"},
        "nodeSelector": {"kubernetes.io/os": "linux"},
        "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "llm", "effect": "NoSchedule"}],
        "affinity": {"nodeAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
            {"weight": 10, "preference": {"matchExpressions": [
                {"key": "node-type", "operator": "In", "values": ["general"]}]}}]}},
    },
    "operator": {"replicas": 2, "verbose": True,
                 "extraEnv": [{"name": "EXTRA", "value": "1"}]},
    "serviceMonitor": {"enabled": True, "labels": {"release": "kube-prometheus-stack"},
                       "authorization": {"secretName": "client-keys", "secretKey": "prometheus"}},
    "grafanaDashboard": {"enabled": True, "namespace": "monitoring", "annotations": {"grafana_folder": "Detour"}},
    "networkPolicy": {
        "enabled": True,
        "ingressFrom": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "apps"}}}],
        "metricsFrom": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}],
        "egress": [
            {"ports": [{"port": 53, "protocol": "UDP"}, {"port": 53, "protocol": "TCP"}]},
            {"ports": [{"port": 443, "protocol": "TCP"}, {"port": 6443, "protocol": "TCP"}]},
        ],
    },
    "ingress": {"enabled": True, "className": "nginx",
                "annotations": {"nginx.ingress.kubernetes.io/proxy-read-timeout": "330"},
                "hosts": [{"host": "detour.example.com", "paths": [{"path": "/", "pathType": "Prefix"}]}],
                "tls": [{"secretName": "detour-tls", "hosts": ["detour.example.com"]}]},
    "httpRoute": {"enabled": True, "parentRefs": [{"name": "public", "namespace": "gateway-system", "sectionName": "https"}],
                  "hostnames": ["detour.example.com"], "requestTimeout": "330s"},
}


def render_docs(values: dict[str, Any] | None = None, *, name: str = RELEASE,
                namespace: str = NAMESPACE) -> list[dict[str, Any]]:
    """Render the chart like `helm template` and return the Kubernetes objects (NOTES excluded)."""
    with helm.Chart.load(CHART_DIR) as chart:
        rendered = chart.render(copy.deepcopy(values) if values else None, name=name, namespace=namespace,
                                is_install=True)
    docs: list[dict[str, Any]] = []
    for path, text in sorted(rendered.items()):
        if path.endswith("NOTES.txt"):
            continue
        for doc in yaml.safe_load_all(text):
            if doc:
                doc.setdefault("__template__", path)
                docs.append(doc)
    return docs


def render_notes(values: dict[str, Any] | None = None) -> str:
    with helm.Chart.load(CHART_DIR) as chart:
        rendered = chart.render(copy.deepcopy(values) if values else None, name=RELEASE, namespace=NAMESPACE)
    return next(text for path, text in rendered.items() if path.endswith("NOTES.txt"))


def strip(doc: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in doc.items() if k != "__template__"}


def find(docs: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    hits = [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]
    assert len(hits) == 1, f"expected one {kind} {name or ''}, found {[d['metadata']['name'] for d in hits]}"
    return hits[0]


def kinds(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


def find_container(deploy: dict[str, Any], name: str) -> dict[str, Any]:
    containers = deploy["spec"]["template"]["spec"]["containers"]
    return next(c for c in containers if c["name"] == name)


def named_port(container: dict[str, Any], port: int | str) -> int:
    if isinstance(port, int):
        return port
    return next(p["containerPort"] for p in container["ports"] if p["name"] == port)


def assert_restricted(pod_spec: dict[str, Any], container: dict[str, Any]) -> None:
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
