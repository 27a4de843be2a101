"""The routing config contract: the issue's example is accepted as written; errors name the field."""

from __future__ import annotations

import pathlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from detour_proxy.config import ConfigError, config_hash, format_duration, load_config, parse_config, parse_duration

ISSUE_EXAMPLE = (pathlib.Path(__file__).parent / "issue_example.yaml").read_text()


def test_issue_example_is_accepted_as_written():
    cfg = parse_config(ISSUE_EXAMPLE)
    assert cfg.providers[0].timeouts.first_token == 10.0
    assert cfg.routes[0].retry.backoff.initial == 0.1
    assert cfg.health.breaker.max_cooldown == 300.0
    assert cfg.retry_budget.ratio == 0.2


def test_standalone_example_loads():
    assert load_config("examples/standalone.yaml").routes[0].name == "chat"


@pytest.mark.parametrize("patch, field", [
    ("timeout: 60s", "timeout: soon"),
    ("strategy: priority", "strategy: fastest"),
    ("attempts: 2", "attempts: 0"),
])
def test_errors_name_the_field_and_reason(patch, field):
    with pytest.raises(ConfigError) as exc:
        parse_config(ISSUE_EXAMPLE.replace(patch, field))
    msg = str(exc.value)
    key = field.split(":")[0]
    assert "routes[0]." in msg and key in msg


def test_latency_tolerance_only_with_the_latency_strategy():
    # The same rule as the RoutingPolicy CRD's CEL rule (tests/unit/operator/test_op_cel_rules.py).
    with pytest.raises(ConfigError) as exc:
        parse_config(ISSUE_EXAMPLE.replace("    timeout: 60s\n", "    timeout: 60s\n    latencyTolerance: 0.5\n"))
    assert "routes[0]" in str(exc.value) and "latencyTolerance applies only to strategy: latency" in str(exc.value)
    latency = parse_config(ISSUE_EXAMPLE.replace("strategy: priority", "strategy: latency")
                           .replace("    timeout: 60s\n", "    timeout: 60s\n    latencyTolerance: 0.5\n"))
    assert latency.routes[0].latency_tolerance == 0.5
    # the default written out has no effect anywhere, so it is accepted with any strategy
    assert parse_config(ISSUE_EXAMPLE.replace("    timeout: 60s\n", "    timeout: 60s\n    latencyTolerance: 0.2\n"))


def test_weights_count_with_every_strategy():
    # priority ties are shared by weight (README), so weights are not tied to strategy: weighted
    tie = ISSUE_EXAMPLE.replace("priority: 1, weight: 1", "priority: 0, weight: 3")
    for strategy in ("priority", "weighted", "latency", "least-busy"):
        route = parse_config(tie.replace("strategy: priority", f"strategy: {strategy}")).routes[0]
        assert [t.weight for t in route.targets] == [1, 3]


def test_unknown_provider_reference_is_refused():
    with pytest.raises(ConfigError, match="unknown providers: \\['nope'\\]"):
        parse_config(ISSUE_EXAMPLE.replace("provider: secondary", "provider: nope"))


def test_unknown_keys_are_refused():
    with pytest.raises(ConfigError, match="Extra inputs are not permitted"):
        parse_config(ISSUE_EXAMPLE.replace("timeout: 60s", "timeout: 60s\n    timout: 5s"))


def test_yaml_errors_never_quote_the_document():
    text = "providers:\n  - name: p\n    apiKey: {value: sk-very-SECRET\n"
    with pytest.raises(ConfigError) as exc:
        parse_config(text)
    assert "SECRET" not in str(exc.value) and "line" in str(exc.value)


def test_secret_source_repr_hides_values():
    cfg = parse_config(ISSUE_EXAMPLE.replace("{env: PRIMARY_KEY}", "{value: sk-SECRET}"))
    assert "SECRET" not in repr(cfg.providers[0].api_key)


def test_hash_ignores_formatting_and_order():
    a = parse_config(ISSUE_EXAMPLE)
    b = parse_config(ISSUE_EXAMPLE.replace("timeout: 60s", "timeout: 1m"))
    assert config_hash(a) == config_hash(b)
    assert config_hash(a) != config_hash(parse_config(ISSUE_EXAMPLE.replace("timeout: 60s", "timeout: 61s")))


@given(st.integers(min_value=0, max_value=10**8))
def test_duration_format_round_trips(ms):
    assert parse_duration(format_duration(ms / 1000)) == pytest.approx(ms / 1000)


@pytest.mark.parametrize("text, seconds", [("200ms", 0.2), ("2s", 2), ("5m", 300), ("1h", 3600), ("1m30s", 90)])
def test_duration_forms(text, seconds):
    assert parse_duration(text) == seconds


def test_a_provider_lists_several_api_keys_or_one_never_both():
    base = {"routes": [{"name": "r", "targets": [{"provider": "p", "model": "m"}]}]}
    one = {"name": "p", "baseURL": "https://x.example/v1", "apiKey": {"env": "K"}}
    several = {"name": "p", "baseURL": "https://x.example/v1", "apiKeys": [{"env": "K1"}, {"file": "/k2"}]}
    assert [repr(s) for s in parse_config({**base, "providers": [several]}).providers[0].key_sources] == [
        "SecretSource(env='K1')", "SecretSource(file='/k2')"]
    assert len(parse_config({**base, "providers": [one]}).providers[0].key_sources) == 1
    with pytest.raises(ConfigError, match="set apiKey or apiKeys, not both"):
        parse_config({**base, "providers": [{**several, "apiKey": {"env": "K"}}]})
    with pytest.raises(ConfigError, match=r"providers\[0\]\.apiKeys"):
        parse_config({**base, "providers": [{**several, "apiKeys": []}]})
    with pytest.raises(ConfigError, match="not apiKey"):
        parse_config({**base, "providers": [{"name": "p", "type": "vertex", "baseURL": "https://v.example",
                                             "project": "x", "location": "us-east5", "apiKeys": [{"env": "K"}]}]})
