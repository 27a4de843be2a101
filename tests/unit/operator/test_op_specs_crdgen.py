"""Spec models derive from the config models; the JSON-Schema -> structural rewrite; settings; CLI."""

from __future__ import annotations

import pytest

from detour_operator import cli, crdgen, specs
from detour_operator.settings import load_settings
from detour_proxy import config as cfg
from detour_proxy.config.durations import DURATION_PATTERN


def test_spec_fields_are_the_config_fields():
    assert set(specs.LLMProviderSpec.model_fields) == set(cfg.Provider.model_fields) - specs.PROVIDER_DROPPED | {"api_key_secret_ref", "api_key_secret_refs"}
    assert set(specs.RoutingPolicySpec.model_fields) == set(cfg.Route.model_fields) - specs.ROUTE_DROPPED | {"order"}
    assert set(specs.PolicyTarget.model_fields) == set(cfg.Target.model_fields) - {"provider"} | {"provider_ref"}
    for name, field in specs.LLMProviderSpec.model_fields.items():
        if name in cfg.Provider.model_fields:
            assert field.description == cfg.Provider.model_fields[name].description


def test_structural_rewrite():
    defs = {"M": {"type": "object", "title": "M", "properties": {"a": {"type": "string"}}, "additionalProperties": False}}
    node = {"anyOf": [{"$ref": "#/$defs/M"}, {"type": "null"}], "default": None, "description": "d"}
    assert crdgen.structural(node, defs) == {"description": "d", "type": "object", "nullable": True,
                                             "properties": {"a": {"type": "string"}}}
    assert crdgen.structural({"type": "number", "exclusiveMinimum": 0}, {}) == {
        "type": "number", "minimum": 0, "exclusiveMinimum": True}
    dur = crdgen.structural({"type": "string", "pattern": DURATION_PATTERN, "default": 120.0}, {})
    assert dur["description"] == "Defaults to 2m."
    with pytest.raises(ValueError):
        crdgen.structural({"anyOf": [{"type": "string"}, {"type": "integer"}]}, {})


def test_settings_file(tmp_path, monkeypatch):
    monkeypatch.delenv("DETOUR_SETTINGS_FILE", raising=False)
    assert load_settings().proxy_pod_selector == "app.kubernetes.io/component=proxy"
    path = tmp_path / "s.yaml"
    path.write_text("retryBudget: {ratio: 0.5}\nproxyPodSelector: app=detour,tier=proxy\n")
    monkeypatch.setenv("DETOUR_SETTINGS_FILE", str(path))
    s = load_settings()
    assert s.retry_budget.ratio == 0.5 and s.pod_labels() == {"app": "detour", "tier": "proxy"}
    path.write_text("bogus: 1\n")
    with pytest.raises(ValueError, match="invalid operator settings"):
        load_settings()


def test_cli_wraps_kopf_run(monkeypatch):
    monkeypatch.setenv("POD_ID", "detour-operator-7d9f8-abcde")
    prio = cli.replica_priority("detour-operator-7d9f8-abcde")
    exists = lambda name, namespaces: True  # noqa: E731
    assert cli.kopf_args([], exists) == ["run", "-m", "detour_operator.handlers", "--liveness=http://0.0.0.0:8081/healthz",
                                         "--all-namespaces", "--peering=detour", f"--priority={prio}"]
    args = cli.kopf_args(["-n", "a", "-n", "b", "--standalone"], exists)
    assert "--namespace=a" in args and "--namespace=b" in args and "--standalone" in args
    assert not any(a.startswith("--priority") for a in args)      # no peering, no priority
    assert cli.kopf_args(["--priority", "7"], exists)[-1] == "--priority=7"


def test_cli_without_flags_acts_standalone_unless_the_peering_object_exists(caplog):
    # kopf with --peering and no KopfPeering object pauses silently: with no flag, look first.
    seen = []
    missing = lambda name, namespaces: seen.append((name, list(namespaces))) or False  # noqa: E731
    args = cli.kopf_args(["-n", "team-a"], missing)
    assert "--standalone" in args and not any(a.startswith("--peering") for a in args)
    assert seen == [("detour", ["team-a"])]
    assert "KopfPeering 'detour' in namespace(s) team-a was not found: acting standalone" in caplog.text
    unknown = lambda name, namespaces: None  # noqa: E731  (lookup failed, e.g. no RBAC for it)
    assert "--standalone" in cli.kopf_args([], unknown) and "could not be checked" in caplog.text
    # An explicit --peering is kept, and a missing object is said loudly (kopf will wait for it).
    caplog.clear()
    assert "--peering=mine" in cli.kopf_args(["--peering", "mine"], missing)
    assert "ClusterKopfPeering 'mine' does not exist: kopf keeps this operator PAUSED" in caplog.text
    assert "--standalone" in cli.kopf_args(["--standalone"], lambda *_: pytest.fail("no lookup"))


def test_replica_priorities_are_stable_and_differ_across_pods():
    # kopf pauses *every* replica when live peers share a priority: two pods must never collide
    names = [f"detour-operator-7d9f8-{i:05d}" for i in range(2000)]
    prios = [cli.replica_priority(n) for n in names]
    assert len(set(prios)) == len(names)
    assert prios[0] == cli.replica_priority(names[0]) and all(0 <= p < 2**31 for p in prios)
