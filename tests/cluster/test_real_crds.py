"""The CRDs on a real API server: accepted as structural schemas, and objects that break a schema
or a CEL rule are refused by the server itself with a message that names the field."""

from __future__ import annotations

import pathlib


from cluster.realkube import Cluster

ROOT = pathlib.Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples" / "crds"


def test_examples_are_accepted(crds: Cluster, namespace: str) -> None:
    for f in sorted(EXAMPLES.glob("*.yaml")):
        crds.kubectl("apply", "-f", str(f), ns=namespace)
    names = crds.kubectl("get", "llmp", "-o", "name", ns=namespace).stdout.split()
    assert names == ["llmprovider.detour.dev/anthropic", "llmprovider.detour.dev/azure",
                     "llmprovider.detour.dev/openai"]
    assert crds.kubectl("get", "rpol", "chat", "-o", "name", ns=namespace).stdout.strip()


def _refused(crds: Cluster, ns: str, body: str) -> str:
    proc = crds.kubectl("apply", "-f", "-", ns=ns, input=body, check=False)
    assert proc.returncode != 0, f"the API server accepted an invalid object:\n{body}"
    return proc.stderr


def test_schema_violation_names_the_field(crds: Cluster, namespace: str) -> None:
    err = _refused(crds, namespace, """
apiVersion: detour.dev/v1alpha1
kind: LLMProvider
metadata: {name: bad-type}
spec: {type: not-a-provider, baseURL: https://x.example/v1, apiKeySecretRef: {name: k, key: k}}
""")
    assert "spec.type" in err and "Unsupported value" in err


def test_unknown_field_is_refused(crds: Cluster, namespace: str) -> None:
    proc = crds.kubectl("apply", "--validate=strict", "-f", "-", ns=namespace, check=False, input="""
apiVersion: detour.dev/v1alpha1
kind: LLMProvider
metadata: {name: typo}
spec: {type: openai, baseURL: https://x.example/v1, apiKeySecretRef: {name: k, key: k}, timeout: {connect: 1s}}
""")
    assert proc.returncode != 0 and 'unknown field "spec.timeout"' in proc.stderr


def test_cel_rule_names_the_field(crds: Cluster, namespace: str) -> None:
    err = _refused(crds, namespace, """
apiVersion: detour.dev/v1alpha1
kind: LLMProvider
metadata: {name: no-key}
spec: {type: openai, baseURL: https://x.example/v1}
""")
    assert "spec" in err and "apiKeySecretRef is required unless type is openai-compatible" in err
    err = _refused(crds, namespace, """
apiVersion: detour.dev/v1alpha1
kind: RoutingPolicy
metadata: {name: tol}
spec:
  match: {models: [m]}
  strategy: priority
  latencyTolerance: 0.5
  targets: [{providerRef: p, model: m}]
""")
    assert "latencyTolerance applies only to strategy: latency" in err
