"""The CRDs' CEL rules (`x-kubernetes-validations`) compiled and evaluated, and the pydantic models agree.

Why: there is no API server here, so nothing else would ever run these rules. A rule that does not
compile, rejects a documented example, or disagrees with the operator's own validation would let
the operator accept what a real cluster refuses (or the reverse). Values are converted to CEL
types by the schema, as the API server does (a `type: number` field is a double even when
written as `1`), and null fields count as absent.
"""

from __future__ import annotations

import copy
import pathlib
from collections.abc import Iterator
from typing import Any

import celpy
import pytest
import yaml
from celpy import celtypes
from pydantic import ValidationError

from detour_operator import render, specs
from detour_operator.settings import OperatorSettings
from detour_proxy import config as cfg

ROOT = pathlib.Path(__file__).resolve().parents[3]
CRDS = {d["spec"]["names"]["kind"]: d for p in sorted((ROOT / "crds").glob("*.detour.dev.yaml"))
        for d in [yaml.safe_load(p.read_text())]}
SPEC_MODELS = {"LLMProvider": specs.LLMProviderSpec, "RoutingPolicy": specs.RoutingPolicySpec}
ENV = celpy.Environment()


def schema(kind: str) -> dict[str, Any]:
    return CRDS[kind]["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


def rules(node: dict[str, Any], path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], dict[str, Any], dict[str, Any]]]:
    """(path to the node, node schema, rule) for every rule anywhere in the schema ("[]" = each item)."""
    for rule in node.get("x-kubernetes-validations", []):
        yield path, node, rule
    for key, child in (node.get("properties") or {}).items():
        yield from rules(child, (*path, key))
    if isinstance(node.get("items"), dict):
        yield from rules(node["items"], (*path, "[]"))


def to_cel(value: Any, node: dict[str, Any]) -> Any:
    kind = node.get("type")
    if kind == "object" and isinstance(value, dict):
        props, extra = node.get("properties") or {}, node.get("additionalProperties") or {}
        return celtypes.MapType({celtypes.StringType(k): to_cel(v, props.get(k, extra))
                                 for k, v in value.items() if v is not None})
    if kind == "array" and isinstance(value, list):
        return celtypes.ListType([to_cel(v, node.get("items") or {}) for v in value])
    if kind == "number":
        return celtypes.DoubleType(float(value))
    if kind == "integer":
        return celtypes.IntType(int(value))
    return celpy.json_to_cel(value)


def values_at(obj: Any, path: tuple[str, ...]) -> Iterator[Any]:
    if not path:
        yield obj
    elif path[0] == "[]":
        for item in obj if isinstance(obj, list) else []:
            yield from values_at(item, path[1:])
    elif isinstance(obj, dict) and obj.get(path[0]) is not None:
        yield from values_at(obj[path[0]], path[1:])


def cel_violations(kind: str, spec: dict[str, Any]) -> list[str]:
    """Messages of the rules an object with this `spec` breaks, as the API server would evaluate
    them (an evaluation error rejects too)."""
    out = []
    obj = {"apiVersion": specs.API_VERSION, "kind": kind, "metadata": {"name": "x"}, "spec": spec}
    for path, node, rule in rules(schema(kind)):
        program = ENV.program(ENV.compile(rule["rule"]))
        found = list(values_at(obj, path))
        assert found or "[]" in path, f"rule at {path} never evaluated"
        for value in found:
            try:
                ok = program.evaluate({"self": to_cel(value, node)})
            except celpy.CELEvalError as exc:
                ok = exc
            if ok is not True and ok != celtypes.BoolType(True):
                out.append(rule["message"])
    return out


def model_accepts(kind: str, spec: dict[str, Any]) -> bool:
    try:
        SPEC_MODELS[kind].model_validate(spec)
    except ValidationError:
        return False
    return True


def examples() -> list[dict[str, Any]]:
    docs = [d for p in sorted((ROOT / "examples").rglob("*.yaml")) for d in yaml.safe_load_all(p.read_text())
            if isinstance(d, dict) and str(d.get("apiVersion", "")).startswith("detour.dev/")]
    # routes of the config-file examples (the issue's and the standalone one), written as RoutingPolicies
    for path in (ROOT / "examples" / "standalone.yaml", ROOT / "tests" / "unit" / "config" / "issue_example.yaml"):
        for route in yaml.safe_load(path.read_text())["routes"]:
            spec = {k: v for k, v in route.items() if k != "name"}
            spec["targets"] = [{("providerRef" if k == "provider" else k): v for k, v in t.items()}
                               for t in route["targets"]]
            docs.append({"kind": "RoutingPolicy", "metadata": {"name": f"{path.stem}-{route['name']}"}, "spec": spec})
    # the custom resources shown in docs/kubernetes.md (e.g. the vertex and gemini LLMProviders)
    text = (ROOT / "docs" / "kubernetes.md").read_text()
    for block in text.split("```yaml")[1:]:
        docs += [d for d in yaml.safe_load_all(block.split("```")[0])
                 if isinstance(d, dict) and str(d.get("apiVersion", "")).startswith("detour.dev/")]
    return docs


def test_every_rule_compiles_and_has_a_message():
    found = [rule for kind in CRDS for _, _, rule in rules(schema(kind))]
    assert len(found) >= 2
    for rule in found:
        ENV.compile(rule["rule"])  # raises CELParseError
        assert rule["message"] and rule.get("fieldPath", ".").startswith(".")


@pytest.mark.parametrize("doc", examples(), ids=lambda d: f"{d['kind']}/{d['metadata']['name']}")
def test_examples_pass_the_rules_and_the_models(doc):
    assert cel_violations(doc["kind"], doc["spec"]) == []
    assert model_accepts(doc["kind"], doc["spec"])


PROVIDER = {"type": "openai", "baseURL": "https://api.example.com/v1", "apiKeySecretRef": {"name": "s", "key": "k"}}
POLICY = {"targets": [{"providerRef": "a", "model": "m", "priority": 0, "weight": 3},
                      {"providerRef": "b", "model": "m", "priority": 0, "weight": 1}]}


def variant(base: dict[str, Any], drop: tuple[str, ...] = (), **changes: Any) -> dict[str, Any]:
    spec = copy.deepcopy(base)
    for key in drop:
        spec.pop(key)
    return {**spec, **changes}


KEY_RULE = "apiKeySecretRef is required unless type is openai-compatible, vertex or bedrock"
VERTEX_RULE = "type vertex needs project and location"
VERTEX = {"type": "vertex", "baseURL": "https://us-east5-aiplatform.googleapis.com", "project": "p", "location": "us-east5"}
BEDROCK_RULE = "type bedrock needs region"
BASE_URL_RULE = "baseURL is required unless type is bedrock"
ONE_KEY_FIELD_RULE = "set apiKeySecretRef or apiKeySecretRefs, not both"
BEDROCK = {"type": "bedrock", "region": "us-east-1"}
LATENCY_RULE = "latencyTolerance applies only to strategy: latency"
# id -> (kind, spec, the rule message it breaks or None)
CASES = {
    "provider-with-key": ("LLMProvider", PROVIDER, None),
    "openai-without-key": ("LLMProvider", variant(PROVIDER, drop=("apiKeySecretRef",)), KEY_RULE),
    "default-type-without-key": ("LLMProvider", variant(PROVIDER, drop=("apiKeySecretRef", "type")), KEY_RULE),
    "null-key-ref": ("LLMProvider", variant(PROVIDER, apiKeySecretRef=None), KEY_RULE),
    "openai-compatible-without-key": ("LLMProvider", variant(PROVIDER, drop=("apiKeySecretRef",), type="openai-compatible"), None),
    "openai-compatible-with-key": ("LLMProvider", variant(PROVIDER, type="openai-compatible"), None),
    "vertex-workload-identity": ("LLMProvider", VERTEX, None),
    "vertex-service-account-key": ("LLMProvider", variant(VERTEX, apiKeySecretRef={"name": "s", "key": "k"}), None),
    "vertex-without-location": ("LLMProvider", variant(VERTEX, drop=("location",)), VERTEX_RULE),
    "vertex-without-project": ("LLMProvider", variant(VERTEX, drop=("project",)), VERTEX_RULE),
    "bedrock-irsa-default-base-url": ("LLMProvider", BEDROCK, None),
    "bedrock-api-key-own-base-url": ("LLMProvider", variant(BEDROCK, baseURL="https://vpce.example.com",
                                                            apiKeySecretRef={"name": "s", "key": "k"}), None),
    "bedrock-without-region": ("LLMProvider", variant(BEDROCK, drop=("region",), baseURL="https://b.example.com"), BEDROCK_RULE),
    "openai-without-base-url": ("LLMProvider", variant(PROVIDER, drop=("baseURL",)), BASE_URL_RULE),
    "several-keys": ("LLMProvider", variant(PROVIDER, drop=("apiKeySecretRef",), apiKeySecretRefs=[
        {"name": "s", "key": "k"}, {"name": "s", "key": "k2"}]), None),
    "one-key-and-several-keys": ("LLMProvider", variant(PROVIDER, apiKeySecretRefs=[{"name": "s", "key": "k2"}]),
                                 ONE_KEY_FIELD_RULE),
    # weights mean something in every strategy (priority ties share by weight), so they are never refused
    "weights-default-strategy": ("RoutingPolicy", POLICY, None),
    "weights-priority": ("RoutingPolicy", variant(POLICY, strategy="priority"), None),
    "weights-least-busy": ("RoutingPolicy", variant(POLICY, strategy="least-busy"), None),
    "weights-weighted": ("RoutingPolicy", variant(POLICY, strategy="weighted"), None),
    "tolerance-latency": ("RoutingPolicy", variant(POLICY, strategy="latency", latencyTolerance=0.5), None),
    "int-tolerance-latency": ("RoutingPolicy", variant(POLICY, strategy="latency", latencyTolerance=1), None),
    "default-tolerance-priority": ("RoutingPolicy", variant(POLICY, strategy="priority", latencyTolerance=0.2), None),
    "tolerance-default-strategy": ("RoutingPolicy", variant(POLICY, latencyTolerance=0.5), LATENCY_RULE),
    "zero-tolerance-weighted": ("RoutingPolicy", variant(POLICY, strategy="weighted", latencyTolerance=0), LATENCY_RULE),
}
BAD = {k: v for k, v in CASES.items() if v[2]}


@pytest.mark.parametrize("kind, spec, broken", CASES.values(), ids=CASES.keys())
def test_cel_rules_and_pydantic_models_agree(kind, spec, broken):
    assert cel_violations(kind, spec) == ([broken] if broken else [])
    assert model_accepts(kind, spec) is (broken is None)
    if kind == "RoutingPolicy":  # the proxy's own config model draws the same line
        route = {"name": "r", **spec, "targets": [{"provider": t["providerRef"], "model": t["model"],
                                                    "priority": t["priority"], "weight": t["weight"]} for t in spec["targets"]]}
        try:
            cfg.Route.model_validate(route)
            route_ok = True
        except ValidationError:
            route_ok = False
        assert route_ok is (broken is None)


@pytest.mark.parametrize("kind, spec, broken", BAD.values(), ids=BAD.keys())
def test_the_operator_rejects_what_the_api_server_would(kind, spec, broken):
    secrets = {"s": {"k": "c2stYQ=="}}
    ok_provider = {"kind": "LLMProvider", "metadata": {"name": "a", "uid": "u-a"}, "spec": PROVIDER}
    obj = {"kind": kind, "metadata": {"name": "x", "uid": "u-x"}, "spec": spec}
    providers = [ok_provider, obj] if kind == "LLMProvider" else [ok_provider]
    policies = [obj] if kind == "RoutingPolicy" else [{"kind": "RoutingPolicy", "metadata": {"name": "p"},
                                                        "spec": {"targets": [{"providerRef": "a", "model": "m"}]}}]
    result = render.render(providers, policies, secrets, OperatorSettings())
    problem = result.problems[(kind, "x")][0]
    assert (problem.condition, problem.reason) == ("Accepted", "InvalidSpec") and broken in problem.message
