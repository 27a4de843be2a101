"""The operator end to end: real kopf against the emulated API server, objects applied with kubectl
and the official client, outcomes awaited by polling the server (bounded, no fixed sleeps)."""

from __future__ import annotations

import base64
from typing import Any

import kubernetes
import yaml
from conftest import EXAMPLES, NS, G, V, apply_examples, cond, forbid_in_log, get, kubectl, ready, wait_for
from k8s_emulator import api_calls, resource_version, versions
from prometheus_client import REGISTRY

from detour_operator import conditions
from detour_operator import render as rnd
from detour_operator.handlers import SETTINGS
from detour_proxy.config import parse_config

PLAIN_KEYS = ["sk-example-openai-key", "example-azure-key", "sk-ant-example-key"]


def configmap(core: Any) -> Any:
    return core.read_namespaced_config_map("detour-routing", NS)


def reconciles() -> float:
    total = 0.0
    for metric in REGISTRY.collect():
        if metric.name == "detour_operator_reconcile":
            total += sum(s.value for s in metric.samples if s.name == "detour_operator_reconcile_total")
    return total


def secret_events(result: str) -> float:
    return REGISTRY.get_sample_value("detour_operator_secret_events_total", {"result": result}) or 0.0


def object_events(result: str) -> float:
    return REGISTRY.get_sample_value("detour_operator_object_events_total", {"result": result}) or 0.0


def lists(k8s: Any) -> list[Any]:
    return [c for c in api_calls(k8s) if c.action == "LIST"]


def events_for(core: Any, name: str, reason: str, ns: str = NS) -> list[Any]:
    return [e for e in core.list_namespaced_event(ns).items if e.involved_object.name == name and e.reason == reason]


def test_examples_publish_config_and_credentials(k8s, operator, core, custom):
    apply_examples(k8s, custom)
    cm = configmap(core)
    docs = [d for p in sorted(EXAMPLES.glob("*.yaml")) for d in yaml.safe_load_all(p.read_text()) if d]
    expected = rnd.render([d for d in docs if d["kind"] == "LLMProvider"],
                          [d for d in docs if d["kind"] == "RoutingPolicy"],
                          {"llm-keys": {k: base64.b64encode(v.encode()).decode()
                                        for k, v in next(d for d in docs if d["kind"] == "Secret")["stringData"].items()}}, SETTINGS, NS)
    assert cm.data["config.yaml"].encode() == expected.config_yaml
    assert cm.metadata.annotations["detour.dev/config-hash"] == expected.config_hash
    config = parse_config(cm.data["config.yaml"])
    assert [p.name for p in config.providers] == ["anthropic", "azure", "openai"]
    assert config.provider("openai").api_key.file == "/etc/detour/credentials/openai"
    assert {(o.kind, o.name) for o in cm.metadata.owner_references} == {
        ("LLMProvider", "anthropic"), ("LLMProvider", "azure"), ("LLMProvider", "openai"), ("RoutingPolicy", "chat")}

    secret = core.read_namespaced_secret("detour-credentials", NS)
    assert {k: base64.b64decode(v).decode() for k, v in secret.data.items()} == {
        "openai": "sk-example-openai-key", "azure": "example-azure-key", "anthropic": "sk-ant-example-key"}

    chat = get(custom, "routingpolicies", "chat")
    assert chat["status"]["configHash"] == expected.config_hash
    assert {c["type"]: c["status"] for c in chat["status"]["conditions"]} == {
        "Accepted": "True", "ResolvedRefs": "True", "Programmed": "True", "Ready": "True"}
    assert expected.config_hash not in str(chat["status"]["conditions"])  # the hash would churn every message

    # kopf stores nothing in the objects: no finalizer (deleting never waits for the operator)
    for plural, name in [("llmproviders", "openai"), ("routingpolicies", "chat")]:
        md = get(custom, plural, name)["metadata"]
        assert not md.get("finalizers") and not [a for a in md.get("annotations") or {} if "detour.dev" in a]

    # kubectl wait works, by short name too
    out = kubectl(k8s, "wait", "--for=condition=Ready", "llmp/openai", "rpol/chat", "--timeout=10s")
    assert "condition met" in out.stdout

    # One Accepted Event per object (when it turned Ready), none per config publish
    events = wait_for(lambda: (items := core.list_namespaced_event(NS).items)
                      and sum(e.reason == "Accepted" for e in items) >= 4 and items, 5, what="events")
    assert sorted(e.involved_object.name for e in events if e.reason == "Accepted") == [
        "anthropic", "azure", "chat", "openai"]
    assert {e.reason for e in events} <= {"Accepted", "Rejected"}  # Rejected: applied before their Secret
    # kopf neither lists nor watches CRDs or namespaces (the chart's RBAC grants neither)
    assert not [c for c in api_calls(k8s) if c.plural in ("customresourcedefinitions", "namespaces")]

    # keys never leave the Secrets: not in the ConfigMap, statuses, events or the operator's log
    statuses = [str(get(custom, "llmproviders", n).get("status")) for n in ("openai", "azure", "anthropic")]
    haystacks = [cm.data["config.yaml"], *statuses, str([e.message for e in events])]
    for key in PLAIN_KEYS:
        encoded = base64.b64encode(key.encode()).decode()
        for text in haystacks:
            assert key not in text and encoded not in text
        forbid_in_log(operator, key, encoded)  # checked over the complete --verbose log at shutdown


def test_missing_provider_keeps_last_good_config_and_recovers(k8s, operator, core, custom):
    apply_examples(k8s, custom)
    good = configmap(core).data["config.yaml"]

    # a second policy naming a provider that does not exist: excluded, the rest still published
    custom.create_namespaced_custom_object(G, V, NS, "routingpolicies", {
        "apiVersion": f"{G}/{V}", "kind": "RoutingPolicy", "metadata": {"name": "batch"},
        "spec": {"order": 20, "targets": [{"providerRef": "mistral", "model": "mistral-large"}]}})
    batch = wait_for(lambda: ready(custom, "routingpolicies", "batch", "False"), 10)
    rr = cond(batch, "ResolvedRefs")
    assert rr["status"] == "False" and rr["reason"] == "ProviderNotFound" and "mistral" in rr["message"]
    assert cond(batch, "Accepted")["status"] == "True"
    assert configmap(core).data["config.yaml"] == good
    rejected = wait_for(lambda: events_for(core, "batch", "Rejected"), 5, what="a Rejected Event for batch")
    assert rejected[0].type == "Warning" and "mistral" in rejected[0].message
    assert rejected[0].involved_object.kind == "RoutingPolicy"

    # a fallback that does not resolve: chat keeps serving with the targets that do, and says so
    custom.patch_namespaced_custom_object(G, V, NS, "routingpolicies", "chat", {
        "spec": {"targets": [{"providerRef": "openai", "model": "gpt-4o-mini"}, {"providerRef": "nope", "model": "x"}]}})
    chat = wait_for(lambda: (o := get(custom, "routingpolicies", "chat"))["status"]["observedGeneration"] == 2 and o, 10)
    assert chat["metadata"]["generation"] == 2
    assert cond(chat, "ResolvedRefs")["status"] == "False" and cond(chat, "ResolvedRefs")["reason"] == "Degraded"
    assert "target 2 (nope/x: LLMProvider not found)" in cond(chat, "ResolvedRefs")["message"]
    assert (cond(chat, "Ready")["status"], cond(chat, "Ready")["reason"]) == ("True", "Degraded")
    degraded = wait_for(lambda: events_for(core, "chat", "Degraded"), 5, what="a Degraded Event for chat")
    assert len(degraded) == 1 and "nope" in degraded[0].message
    good = configmap(core).data["config.yaml"]
    assert [(t.provider, t.model) for t in parse_config(good).routes[0].targets] == [("openai", "gpt-4o-mini")]

    # break the only valid policy: no target resolves, nothing valid remains, so nothing is published
    custom.patch_namespaced_custom_object(G, V, NS, "routingpolicies", "chat", {
        "spec": {"targets": [{"providerRef": "nope", "model": "x"}]}})
    chat = wait_for(lambda: (o := get(custom, "routingpolicies", "chat"))["status"]["observedGeneration"] == 3 and o, 10)
    assert cond(chat, "ResolvedRefs")["reason"] == "ProviderNotFound" and cond(chat, "Ready")["status"] == "False"
    openai = wait_for(lambda: (o := get(custom, "llmproviders", "openai")) and
                      cond(o, "Programmed")["reason"] == "NoValidConfig" and o, 10)
    assert "last good config stays" in cond(openai, "Programmed")["message"]
    assert configmap(core).data["config.yaml"] == good

    # fix both: the missing provider appears (no key needed for openai-compatible), chat is repaired
    custom.create_namespaced_custom_object(G, V, NS, "llmproviders", {
        "apiVersion": f"{G}/{V}", "kind": "LLMProvider", "metadata": {"name": "mistral"},
        "spec": {"type": "openai-compatible", "baseURL": "http://vllm.default.svc:8000/v1"}})
    custom.patch_namespaced_custom_object(G, V, NS, "routingpolicies", "chat", {
        "spec": {"targets": [{"providerRef": "openai", "model": "gpt-4o-mini"}, {"providerRef": "mistral", "model": "m"}]}})
    for plural, name in [("routingpolicies", "batch"), ("routingpolicies", "chat"), ("llmproviders", "mistral")]:
        wait_for(lambda: ready(custom, plural, name), 10, what=f"{name} recovers")
    config = parse_config(configmap(core).data["config.yaml"])
    assert [r.name for r in config.routes] == ["chat", "batch"]  # by order, then name
    assert config.provider("mistral").api_key is None


def test_deleting_a_fallback_provider_keeps_its_policy_serving_without_it(k8s, operator, core, custom):
    apply_examples(k8s, custom)
    custom.create_namespaced_custom_object(G, V, NS, "routingpolicies", {
        "apiVersion": f"{G}/{V}", "kind": "RoutingPolicy", "metadata": {"name": "embeddings"},
        "spec": {"match": {"models": ["text-embedding-*"]}, "targets": [{"providerRef": "openai", "model": "te-3"}]}})
    wait_for(lambda: ready(custom, "routingpolicies", "embeddings"), 10)

    kubectl(k8s, "delete", "llmp", "anthropic", "--wait=false")
    wait_for(lambda: "anthropic" not in configmap(core).data["config.yaml"], 10, what="re-render without anthropic")
    config = parse_config(configmap(core).data["config.yaml"])
    assert [p.name for p in config.providers] == ["azure", "openai"]
    chat_route = next(r for r in config.routes if r.name == "chat")  # still served, by the targets that resolve
    assert [t.provider for t in chat_route.targets] == ["openai", "azure"]
    wait_for(lambda: set(core.read_namespaced_secret("detour-credentials", NS).data) == {"azure", "openai"}, 5)
    # the config stopped naming anthropic's key file before the file went (write history order)
    cm_dropped = next(v for v in versions(k8s, "v1/configmaps", NS, "detour-routing")
                      if "anthropic" not in v["data"]["config.yaml"])
    key_dropped = next(v for v in versions(k8s, "v1/secrets", NS, "detour-credentials") if "anthropic" not in v["data"])
    assert resource_version(cm_dropped) < resource_version(key_dropped)
    chat = wait_for(lambda: (o := ready(custom, "routingpolicies", "chat")) and cond(o, "Ready")["reason"] == "Degraded"
                    and o, 10)
    assert cond(chat, "ResolvedRefs")["status"] == "False"
    assert "target 3 (anthropic/claude-3-5-haiku-latest: LLMProvider not found)" in cond(chat, "ResolvedRefs")["message"]

    def gone() -> bool:
        try:
            get(custom, "llmproviders", "anthropic")
        except kubernetes.client.ApiException as exc:
            return exc.status == 404
        return False
    wait_for(gone, 10, what="finalizer released")


def test_secret_change_rerenders_dependents_only_on_change(k8s, operator, core, custom):
    apply_examples(k8s, custom)
    cm_writes = k8s.history("v1/configmaps", NS, "detour-routing")
    secret_writes = k8s.history("v1/secrets", NS, "detour-credentials")
    status_writes = k8s.history(f"{G}/{V}/llmproviders", NS, "openai")

    # a metadata-only change (generation unchanged) cannot change the config: no reconcile, no writes
    before, ignored = reconciles(), object_events("ignored")
    custom.patch_namespaced_custom_object(G, V, NS, "llmproviders", "openai", {"metadata": {"labels": {"team": "a"}}})
    wait_for(lambda: object_events("ignored") > ignored, 10, what="the label change's event handled")
    assert reconciles() == before
    assert k8s.history("v1/configmaps", NS, "detour-routing") == cm_writes
    assert k8s.history("v1/secrets", NS, "detour-credentials") == secret_writes
    obj = get(custom, "llmproviders", "openai")
    assert obj["metadata"]["generation"] == 1  # labels do not bump the generation
    # the label patch only: no status write, and no kopf bookkeeping annotation (on.event handlers)
    assert k8s.history(f"{G}/{V}/llmproviders", NS, "openai") == status_writes + 1
    assert not [k for k in obj["metadata"].get("annotations") or {} if k.startswith("detour.dev/")]

    # a new key in the referenced Secret reaches detour-credentials; the config itself is unchanged;
    # the operator re-renders from its indexes: no LIST request for this (or any) event after startup
    listed, before = len(lists(k8s)), reconciles()
    new_key = base64.b64encode(b"sk-rotated").decode()
    core.patch_namespaced_secret("llm-keys", NS, {"data": {"openai": new_key}})
    wait_for(lambda: core.read_namespaced_secret("detour-credentials", NS).data["openai"] == new_key, 10)
    wait_for(lambda: reconciles() > before, 10, what="the rotation's reconcile finished")
    assert k8s.history("v1/configmaps", NS, "detour-routing") == cm_writes
    assert lists(k8s)[listed:] == []

    # a Secret nobody references is never even sent to the operator, so it triggers nothing;
    # a change of a referenced one re-renders exactly once
    before, rerenders = reconciles(), secret_events("rerender")
    core.create_namespaced_secret(NS, {"metadata": {"name": "unrelated"}, "data": {"x": "eQ=="}})
    core.patch_namespaced_secret("llm-keys", NS, {"data": {"azure": base64.b64encode(b"azure-rotated").decode()}})
    wait_for(lambda: reconciles() > before, 10)
    assert reconciles() == before + 1 and secret_events("rerender") == rerenders + 1
    # the operator's Secret requests (issue 14.5): LIST/WATCH of the one referenced Secret by name,
    # GET/PATCH/POST of its own detour-credentials; never a namespace-wide list or watch
    secret_calls = {(c.method, c.action, c.name, c.field_selector) for c in api_calls(k8s)
                    if c.plural == "secrets" and c.action in ("LIST", "WATCH")}
    assert secret_calls == {("GET", "LIST", "", "metadata.name=llm-keys"),
                            ("GET", "WATCH", "", "metadata.name=llm-keys")}, secret_calls

    # deleting the referenced key: ResolvedRefs=False naming Secret and key
    core.patch_namespaced_secret("llm-keys", NS, {"data": {"anthropic": None}})
    obj = wait_for(lambda: ready(custom, "llmproviders", "anthropic", "False"), 10)
    rr = cond(obj, "ResolvedRefs")
    assert rr["reason"] == "SecretKeyNotFound" and "llm-keys" in rr["message"] and "anthropic" in rr["message"]


def provider_body(name: str, secret: str, key: str) -> dict[str, Any]:
    return {"apiVersion": f"{G}/{V}", "kind": "LLMProvider", "metadata": {"name": name},
            "spec": {"type": "openai", "baseURL": f"https://{name}.example.com/v1",
                     "apiKeySecretRef": {"name": secret, "key": key}}}


def policy_body(name: str, *providers: str, order: int = 0) -> dict[str, Any]:
    return {"apiVersion": f"{G}/{V}", "kind": "RoutingPolicy", "metadata": {"name": name},
            "spec": {"order": order, "targets": [{"providerRef": p, "model": "m"} for p in providers]}}


def test_creating_a_missing_secret_recovers(k8s, operator, core, custom):
    apply_examples(k8s, custom)
    custom.create_namespaced_custom_object(G, V, NS, "llmproviders", provider_body("late", "late-keys", "token"))
    custom.create_namespaced_custom_object(G, V, NS, "routingpolicies", policy_body("later", "late", order=50))
    late = wait_for(lambda: ready(custom, "llmproviders", "late", "False"), 10)
    rr = cond(late, "ResolvedRefs")
    assert rr["reason"] == "SecretNotFound" and "late-keys" in rr["message"]
    assert "name: late" not in configmap(core).data["config.yaml"]

    core.create_namespaced_secret(NS, {"metadata": {"name": "late-keys"}, "stringData": {"token": "sk-late"}})
    for plural, name in [("llmproviders", "late"), ("routingpolicies", "later")]:
        wait_for(lambda: ready(custom, plural, name), 10, what=f"{name} recovers")
    assert parse_config(configmap(core).data["config.yaml"]).provider("late").api_key.file.endswith("/late")
    creds = core.read_namespaced_secret("detour-credentials", NS).data
    assert base64.b64decode(creds["late"]) == b"sk-late"
    # the key file existed before the config pointed at it (write history order)
    key_added = next(v for v in versions(k8s, "v1/secrets", NS, "detour-credentials") if "late" in v["data"])
    cm_names = next(v for v in versions(k8s, "v1/configmaps", NS, "detour-routing")
                    if "name: late" in v["data"]["config.yaml"])
    assert resource_version(key_added) < resource_version(cm_names)


def test_namespaces_are_isolated(k8s, operator, core, custom):
    apply_examples(k8s, custom)
    core.create_namespace({"metadata": {"name": "team-b"}})
    core.create_namespaced_secret("team-b", {"metadata": {"name": "b-keys"}, "stringData": {"k": "sk-team-b"}})
    custom.create_namespaced_custom_object(G, V, "team-b", "llmproviders", provider_body("bprov", "b-keys", "k"))
    custom.create_namespaced_custom_object(G, V, "team-b", "routingpolicies", policy_body("bchat", "bprov"))
    cm_b = wait_for(lambda: core.read_namespaced_config_map("detour-routing", "team-b"), 10, what="team-b's ConfigMap")
    config_b = parse_config(cm_b.data["config.yaml"])
    assert [p.name for p in config_b.providers] == ["bprov"] and [r.name for r in config_b.routes] == ["bchat"]
    secret_b = core.read_namespaced_secret("detour-credentials", "team-b")
    assert {k: base64.b64decode(v) for k, v in secret_b.data.items()} == {"bprov": b"sk-team-b"}
    assert {o.name for o in cm_b.metadata.owner_references} == {"bprov", "bchat"}
    wait_for(lambda: (c := cond(custom.get_namespaced_custom_object(G, V, "team-b", "routingpolicies", "bchat"),
                                "Ready")) and c["status"] == "True", 10, what="team-b's policy Ready")

    # the default namespace is untouched by team-b's objects, and the reverse
    config_a = parse_config(configmap(core).data["config.yaml"])
    assert [p.name for p in config_a.providers] == ["anthropic", "azure", "openai"]
    assert "bprov" not in core.read_namespaced_secret("detour-credentials", NS).data
    # a policy in team-b cannot name a provider of the default namespace
    custom.create_namespaced_custom_object(G, V, "team-b", "routingpolicies", policy_body("borrow", "openai"))
    borrow = wait_for(lambda: (o := custom.get_namespaced_custom_object(G, V, "team-b", "routingpolicies", "borrow"))
                      and cond(o, "ResolvedRefs") and o, 10)
    assert cond(borrow, "ResolvedRefs")["reason"] == "ProviderNotFound"


def test_last_transition_time_stays_across_an_unrelated_spec_change(k8s, operator, core, custom):
    apply_examples(k8s, custom)
    before = get(custom, "routingpolicies", "chat")
    ltt = {c["type"]: c["lastTransitionTime"] for c in before["status"]["conditions"]}
    # let the clock pass the (1 s resolution) timestamps, so a reset would be visible
    wait_for(lambda: conditions.now_rfc3339() > max(ltt.values()), 3, what="the clock moving on")

    custom.patch_namespaced_custom_object(G, V, NS, "routingpolicies", "chat", {"spec": {"timeout": "50s"}})
    after = wait_for(lambda: (o := get(custom, "routingpolicies", "chat"))["status"]["observedGeneration"] == 2 and o, 10)
    assert after["metadata"]["generation"] == 2
    assert {c["type"]: c["lastTransitionTime"] for c in after["status"]["conditions"]} == ltt
    assert all(c["observedGeneration"] == 2 and c["status"] == "True" for c in after["status"]["conditions"])
    assert "timeout: 50s" in configmap(core).data["config.yaml"]
    assert after["status"]["configHash"] != before["status"]["configHash"]  # its own edit: new hash, same LTT


def test_each_of_many_referenced_secrets_is_watched_by_name(k8s, operator, core, custom):
    # one list + watch per referenced Secret: more of them than a small connection pool holds
    # (each watch keeps one HTTP/1.1 connection) must all be read and followed
    n = 8
    for i in range(n):
        core.create_namespaced_secret(NS, {"metadata": {"name": f"keys-{i}"}, "stringData": {"k": f"sk-{i}"}})
        custom.create_namespaced_custom_object(G, V, NS, "llmproviders", provider_body(f"p{i}", f"keys-{i}", "k"))
    custom.create_namespaced_custom_object(G, V, NS, "routingpolicies", policy_body("all", *(f"p{i}" for i in range(n))))
    for i in range(n):
        wait_for(lambda: ready(custom, "llmproviders", f"p{i}"), 20, what=f"p{i} Ready")
    core.patch_namespaced_secret(f"keys-{n - 1}", NS, {"stringData": {"k": "sk-rotated"}})
    wait_for(lambda: base64.b64decode(core.read_namespaced_secret("detour-credentials", NS).data[f"p{n - 1}"]) == b"sk-rotated",
             10, what="the last Secret's rotation in detour-credentials")
    watched = {c.field_selector for c in api_calls(k8s) if c.plural == "secrets" and c.action == "WATCH"}
    assert watched == {f"metadata.name=keys-{i}" for i in range(n)}
