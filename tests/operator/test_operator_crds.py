"""The CRDs: valid apiextensions.k8s.io/v1, structural, generated from the config models, and the
examples validate against them."""

from __future__ import annotations

import copy
import re
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from conftest import CRDS, ROOT, example_docs

from detour_operator import crdgen

HELM_CRDS = ROOT / "helm" / "detour" / "crds"
K8S_VERSION = "1.32"


def crd(name: str) -> dict[str, Any]:
    return yaml.safe_load((ROOT / "crds" / f"{name}.detour.dev.yaml").read_text())


def schema_of(doc: dict[str, Any]) -> dict[str, Any]:
    return doc["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


def structural_violations(node: dict[str, Any], path: str = "") -> list[str]:
    """The structural-schema rules of apiextensions v1 that matter for generated schemas."""
    out = []
    for bad in ("$ref", "anyOf", "oneOf", "allOf", "not", "definitions", "$defs", "default", "title"):
        if bad in node:
            out.append(f"{path}: has {bad}")
    if "type" not in node and not node.get("x-kubernetes-preserve-unknown-fields"):
        out.append(f"{path}: no type")
    if "properties" in node and "additionalProperties" in node:
        out.append(f"{path}: properties and additionalProperties together")
    if node.get("type") == "array" and "items" not in node:
        out.append(f"{path}: array without items")
    if node.get("x-kubernetes-list-type") == "map":
        required = set(node["items"].get("required", []))
        out += [f"{path}: list-map key {k} not required" for k in node["x-kubernetes-list-map-keys"] if k not in required]
    for key, child in (node.get("properties") or {}).items():
        out += structural_violations(child, f"{path}.{key}")
    for key in ("items", "additionalProperties"):
        if isinstance(node.get(key), dict):
            out += structural_violations(node[key], f"{path}.{key}")
    return out


def to_json_schema(node: Any) -> Any:
    """OpenAPI v3.0 (nullable) -> JSON Schema draft 4 (type lists), for jsonschema validation."""
    if isinstance(node, list):
        return [to_json_schema(n) for n in node]
    if not isinstance(node, dict):
        return node
    out = {k: to_json_schema(v) for k, v in node.items() if k != "nullable"}
    if node.get("nullable"):
        out["type"] = [node["type"], "null"]
        if "enum" in out:
            out["enum"] = [*out["enum"], None]
    return out


def validator(kind: str) -> jsonschema.Draft4Validator:
    name = {"LLMProvider": "llmproviders", "RoutingPolicy": "routingpolicies"}[kind]
    return jsonschema.Draft4Validator(to_json_schema(schema_of(crd(name))))


@pytest.mark.parametrize("path", CRDS, ids=lambda p: p.name)
def test_crd_is_valid_apiextensions_v1(path):
    doc = yaml.safe_load(path.read_text())
    kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    assert doc["apiVersion"] == "apiextensions.k8s.io/v1" and doc["kind"] == "CustomResourceDefinition"
    root = schema_of(doc)
    assert structural_violations(root) == []
    if doc["spec"]["group"] != "detour.dev":
        return  # kopf's peering CRDs: schema-less by design (preserve-unknown-fields)
    version = doc["spec"]["versions"][0]
    assert version["subresources"] == {"status": {}}
    assert root["properties"]["metadata"] == {"type": "object"}  # structural: metadata may not be restricted
    for col in version["additionalPrinterColumns"]:
        # One scalar per column: the API server's table converter prints only a JSONPath's first result.
        # A filter is fine only on a list-map key (at most one match): conditions by type.
        path = col["jsonPath"]
        assert path.startswith(".") and "[*]" not in path and ".." not in path, path
        assert re.sub(r'\.status\.conditions\[\?\(@\.type=="[A-Za-z]+"\)\]', "", path).count("[") == 0, path
    for rule in root["properties"]["spec"]["x-kubernetes-validations"]:
        for field in re.findall(r"self\.([a-zA-Z]+)", rule["rule"]):
            assert field in root["properties"]["spec"]["properties"], (field, rule)


def test_names_columns_and_descriptions():
    llmp, rpol = crd("llmproviders"), crd("routingpolicies")
    assert llmp["spec"]["names"]["shortNames"] == ["llmp"] and rpol["spec"]["names"]["shortNames"] == ["rpol"]
    cols = lambda d: [c["name"] for c in d["spec"]["versions"][0]["additionalPrinterColumns"]]  # noqa: E731
    assert cols(llmp) == ["Type", "Ready", "Health", "Breaker", "Models", "Age"]
    assert cols(rpol) == ["Strategy", "Targets", "Ready", "Age"]

    def undocumented(node: dict[str, Any], path: str) -> list[str]:
        out = []
        for key, child in (node.get("properties") or {}).items():
            out += ([] if child.get("description") else [f"{path}.{key}"]) + undocumented(child, f"{path}.{key}")
        if isinstance(node.get("items"), dict):
            out += undocumented(node["items"], path + "[]")
        return out
    for doc in (llmp, rpol):  # so that `kubectl explain llmp.spec...` helps
        assert undocumented(schema_of(doc)["properties"]["spec"], "spec") == []


def test_committed_crds_match_the_models():
    assert crdgen.main(["--check"]) == 0, "run `make crds`"
    for path in CRDS:
        assert (HELM_CRDS / path.name).read_text() == path.read_text()
    assert sorted(crdgen.build_all()) == sorted(p.name for p in CRDS)


def test_bounds_and_enums_come_from_the_config_models():
    spec = schema_of(crd("routingpolicies"))["properties"]["spec"]["properties"]
    assert spec["strategy"]["enum"] == ["priority", "weighted", "latency", "least-busy"]
    assert spec["retry"]["properties"]["attempts"]["minimum"] == 1 and spec["retry"]["properties"]["attempts"]["maximum"] == 10
    assert spec["targets"]["maxItems"] == 32
    assert sorted(spec["targets"]["items"]["required"]) == ["model", "providerRef"]
    assert spec["timeout"]["pattern"].startswith("^(")
    assert spec["fallbackOnStatusCodes"]["items"] == {"type": "integer", "minimum": 100, "maximum": 599}
    assert spec["hedge"]["nullable"] is True
    pspec = schema_of(crd("llmproviders"))["properties"]["spec"]["properties"]
    assert "name" not in pspec and "apiKey" not in pspec and "apiKeySecretRef" in pspec
    breaker = schema_of(crd("llmproviders"))["properties"]["status"]["properties"]["health"]["properties"]
    assert set(breaker) == {"state", "breaker", "lastError", "lastErrorAt", "requests", "failureRatio", "pods", "truncatedReports",
                            "models", "modelsReady"}


@pytest.mark.parametrize("doc", [d for d in example_docs() if d["apiVersion"].startswith("detour.dev/")],
                         ids=lambda d: f"{d['kind']}/{d['metadata']['name']}")
def test_examples_validate_against_the_crds(doc):
    validator(doc["kind"]).validate(doc)


def test_invalid_objects_are_rejected_by_the_schema():
    llmp = next(d for d in example_docs() if d["kind"] == "LLMProvider")
    for mutate in (lambda s: s.update(type="palm"), lambda s: s.update(baseURL="ftp://x"),
                   lambda s: s.update(timeouts={"connect": "5 seconds"}),
                   lambda s: s.update(maxTokensDefault=0)):
        bad = copy.deepcopy(llmp)
        mutate(bad["spec"])
        with pytest.raises(jsonschema.ValidationError):
            validator("LLMProvider").validate(bad)
    rpol = next(d for d in example_docs() if d["kind"] == "RoutingPolicy")
    for mutate in (lambda s: s.update(targets=[]), lambda s: s["retry"].update(attempts=11),
                   lambda s: s.update(fallbackOnStatusCodes=[42]), lambda s: s["targets"][0].pop("providerRef")):
        bad = copy.deepcopy(rpol)
        mutate(bad["spec"])
        with pytest.raises(jsonschema.ValidationError):
            validator("RoutingPolicy").validate(bad)
