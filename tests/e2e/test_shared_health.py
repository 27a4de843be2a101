"""Three real proxy processes share breaker state through Pod annotations on one emulated API server.

How "provider A fails for pod 1 only" is made without breaking target identity: all three
proxies point provider `a` at the *same* simulator with the same model and baseURL, so the
published identity (provider, model, sha256(baseURL)[:8]) is the same everywhere. Pod 1's
config adds a static provider header `x-sim-fault: {"status": 503}`, which the simulator obeys
per request; provider headers are not part of a target's identity. So only pod 1's requests to A
fail, pods 2 and 3 can only learn of the outage from pod 1's annotation, and "A recovers" is a
hot reload of pod 1's config without the header (its breaker state survives the reload). Each
pod's own /metrics tells which attempts it made and how they ended.
"""

from __future__ import annotations

import collections
import os
import signal
import threading
import time
from typing import Any

import httpx
import orjson
import pytest
import yaml

from detour_proxy.shared_health_codec import format_time, endpoint_id
from e2e.proxyproc import ProxyProcess, write_atomic
from k8s_emulator import K8sEmulator, api_requests, create_pod, pod_annotation
from support import wait_until

NS = "default"
LABELS = {"app.kubernetes.io/component": "proxy", "app.kubernetes.io/name": "detour"}
MODEL = "m1"
HEARTBEAT = 0.5
MIN_INTERVAL = 0.2
COOLDOWN = 3.0
STALENESS_BOUND = 2.0   # documented: minInterval + one PATCH/watch round-trip, target < 2 s


def config(sim_a, sim_b, *, fail_a: bool) -> dict[str, Any]:
    a = {"name": "a", "type": "openai", "baseURL": sim_a.v1, "apiKey": {"value": "sk-a"}}
    if fail_a:
        a["headers"] = {"x-sim-fault": orjson.dumps({"status": 503}).decode()}
    return {
        "providers": [a, {"name": "b", "type": "openai", "baseURL": sim_b.v1, "apiKey": {"value": "sk-b"}}],
        "routes": [{"name": "chat", "match": {"models": [MODEL]}, "strategy": "priority",
                    "targets": [{"provider": "a", "model": MODEL, "priority": 0},
                                {"provider": "b", "model": MODEL, "priority": 1}],
                    "retry": {"attempts": 1}, "timeout": "10s"}],
        "health": {"breaker": {"consecutiveFailures": 1, "cooldown": f"{COOLDOWN}s", "maxCooldown": "10s"}},
        "retryBudget": {"ratio": 1.0, "minPerSecond": 100},
        "server": {"drainTimeout": "1s"},
        "sharedHealth": {"enabled": True, "heartbeat": f"{HEARTBEAT}s", "minInterval": f"{MIN_INTERVAL}s",
                         "podSelector": "app.kubernetes.io/component=proxy"},
    }




class Traffic:
    """Sequential requests to one proxy in a thread, every ~`period` s: (sent, done, target, status)."""

    def __init__(self, proxy: ProxyProcess, period: float = 0.02) -> None:
        self.proxy, self.period = proxy, period
        self.log: list[tuple[float, float, str, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with httpx.Client(base_url=self.proxy.url, timeout=10) as c:
            body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}
            while not self._stop.is_set():
                sent = time.monotonic()
                try:
                    r = c.post("/v1/chat/completions", json=body)
                    self.log.append((sent, time.monotonic(), r.headers.get("x-detour-target", ""), r.status_code))
                except httpx.HTTPError:
                    self.log.append((sent, time.monotonic(), "", -1))
                self._stop.wait(self.period)

    def __enter__(self) -> Traffic:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join(10)

    def switched_to(self, target: str, after: float) -> float | None:
        """Sent-time of the first request after `after` from which on every answer is `target`."""
        entries = [e for e in self.log if e[0] >= after]
        if not entries or entries[-1][2] != target:
            return None
        i = len(entries)
        while i > 0 and entries[i - 1][2] == target:
            i -= 1
        return entries[i][0] if i < len(entries) and len(entries) - i >= 3 else None


@pytest.fixture()
def cluster(tmp_path, sim_a, sim_b):
    sim_a.reset()
    sim_b.reset()
    with K8sEmulator(kubeconfig=tmp_path / "kubeconfig", namespace=NS) as k8s:
        for i in (1, 2, 3):
            create_pod(k8s, f"pod-{i}", LABELS)
        create_pod(k8s, "unrelated", {"app": "something-else"})
        procs = []
        try:
            for i in (1, 2, 3):
                path = tmp_path / f"pod-{i}" / "config.yaml"
                path.parent.mkdir()
                write_atomic(path, config(sim_a, sim_b, fail_a=(i == 1)))
                procs.append(ProxyProcess(path, env={"POD_NAME": f"pod-{i}", "POD_NAMESPACE": NS,
                                                     "KUBECONFIG": str(k8s.kubeconfig)}))
            for p in procs:
                p.wait_started()
            yield k8s, procs
        finally:
            for p in procs:
                p.stop()


def test_outage_seen_by_one_pod_reaches_the_others_recovers_and_a_silent_peer_is_ignored(cluster, sim_a, sim_b):
    k8s, (p1, p2, p3) = cluster
    pods = {"pod-1": p1, "pod-2": p2, "pod-3": p3}

    # Every proxy publishes and sees its two peers (not the unrelated pod, not itself).
    for name, p in pods.items():
        wait_until(lambda: pod_annotation(k8s, name, "detour.dev/health"), 5, f"{name}'s annotation")
        wait_until(lambda: p.metric("detour_shared_health_peers") == 2
                   and p.metric("detour_shared_health_api_available") == 1, 5, f"{name} seeing 2 peers")
    assert pod_annotation(k8s, "unrelated", "detour.dev/health") is None

    # API load at rest: requests per second the emulator receives from the 3 proxies.
    before, t_before = collections.Counter(api_requests(k8s)), time.monotonic()
    time.sleep(2.0)
    quiet = collections.Counter(api_requests(k8s)) - before
    quiet_s = time.monotonic() - t_before
    patches = sum(n for (m, _a, _r, _n), n in quiet.items() if m == "PATCH")
    others = sum(quiet.values()) - patches
    print(f"\nAPI server load at rest, 3 proxies, heartbeat {HEARTBEAT}s: {patches / quiet_s:.1f} PATCH/s "
          f"({patches / quiet_s / 3:.2f} per proxy), {others} other requests in {quiet_s:.1f}s")
    assert patches <= 3 * (quiet_s / HEARTBEAT + 1), quiet
    assert patches >= 3 * (quiet_s / HEARTBEAT - 2), quiet
    assert others == 0, f"no list/watch churn at rest: {quiet}"

    for p in (p2, p3):
        assert p.chat(MODEL).headers["x-detour-target"] == f"a/{MODEL}"

    # --- 1. Provider A fails for pod 1 only --------------------------------------------------------
    with Traffic(p2) as t2, Traffic(p3) as t3:
        wait_until(lambda: len(t2.log) > 5 and len(t3.log) > 5, 5, "traffic on pods 2 and 3")
        t_open = time.monotonic()           # pod 1's breaker opens during this request
        r = p1.chat(MODEL)
        assert r.status_code == 200 and r.headers["x-detour-target"] == f"b/{MODEL}"
        assert p1.metric("detour_breaker_state", provider="a", model=MODEL) == 2
        s2 = wait_until(lambda: t2.switched_to(f"b/{MODEL}", t_open), 5, "pod 2 moving off A")
        s3 = wait_until(lambda: t3.switched_to(f"b/{MODEL}", t_open), 5, "pod 3 moving off A")
    stale2, stale3 = s2 - t_open, s3 - t_open
    print(f"staleness: pod 2 stopped sending to A {stale2:.3f}s, pod 3 {stale3:.3f}s after pod 1 opened "
          f"(bound {STALENESS_BOUND}s)")
    assert stale2 < STALENESS_BOUND and stale3 < STALENESS_BOUND
    for p in (p2, p3):
        assert p.metric("detour_upstream_attempts_total", route="chat", provider="a", model=MODEL,
                        result="http_5xx") == 0, "pods 2/3 never saw a failure themselves"
        assert p.metric("detour_shared_health_merges_total") >= 1
        assert p.metric("detour_breaker_state", provider="a", model=MODEL) == 2
    assert all(st == 200 for log in (t2.log, t3.log) for *_x, st in log), "no client saw an error"
    # Pods 2/3 publish the imported open at their next heartbeat (an import triggers no write),
    # flagged as such: nobody re-imports an echo.
    def entry_a() -> dict[str, Any] | None:
        doc = orjson.loads(pod_annotation(k8s, "pod-2", "detour.dev/health"))
        e = next(t for t in doc["targets"] if t["provider"] == "a")
        return e if e["state"] == "open" else None
    entry = wait_until(entry_a, 2 * HEARTBEAT + 1, "pod 2's heartbeat showing A open")
    assert entry.get("imported") is True
    assert entry["endpoint"] == endpoint_id(sim_a.v1)

    # --- 2. A recovers (pod 1's config loses the fault header: hot reload, same identity) -----------
    write_atomic(p1.config_path, config(sim_a, sim_b, fail_a=False))
    with Traffic(p1, 0.05) as t1, Traffic(p2, 0.05) as t2, Traffic(p3, 0.05) as t3:
        t_rec = time.monotonic()
        for t, name in ((t1, "pod 1"), (t2, "pod 2"), (t3, "pod 3")):
            wait_until(lambda: t.switched_to(f"a/{MODEL}", t_rec), COOLDOWN + 6, f"{name} back on A")
    for p in (p1, p2, p3):
        assert p.metric("detour_breaker_transitions_total", provider="a", model=MODEL, to="half-open") >= 1
        assert p.metric("detour_breaker_transitions_total", provider="a", model=MODEL, to="closed") >= 1, \
            "traffic returned through a successful local probe"

    # --- 3. Pod 3 stops publishing (frozen): pods 1-2 ignore it after 3 heartbeats ----------------
    last_doc = pod_annotation(k8s, "pod-3", "detour.dev/health")
    os.kill(p3.proc.pid, signal.SIGSTOP)
    t_stop = time.monotonic()
    for p in (p1, p2):
        wait_until(lambda: p.metric("detour_shared_health_peers") == 1, 3 * HEARTBEAT + 2, "pod 3 to go stale")
    waited = time.monotonic() - t_stop
    print(f"frozen pod 3 ignored by pods 1-2 after {waited:.2f}s (3 heartbeats = {3 * HEARTBEAT}s)")
    # Its last publish was at most one heartbeat before the freeze: not dropped before 3 lapsed.
    # (the exact 3-heartbeat rule is unit-tested; here only: not dropped at the first missed beat)
    assert waited >= 1.5 * HEARTBEAT, "a peer must not be dropped before its heartbeats lapse"

    # A late write carrying pod 3's stale timestamp and an open A: ignored (checked by the counter,
    # then by the traffic still reaching A); the same claim with a fresh timestamp is imported.
    stale = orjson.loads(last_doc)
    now = time.time()
    stale["targets"] = [{"provider": "a", "model": MODEL, "endpoint": endpoint_id(sim_a.v1),
                         "state": "open", "openUntil": format_time(now + 8)}]
    patch_pod3(k8s, orjson.dumps(stale).decode())
    for p in (p1, p2):
        wait_until(lambda: p.metric("detour_shared_health_ignored_total", reason="stale") >= 1, 3,
                   "the stale document to be seen")
        assert p.chat(MODEL).headers["x-detour-target"] == f"a/{MODEL}"
    fresh = dict(stale, updated=format_time(time.time()))
    merges_before = p1.metric("detour_shared_health_merges_total")
    patch_pod3(k8s, orjson.dumps(fresh).decode())
    for p in (p1, p2):
        wait_until(lambda: p.chat(MODEL).headers["x-detour-target"] == f"b/{MODEL}", STALENESS_BOUND,
                   "a fresh claim to be imported (control)")
    assert p1.metric("detour_shared_health_merges_total") > merges_before
    os.kill(p3.proc.pid, signal.SIGCONT)

    # Whole-run API request mix (printed for the report).
    total = collections.Counter((m, a) for (m, a, _r, _n) in api_requests(k8s))
    print("API requests over the whole test:", dict(total))


def patch_pod3(k8s: K8sEmulator, value: str) -> None:
    r = httpx.patch(f"{k8s.url}/api/v1/namespaces/{NS}/pods/pod-3",
                    content=orjson.dumps({"metadata": {"annotations": {"detour.dev/health": value}}}),
                    headers={"Content-Type": "application/merge-patch+json"}, timeout=10)
    r.raise_for_status()


def test_without_api_access_the_proxy_serves_on_local_health_and_says_so_once(tmp_path, sim_a, sim_b):
    sim_a.reset()
    sim_b.reset()
    from e2e.proxyproc import free_port
    dead = tmp_path / "kubeconfig"  # an API server that is down: nothing listens on this port
    dead.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "x",
        "clusters": [{"name": "x", "cluster": {"server": f"http://127.0.0.1:{free_port()}"}}],
        "users": [{"name": "x", "user": {"token": "t"}}],
        "contexts": [{"name": "x", "context": {"cluster": "x", "user": "x"}}]}))
    cfg_path = tmp_path / "config.yaml"
    write_atomic(cfg_path, config(sim_a, sim_b, fail_a=False))
    down = ProxyProcess(cfg_path, env={"POD_NAME": "pod-1", "POD_NAMESPACE": NS, "KUBECONFIG": str(dead)})
    no_env = ProxyProcess(cfg_path, env={"POD_NAME": "", "POD_NAMESPACE": "", "KUBECONFIG": str(dead)},
                          log_path=tmp_path / "no-env.log")
    try:
        for p in (down, no_env):
            p.wait_started()
        wait_until(lambda: down.metric("detour_shared_health_publish_total", result="error") >= 3, 10,
                   "publish retries")
        t0 = time.monotonic()
        for p in (down, no_env):
            r = p.chat(MODEL)
            assert r.status_code == 200 and r.headers["x-detour-target"] == f"a/{MODEL}"
            assert p.readyz().status_code == 200
            assert p.metric("detour_shared_health_api_available") == 0
        assert time.monotonic() - t0 < 1.0, "requests are never held up by the API server"
        log = down.log()
        assert log.count("Kubernetes API not available") == 1, log
        assert no_env.log().count("POD_NAME/POD_NAMESPACE not set") == 1
        assert no_env.metric("detour_shared_health_publish_total", result="error") == 0
    finally:
        down.stop()
        no_env.stop()
