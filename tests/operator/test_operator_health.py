"""Health roll-up end to end: fake proxy Pods publish `detour.dev/health`; LLMProvider status and
the Health/Breaker printer columns show it (columns resolved by kubectl with the CRD's JSONPaths);
an error that goes away leaves status, and an unchanged picture writes no status at all."""

from __future__ import annotations

import datetime
import json
from typing import Any

import yaml
from conftest import CRDS, NS, apply_examples, cond, get, kubectl, wait_for
from k8s_emulator import api_calls
from prometheus_client import REGISTRY

PROXY_LABELS = {"app.kubernetes.io/component": "proxy"}


def stamp(seconds_ago: float = 0.0) -> str:
    t = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(seconds=seconds_ago)
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


def report(pod: str, targets: list[dict[str, Any]], age: float = 0.0) -> str:
    return json.dumps({"version": 1, "pod": pod, "updated": stamp(age), "heartbeatSeconds": 10, "targets": targets})


def target(provider: str, state: str, requests: int, ratio: float, error: str | None = None, at: str = "") -> dict:
    t = {"provider": provider, "model": "m", "endpoint": "3f2a9c1e", "state": state,
         "requests": requests, "failureRatio": ratio}
    if error:
        t.update(lastError=error, lastErrorAt=at)
    return t


def pod(core: Any, name: str, annotation: str, labels: dict[str, str] = PROXY_LABELS) -> None:
    core.create_namespaced_pod(NS, {
        "metadata": {"name": name, "labels": labels, "annotations": {"detour.dev/health": annotation}},
        "spec": {"containers": [{"name": "proxy", "image": "detour-proxy"}]}})


def columns(kind_file: str) -> str:
    crd = yaml.safe_load(next(p for p in CRDS if p.name == kind_file).read_text())
    cols = crd["spec"]["versions"][0]["additionalPrinterColumns"]
    return ",".join(f"{c['name'].upper()}:{c['jsonPath']}" for c in cols if c["type"] != "date")


def test_pod_health_shows_in_status_and_printer_columns(k8s, operator, core, custom):
    apply_examples(k8s, custom)
    err_at = stamp(5)
    pod(core, "proxy-a", report("proxy-a", [target("openai", "closed", 40, 1.0, "http_503", err_at),
                                            target("anthropic", "closed", 10, 0.0)]))
    pod(core, "proxy-b", report("proxy-b", [target("openai", "closed", 60, 0.2, "timeout", stamp(30)),
                                            target("anthropic", "closed", 30, 0.0)]))
    # a stale report (3 x heartbeat old) and a pod that is not a proxy are both ignored
    pod(core, "proxy-old", report("proxy-old", [target("openai", "open", 99, 1.0)], age=31))
    pod(core, "other", report("other", [target("openai", "open", 99, 1.0)]), labels={"app": "other"})

    openai = wait_for(lambda: (o := get(custom, "llmproviders", "openai"))["status"].get("health", {}).get("pods") == 2
                      and o, 3, what=lambda: get(custom, "llmproviders", "openai")["status"])
    assert openai["status"]["health"] == {"state": "Degraded", "breaker": "0/2 open", "requests": 100,
                                          "failureRatio": 0.52, "pods": 2, "lastError": "http_503",
                                          "lastErrorAt": err_at, "modelsReady": "m 1/1",
                                          "models": [{"name": "m", "state": "Degraded", "keys": 1, "readyKeys": 1}]}
    available = cond(openai, "Available")
    assert available["status"] == "True" and available["reason"] == "Degraded"
    assert cond(openai, "Ready")["status"] == "True"  # health does not change config readiness
    anthropic = wait_for(lambda: (o := get(custom, "llmproviders", "anthropic"))["status"]["health"]["pods"] == 2
                         and o, 10)
    assert anthropic["status"]["health"]["state"] == "Healthy"
    assert get(custom, "llmproviders", "azure")["status"]["health"]["state"] == "Unknown"

    # kubectl evaluates the CRD's printer-column JSONPaths (custom-columns uses the same JSONPath engine)
    out = kubectl(k8s, "get", "llmp", "-o", f"custom-columns=NAME:.metadata.name,{columns('llmproviders.detour.dev.yaml')}")
    rows = {line.split()[0]: line.split() for line in out.stdout.splitlines()[1:]}
    assert out.stdout.split()[:6] == ["NAME", "TYPE", "READY", "HEALTH", "BREAKER", "MODELS"]
    assert rows["openai"][1:] == ["openai", "True", "Degraded", "0/2", "open", "m", "1/1"]
    assert rows["anthropic"][1:] == ["anthropic", "True", "Healthy", "0/2", "open", "m", "1/1"]
    out = kubectl(k8s, "get", "rpol", "-o", f"custom-columns=NAME:.metadata.name,{columns('routingpolicies.detour.dev.yaml')}")
    assert out.stdout.splitlines()[1].split() == ["chat", "priority", "openai,azure,anthropic", "True"]
    # The Targets column reads one scalar the operator writes (a real API server's table converter
    # prints only the first result of a JSONPath, so `.spec.targets[*].providerRef` would show "openai").
    assert "TARGETS:.status.targets" in columns("routingpolicies.detour.dev.yaml")
    assert get(custom, "routingpolicies", "chat")["status"]["targets"] == "openai,azure,anthropic"

    # one pod opens its breaker (every pod imports it): Unavailable, Available=False
    core.patch_namespaced_pod("proxy-b", NS, {"metadata": {"annotations": {"detour.dev/health": report(
        "proxy-b", [target("openai", "open", 60, 0.9, "http_503", err_at)])}}})
    openai = wait_for(lambda: (o := get(custom, "llmproviders", "openai"))["status"]["health"]["state"] == "Unavailable"
                      and o, 10)
    assert openai["status"]["health"]["breaker"] == "1/2 open"
    assert cond(openai, "Available")["status"] == "False"
    assert openai["status"]["observedGeneration"] == openai["metadata"]["generation"]


def status_patches(k8s) -> list:
    return [c for c in api_calls(k8s) if c.method == "PATCH" and c.subresource == "status" and c.plural == "llmproviders"]


def rollups(result: str) -> float:
    return REGISTRY.get_sample_value("detour_operator_health_rollups_total", {"result": result}) or 0.0


def test_an_error_that_goes_away_leaves_status_and_unchanged_ticks_write_nothing(k8s, operator, core, custom):
    apply_examples(k8s, custom)
    err_at = stamp(2)
    pod(core, "proxy-a", report("proxy-a", [target("openai", "closed", 20, 0.1, "http_503", err_at)]))
    wait_for(lambda: get(custom, "llmproviders", "openai")["status"]["health"].get("lastError") == "http_503", 5,
             what=lambda: get(custom, "llmproviders", "openai")["status"]["health"])

    # the pod's window no longer holds an error: lastError/lastErrorAt leave status.health
    core.patch_namespaced_pod("proxy-a", NS, {"metadata": {"annotations": {"detour.dev/health": report(
        "proxy-a", [target("openai", "closed", 20, 0.0)])}}})
    wait_for(lambda: "lastError" not in get(custom, "llmproviders", "openai")["status"]["health"], 5,
             what=lambda: get(custom, "llmproviders", "openai")["status"]["health"])
    health = get(custom, "llmproviders", "openai")["status"]["health"]
    assert health == {"state": "Healthy", "breaker": "0/1 open", "requests": 20, "failureRatio": 0.0, "pods": 1,
                      "models": [{"name": "m", "state": "Healthy", "keys": 1, "readyKeys": 1}], "modelsReady": "m 1/1"}

    # reports whose figures only drift (requests within 25 %): five roll-ups of the 3 providers,
    # no status write at all
    writes = len(status_patches(k8s))
    for n in (21, 22, 23, 24, 22):
        ticks = rollups("unchanged") + rollups("patched")
        core.patch_namespaced_pod("proxy-a", NS, {"metadata": {"annotations": {"detour.dev/health": report(
            "proxy-a", [target("openai", "closed", n, 0.0)])}}})
        wait_for(lambda: rollups("unchanged") + rollups("patched") >= ticks + 3, 10,
                 what="a roll-up of the drifted report")
    assert len(status_patches(k8s)) == writes
    assert get(custom, "llmproviders", "openai")["status"]["health"]["requests"] == 20

    # the error comes back and then the reports stop (pod gone): Unknown, and no stale error either
    core.patch_namespaced_pod("proxy-a", NS, {"metadata": {"annotations": {"detour.dev/health": report(
        "proxy-a", [target("openai", "open", 20, 0.9, "timeout", stamp(1))])}}})
    wait_for(lambda: get(custom, "llmproviders", "openai")["status"]["health"].get("lastError") == "timeout", 5)
    core.delete_namespaced_pod("proxy-a", NS)
    openai = wait_for(lambda: (o := get(custom, "llmproviders", "openai"))["status"]["health"]["state"] == "Unknown"
                      and o, 5)
    assert openai["status"]["health"] == {"state": "Unknown", "breaker": "0/0 open", "requests": 0,
                                          "failureRatio": 0.0, "pods": 0}
    assert cond(openai, "Available")["reason"] == "NoReports"


def test_several_keys_roll_up_per_model_in_status_and_the_models_column(k8s, operator, core, custom):
    """An LLMProvider with three keys (apiKeySecretRefs): every key reaches detour-credentials (not
    the ConfigMap); pods report per (model, key); one model with a refused key and another with
    every key out leave the provider Degraded (Available, naming the model), and `kubectl get llmp`
    shows per model how many keys are ready."""
    import base64

    from detour_proxy.config import parse_config

    apply_examples(k8s, custom)
    core.create_namespaced_secret(NS, {"metadata": {"name": "pool"},
                                       "stringData": {"a": "sk-pool-a", "b": "sk-pool-b", "c": "sk-pool-c"}})
    custom.create_namespaced_custom_object("detour.dev", "v1alpha1", NS, "llmproviders", {
        "apiVersion": "detour.dev/v1alpha1", "kind": "LLMProvider", "metadata": {"name": "pool"},
        "spec": {"type": "openai", "baseURL": "https://pool.example.com/v1",
                 "apiKeySecretRefs": [{"name": "pool", "key": k} for k in "abc"]}})
    custom.create_namespaced_custom_object("detour.dev", "v1alpha1", NS, "routingpolicies", {
        "apiVersion": "detour.dev/v1alpha1", "kind": "RoutingPolicy", "metadata": {"name": "pooled"},
        "spec": {"order": 10, "match": {"models": ["gpt-4o", "o1"]},
                 "targets": [{"providerRef": "pool", "model": "gpt-4o"}, {"providerRef": "pool", "model": "o1"}]}})
    wait_for(lambda: cond(get(custom, "llmproviders", "pool"), "Ready") and
             cond(get(custom, "llmproviders", "pool"), "Ready")["status"] == "True", 10,
             what=lambda: get(custom, "llmproviders", "pool").get("status"))
    creds = core.read_namespaced_secret("detour-credentials", NS).data
    assert [base64.b64decode(creds[k]) for k in ("pool", "pool.1", "pool.2")] == [b"sk-pool-a", b"sk-pool-b", b"sk-pool-c"]
    cm = core.read_namespaced_config_map("detour-routing", NS).data["config.yaml"]
    assert "sk-pool" not in cm
    assert [k.file.rsplit("/", 1)[1] for k in parse_config(cm).provider("pool").api_keys] == ["pool", "pool.1", "pool.2"]

    def entry(model: str, key: int, state: str = "closed") -> dict:
        e = {"provider": "pool", "model": model, "endpoint": "0badc0de", "state": state, "requests": 5, "failureRatio": 0.0}
        return {**e, "key": key} if key else e

    pod(core, "proxy-k", report("proxy-k", [entry("gpt-4o", 0), entry("gpt-4o", 1, "open"), entry("gpt-4o", 2),
                                            entry("o1", 0, "open"), entry("o1", 1, "open"), entry("o1", 2, "open")]))
    pool = wait_for(lambda: (o := get(custom, "llmproviders", "pool"))["status"].get("health", {}).get("pods") == 1
                    and o, 10, what=lambda: get(custom, "llmproviders", "pool")["status"])
    h = pool["status"]["health"]
    assert h["state"] == "Degraded" and h["modelsReady"] == "o1 0/3, gpt-4o 2/3"
    assert h["models"] == [{"name": "gpt-4o", "state": "Degraded", "keys": 3, "readyKeys": 2},
                           {"name": "o1", "state": "Unavailable", "keys": 3, "readyKeys": 0}]
    available = cond(pool, "Available")
    assert (available["status"], available["reason"]) == ("True", "ModelsUnavailable")
    assert "o1 (0/3 keys ready)" in available["message"] and "sk-pool" not in json.dumps(pool["status"])
    out = kubectl(k8s, "get", "llmp", "pool", "-o", f"custom-columns=NAME:.metadata.name,{columns('llmproviders.detour.dev.yaml')}")
    assert out.stdout.splitlines()[1].split()[3:] == ["Degraded", "1/1", "open", "o1", "0/3,", "gpt-4o", "2/3"]
