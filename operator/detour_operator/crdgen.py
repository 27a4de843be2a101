"""Generate the CRDs from the pydantic spec/status models (`python -m detour_operator.crdgen`).

Why generated: the routing-config models are the one schema; hand-written CRD schemas would drift.
pydantic's JSON Schema is not a Kubernetes *structural* schema, so this module rewrites it:
$refs are inlined, `anyOf: [X, null]` becomes `X` + `nullable: true`, `exclusiveMinimum` becomes
the OpenAPI v3.0 boolean form, defaults move into the description (API-server defaulting would
copy every default into every object and make the rendered config noisy), and `additionalProperties:
false` is dropped (forbidden next to `properties`; the API server prunes unknown fields instead).

`--write` writes `crds/` and `helm/detour/crds/`; `--check` exits 1 if the committed files differ.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel

from detour_proxy import config as cfg
from detour_proxy.config.durations import DURATION_PATTERN, format_duration

from . import specs

ROOT = Path(__file__).resolve().parents[2]
OUT_DIRS = (ROOT / "crds", ROOT / "helm" / "detour" / "crds")

# Descriptions for config models that have no docstring yet (kubectl explain shows every field).
FALLBACK_DESCRIPTIONS = {"Backoff": "Full-jitter exponential backoff between tries of the same target."}

READY = '.status.conditions[?(@.type=="Ready")].status'

# Rules spanning fields (CEL), kept to ones the API server can check cheaply. Each has a pydantic
# twin (specs.py validators, detour_proxy.config.check_latency_tolerance), so the operator refuses
# exactly what the API server refuses; tests/unit/operator/test_op_cel_rules.py evaluates both.
# There is deliberately no rule tying `weight` to `strategy: weighted`: every strategy uses weights
# (priority ties, the latency band, least-busy's weight-0 last resort).
PROVIDER_RULES = [
    {"rule": "(has(self.type) && (self.type == 'openai-compatible' || self.type == 'vertex' || self.type == 'bedrock')) || has(self.apiKeySecretRef) || has(self.apiKeySecretRefs)",
     "message": "apiKeySecretRef is required unless type is openai-compatible, vertex or bedrock",
     "fieldPath": ".apiKeySecretRef", "reason": "FieldValueRequired"},
    {"rule": "!has(self.apiKeySecretRef) || !has(self.apiKeySecretRefs)",
     "message": "set apiKeySecretRef or apiKeySecretRefs, not both", "fieldPath": ".apiKeySecretRefs"},
    {"rule": "!has(self.type) || self.type != 'vertex' || (has(self.project) && has(self.location))",
     "message": "type vertex needs project and location", "fieldPath": ".project", "reason": "FieldValueRequired"},
    {"rule": "!has(self.type) || self.type != 'bedrock' || has(self.region)",
     "message": "type bedrock needs region", "fieldPath": ".region", "reason": "FieldValueRequired"},
    {"rule": "(has(self.type) && self.type == 'bedrock') || (has(self.baseURL) && self.baseURL != '')",
     "message": "baseURL is required unless type is bedrock", "fieldPath": ".baseURL", "reason": "FieldValueRequired"},
]
POLICY_RULES = [
    {"rule": (f"!has(self.latencyTolerance) || self.latencyTolerance == {cfg.LATENCY_TOLERANCE_DEFAULT!r} "
              "|| (has(self.strategy) && self.strategy == 'latency')"),
     "message": "latencyTolerance applies only to strategy: latency", "fieldPath": ".latencyTolerance"},
]


def _default_text(value: Any, node: dict[str, Any]) -> str:
    if node.get("pattern") == DURATION_PATTERN and isinstance(value, (int, float)):
        return format_duration(value)
    if isinstance(value, str):
        return value
    return json.dumps(value, separators=(", ", ": "))


def structural(node: Any, defs: dict[str, Any]) -> Any:
    """Rewrite one pydantic JSON-Schema node into a structural OpenAPI v3 node."""
    if isinstance(node, list):
        return [structural(n, defs) for n in node]
    if not isinstance(node, dict):
        return node
    if "$ref" in node:
        name = node["$ref"].rsplit("/", 1)[-1]
        target = copy.deepcopy(defs[name])
        if "description" not in target and name in FALLBACK_DESCRIPTIONS:
            target["description"] = FALLBACK_DESCRIPTIONS[name]
        merged = {**target, **{k: v for k, v in node.items() if k != "$ref"}}
        return structural(merged, defs)
    if "allOf" in node and len(node["allOf"]) == 1:
        merged = {**node["allOf"][0], **{k: v for k, v in node.items() if k != "allOf"}}
        return structural(merged, defs)
    nullable = False
    if "anyOf" in node:
        options = [o for o in node["anyOf"] if o.get("type") != "null"]
        nullable = len(options) < len(node["anyOf"])
        if len(options) != 1:
            raise ValueError(f"cannot express anyOf {node['anyOf']} structurally")
        merged = {**options[0], **{k: v for k, v in node.items() if k != "anyOf"}}
        node = structural(merged, defs)
        if nullable:
            node["nullable"] = True
        return node
    out: dict[str, Any] = {}
    description = node.get("description", "")
    if "default" in node and node["default"] not in (None, [], {}, ""):
        description = (description + " " if description else "") + f"Defaults to {_default_text(node['default'], node)}."
    if description:
        out["description"] = " ".join(description.split())
    if "const" in node:
        out["enum"] = [node["const"]]
    for key, value in node.items():
        if key in ("title", "default", "description", "$defs", "const"):
            continue
        if key == "additionalProperties" and value is False:
            continue
        if key == "exclusiveMinimum":
            out["minimum"], out["exclusiveMinimum"] = value, True
        elif key == "exclusiveMaximum":
            out["maximum"], out["exclusiveMaximum"] = value, True
        elif key == "properties":
            out["properties"] = {k: structural(v, defs) for k, v in value.items()}
        elif key in ("items", "additionalProperties"):
            out[key] = structural(value, defs)
        elif key == "format" and value not in ("date-time", "int32", "int64", "double", "float"):
            continue
        else:
            out[key] = value
    if "enum" in out and "type" not in out:
        out["type"] = "string"
    if "properties" in out and "type" not in out:
        out["type"] = "object"
    return out


def model_schema(model: type[BaseModel]) -> dict[str, Any]:
    raw = model.model_json_schema(by_alias=True, mode="validation")
    return structural(raw, raw.get("$defs", {}))


def _crd(kind: str, plural: str, short: str, spec_model: type[BaseModel], status_model: type[BaseModel],
         rules: list[dict[str, Any]], columns: list[dict[str, Any]], description: str) -> dict[str, Any]:
    spec = model_schema(spec_model)
    spec["x-kubernetes-validations"] = rules
    status = model_schema(status_model)
    status["properties"]["conditions"].update({"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]})
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.{specs.GROUP}",
                     "annotations": {"detour.dev/generated-by": "python -m detour_operator.crdgen --write"}},
        "spec": {
            "group": specs.GROUP,
            "scope": "Namespaced",
            "names": {"kind": kind, "listKind": f"{kind}List", "plural": plural, "singular": kind.lower(),
                      "shortNames": [short], "categories": ["detour"]},
            "versions": [{
                "name": specs.VERSION, "served": True, "storage": True,
                "subresources": {"status": {}},
                "additionalPrinterColumns": columns,
                "schema": {"openAPIV3Schema": {
                    "type": "object", "description": description, "required": ["spec"],
                    "properties": {
                        "apiVersion": {"type": "string", "description": "APIVersion of this object."},
                        "kind": {"type": "string", "description": "Kind of this object."},
                        "metadata": {"type": "object"},
                        "spec": spec, "status": status,
                    },
                }},
            }],
        },
    }


def build() -> dict[str, dict[str, Any]]:
    """File name -> CRD object."""
    age = {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}
    ready = {"name": "Ready", "type": "string", "jsonPath": READY}
    llmp = _crd(
        "LLMProvider", "llmproviders", "llmp", specs.LLMProviderSpec, specs.LLMProviderStatus, PROVIDER_RULES,
        [{"name": "Type", "type": "string", "jsonPath": ".spec.type"}, ready,
         {"name": "Health", "type": "string", "jsonPath": ".status.health.state"},
         {"name": "Breaker", "type": "string", "jsonPath": ".status.health.breaker"},
         {"name": "Models", "type": "string", "jsonPath": ".status.health.modelsReady"}, age],
        "An upstream LLM provider endpoint that Detour routes to. Its name is the provider name in the routing config.")
    rpol = _crd(
        "RoutingPolicy", "routingpolicies", "rpol", specs.RoutingPolicySpec, specs.RoutingPolicyStatus, POLICY_RULES,
        [{"name": "Strategy", "type": "string", "jsonPath": ".spec.strategy"},
         {"name": "Targets", "type": "string", "jsonPath": ".status.targets"}, ready, age],
        "A Detour route: which requests it serves, the LLMProviders it sends them to, and its retry/fallback policy.")
    return {"llmproviders.detour.dev.yaml": llmp, "routingpolicies.detour.dev.yaml": rpol}


def _kopf_peering(kind: str, plural: str, scope: str) -> dict[str, Any]:
    """kopf's peering CRDs (one active replica: `--peering detour`); kopf does not install them itself."""
    free = {"type": "object", "x-kubernetes-preserve-unknown-fields": True}
    return {
        "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.kopf.dev"},
        "spec": {"scope": scope, "group": "kopf.dev",
                 "names": {"kind": kind, "plural": plural, "singular": kind.lower()},
                 "versions": [{"name": "v1", "served": True, "storage": True, "schema": {"openAPIV3Schema": {
                     "type": "object", "properties": {"spec": free, "status": free}}}}]},
    }


def build_all() -> dict[str, dict[str, Any]]:
    """Detour's CRDs plus kopf's peering CRDs, as written to crds/ and helm/detour/crds/."""
    return {**build(),
            "clusterkopfpeerings.kopf.dev.yaml": _kopf_peering("ClusterKopfPeering", "clusterkopfpeerings", "Cluster"),
            "kopfpeerings.kopf.dev.yaml": _kopf_peering("KopfPeering", "kopfpeerings", "Namespaced")}


def render(obj: dict[str, Any]) -> str:
    header = "# Generated by `python -m detour_operator.crdgen --write`; do not edit.\n"
    return header + yaml.safe_dump(obj, sort_keys=False, width=120, allow_unicode=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="detour_operator.crdgen", description=__doc__.splitlines()[0])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--write", action="store_true", help="write crds/ and helm/detour/crds/")
    mode.add_argument("--check", action="store_true", help="exit 1 if the committed CRDs differ")
    args = parser.parse_args(argv)
    stale = []
    for name, obj in build_all().items():
        text = render(obj)
        for out_dir in OUT_DIRS:
            path = out_dir / name
            if args.write:
                out_dir.mkdir(parents=True, exist_ok=True)
                path.write_text(text)
            elif args.check and (not path.exists() or path.read_text() != text):
                stale.append(str(path.relative_to(ROOT)))
        if not (args.write or args.check):
            sys.stdout.write(text + "---\n")
    if stale:
        print("stale CRDs (run `make crds`): " + ", ".join(stale), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
