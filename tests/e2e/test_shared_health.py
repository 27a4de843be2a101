"""Three real proxy processes share breaker state through Pod annotations on one emulated API server.

The staleness test runs with a heartbeat (30 s) far longer than the bound it checks (2 s) and than
the test itself, so only the publish-on-breaker-change path can meet the bound. The heartbeat
rules (3-heartbeat staleness, API load per heartbeat) are checked on a second cluster with a
short heartbeat. Each pod's own /metrics tells which attempts it made and how they ended; the
emulator's request log tells who wrote what. Figures go to tests/e2e/results/shared_health.json.
"""

from __future__ import annotations

import os
import signal
import time
from typing import Any

import httpx
import orjson

from detour_proxy.cluster.health_codec import endpoint_id, format_time, parse_time
from e2e.conftest import (COOLDOWN, MODEL, NS, Traffic, api_load, config, patches_by_pod, record)
from e2e.proxyproc import write_atomic
from k8s_emulator import K8sEmulator, pod_annotation
from support import wait_until

LONG_HEARTBEAT = 30.0   # > the whole test: no heartbeat write can happen during it
SHORT_HEARTBEAT = 0.5
STALENESS_BOUND = 2.0   # documented: minInterval + one PATCH/watch round-trip, target < 2 s
ANNOTATION = "detour.dev/health"


def wait_all_see_their_peers(k8s: K8sEmulator, pods: dict) -> None:
    for name, p in pods.items():
        wait_until(lambda: pod_annotation(k8s, name, ANNOTATION), 5, f"{name}'s annotation")
        wait_until(lambda: p.metric("detour_shared_health_peers") == 2
                   and p.metric("detour_shared_health_api_available") == 1, 5, f"{name} seeing 2 peers")
    assert pod_annotation(k8s, "unrelated", ANNOTATION) is None


def test_outage_seen_by_one_pod_reaches_the_others_within_the_bound_by_the_change_publish(cluster, sim_a, sim_b):
    k8s, (p1, p2, p3) = cluster(heartbeat=LONG_HEARTBEAT, failing=(1,))
    wait_all_see_their_peers(k8s, {"pod-1": p1, "pod-2": p2, "pod-3": p3})
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


def pod3_claims_a_open(k8s: K8sEmulator, sim_a, *, age_in_heartbeats: float, heartbeat: float = 2.0) -> None:
    """Write pod 3's annotation as pod 3 would: A open for 8 s more, published `age` heartbeats ago."""
    now = time.time()
    doc = {"version": 1, "pod": "pod-3", "updated": format_time(now - age_in_heartbeats * heartbeat),
           "heartbeatSeconds": heartbeat,
           "targets": [{"provider": "a", "model": MODEL, "endpoint": endpoint_id(sim_a.v1),
                        "state": "open", "openUntil": format_time(now + 8)}]}
    r = httpx.patch(f"{k8s.url}/api/v1/namespaces/{NS}/pods/pod-3",
                    content=orjson.dumps({"metadata": {"annotations": {ANNOTATION: orjson.dumps(doc).decode()}}}),
                    headers={"Content-Type": "application/merge-patch+json"}, timeout=10)
    r.raise_for_status()


def test_api_load_per_heartbeat_a_silent_peer_after_3_heartbeats_and_a_deleted_peer(cluster, sim_a):
    k8s, (p1, p2, p3) = cluster(heartbeat=SHORT_HEARTBEAT)
    wait_all_see_their_peers(k8s, {"pod-1": p1, "pod-2": p2, "pod-3": p3})

    # --- API load: at rest, then under light traffic (no breaker changes): the same ------------------
    rest = api_load(k8s, 2.0)
    with Traffic(p1, 0.05) as t1, Traffic(p2, 0.05) as t2, Traffic(p3, 0.05) as t3:
        wait_until(lambda: t1.log and t2.log and t3.log, 5, "traffic on every pod")
        busy = api_load(k8s, 2.0)
        served = sum(len(t.log) for t in (t1, t2, t3))
    assert all(st == 200 for t in (t1, t2, t3) for *_x, st in t.log)
    for load in (rest, busy):
        s = load["seconds"]
        assert 3 * (s / SHORT_HEARTBEAT - 2) <= load["patches"] <= 3 * (s / SHORT_HEARTBEAT + 1), load
        assert load["other_requests"] == 0, f"no list/watch churn: {load}"
    record("api_load", {
        "proxies": 3, "heartbeat_s": SHORT_HEARTBEAT, "at_rest": rest,
        "light_traffic": {**busy, "client_requests_per_s": round(served / busy["seconds"], 1)},
        "per_proxy_patch_per_s": round(rest["patch_per_s"] / 3, 2),
        "at_default_heartbeat_10s": {"patch_per_s_per_proxy": round(rest["patch_per_s"] / 3 * SHORT_HEARTBEAT / 10, 3),
                                     "note": "scaled from the measured rate: 1 PATCH per heartbeat per proxy"}})

    # --- A peer that stops publishing (frozen) is ignored once 3 of its heartbeats have lapsed ----
    os.kill(p3.proc.pid, signal.SIGSTOP)
    dropped_at = {}
    for name, p in (("pod-1", p1), ("pod-2", p2)):
        wait_until(lambda: p.metric("detour_shared_health_peers") == 1, 3 * SHORT_HEARTBEAT + 3,
                   f"{name} to drop the frozen pod 3")
        dropped_at[name] = time.time()
    last = parse_time(orjson.loads(pod_annotation(k8s, "pod-3", ANNOTATION))["updated"])
    ages = {n: round((t - last) / SHORT_HEARTBEAT, 2) for n, t in dropped_at.items()}
    print(f"frozen pod 3 dropped after {ages} of its heartbeats")
    for age in ages.values():
        assert 3 - 0.1 <= age <= 3 + 1 + 2.0, f"dropped after {age} heartbeats, not once 3 had lapsed"

    # The rule on a document's own heartbeat (2 s here): 3.5 heartbeats old -> ignored as stale ...
    pod3_claims_a_open(k8s, sim_a, age_in_heartbeats=3.5)
    for p in (p1, p2):
        wait_until(lambda: p.metric("detour_shared_health_ignored_total", reason="stale") >= 1, 3,
                   "the 3.5-heartbeat-old document to be seen")
        assert p.chat(MODEL).headers["x-detour-target"] == f"a/{MODEL}"
    # ... 2.5 heartbeats old -> still honoured (a 2-heartbeat rule would ignore it).
    merges_before = p1.metric("detour_shared_health_merges_total")
    pod3_claims_a_open(k8s, sim_a, age_in_heartbeats=2.5)
    for p in (p1, p2):
        wait_until(lambda: p.chat(MODEL).headers["x-detour-target"] == f"b/{MODEL}", STALENESS_BOUND,
                   "the 2.5-heartbeat-old claim to be honoured")
    assert p1.metric("detour_shared_health_merges_total") > merges_before

    # Pods 1-2 publish the imported open at their next heartbeat, flagged so nobody re-imports it.
    def entry_a() -> dict[str, Any] | None:
        doc = orjson.loads(pod_annotation(k8s, "pod-2", ANNOTATION))
        e = next(t for t in doc["targets"] if t["provider"] == "a")
        return e if e["state"] == "open" else None
    entry = wait_until(entry_a, 2 * SHORT_HEARTBEAT + 1, "pod 2's heartbeat showing A open")
    assert entry.get("imported") is True and entry["endpoint"] == endpoint_id(sim_a.v1)

    # --- Pod 3 is deleted: what was imported only from it is dropped, long before its 8 s claim ends --
    t_delete = time.monotonic()
    httpx.delete(f"{k8s.url}/api/v1/namespaces/{NS}/pods/pod-3", timeout=10).raise_for_status()
    for p in (p1, p2):
        wait_until(lambda: p.chat(MODEL).headers["x-detour-target"] == f"a/{MODEL}", STALENESS_BOUND,
                   "the deleted pod's claim to be dropped")
    assert time.monotonic() - t_delete < 5, "dropped with the pod, not at the claim's deadline"
    for p in (p1, p2):
        assert p.metric("detour_shared_health_peers") == 1
