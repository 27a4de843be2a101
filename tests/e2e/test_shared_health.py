"""Three real proxy processes share breaker state through Pod annotations on one emulated API server.

The staleness test runs with a heartbeat and keepalive (30 s) far longer than the bound it checks
(2 s) and than the test itself, so only the publish-on-breaker-change path can meet the bound.
The publish-on-change rules (nothing written at rest, importers silent, a report's age measured
in its own keepalives) are checked on a second cluster with a short heartbeat. Each pod's own
/metrics tells which attempts it made and how they ended; the emulator's request log tells who
wrote what. Figures go to tests/e2e/results/shared_health.json. The same protocol against the
real API server, at 50-200 peers: tests/cluster/ and bench/shared_health_fanout.py.
"""

from __future__ import annotations

import time

import httpx
import orjson

import kmock

from detour_proxy.cluster.health_codec import endpoint_id, format_time
from detour_proxy.cluster.health_publish import OPEN_LABEL
from e2e.conftest import (COOLDOWN, MODEL, NS, Traffic, api_load, config, patches_by_pod, record)
from e2e.proxyproc import write_atomic
from k8s_emulator import K8sEmulator, pod_annotation
from support import wait_until

LONG_HEARTBEAT = 30.0   # > the whole test: no heartbeat write can happen during it
SHORT_HEARTBEAT = 0.5
STALENESS_BOUND = 2.0   # documented: minInterval + one PATCH/watch round-trip, target < 2 s
ANNOTATION = "detour.dev/health"


def wait_all_published_and_watching(k8s: K8sEmulator, pods: dict) -> None:
    for name, p in pods.items():
        wait_until(lambda: pod_annotation(k8s, name, ANNOTATION), 5, f"{name}'s annotation")
        wait_until(lambda: p.metric("detour_shared_health_api_available") == 1, 5, f"{name} publishing and watching")
    assert pod_annotation(k8s, "unrelated", ANNOTATION) is None


def open_label(k8s: K8sEmulator, name: str) -> str | None:
    obj = k8s.object(kmock.resource("v1/pods"), NS, name)
    return ((obj or {}).get("metadata", {}).get("labels") or {}).get(OPEN_LABEL)


def test_outage_seen_by_one_pod_reaches_the_others_within_the_bound_by_the_change_publish(cluster, sim_a, sim_b):
    k8s, (p1, p2, p3) = cluster(heartbeat=LONG_HEARTBEAT, failing=(1,))
    wait_all_published_and_watching(k8s, {"pod-1": p1, "pod-2": p2, "pod-3": p3})
    for p in (p2, p3):
        assert p.chat(MODEL).headers["x-detour-target"] == f"a/{MODEL}"

    # --- 1. Provider A fails for pod 1 only --------------------------------------------------------
    writes_before = patches_by_pod(k8s)
    with Traffic(p2) as t2, Traffic(p3) as t3:
        wait_until(lambda: len(t2.log) > 5 and len(t3.log) > 5, 5, "traffic on pods 2 and 3")
        t_open = time.monotonic()           # pod 1's breaker opens during this request
        r = p1.chat(MODEL)
        assert r.status_code == 200 and r.headers["x-detour-target"] == f"b/{MODEL}"
        assert p1.metric("detour_breaker_state", provider="a", model=MODEL) == 2
        s2 = wait_until(lambda: t2.switched_to(f"b/{MODEL}", t_open), 5, "pod 2 moving off A")
        s3 = wait_until(lambda: t3.switched_to(f"b/{MODEL}", t_open), 5, "pod 3 moving off A")
    stale2, stale3 = s2 - t_open, s3 - t_open
    writes = patches_by_pod(k8s) - writes_before
    assert stale2 < STALENESS_BOUND and stale3 < STALENESS_BOUND, (stale2, stale3)
    assert writes["pod-1"] == 1, f"one write for the open, no heartbeat in between: {writes}"
    assert writes["pod-2"] == writes["pod-3"] == 0, f"an imported open triggers no write: {writes}"
    assert open_label(k8s, "pod-1") == "true" and open_label(k8s, "pod-2") is None, "only the opener is watched"
    for p in (p2, p3):
        assert p.metric("detour_upstream_attempts_total", route="chat", provider="a", model=MODEL,
                        result="http_5xx") == 0, "pods 2/3 never saw a failure themselves"
        assert p.metric("detour_shared_health_merges_total") >= 1
        assert p.metric("detour_breaker_state", provider="a", model=MODEL) == 2
    assert all(st == 200 for log in (t2.log, t3.log) for *_x, st in log), "no client saw an error"
    record("incident", {"proxies": 3, "heartbeat_s": LONG_HEARTBEAT, "min_interval_s": 0.2,
                        "staleness_s": [round(stale2, 3), round(stale3, 3)], "bound_s": STALENESS_BOUND,
                        "writes_for_one_open": dict(writes)})

    # --- 2. A recovers (pod 1's config loses the fault header: hot reload, same identity) -----------
    write_atomic(p1.config_path, config(sim_a, sim_b, fail_a=False, heartbeat=LONG_HEARTBEAT))
    with Traffic(p1, 0.05) as t1, Traffic(p2, 0.05) as t2, Traffic(p3, 0.05) as t3:
        t_rec = time.monotonic()
        for t, name in ((t1, "pod 1"), (t2, "pod 2"), (t3, "pod 3")):
            wait_until(lambda: t.switched_to(f"a/{MODEL}", t_rec), COOLDOWN + 6, f"{name} back on A")
    for p in (p1, p2, p3):
        assert p.metric("detour_breaker_transitions_total", provider="a", model=MODEL, to="half-open") >= 1
        assert p.metric("detour_breaker_transitions_total", provider="a", model=MODEL, to="closed") >= 1, \
            "traffic returned through a successful local probe"


def pod3_claims_a_open(k8s: K8sEmulator, sim_a, *, age_in_keepalives: float, keepalive: float = 2.0) -> None:
    """Write pod 3's annotation and label as pod 3 would: A open for 8 s more, published `age`
    of its keepalives ago (`heartbeatSeconds` in the document is the writer's keepalive)."""
    now = time.time()
    doc = {"version": 1, "pod": "pod-3", "updated": format_time(now - age_in_keepalives * keepalive),
           "heartbeatSeconds": keepalive,
           "targets": [{"provider": "a", "model": MODEL, "endpoint": endpoint_id(sim_a.v1),
                        "state": "open", "openUntil": format_time(now + 8)}]}
    md = {"annotations": {ANNOTATION: orjson.dumps(doc).decode()}, "labels": {OPEN_LABEL: "true"}}
    r = httpx.patch(f"{k8s.url}/api/v1/namespaces/{NS}/pods/pod-3", content=orjson.dumps({"metadata": md}),
                    headers={"Content-Type": "application/merge-patch+json"}, timeout=10)
    r.raise_for_status()


def test_nothing_is_written_at_rest_importers_stay_silent_and_a_deleted_peer_is_dropped(cluster, sim_a):
    k8s, (p1, p2, p3) = cluster(heartbeat=SHORT_HEARTBEAT, keepalive=LONG_HEARTBEAT)
    wait_all_published_and_watching(k8s, {"pod-1": p1, "pod-2": p2, "pod-3": p3})

    # --- API load: at rest nothing at all; light traffic: figures at most once per heartbeat --------
    rest = api_load(k8s, 2.0)
    with Traffic(p1, 0.05) as t1, Traffic(p2, 0.05) as t2, Traffic(p3, 0.05) as t3:
        wait_until(lambda: t1.log and t2.log and t3.log, 5, "traffic on every pod")
        busy = api_load(k8s, 2.0)
        served = sum(len(t.log) for t in (t1, t2, t3))
    assert all(st == 200 for t in (t1, t2, t3) for *_x, st in t.log)
    assert rest["patches"] == 0 and rest["other_requests"] == 0, f"nothing at rest: {rest}"
    assert busy["patches"] <= 3 * (busy["seconds"] / SHORT_HEARTBEAT + 1), busy
    assert busy["other_requests"] == 0, f"no list/watch churn: {busy}"
    record("api_load", {
        "proxies": 3, "heartbeat_s": SHORT_HEARTBEAT, "keepalive_s": LONG_HEARTBEAT, "at_rest": rest,
        "light_traffic": {**busy, "client_requests_per_s": round(served / busy["seconds"], 1)},
        "note": "at rest one PATCH per keepalive per proxy (default 300 s); figures only when they moved"})

    # --- A report's age counts in the writer's own keepalives: 3.5 old -> ignored as stale ... -------
    pod3_claims_a_open(k8s, sim_a, age_in_keepalives=3.5)
    for p in (p1, p2):
        wait_until(lambda: p.metric("detour_shared_health_ignored_total", reason="stale") >= 1, 3,
                   "the 3.5-keepalive-old document to be seen")
        assert p.chat(MODEL).headers["x-detour-target"] == f"a/{MODEL}"
    # ... 2.5 old -> still honoured (a 2-keepalive rule would ignore it).
    merges_before = p1.metric("detour_shared_health_merges_total")
    pod3_claims_a_open(k8s, sim_a, age_in_keepalives=2.5)
    for p in (p1, p2):
        wait_until(lambda: p.chat(MODEL).headers["x-detour-target"] == f"b/{MODEL}", STALENESS_BOUND,
                   "the 2.5-keepalive-old claim to be honoured")
    assert p1.metric("detour_shared_health_merges_total") > merges_before

    # Importers do not echo it: a write they make for their request figures (the chats above moved
    # them) flags the open imported and does not carry the open label, so nobody watches them.
    time.sleep(3 * SHORT_HEARTBEAT)  # let any figures write happen: nothing to await
    for name in ("pod-1", "pod-2"):
        doc = orjson.loads(pod_annotation(k8s, name, ANNOTATION))
        a = next(t for t in doc["targets"] if t["provider"] == "a")
        assert a["state"] != "open" or a.get("imported") is True, a
        assert open_label(k8s, name) is None

    # --- Pod 3 is deleted: what was imported only from it is dropped, long before its 8 s claim ends --
    t_delete = time.monotonic()
    httpx.delete(f"{k8s.url}/api/v1/namespaces/{NS}/pods/pod-3", timeout=10).raise_for_status()
    for p in (p1, p2):
        wait_until(lambda: p.chat(MODEL).headers["x-detour-target"] == f"a/{MODEL}", STALENESS_BOUND,
                   "the deleted pod's claim to be dropped")
    assert time.monotonic() - t_delete < 5, "dropped with the pod, not at the claim's deadline"
    for p in (p1, p2):
        assert p.metric("detour_shared_health_peers") == 0


def test_a_refused_key_is_shared_per_key_and_peers_go_straight_to_the_next_key(cluster, sim_a, sim_b):
    """Provider A lists two keys; key 0 is refused (401) for everyone. Pod 1 meets it, rotates to
    key 1 and publishes key 0 open (by index); pods 2 and 3 import that one key and send their
    requests to key 1 at once: A is not left, and no pod but the first spends a call on key 0."""
    from e2e.conftest import config as base_config

    k8s, (p1, p2, p3) = cluster(heartbeat=LONG_HEARTBEAT)
    wait_all_published_and_watching(k8s, {"pod-1": p1, "pod-2": p2, "pod-3": p3})
    cfg = base_config(sim_a, sim_b, fail_a=False, heartbeat=LONG_HEARTBEAT)
    a = cfg["providers"][0]
    del a["apiKey"]
    a["apiKeys"] = [{"value": "sk-a-revoked"}, {"value": "sk-a-good"}]
    cfg["health"]["breaker"]["maxCooldown"] = "60s"
    for p in (p1, p2, p3):
        write_atomic(p.config_path, cfg)
    for p in (p1, p2, p3):
        wait_until(lambda: p.chat(MODEL).headers.get("x-detour-key") == "0", 5, "the two-key config in force")
    sim_a.admin.put("/_sim/faults", json={"status": 401, "keys": ["sk-a-revoked"]}).raise_for_status()

    r = p1.chat(MODEL)
    assert r.status_code == 200 and (r.headers["x-detour-target"], r.headers["x-detour-key"]) == (f"a/{MODEL}", "1")

    def key0_published_open() -> bool:
        doc = orjson.loads(pod_annotation(k8s, "pod-1", ANNOTATION) or b"{}")
        states = {t.get("key", 0): t["state"] for t in doc.get("targets", []) if t["provider"] == "a"}
        return states == {0: "open", 1: "closed"}
    wait_until(key0_published_open, STALENESS_BOUND, "pod 1 publishing key 0 open, key 1 closed")
    refused = sim_a.stats()["faultsInjected"]
    for p in (p2, p3):
        wait_until(lambda: p.metric("detour_shared_health_merges_total") >= 1, STALENESS_BOUND, "the import")
        r = p.chat(MODEL)
        assert (r.headers["x-detour-target"], r.headers["x-detour-key"], r.headers["x-detour-attempts"]) == \
            (f"a/{MODEL}", "1", "1")
        assert p.metric("detour_key_rotations_total", route="chat", provider="a", model=MODEL, reason="http_4xx") == 0
    assert sim_a.stats()["faultsInjected"] == refused == 1      # only pod 1 ever sent the revoked key
    assert sim_b.requests() == 0
    sim_a.clear()
