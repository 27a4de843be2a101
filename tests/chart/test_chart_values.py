"""values.yaml / values.schema.json: bad values fail at install, every key is documented, the
settings block matches the config models, and the chart's crds/ match the top-level crds/."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from chartlib import CHART_DIR, FULL_VALUES, ROOT, helm, render_docs

SCHEMA = json.loads((CHART_DIR / "values.schema.json").read_text())


@pytest.fixture(scope="module")
def chart():
    with helm.Chart.load(CHART_DIR) as c:
        yield c


def _set(path: str, value: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    node = out
    parts = path.split(".")
    for p in parts[:-1]:
        node = node.setdefault(p, {})
    node[parts[-1]] = value
    return out


GOOD = {
    "defaults": {},
    "full": FULL_VALUES,
    "kind": yaml.safe_load((CHART_DIR / "ci" / "kind-values.yaml").read_text()),
    "no shared health": {"settings": {"sharedHealth": {"enabled": False}}},
    "numeric durations": {"settings": {"health": {"window": 90}}},
    "pdb percent": {"proxy": {"podDisruptionBudget": {"maxUnavailable": "25%"}}},
    "localhost seccomp profile": {"podSecurityContext": {"seccompProfile": {"type": "Localhost",
                                                                          "localhostProfile": "detour.json"}}},
    "NET_BIND_SERVICE added back": {"containerSecurityContext": {"capabilities": {"drop": ["ALL"],
                                                                                 "add": ["NET_BIND_SERVICE"]}}},
    "another uid": {"podSecurityContext": {"runAsUser": 20000, "runAsGroup": 20000, "fsGroup": 20000}},
}

BAD = {
    "replicas as a word": _set("proxy.replicas", "two"),
    "unknown top-level key": {"replicaCount": 2},
    "unknown nested key (typo)": _set("proxy.replica", 2),
    "negative port": _set("proxy.port", -1),
    "port too large": _set("proxy.service.port", 70000),
    "nodePort out of range": _set("proxy.service.nodePort", 8080),
    "unknown service type": _set("proxy.service.type", "ExternalName"),
    "bad duration": _set("settings.health.window", "one minute"),
    "failureRatio above 1": _set("settings.health.breaker.failureRatio", 1.5),
    "unknown settings key": _set("settings.health.brekaer", {}),
    "snake_case settings key": _set("settings.retryBudget.min_per_second", 1),
    "inline client key": _set("settings.clientAuth", {"keys": [{"value": "sk-secret"}]}),
    "two sources in one key": _set("settings.clientAuth", {"keys": [{"env": "A", "file": "/k"}]}),
    "empty client keys": _set("settings.clientAuth", {"keys": []}),
    "maxBodyBytes too small": _set("settings.server.maxBodyBytes", 10),
    "operator replicas zero": _set("operator.replicas", 0),
    "bad pull policy": _set("image.pullPolicy", "Sometimes"),
    "bad digest": _set("proxy.image.digest", "latest"),
    "negative grace period": _set("proxy.terminationGracePeriodSeconds", -5),
    "hpa min zero": _set("proxy.autoscaling.minReplicas", 0),
    "ingress path without slash": _set("ingress.hosts", [{"host": "x", "paths": [{"path": "v1", "pathType": "Prefix"}]}]),
    "bad spread policy": _set("proxy.topologySpreadConstraints",
                              [{"maxSkew": 1, "topologyKey": "k", "whenUnsatisfiable": "Maybe"}]),
    # the restricted security context cannot be weakened
    "privileged container": _set("containerSecurityContext.privileged", True),
    "root allowed in the pod": _set("podSecurityContext.runAsNonRoot", False),
    "root allowed in the container": _set("containerSecurityContext.runAsNonRoot", False),
    "privileged and root together": {"containerSecurityContext": {"privileged": True, "runAsNonRoot": False}},
    "uid 0": _set("podSecurityContext.runAsUser", 0),
    "container uid 0": _set("containerSecurityContext.runAsUser", 0),
    "privilege escalation": _set("containerSecurityContext.allowPrivilegeEscalation", True),
    "writable root filesystem": _set("containerSecurityContext.readOnlyRootFilesystem", False),
    "capabilities not dropped": _set("containerSecurityContext.capabilities", {"drop": ["NET_RAW"]}),
    "capability added": _set("containerSecurityContext.capabilities", {"drop": ["ALL"], "add": ["SYS_ADMIN"]}),
    "unconfined pod seccomp": _set("podSecurityContext.seccompProfile.type", "Unconfined"),
    "unconfined container seccomp": _set("containerSecurityContext.seccompProfile.type", "Unconfined"),
    "localhost seccomp without a profile": _set("podSecurityContext.seccompProfile.type", "Localhost"),
    "host proc mount": _set("containerSecurityContext.procMount", "Unmasked"),
    "unknown security field": _set("containerSecurityContext.windowsOptions", {"hostProcess": True}),
}


@pytest.mark.parametrize("values", GOOD.values(), ids=GOOD.keys())
def test_good_values_pass_the_schema_and_render(chart, values: dict[str, Any]) -> None:
    chart.validate_schema(chart.merge_values(copy.deepcopy(values)))
    assert render_docs(values)


@pytest.mark.parametrize("values", BAD.values(), ids=BAD.keys())
def test_bad_values_are_rejected_at_install(chart, values: dict[str, Any]) -> None:
    with pytest.raises(helm.HelmValuesError):
        chart.validate_schema(chart.merge_values(copy.deepcopy(values)))
    # what `helm install/template` does: the render itself refuses them
    with pytest.raises(helm.HelmValuesError):
        render_docs(values)
    # and `helm lint` reports them as errors
    report = helm.lint(CHART_DIR, copy.deepcopy(values))
    assert report["errors"]


# A null removes a default key (Helm's coalescing). chart.validate_schema() re-merges the chart's
# defaults, so these are checked the way `helm install` and `helm lint` see them.
REMOVED = {
    "runAsNonRoot removed": _set("podSecurityContext.runAsNonRoot", None),
    "pod seccompProfile removed": _set("podSecurityContext.seccompProfile", None),
    "readOnlyRootFilesystem removed": _set("containerSecurityContext.readOnlyRootFilesystem", None),
    "capabilities drop removed": _set("containerSecurityContext.capabilities", {"drop": None}),
}


@pytest.mark.parametrize("values", REMOVED.values(), ids=REMOVED.keys())
def test_removing_a_restrictive_security_field_is_rejected_at_install(values: dict[str, Any]) -> None:
    with pytest.raises(helm.HelmValuesError, match="missing property"):
        render_docs(values)
    assert helm.lint(CHART_DIR, copy.deepcopy(values))["errors"]


def test_schema_is_a_valid_draft_2020_12_schema() -> None:
    jsonschema.Draft202012Validator.check_schema(SCHEMA)
    defaults = yaml.safe_load((CHART_DIR / "values.yaml").read_text())
    jsonschema.Draft202012Validator(SCHEMA).validate(defaults)


def _closed_objects(schema: dict[str, Any], path: str = "") -> list[str]:
    """Paths of object schemas with `properties` that still allow unknown keys."""
    out = []
    if schema.get("type") == "object" and "properties" in schema and schema.get("additionalProperties", True) is True:
        out.append(path or "(root)")
    for key, sub in schema.get("properties", {}).items():
        out += _closed_objects(sub, f"{path}.{key}")
    for key, sub in schema.get("$defs", {}).items():
        out += _closed_objects(sub, f"$defs.{key}")
    return out


def test_schema_closes_every_documented_object() -> None:
    # A typo anywhere in the chart's own keys must fail; only pass-through Kubernetes objects
    # (securityContext, affinity, behavior, ...) are declared without properties.
    assert _closed_objects(SCHEMA) == []


def _model_keys(model) -> set[str]:
    return {f.alias or name for name, f in model.model_fields.items()}


def test_settings_schema_matches_the_config_models() -> None:
    from detour_proxy import config as cfg

    props = SCHEMA["properties"]["settings"]["properties"]
    assert set(props) == {"health", "retryBudget", "clientAuth", "server", "sharedHealth"}
    assert set(props["health"]["properties"]) == _model_keys(cfg.Health)
    assert set(props["health"]["properties"]["breaker"]["properties"]) == _model_keys(cfg.Breaker)
    slow = next(s for s in props["health"]["properties"]["slowCall"]["anyOf"] if "properties" in s)
    assert set(slow["properties"]) == _model_keys(cfg.SlowCall)
    assert set(props["retryBudget"]["properties"]) == _model_keys(cfg.RetryBudget)
    auth = next(s for s in props["clientAuth"]["anyOf"] if "properties" in s)
    assert set(auth["properties"]) == _model_keys(cfg.ClientAuth)
    # env and file only: the operator refuses inline values (they would land in a ConfigMap)
    assert set(SCHEMA["$defs"]["secretSource"]["properties"]) == _model_keys(cfg.SecretSource) - {"value"}
    assert set(props["server"]["properties"]) == _model_keys(cfg.Server)
    assert set(props["sharedHealth"]["properties"]) == _model_keys(cfg.SharedHealth)


def test_default_settings_equal_the_config_defaults_except_documented_choices() -> None:
    """values.yaml spells out the config defaults (as documentation); they must not drift apart."""
    from detour_proxy import config as cfg

    v = yaml.safe_load((CHART_DIR / "values.yaml").read_text())["settings"]
    health = {k: x for k, x in v["health"].items() if not (k == "slowCall" and x == {})}
    assert cfg.Health.model_validate(health) == cfg.Health()
    assert cfg.RetryBudget.model_validate(v["retryBudget"]) == cfg.RetryBudget()
    assert v["clientAuth"] == {}
    # Chart choices: drain the longest stream (5m = the default total timeout of a provider) ...
    assert cfg.Server.model_validate(v["server"]) == cfg.Server(drain_timeout=300)
    # ... and share health by default in Kubernetes; podSelector/replicas are filled in by the chart.
    shared = {k: x for k, x in v["sharedHealth"].items() if k not in ("podSelector", "replicas")}
    assert cfg.SharedHealth.model_validate(shared) == cfg.SharedHealth(enabled=True)


def _key_lines(path: Path) -> list[tuple[int, str, int]]:
    """(line number, key, indent) of every mapping key that is not inside a list."""
    out = []
    in_list_at: int | None = None
    for no, line in enumerate(path.read_text().splitlines()):
        stripped = line.lstrip()
        if not stripped or stripped.startswith("#"):
            continue
        indent = len(line) - len(stripped)
        if in_list_at is not None:
            if indent > in_list_at or (indent == in_list_at and stripped.startswith("- ")):
                continue
            in_list_at = None
        if stripped.startswith("- "):
            in_list_at = indent
            continue
        key = stripped.split(":", 1)[0]
        out.append((no, key, indent))
    return out


def test_values_yaml_documents_every_key_with_a_comment_starting_with_its_name() -> None:
    path = CHART_DIR / "values.yaml"
    lines = path.read_text().splitlines()
    undocumented = []
    for no, key, indent in _key_lines(path):
        # the comment block right above the key; its first line starts with the key's name
        j = no - 1
        block = []
        while j >= 0 and lines[j].strip().startswith("#") and len(lines[j]) - len(lines[j].lstrip()) == indent:
            block.insert(0, lines[j].strip())
            j -= 1
        if not block or not block[0].lstrip("# ").startswith(f"{key} "):
            undocumented.append(f"line {no + 1}: {key}")
    assert undocumented == []


def test_values_keys_are_camel_case() -> None:
    exceptions = {"grafana_dashboard"}  # a label name the Grafana sidecar expects
    for _, key, _ in _key_lines(CHART_DIR / "values.yaml"):
        assert key in exceptions or ("_" not in key and "-" not in key and key[0].islower()), key


def test_chart_crds_are_identical_to_top_level_crds() -> None:
    top, chart = ROOT / "crds", CHART_DIR / "crds"
    top_files = sorted(p.name for p in top.glob("*.yaml")) if top.is_dir() else []
    chart_files = sorted(p.name for p in chart.glob("*.yaml")) if chart.is_dir() else []
    assert top_files, "crds/*.yaml missing: run `make crds`"
    assert chart_files == top_files, "helm/detour/crds/ must hold exactly the files of crds/"
    for name in top_files:
        assert (chart / name).read_bytes() == (top / name).read_bytes(), f"helm/detour/crds/{name} differs from crds/{name}"
    crd_kinds = {yaml.safe_load((top / n).read_text())["spec"]["names"]["kind"] for n in top_files}
    assert {"LLMProvider", "RoutingPolicy"} <= crd_kinds
