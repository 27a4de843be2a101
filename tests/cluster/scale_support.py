"""Helpers of the scale tests (issue 14) on the real API server: the chart's RBAC and admission
policy in a test namespace, the operator as a process authenticated as the chart's operator
ServiceAccount, and API request counts from the audit log.

Why the operator runs with the ServiceAccount's token and not as admin: RBAC (the chart's Role,
narrowed by resourceNames) is then part of what is tested, as in a real install.
"""

from __future__ import annotations

import json
import os
import pathlib
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterable
from typing import Any

import yaml

from cluster.realkube import Cluster, wait_for

ROOT = pathlib.Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "detour"
OPERATOR_SA, PROXY_SA = "detour-operator", "detour-proxy"


def install_crds(cluster: Cluster) -> None:
    cluster.kubectl("apply", "-f", str(CHART / "crds"))
    cluster.kubectl("wait", "--for=condition=Established", "--timeout=60s",
                    "crd/llmproviders.detour.dev", "crd/routingpolicies.detour.dev")


def install_chart_rbac(cluster: Cluster, ns: str) -> list[str]:
    """The chart's ServiceAccounts, Roles, bindings and the proxy admission policy, rendered by the
    real helm for release `detour` in `ns`. Returns the cluster-scoped objects (to delete later)."""
    out = cluster.helm("template", "detour", str(CHART), "-n", ns,
                       "--show-only", "templates/serviceaccounts.yaml", "--show-only", "templates/rbac.yaml",
                       "--show-only", "templates/proxy-admission-policy.yaml").stdout
    docs = [d for d in yaml.safe_load_all(out) if d]
    cluster.apply(docs, ns=ns)
    return [f"{d['kind'].lower()}/{d['metadata']['name']}" for d in docs if "Admission" in d["kind"]]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class OperatorProcess:
    """`detour-operator --namespace NS --standalone` as the chart's operator ServiceAccount."""

    def __init__(self, cluster: Cluster, ns: str, tmp: pathlib.Path, settings: str = "healthInterval: 1s\n") -> None:
        (tmp / "settings.yaml").write_text(settings)
        kubeconfig = cluster.sa_kubeconfig(OPERATOR_SA, ns, tmp / "operator.kubeconfig")
        env = {**os.environ, "KUBECONFIG": str(kubeconfig), "DETOUR_SETTINGS_FILE": str(tmp / "settings.yaml"),
               "DETOUR_OPERATOR_METRICS_PORT": "0"}
        self.log_path = tmp / "operator.log"
        self._log = self.log_path.open("w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "detour_operator.cli", "--namespace", ns, "--standalone",
             f"--liveness=http://127.0.0.1:{free_port()}/healthz", "--readiness=off"],
            stdout=self._log, stderr=subprocess.STDOUT, env=env, cwd=tmp)
        self.user = f"system:serviceaccount:{ns}:{OPERATOR_SA}"

    def log(self) -> str:
        return self.log_path.read_text()

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
        self._log.close()


def calls(cluster: Cluster, since: float, user: str) -> list[tuple[str, str, str, str]]:
    """API requests of `user` since `since` (wall clock): (verb, resource, subresource, name)."""
    out = []
    for ev in cluster.audit(since):
        if ev.get("user", {}).get("username") != user or ev.get("stage") != "ResponseComplete" \
                or ev.get("verb") == "watch":  # long-lived, ends on its own: not a write or a read per change
            continue
        ref = ev.get("objectRef") or {}
        out.append((ev["verb"], ref.get("resource", ""), ref.get("subresource", ""), ref.get("name", "")))
    return out


def count(calls_: Iterable[tuple[str, str, str, str]], verb: str, resource: str, subresource: str = "") -> int:
    return sum(1 for v, r, s, _ in calls_ if v == verb and r == resource and s == subresource)


def summary(calls_: Iterable[tuple[str, str, str, str]]) -> dict[str, int]:
    return dict(Counter(f"{v} {r}{'/' + s if s else ''}" for v, r, s, _ in calls_))


def conditions(obj: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["type"]: c for c in (obj.get("status") or {}).get("conditions") or []}


def ready(cluster: Cluster, kind: str, name: str, ns: str) -> dict[str, Any] | None:
    obj = cluster.get_json(kind, name, ns=ns)
    c = conditions(obj).get("Ready")
    ok = c and c["status"] == "True" and obj["status"].get("observedGeneration") == obj["metadata"]["generation"]
    return obj if ok else None


def provider(name: str, secret: str = "keys", **spec: Any) -> dict[str, Any]:
    return {"apiVersion": "detour.dev/v1alpha1", "kind": "LLMProvider", "metadata": {"name": name},
            "spec": {"type": "openai", "baseURL": f"https://{name}.example.com/v1",
                     "apiKeySecretRef": {"name": secret, "key": name}, **spec}}


def policy(name: str, *providers: str, **spec: Any) -> dict[str, Any]:
    return {"apiVersion": "detour.dev/v1alpha1", "kind": "RoutingPolicy", "metadata": {"name": name},
            "spec": {"match": {"models": [f"{name}-*"]},
                     "targets": [{"providerRef": p, "model": f"{name}-model"} for p in providers], **spec}}


def key_secret(names: Iterable[str], name: str = "keys") -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name},
            "stringData": {n: f"sk-{n}" for n in names}}


def events(cluster: Cluster, ns: str) -> list[dict[str, Any]]:
    return cluster.get_json("events", ns=ns)["items"]


def quiet(cluster: Cluster, since: float, user: str, window: float = 2.0, timeout: float = 120) -> list[Any]:
    """Wait until `user` made no API request (watches aside) for `window` seconds; return its
    requests since `since`. A measurement window, not a sleep standing in for an event: the
    absence of requests is what is measured."""
    from datetime import datetime

    def settled() -> tuple[list[Any]] | None:  # a tuple: no requests at all is an answer too
        last = since
        for ev in cluster.audit(since):
            if ev.get("user", {}).get("username") == user and ev.get("verb") != "watch":
                ts = ev.get("stageTimestamp") or ev["requestReceivedTimestamp"]
                last = max(last, datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp())
        return (calls(cluster, since, user),) if time.time() - last >= window else None
    return wait_for(settled, timeout, f"{user} to go quiet for {window} s", interval=0.5)[0]


def dump(obj: Any) -> str:
    return json.dumps(obj, indent=1, sort_keys=True)
