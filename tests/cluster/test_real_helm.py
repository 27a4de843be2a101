"""The chart's life cycle with the real helm (built from helm.sh/helm/v4) against the real API
server: lint and the values schema, install, upgrade with a changed value, the documented CRD
upgrade (Helm installs `crds/` with the first release and never upgrades them), uninstall."""

from __future__ import annotations

import copy
import json
import pathlib
import shutil

import yaml

from cluster.realkube import Cluster, wait_for

ROOT = pathlib.Path(__file__).resolve().parents[2]
CHART = str(ROOT / "helm/detour")
CRD = ROOT / "helm/detour/crds/llmproviders.detour.dev.yaml"


def test_lint_and_values_schema(cluster: Cluster) -> None:
    assert "0 chart(s) failed" in cluster.helm("lint", "--strict", CHART).stdout
    # helm v4 names a values-schema violation by JSON pointer.
    bad = cluster.helm("lint", CHART, "--set", "proxy.replicas=-1", check=False)
    assert bad.returncode != 0 and "'/proxy/replicas': minimum" in bad.stdout
    bad = cluster.helm("template", "r", CHART, "--set", "operator.replicas=9", check=False)
    assert bad.returncode != 0 and "'/operator/replicas': maximum" in bad.stderr
    # The chart's own checks (templates' `fail`) on the same helm.
    bad = cluster.helm("template", "r", CHART, "--set", "proxy.terminationGracePeriodSeconds=10", check=False)
    assert bad.returncode != 0 and "proxy.terminationGracePeriodSeconds (10) must be greater" in bad.stderr


def _settings(c: Cluster, ns: str) -> dict:
    cm = c.get_json("configmap", "h-detour-operator-settings", ns=ns)
    return yaml.safe_load(cm["data"]["settings.yaml"])


def test_install_upgrade_uninstall(crds: Cluster, namespace: str) -> None:
    c, ns = crds, namespace
    out = c.helm("install", "h", CHART, ns=ns).stdout
    assert "STATUS: deployed" in out and "kubectl -n" in out  # NOTES.txt rendered
    # The proxy Deployment has no fixed replicas: the HPA (default on) holds it at minReplicas,
    # which the real controller manager enforces even without a metrics server.
    proxy_replicas = lambda: c.get_json("deployment", "h-detour-proxy", ns=ns)["spec"].get("replicas")  # noqa: E731
    wait_for(lambda: proxy_replicas() == 2, 30, "the HPA scaling the proxy to minReplicas 2")
    # No kubelet: Pods stay Pending, but the Deployments made them (ServiceAccount admission,
    # Pod Security admission of the release namespace passed).
    wait_for(lambda: len(c.kubectl("get", "pods", "-o", "name", ns=ns).stdout.split()) == 3, 30,
             "the operator Pod and two proxy Pods")
    assert _settings(c, ns)["health"]["breaker"]["cooldown"] == "30s"

    out = c.helm("upgrade", "h", CHART, "--reuse-values", "--set", "proxy.autoscaling.minReplicas=3",
                 "--set", "settings.health.breaker.cooldown=45s", ns=ns).stdout
    assert "REVISION: 2" in out
    assert c.get_json("hpa", "h-detour-proxy", ns=ns)["spec"]["minReplicas"] == 3
    wait_for(lambda: proxy_replicas() == 3, 30, "the HPA scaling the proxy to the new minReplicas 3")
    assert _settings(c, ns)["health"]["breaker"]["cooldown"] == "45s"
    # A changed settings file rolls the operator (checksum annotation on its Pod template).
    revisions = c.get_json("replicasets", "-l", "app.kubernetes.io/component=operator", ns=ns)["items"]
    assert len(revisions) == 2, "the operator Deployment did not roll on a settings change"

    c.helm("uninstall", "h", "--wait", "--timeout", "60s", ns=ns)
    left = c.kubectl("get", "deployments,serviceaccounts,roles,rolebindings,configmaps,services",
                     "-l", "app.kubernetes.io/instance=h", "-o", "name", ns=ns).stdout.split()
    assert left == []
    # CRDs stay (Helm never deletes crds/): uninstalling one release keeps other teams' objects.
    assert c.kubectl("get", "crd", "llmproviders.detour.dev", "-o", "name").stdout.strip()


def test_crd_upgrade_is_an_explicit_server_side_apply(crds: Cluster, namespace: str) -> None:
    """docs/kubernetes.md "Upgrading": `helm upgrade` leaves CRDs as they are; upgrade them first
    with `kubectl apply --server-side --force-conflicts -f helm/detour/crds/`."""
    c, ns = crds, namespace
    new = yaml.safe_load(CRD.read_text())
    old = copy.deepcopy(new)  # the previous chart's CRD: without spec.maxTokensDefault
    for v in old["spec"]["versions"]:
        del v["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]["maxTokensDefault"]
    # As the previous chart's `helm install` left it (helm v4 server-side applies crds/ as "helm").
    c.kubectl("apply", "--server-side", "--force-conflicts", "--field-manager=helm", "-f", "-",
              input=json.dumps(old))
    obj = {"apiVersion": "detour.dev/v1alpha1", "kind": "LLMProvider", "metadata": {"name": "claude"},
           "spec": {"type": "anthropic", "baseURL": "https://api.anthropic.com",
                    "apiKeySecretRef": {"name": "k", "key": "k"}, "maxTokensDefault": 1024}}
    try:
        c.helm("install", "h", CHART, "--skip-crds", ns=ns)  # the release of the previous chart
        c.helm("upgrade", "h", CHART, "--reuse-values", ns=ns)
        # Helm did not touch the CRD: the new field is still unknown to the API server.
        refused = c.kubectl("apply", "--validate=strict", "-f", "-", ns=ns, input=json.dumps(obj), check=False)
        assert refused.returncode != 0 and 'unknown field "spec.maxTokensDefault"' in refused.stderr
        c.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(CRD.parent))
        c.kubectl("wait", "--for=condition=Established", "crd/llmproviders.detour.dev")
        wait_for(lambda: c.kubectl("apply", "--validate=strict", "-f", "-", ns=ns, input=json.dumps(obj),
                                   check=False).returncode == 0, 30, "the upgraded CRD accepting maxTokensDefault")
        assert c.get_json("llmp", "claude", ns=ns)["spec"]["maxTokensDefault"] == 1024
    finally:
        c.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(CRD.parent))
        c.helm("uninstall", "h", ns=ns, check=False)


def test_helm_install_does_not_override_crds_managed_by_kubectl(crds: Cluster, namespace: str) -> None:
    """helm v4 server-side applies crds/ on install without forcing: once CRDs were upgraded with
    kubectl (as documented), installing an older chart stops with a conflict instead of silently
    downgrading the schema every other release in the cluster relies on."""
    c, ns = crds, namespace
    old = yaml.safe_load(CRD.read_text())
    for v in old["spec"]["versions"]:
        del v["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]["maxTokensDefault"]
    chart = pathlib.Path(c.dir) / f"old-chart-{ns}"
    try:
        shutil.copytree(CHART, chart)
        (chart / "crds" / CRD.name).write_text(yaml.safe_dump(old))
        out = c.helm("install", "h", str(chart), ns=ns, check=False)
        assert out.returncode != 0 and "conflict" in out.stderr and "llmproviders.detour.dev" in out.stderr
        assert "maxTokensDefault" in json.dumps(c.get_json("crd", "llmproviders.detour.dev"))
    finally:
        shutil.rmtree(chart, ignore_errors=True)
        c.helm("uninstall", "h", ns=ns, check=False)
