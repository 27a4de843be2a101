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
                                          "lastErrorAt": err_at}
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
    assert out.stdout.split()[:5] == ["NAME", "TYPE", "READY", "HEALTH", "BREAKER"]
    assert rows["openai"][1:] == ["openai", "True", "Degraded", "0/2", "open"]
    assert rows["anthropic"][1:] == ["anthropic", "True", "Healthy", "0/2", "open"]
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
    assert health == {"state": "Healthy", "breaker": "0/1 open", "requests": 20, "failureRatio": 0.0, "pods": 1}

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
