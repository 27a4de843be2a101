"""The CRDs on a real API server: accepted as structural schemas, and objects that break a schema
or a CEL rule are refused by the server itself with a message that names the field."""

from __future__ import annotations

import json
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


def test_several_api_keys_and_the_models_column(crds: Cluster, namespace: str) -> None:
    """apiKeySecretRefs is accepted, one key and several keys at once are refused by the server's
    CEL rule, and the server's table converter prints the per-model roll-up (status.health.modelsReady)
    in the Models column of `kubectl get llmp`."""
    crds.kubectl("apply", "-f", "-", ns=namespace, input="""
apiVersion: detour.dev/v1alpha1
kind: LLMProvider
metadata: {name: pool}
spec:
  type: openai
  baseURL: https://x.example/v1
  apiKeySecretRefs: [{name: k, key: a}, {name: k, key: b}, {name: k, key: c}]
""")
    err = _refused(crds, namespace, """
apiVersion: detour.dev/v1alpha1
kind: LLMProvider
metadata: {name: both}
spec: {type: openai, baseURL: https://x.example/v1, apiKeySecretRef: {name: k, key: a}, apiKeySecretRefs: [{name: k, key: b}]}
""")
    assert "set apiKeySecretRef or apiKeySecretRefs, not both" in err
    status = {"status": {"health": {"state": "Degraded", "breaker": "1/2 open", "modelsReady": "o1 0/3, gpt-4o 2/3",
                                    "models": [{"name": "gpt-4o", "state": "Degraded", "keys": 3, "readyKeys": 2},
                                               {"name": "o1", "state": "Unavailable", "keys": 3, "readyKeys": 0}]}}}
    crds.kubectl("patch", "llmp", "pool", "--subresource=status", "--type=merge", "-p", json.dumps(status), ns=namespace)
    head, row = crds.kubectl("get", "llmp", "pool", ns=namespace).stdout.splitlines()
    assert head.split()[:6] == ["NAME", "TYPE", "READY", "HEALTH", "BREAKER", "MODELS"]
    assert "o1 0/3, gpt-4o 2/3" in row and "Degraded" in row.split()   # READY is empty: no conditions here
    stored = crds.get_json("llmp", "pool", ns=namespace)["status"]["health"]["models"]
    assert stored[1] == {"name": "o1", "state": "Unavailable", "keys": 3, "readyKeys": 0}   # not pruned
