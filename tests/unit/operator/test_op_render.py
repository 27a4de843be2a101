"""render.render without a cluster: inclusion rules, problems, ordering, byte-stable output."""

from __future__ import annotations

import random

import pytest

from detour_operator.render import LLMP, RPOL, render
from detour_operator.settings import OperatorSettings
from detour_proxy.config import parse_config

S = OperatorSettings()
KEYS = {"keys": {"openai": "c2stb3BlbmFp", "claude": "c2stY2xhdWRl"}}


def llmp(name, **spec):
    spec.setdefault("baseURL", "https://api.example.com/v1")
    spec.setdefault("apiKeySecretRef", {"name": "keys", "key": name})
    return {"kind": "LLMProvider", "metadata": {"name": name, "uid": f"u-{name}", "generation": 1}, "spec": spec}


def rpol(name, *refs, order=0, **spec):
    spec["targets"] = [{"providerRef": r, "model": f"{r}-model"} for r in refs]
    spec["order"] = order
    return {"kind": "RoutingPolicy", "metadata": {"name": name, "uid": f"u-{name}", "generation": 1}, "spec": spec}


def test_renders_a_valid_config_with_key_files_and_credentials():
    r = render([llmp("openai"), llmp("claude", type="anthropic")], [rpol("chat", "openai", "claude")], KEYS, S)
    assert r.error is None and not r.problems
    config = parse_config(r.config_yaml)
    assert config == r.config
    assert config.provider("claude").api_key.file == "/etc/detour/credentials/claude"
    assert r.credentials == {"openai": "c2stb3BlbmFp", "claude": "c2stY2xhdWRl"}
    assert b"c2st" not in r.config_yaml
    assert r.included == {(LLMP, "openai"), (LLMP, "claude"), (RPOL, "chat")}


def test_output_is_byte_identical_whatever_the_input_order():
    providers = [llmp("openai"), llmp("claude", type="anthropic")]
    policies = [rpol("b", "openai"), rpol("a", "claude"), rpol("z", "openai", order=-1)]
    first = render(providers, policies, KEYS, S)
    for _ in range(5):
        random.shuffle(providers)
        random.shuffle(policies)
        again = render(providers, policies, KEYS, S)
        assert again.config_yaml == first.config_yaml and again.config_hash == first.config_hash
    assert [r.name for r in first.config.routes] == ["z", "a", "b"]  # (order, name)
    assert [p.name for p in first.config.providers] == ["claude", "openai"]


def test_mount_path_is_configurable():
    r = render([llmp("openai")], [rpol("chat", "openai")], KEYS, OperatorSettings(credentialsMountPath="/keys/"))
    assert r.config.provider("openai").api_key.file == "/keys/openai"


@pytest.mark.parametrize("secrets, reason, words", [
    ({}, "SecretNotFound", ["keys"]),
    ({"keys": {"other": "eA=="}}, "SecretKeyNotFound", ["keys", "openai"]),
])
def test_missing_secret_excludes_the_provider_and_its_policies(secrets, reason, words):
    r = render([llmp("openai")], [rpol("chat", "openai")], secrets, S)
    (problem,) = r.problems[(LLMP, "openai")]
    assert problem.condition == "ResolvedRefs" and problem.reason == reason
    assert all(w in problem.message for w in words)
    assert r.problems[(RPOL, "chat")][0].reason == "ProviderNotReady"
    assert r.config is None and r.error and not r.credentials  # nothing resolves: the Secret is pruned empty


def test_a_policy_with_no_resolving_target_is_excluded_and_the_rest_is_published():
    r = render([llmp("openai")], [rpol("chat", "openai"), rpol("bad", "mistral", "zeta")], KEYS, S)
    (problem,) = r.problems[(RPOL, "bad")]
    assert problem.reason == "ProviderNotFound" and problem.message.endswith("mistral, zeta")
    assert [route.name for route in r.config.routes] == ["chat"]
    assert (RPOL, "bad") not in r.included


@pytest.mark.parametrize("providers, why", [
    ([llmp("openai")], "not found"),                                                   # fallback deleted
    ([llmp("openai"), llmp("claude", apiKeySecretRef={"name": "keys", "key": "gone"})], "not ready"),  # key removed
])
def test_a_broken_fallback_leaves_the_policy_serving_with_the_targets_that_resolve(providers, why):
    r = render(providers, [rpol("chat", "openai", "claude")], KEYS, S)
    (problem,) = r.problems[(RPOL, "chat")]
    assert problem.condition == "ResolvedRefs" and problem.reason == "Degraded"
    assert f"target 2 (claude/claude-model: LLMProvider {why})" in problem.message and "1 of 2" in problem.message
    assert (RPOL, "chat") in r.included
    assert [(t.provider, t.model) for t in r.config.routes[0].targets] == [("openai", "openai-model")]
    assert "claude" not in r.credentials


def test_nothing_valid_keeps_only_the_keys_that_still_resolve_for_pruning():
    r = render([llmp("openai")], [rpol("chat", "gone")], KEYS, S)
    assert r.config is None and r.error and r.credentials == {"openai": "c2stb3BlbmFp"}


def test_invalid_specs_are_not_accepted():
    r = render([llmp("openai", type="palm"), llmp("nokey", apiKeySecretRef=None)],
               [rpol("chat", "openai", retry={"attempts": 99})], KEYS, S)
    assert r.problems[(LLMP, "openai")][0].condition == "Accepted"
    assert "apiKeySecretRef is required" in r.problems[(LLMP, "nokey")][0].message
    assert "attempts" in r.problems[(RPOL, "chat")][0].message
    assert r.config is None


def test_openai_compatible_needs_no_key_and_deleting_objects_are_left_out():
    vllm = llmp("vllm", type="openai-compatible", apiKeySecretRef=None)
    gone = llmp("openai")
    gone["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    r = render([vllm, gone], [rpol("chat", "vllm")], KEYS, S)
    assert [p.name for p in r.config.providers] == ["vllm"] and r.config.providers[0].api_key is None
    assert r.credentials == {}


def test_vertex_credentials_come_from_a_secret_file_or_workload_identity():
    """Issue 16: a vertex provider's Secret key is its service-account (or external_account) JSON,
    mounted like an API key and named as `credentialsFile`; without one it uses workload identity."""
    google = {"baseURL": "https://us-east5-aiplatform.googleapis.com", "type": "vertex", "project": "p",
              "location": "us-east5"}
    sa = llmp("vertex-sa", **google, apiKeySecretRef={"name": "keys", "key": "sa"})
    wi = llmp("vertex-wi", **google, apiKeySecretRef=None)
    gem = llmp("gemini", type="gemini", baseURL="https://generativelanguage.googleapis.com",
               apiKeySecretRef={"name": "keys", "key": "openai"})
    r = render([sa, wi, gem], [rpol("chat", "vertex-sa", "vertex-wi", "gemini")],
               {"keys": {"sa": "eyJ0eXBlIjoic2VydmljZV9hY2NvdW50In0=", "openai": "QUl6YQ=="}}, S)
    assert r.error is None and not r.problems
    assert r.config.provider("vertex-sa").credentials_file == "/etc/detour/credentials/vertex-sa"
    assert r.config.provider("vertex-sa").api_key is None
    assert r.config.provider("vertex-wi").credentials_file is None and r.config.provider("vertex-wi").api_key is None
    assert r.config.provider("gemini").api_key.file == "/etc/detour/credentials/gemini"
    assert r.credentials == {"vertex-sa": "eyJ0eXBlIjoic2VydmljZV9hY2NvdW50In0=", "gemini": "QUl6YQ=="}
    assert b"eyJ0" not in r.config_yaml
    bad = render([llmp("v", **{**google, "location": None}, apiKeySecretRef=None)], [rpol("chat", "v")], KEYS, S)
    assert "project and location" in bad.problems[(LLMP, "v")][0].message


def test_bedrock_providers_render_with_region_irsa_or_an_api_key():
    """Issue 16: a bedrock LLMProvider needs a region (baseURL defaults to the region's endpoint);
    without a Secret it uses the AWS credential chain (IRSA), with one the key is a Bedrock API key."""
    irsa = llmp("bedrock-irsa", type="bedrock", region="eu-west-1", apiKeySecretRef=None)
    del irsa["spec"]["baseURL"]
    keyed = llmp("bedrock-key", type="bedrock", region="us-east-1", baseURL="https://vpce-1.bedrock-runtime.example",
                 apiKeySecretRef={"name": "keys", "key": "openai"})
    r = render([irsa, keyed], [rpol("chat", "bedrock-irsa", "bedrock-key")], {"keys": {"openai": "QUl6YQ=="}}, S)
    assert r.error is None and not r.problems
    p = r.config.provider("bedrock-irsa")
    assert (p.region, p.base_url, p.api_key) == ("eu-west-1", "https://bedrock-runtime.eu-west-1.amazonaws.com", None)
    assert r.config.provider("bedrock-key").api_key.file == "/etc/detour/credentials/bedrock-key"
    assert r.config.provider("bedrock-key").base_url == "https://vpce-1.bedrock-runtime.example"
    assert r.credentials == {"bedrock-key": "QUl6YQ=="}
    no_region = llmp("b", type="bedrock", apiKeySecretRef=None)
    del no_region["spec"]["baseURL"]
    bad = render([no_region], [rpol("chat", "b")], KEYS, S)
    assert "bedrock needs region" in bad.problems[(LLMP, "b")][0].message


def test_global_settings_are_rendered():
    s = OperatorSettings.model_validate({"health": {"window": "2m"}, "sharedHealth": {"enabled": True}})
    r = render([llmp("openai")], [rpol("chat", "openai")], KEYS, s)
    assert r.config.health.window == 120 and r.config.shared_health.enabled
    assert b"window: 2m" in r.config_yaml


def test_inline_client_keys_are_refused_in_settings():
    with pytest.raises(ValueError):
        OperatorSettings.model_validate({"clientAuth": {"keys": [{"value": "secret"}]}})


def test_target_summary_names_each_provider_once_in_spec_order():
    from detour_operator.render import target_summary
    policy = {"spec": {"targets": [{"providerRef": "openai", "model": "a"}, {"providerRef": "azure", "model": "b"},
                                   {"providerRef": "openai", "model": "c"}, {"model": "no-ref"}]}}
    assert target_summary(policy) == "openai,azure"
    assert target_summary({"spec": {"targets": "garbage"}}) == "" and target_summary({}) == ""


def test_a_config_over_the_configmap_limit_is_not_published_and_says_why():
    from detour_operator.conditions import object_conditions
    big = {"x-pad-%03d" % i: "v" * 8000 for i in range(140)}  # ~1.1 MiB of provider headers
    r = render([llmp("openai", headers=big)], [rpol("chat", "openai")], KEYS, S)
    assert r.config is None and r.config_yaml is None and r.error_reason == "ConfigTooLarge"
    assert "over the" in r.error and not r.included
    assert r.credentials == {"openai": "c2stb3BlbmFp"}  # still used to prune, never to publish
    programmed = object_conditions([], False, r.error, 1, r.error_reason)[2]
    assert (programmed["status"], programmed["reason"]) == ("False", "ConfigTooLarge")


def test_hidden_failures_affinity_and_context_windows_reach_the_proxy_config():
    """Issue 16: the route settings are RoutingPolicy fields (CRD generated from the schema)."""
    pol = rpol("chat", "openai", "claude", hiddenFailures=["empty", "context-window"],
               affinity={"sources": ["header", "prefix"], "header": "x-tenant"})
    pol["spec"]["targets"][0]["contextWindow"] = 128000
    pol["spec"]["targets"][1].update(contextWindow=200000, overflowOnly=True)
    r = render([llmp("openai"), llmp("claude", type="anthropic")], [pol], KEYS, S)
    assert r.error is None and not r.problems
    route = parse_config(r.config_yaml).routes[0]
    assert [h.value for h in route.hidden_failures] == ["empty", "context-window"]
    assert route.affinity is not None and route.affinity.header == "x-tenant"
    assert [(t.context_window, t.overflow_only) for t in route.targets] == [(128000, False), (200000, True)]


def test_a_secret_the_operator_may_not_read_says_so_not_not_found():
    r = render([llmp("openai"), llmp("claude", type="anthropic", apiKeySecretRef={"name": "other", "key": "k"})],
               [rpol("chat", "openai", "claude")], KEYS, S, unreadable={"other": "forbidden (RBAC)"})
    (problem,) = r.problems[(LLMP, "claude")]
    assert (problem.condition, problem.reason) == ("ResolvedRefs", "SecretUnreadable")
    assert "'other'" in problem.message and "forbidden" in problem.message
    assert r.included == {(LLMP, "openai"), (RPOL, "chat")}  # the policy serves with what resolves


def test_secret_names_are_the_references_of_a_provider():
    from detour_operator.render import secret_names
    assert secret_names(llmp("openai")) == {"keys"}
    assert secret_names(llmp("vllm", type="openai-compatible", apiKeySecretRef=None)) == set()
    assert secret_names(llmp("openai", apiKeySecretRef=None, apiKeySecretRefs=[
        {"name": "keys", "key": "a"}, {"name": "more", "key": "b"}])) == {"keys", "more"}


def test_several_api_keys_are_each_copied_into_the_credentials_secret_never_the_configmap():
    secrets = {"keys": {"openai": "c2stb3BlbmFp"}, "more": {"a": "c2stYWFh", "b": "c2stYmJi"}}
    p = llmp("openai", apiKeySecretRef=None, apiKeySecretRefs=[
        {"name": "keys", "key": "openai"}, {"name": "more", "key": "a"}, {"name": "more", "key": "b"}])
    del p["spec"]["apiKeySecretRef"]
    r = render([p], [rpol("chat", "openai")], secrets, S)
    assert r.error is None and not r.problems
    config = parse_config(r.config_yaml)
    assert [k.file for k in config.provider("openai").api_keys] == [
        "/etc/detour/credentials/openai", "/etc/detour/credentials/openai.1", "/etc/detour/credentials/openai.2"]
    assert r.credentials == {"openai": "c2stb3BlbmFp", "openai.1": "c2stYWFh", "openai.2": "c2stYmJi"}
    assert b"c2st" not in r.config_yaml
    # one missing key: the provider is not published, and the message names the Secret key
    r = render([p], [rpol("chat", "openai")], {"keys": secrets["keys"], "more": {"a": "c2stYWFh"}}, S)
    [problem] = r.problems[(LLMP, "openai")]
    assert problem.reason == "SecretKeyNotFound" and "'b'" in problem.message
    assert r.config is None and "openai.1" not in r.credentials


def test_one_key_and_several_keys_at_once_is_refused_with_a_clear_message():
    p = llmp("openai", apiKeySecretRefs=[{"name": "keys", "key": "openai"}])
    r = render([p], [rpol("chat", "openai")], KEYS, S)
    [problem] = r.problems[(LLMP, "openai")]
    assert problem.reason == "InvalidSpec" and "apiKeySecretRef or apiKeySecretRefs, not both" in problem.message


def test_active_probes_are_an_llmprovider_field_that_reaches_the_proxy_config():
    """Issue 16: `activeProbes` (off by default) is set per LLMProvider; a limit of 1 token is refused."""
    probes = {"enabled": True, "interval": "2m", "maxTokens": 32}
    r = render([llmp("openai", activeProbes=probes), llmp("claude", type="anthropic")],
               [rpol("chat", "openai", "claude")], KEYS, S)
    assert r.error is None and not r.problems
    by_name = {p.name: p.active_probes for p in parse_config(r.config_yaml).providers}
    assert (by_name["openai"].enabled, by_name["openai"].interval, by_name["openai"].max_tokens) == (True, 120.0, 32)
    assert by_name["claude"].enabled is False
    bad = render([llmp("openai", activeProbes={"enabled": True, "maxTokens": 1})], [rpol("chat", "openai")], KEYS, S)
    assert "activeProbes.maxTokens" in bad.problems[(LLMP, "openai")][0].message
