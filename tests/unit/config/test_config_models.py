"""The routing config contract: the issue's example is accepted as written; errors name the field."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from detour_proxy.config import ConfigError, config_hash, format_duration, load_config, parse_config, parse_duration

ISSUE_EXAMPLE = """
providers:
  - name: primary
    type: openai
    baseURL: http://127.0.0.1:9101/v1
    apiKey: {env: PRIMARY_KEY}
    timeouts: {connect: 2s, firstToken: 10s, total: 60s}
  - name: secondary
    type: openai-compatible
    baseURL: http://127.0.0.1:9102/v1
routes:
  - name: chat
    match: {models: ["gpt-4o-mini", "chat-*"]}
    strategy: priority
    targets:
      - {provider: primary, model: gpt-4o-mini, priority: 0}
      - {provider: secondary, model: llama-3-8b, priority: 1, weight: 1}
    retry: {attempts: 2, backoff: {initial: 100ms, max: 2s}, onStatusCodes: [429, 500, 502, 503, 504], respectRetryAfter: true, maxRetryAfter: 10s}
    fallbackOnStatusCodes: [401, 403, 404, 408, 429, 500, 502, 503, 504]
    timeout: 60s
health:
  window: 60s
  breaker: {failureRatio: 0.5, minRequests: 10, consecutiveFailures: 5, cooldown: 30s, maxCooldown: 5m, halfOpenProbes: 1}
retryBudget: {ratio: 0.2, minPerSecond: 5}
"""


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
