"""The operator at scale on the real API server (issue 14, points 1, 2, 4 and 7), running as the
chart's operator ServiceAccount; API requests are counted from the server's audit log.

Figures (bulk apply, one edit, time to Ready at 100 providers / 300 policies) are printed and
written to tests/cluster/results/scale_operator.json (git-ignored), and quoted in README.
"""

from __future__ import annotations

import json
import pathlib
import time
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from cluster.realkube import Cluster, wait_for
from support import record_figures
from cluster.scale_support import (OperatorProcess, conditions, count, events, install_chart_rbac,
                                   install_crds, key_secret, policy, provider, quiet, ready, summary)

RESULTS = pathlib.Path(__file__).resolve().parent / "results" / "scale_operator.json"


def record(section: str, figures: dict[str, Any]) -> None:
    record_figures(RESULTS, section, figures, "scale")


@pytest.fixture
def op(cluster: Cluster, namespace: str, tmp_path: pathlib.Path) -> Iterator[OperatorProcess]:
    install_crds(cluster)
    admission = install_chart_rbac(cluster, namespace)
    proc = OperatorProcess(cluster, namespace, tmp_path)
    yield proc
    proc.stop()
    assert "Traceback" not in proc.log(), proc.log()[-4000:]
    cluster.kubectl("delete", *admission, "--ignore-not-found", check=False)


def ssa(cluster: Cluster, obj: dict[str, Any], ns: str) -> None:
    """Server-side apply: no kubectl last-applied annotation (it has the same 256 KiB limit)."""
    cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", "-", ns=ns, input=json.dumps(obj))


def config_doc(cluster: Cluster, ns: str) -> dict[str, Any]:
    cm = cluster.get_json("configmap", "detour-routing", ns=ns)
    return yaml.safe_load(cm["data"]["config.yaml"])


def secret_keys(cluster: Cluster, ns: str) -> set[str]:
    return set((cluster.get_json("secret", "detour-credentials", ns=ns).get("data") or {}))


def all_ready(cluster: Cluster, ns: str, n: int) -> bool:
    items = cluster.get_json("llmproviders,routingpolicies", ns=ns)["items"]
    good = [o for o in items if conditions(o).get("Ready", {}).get("status") == "True"
            and o["status"].get("observedGeneration") == o["metadata"]["generation"]]
    return len(good) == n


def test_a_deleted_fallback_leaves_its_policy_serving_and_its_key_goes(cluster: Cluster, namespace: str,
                                                                       op: OperatorProcess) -> None:
    ns = namespace
    cluster.apply([key_secret(["primary", "fallback"]), provider("primary"), provider("fallback"),
                   policy("chat", "primary", "fallback")], ns=ns)
    wait_for(lambda: ready(cluster, "rpol", "chat", ns), 60, "chat Ready")
    assert secret_keys(cluster, ns) == {"primary", "fallback"}

    cluster.kubectl("delete", "llmp", "fallback", ns=ns)  # no finalizer: gone at once

    def degraded() -> dict[str, Any] | None:
        obj = cluster.get_json("rpol", "chat", ns=ns)
        return obj if conditions(obj).get("ResolvedRefs", {}).get("reason") == "Degraded" else None
    chat = wait_for(degraded, 30, "chat Degraded")
    rr, rd = conditions(chat)["ResolvedRefs"], conditions(chat)["Ready"]
    assert rr["status"] == "False" and "target 2 (fallback/chat-model: LLMProvider not found)" in rr["message"]
    assert (rd["status"], rd["reason"]) == ("True", "Degraded")
    route = next(r for r in config_doc(cluster, ns)["routes"] if r["name"] == "chat")
    assert [t["provider"] for t in route["targets"]] == ["primary"], "the route still serves"
    wait_for(lambda: secret_keys(cluster, ns) == {"primary"}, 30, "the deleted provider's key to go")
    degraded_events = [e for e in events(cluster, ns) if e["reason"] == "Degraded"]
    assert len(degraded_events) == 1 and degraded_events[0]["involvedObject"]["name"] == "chat"

    # the last target goes too: nothing valid is left, the last good config stays, the key goes
    good = config_doc(cluster, ns)
    cluster.kubectl("delete", "llmp", "primary", ns=ns)
    wait_for(lambda: conditions(cluster.get_json("rpol", "chat", ns=ns))["Ready"]["reason"] == "ProviderNotFound",
             30, "chat excluded")
    wait_for(lambda: secret_keys(cluster, ns) == set(), 30, "the last key to go")
    assert config_doc(cluster, ns) == good


def test_one_edit_among_120_objects_writes_one_status_and_no_event(cluster: Cluster, namespace: str,
                                                                  op: OperatorProcess) -> None:
    ns = namespace
    names = [f"p{i:02d}" for i in range(60)]
    t_bulk = time.time()
    cluster.apply([key_secret(names)] + [provider(n) for n in names] +
                  [policy(f"r{i:02d}", n) for i, n in enumerate(names)], ns=ns)
    wait_for(lambda: all_ready(cluster, ns, 120), 180, "120 objects Ready")
    bulk_s = time.time() - t_bulk
    bulk = quiet(cluster, t_bulk, op.user)
    bulk_events = len(events(cluster, ns))

    t0 = time.time()
    cluster.kubectl("patch", "rpol", "r07", "--type=merge", "-p", '{"spec": {"timeout": "42s"}}', ns=ns)
    wait_for(lambda: ready(cluster, "rpol", "r07", ns) and
             "timeout: 42s" in cluster.get_json("configmap", "detour-routing", ns=ns)["data"]["config.yaml"],
             60, "the edit published")
    edit = quiet(cluster, t0, op.user)
    status_writes = [c for c in edit if c[0] == "patch" and c[2] == "status"]
    assert [c[3] for c in status_writes] == ["r07"], summary(edit)
    assert count(edit, "create", "events") == 0, summary(edit)  # Ready did not change
    assert count(edit, "patch", "configmaps") == 1 and count(edit, "list", "llmproviders") == 0, summary(edit)
    assert count(edit, "patch", "llmproviders") + count(edit, "patch", "routingpolicies") == 0, \
        "kopf writes nothing into the objects (no finalizer, no last-handled annotation)"
    record("one_edit_among_120", {"objects": 120, "bulk_apply_to_ready_s": round(bulk_s, 1),
                                  "bulk_requests": summary(bulk), "bulk_events": bulk_events,
                                  "edit_requests": summary(edit)})


def test_size_limits_end_in_conditions(cluster: Cluster, namespace: str, op: OperatorProcess) -> None:
    ns = namespace
    cluster.apply([key_secret(["a", "big"]), provider("a"), policy("chat", "a")], ns=ns)
    wait_for(lambda: ready(cluster, "rpol", "chat", ns), 60, "chat Ready")

    # A spec larger than kopf's last-handled annotation could hold (256 KiB for all annotations):
    # handled like any other (kopf stores nothing in the object), published and Ready.
    t0 = time.time()
    headers = {f"x-pad-{i:03d}": "v" * 4000 for i in range(80)}  # ~320 KiB of spec
    ssa(cluster, provider("big", headers=headers), ns)  # client-side apply would hit the same limit
    wait_for(lambda: ready(cluster, "llmp", "big", ns), 60, "the big provider Ready")
    big_calls = quiet(cluster, t0, op.user)
    assert count(big_calls, "patch", "llmproviders") == 0, summary(big_calls)
    assert not [c for c in big_calls if c[0] == "patch" and c[3] == "big" and c[2] != "status"]

    # A config over what a ConfigMap holds (1 MiB): not published, every object says why, the last
    # good config stays; no retry loop against the API server.
    good = config_doc(cluster, ns)
    t1 = time.time()
    huge = {f"x-pad-{i:03d}": "v" * 4000 for i in range(275)}  # ~1.1 MiB in the config
    ssa(cluster, provider("big", headers=huge), ns)

    def too_large() -> dict[str, Any] | None:
        obj = cluster.get_json("rpol", "chat", ns=ns)
        return obj if conditions(obj).get("Programmed", {}).get("reason") == "ConfigTooLarge" else None
    chat = wait_for(too_large, 60, "Programmed=False ConfigTooLarge")
    assert "bytes, over the" in conditions(chat)["Programmed"]["message"]
    after = quiet(cluster, t1, op.user)
    assert count(after, "patch", "configmaps") == 0 and count(after, "update", "configmaps") == 0, summary(after)
    assert config_doc(cluster, ns) == good


def test_time_to_ready_at_100_providers_and_300_policies(cluster: Cluster, namespace: str,
                                                         op: OperatorProcess) -> None:
    ns = namespace
    names = [f"prov-{i:03d}" for i in range(100)]
    objs: list[dict[str, Any]] = [key_secret(names)] + [provider(n) for n in names]
    objs += [policy(f"pol-{i:03d}", names[i % 100], names[(i + 1) % 100], names[(i + 7) % 100]) for i in range(300)]
    t0 = time.time()
    cluster.apply(objs, ns=ns)
    applied = time.time() - t0
    wait_for(lambda: all_ready(cluster, ns, 400), 600, "400 objects Ready", interval=1.0)
    to_ready = time.time() - t0
    settle = quiet(cluster, t0, op.user)
    cm = cluster.get_json("configmap", "detour-routing", ns=ns)
    assert len(yaml.safe_load(cm["data"]["config.yaml"])["routes"]) == 300

    # one edit at this scale: time from kubectl patch to the edited object Ready at its new generation
    t1 = time.time()
    cluster.kubectl("patch", "rpol", "pol-150", "--type=merge", "-p", '{"spec": {"timeout": "33s"}}', ns=ns)
    wait_for(lambda: ready(cluster, "rpol", "pol-150", ns) and
             "timeout: 33s" in cluster.get_json("configmap", "detour-routing", ns=ns)["data"]["config.yaml"],
             120, "the edit Ready", interval=0.1)
    edit_s = time.time() - t1
    edit = quiet(cluster, t1, op.user)
    assert count(edit, "patch", "routingpolicies", "status") == 1, summary(edit)
    renders = [line for line in op.log().splitlines() if "published routing config" in line]
    record("scale_100_providers_300_policies", {
        "objects": 400, "apply_s": round(applied, 1), "apply_to_all_ready_s": round(to_ready, 1),
        "edit_to_ready_s": round(edit_s, 2), "config_bytes": len(cm["data"]["config.yaml"]),
        "publishes": len(renders), "requests_to_ready": summary(settle), "edit_requests": summary(edit)})
    assert edit_s < 10, f"one edit took {edit_s:.1f} s to be Ready at 400 objects"


def test_health_figures_that_only_drift_are_not_rewritten(cluster: Cluster, namespace: str,
                                                          op: OperatorProcess) -> None:
    """A proxy's report whose request figures drift (within 25 %) causes no status write; a state
    change does. The report is written as admin on a Pod labelled like the chart's proxies."""
    ns = namespace
    cluster.apply([key_secret(["a"]), provider("a"), policy("chat", "a")], ns=ns)
    wait_for(lambda: ready(cluster, "llmp", "a", ns), 60, "a Ready")
    cluster.apply({"apiVersion": "v1", "kind": "Pod",
                   "metadata": {"name": "proxy-1", "labels": {"app.kubernetes.io/component": "proxy"}},
                   "spec": {"containers": [{"name": "proxy", "image": "detour-proxy:test"}]}}, ns=ns)

    def report(requests: int, state: str = "closed") -> None:
        doc = {"version": 1, "pod": "proxy-1", "updated": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
               "heartbeatSeconds": 300, "targets": [{"provider": "a", "model": "m", "endpoint": "e", "state": state,
                                                    "requests": requests, "failureRatio": 0.0}]}
        cluster.kubectl("annotate", "--overwrite", "pod", "proxy-1", f"detour.dev/health={json.dumps(doc)}", ns=ns)

    report(100)
    wait_for(lambda: (cluster.get_json("llmp", "a", ns=ns)["status"].get("health") or {}).get("pods") == 1, 30,
             "the first roll-up")
    t0 = time.time()
    for n in (104, 110, 96, 118, 101):  # drift, one report a second (healthInterval 1 s)
        report(n)
        time.sleep(1.1)  # let each drifted report be rolled up on its own: the roll-up is what is measured
    drift = quiet(cluster, t0, op.user)
    assert count(drift, "patch", "llmproviders", "status") == 0, summary(drift)
    assert cluster.get_json("llmp", "a", ns=ns)["status"]["health"]["requests"] == 100

    report(101, state="open")  # a state change is written at once
    wait_for(lambda: cluster.get_json("llmp", "a", ns=ns)["status"]["health"]["state"] == "Unavailable", 30,
             "Unavailable")
