"""The chart, the operator and shared health on a real API server, as a user would run them.

`helm install` the chart; run the operator Pod and two proxy Pods of the chart's Deployments as
local processes (kubelet.py: their own env, mounts and Pod-bound ServiceAccount tokens, so the
chart's RBAC is all they get); LLMProviders point at simulators on loopback. Then: objects reach
Ready, `kubectl get` shows the documented columns, a breaker that one proxy opens is published on
its Pod, imported by the other proxy and rolled up into `kubectl get llmp`; every API request
either process made is allowed by the rendered RBAC and the RBAC grants nothing unused; deleting
with the operator stopped does not hang.
"""

from __future__ import annotations

import json
import pathlib
import socket
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from cluster.kubelet import PodProcess
from cluster.realkube import Cluster, wait_for
from support import Sim

ROOT = pathlib.Path(__file__).resolve().parents[2]
REL = "r"
MODEL = "m1"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Env:
    """Everything the tests of this module share: one release and its processes."""

    def __init__(self, cluster: Cluster, ns: str, tmp: pathlib.Path) -> None:
        self.cluster, self.ns, self.tmp = cluster, ns, tmp
        self.started_at = time.time()
        self.sim_a, self.sim_b = Sim("a"), Sim("b")
        self.operator: PodProcess | None = None
        self.proxies: list[tuple[PodProcess, str]] = []

    def pods(self, component: str) -> list[str]:
        sel = f"app.kubernetes.io/component={component},app.kubernetes.io/instance={REL}"
        return sorted(self.cluster.kubectl("get", "pods", "-l", sel, "-o", "name", ns=self.ns)
                      .stdout.replace("pod/", "").split())

    def start_operator(self) -> PodProcess:
        pod = wait_for(lambda: self.pods("operator"), 30, "the operator Pod")[0]
        self.operator = PodProcess(self.cluster, self.ns, pod, self.tmp,
                                   extra_env={"DETOUR_OPERATOR_METRICS_PORT": str(free_port())},
                                   args={"--liveness": f"http://127.0.0.1:{free_port()}/healthz",
                                         "--readiness": f"http://127.0.0.1:{free_port()}/readyz"}).start()
        return self.operator

    def start_proxies(self) -> None:
        pods = wait_for(lambda: (p := self.pods("proxy")) and len(p) == 2 and p, 30, "two proxy Pods")
        for pod in pods:
            port = free_port()
            proc = PodProcess(self.cluster, self.ns, pod, self.tmp,
                              args={"--host": "127.0.0.1", "--port": str(port)}).start()
            self.proxies.append((proc, f"http://127.0.0.1:{port}"))
        for proc, url in self.proxies:
            wait_for(lambda: _ok(url + "/readyz"), 30, f"proxy {proc.name} ready (log: {proc.log_path})")

    def stop(self) -> None:
        for proc, _ in self.proxies:
            proc.stop()
        if self.operator:
            self.operator.stop()
        self.sim_a.stop()
        self.sim_b.stop()


def _ok(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def chat(url: str) -> httpx.Response:
    return httpx.post(url + "/v1/chat/completions", timeout=20,
                      json={"model": MODEL, "messages": [{"role": "user", "content": "hi"}]})


def breaker(url: str, provider: str = "a") -> float:
    """The proxy's detour_breaker_state for `provider`/m1: 0 closed, 1 half-open, 2 open."""
    for fam in text_string_to_metric_families(httpx.get(url + "/metrics", timeout=5).text):
        for sample in fam.samples:
            if sample.name == "detour_breaker_state" and sample.labels == {"provider": provider, "model": MODEL}:
                return sample.value
    return 0.0


def annotation(c: Cluster, ns: str, pod: str) -> str:
    return c.get_json("pod", pod, ns=ns)["metadata"].get("annotations", {}).get("detour.dev/health", "")


def objects(env: Env) -> list[dict[str, Any]]:
    def provider(name: str, sim: Sim) -> dict[str, Any]:
        return {"apiVersion": "detour.dev/v1alpha1", "kind": "LLMProvider", "metadata": {"name": name},
                "spec": {"type": "openai", "baseURL": sim.v1, "apiKeySecretRef": {"name": "keys", "key": name}}}
    return [
        {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "keys"},
         "stringData": {"a": "sk-real-a-0123456789", "b": "sk-real-b-0123456789"}},
        provider("a", env.sim_a), provider("b", env.sim_b),
        {"apiVersion": "detour.dev/v1alpha1", "kind": "RoutingPolicy", "metadata": {"name": "chat"},
         "spec": {"match": {"models": [MODEL]}, "strategy": "priority",
                  "targets": [{"providerRef": "a", "model": MODEL, "priority": 0},
                              {"providerRef": "b", "model": MODEL, "priority": 1}],
                  "retry": {"attempts": 1}, "timeout": "10s"}},
    ]


@pytest.fixture(scope="module")
def env(crds: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    cluster = crds
    ns = f"op-{int(time.time() * 1000) % 10**8}"
    cluster.kubectl("create", "namespace", ns)
    e = Env(cluster, ns, tmp_path_factory.mktemp("pods"))
    try:
        cluster.helm("install", REL, str(ROOT / "helm/detour"), "--set",
                     "settings.health.breaker.consecutiveFailures=2", "--set",
                     "settings.health.breaker.cooldown=60s", "--set",
                     "settings.sharedHealth.minInterval=200ms", ns=ns)
        cluster.apply(objects(e), ns=ns)
        e.start_operator()
        yield e
    finally:
        e.stop()
        cluster.kubectl("delete", "namespace", ns, "--wait=false", check=False)


def _documented_columns() -> dict[str, list[str]]:
    """`kubectl get` headers per short name, from docs/operator.md's table of kinds (last column:
    printer columns), with kubectl's NAME first."""
    out = {}
    for line in (ROOT / "docs/operator.md").read_text().splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) == 4 and cells[1] in ("`llmp`", "`rpol`"):
            out[cells[1].strip("`")] = ["NAME", *(col.strip().upper() for col in cells[3].split(","))]
    return out


def test_objects_reach_ready_and_columns_match_the_docs(env: Env) -> None:
    c, ns = env.cluster, env.ns
    c.kubectl("wait", "--for=condition=Ready", "--timeout=60s", "llmp/a", "llmp/b", "rpol/chat", ns=ns)
    documented = _documented_columns()
    head, *rows = c.kubectl("get", "llmp", ns=ns).stdout.splitlines()
    assert head.split() == documented["llmp"] == ["NAME", "TYPE", "READY", "HEALTH", "BREAKER", "MODELS", "AGE"]
    assert [r.split()[:3] for r in rows] == [["a", "openai", "True"], ["b", "openai", "True"]]
    head, *rows = c.kubectl("get", "rpol", ns=ns).stdout.splitlines()
    assert head.split() == documented["rpol"] == ["NAME", "STRATEGY", "TARGETS", "READY", "AGE"]
    assert rows[0].split()[:4] == ["chat", "priority", "a,b", "True"]
    cm = c.get_json("configmap", "detour-routing", ns=ns)
    assert "sk-real" not in json.dumps(cm), "a provider key reached the ConfigMap"


def test_breaker_opened_by_one_proxy_is_imported_by_the_other_and_rolled_up(env: Env) -> None:
    c, ns = env.cluster, env.ns
    env.start_proxies()
    (p1, url1), (p2, url2) = env.proxies
    assert chat(url1).headers["x-detour-target"].startswith("a")
    env.sim_a.faults(status=503)
    for _ in range(2):  # consecutiveFailures=2: each request fails on a, then falls back to b
        assert chat(url1).status_code == 200
    assert breaker(url1) == 2
    opened = time.monotonic()
    # The open goes out within minInterval (a random part of it: the first announcement suppresses
    # the others'); until then the annotation still holds the start-up report.
    def reports_open() -> bool:
        report = annotation(c, ns, p1.name)
        return bool(report) and [t["state"] for t in json.loads(report)["targets"] if t["provider"] == "a"] == ["open"]
    wait_for(reports_open, 10, f"{p1.name} publishing a's open breaker")
    # p2 sent nothing to `a`: it can only learn of the outage from p1's Pod.
    wait_for(lambda: breaker(url2) == 2, 10, f"{p2.name} importing a's open breaker (log: {p2.log_path})")
    import_s = time.monotonic() - opened
    # Documented bound: one watch round-trip plus minInterval (200 ms here); generous for a loaded CI.
    assert import_s < 3, f"import took {import_s:.1f} s"
    before = env.sim_a.requests()
    r = chat(url2)
    assert r.status_code == 200 and r.headers["x-detour-target"] == "b/m1" and env.sim_a.requests() == before

    # p1 opened it on its own evidence; p2 imported it and does not echo it back: "1/2 open".
    def rolled_up() -> list[str] | None:
        rows = {r.split()[0]: r.split() for r in c.kubectl("get", "llmp", ns=ns).stdout.splitlines()[1:]}
        return rows["a"] if rows["a"][3:6] == ["Unavailable", "1/2", "open"] else None
    wait_for(rolled_up, 30, "kubectl get llmp showing a Unavailable, breaker 1/2 open")
    conditions = c.get_json("llmp", "a", ns=ns)["status"]["conditions"]
    available = next(cond for cond in conditions if cond["type"] == "Available")
    assert (available["status"], available["reason"]) == ("False", "BreakersOpen")
    env.sim_a.clear()


def test_an_edit_reaches_the_configmap_and_a_key_rotation_only_the_credentials(env: Env) -> None:
    c, ns = env.cluster, env.ns

    def config() -> str:
        return c.get_json("configmap", "detour-routing", ns=ns)["data"]["config.yaml"]

    def key(name: str) -> str:
        import base64
        return base64.b64decode(c.get_json("secret", "detour-credentials", ns=ns)["data"][name]).decode()
    before = config()
    c.kubectl("patch", "rpol", "chat", "--type=merge", "-p", '{"spec": {"retry": {"attempts": 3}}}', ns=ns)
    after = wait_for(lambda: (cfg := config()) != before and cfg, 30, "the edit in detour-routing")
    assert "attempts: 3" in after, after
    c.kubectl("patch", "secret", "keys", "--type=merge", "-p", '{"stringData": {"b": "sk-real-b-rotated"}}', ns=ns)
    wait_for(lambda: key("b") == "sk-real-b-rotated", 30, "the rotated key in detour-credentials")
    assert config() == after, "a key rotation must not touch the ConfigMap"
    assert "rotated" not in after


#: Granted but not exercised by these tests, with the reason they are still needed.
UNEXERCISED = {
    ("operator", "llmproviders", "patch"): "kopf removes the finalizer an older operator version left (upgrade)",
    ("operator", "routingpolicies", "patch"): "kopf removes the finalizer an older operator version left (upgrade)",
}


def test_every_api_request_is_allowed_and_the_rbac_grants_nothing_unused(env: Env) -> None:
    c, ns = env.cluster, env.ns
    users = {f"system:serviceaccount:{ns}:{REL}-detour-{who}": who for who in ("operator", "proxy")}
    used: dict[str, set[tuple[str, str]]] = {"operator": set(), "proxy": set()}
    denied = []
    for ev in c.audit(env.started_at):
        who = users.get(ev.get("user", {}).get("username", ""))
        if not who or "objectRef" not in ev:
            continue
        ref = ev["objectRef"]
        res = ref.get("resource", "") + (f"/{ref['subresource']}" if ref.get("subresource") else "")
        used[who].add((res, ev["verb"]))
        if ev.get("annotations", {}).get("authorization.k8s.io/decision") != "allow":
            denied.append((who, ev["verb"], res, ref.get("name"), ev.get("responseStatus", {}).get("code")))
    assert not denied, f"requests the chart's RBAC refused: {denied}"
    assert used["operator"] and used["proxy"]
    for who in ("operator", "proxy"):
        role = c.get_json("role", f"{REL}-detour-{who}", ns=ns)
        granted = {(r, v) for rule in role["rules"] for r in rule["resources"] for v in rule["verbs"]}
        unused = {g for g in granted - used[who] if (who, *g) not in UNEXERCISED}
        assert not unused, f"{who}: granted but never used: {sorted(unused)} (used: {sorted(used[who])})"
    # Nothing broader: the chart's RoleBinding is the only binding naming either ServiceAccount
    # (no ClusterRoleBinding, nothing in another namespace).
    bindings = c.get_json("rolebindings,clusterrolebindings", "--all-namespaces")["items"]
    for who in ("operator", "proxy"):
        sa = f"{REL}-detour-{who}"
        naming = sorted(f"{b['kind']}/{b['metadata'].get('namespace', '')}/{b['metadata']['name']}" for b in bindings
                        if any(s.get("kind") == "ServiceAccount" and s.get("name") == sa and s.get("namespace") == ns
                               for s in b.get("subjects") or []))
        assert naming == [f"RoleBinding/{ns}/{sa}"], naming


def test_deleting_with_the_operator_stopped_does_not_hang(env: Env) -> None:
    c, ns = env.cluster, env.ns
    assert env.operator is not None
    env.operator.stop()
    for kind in ("llmp/b", "rpol/chat", "llmp/a"):
        c.kubectl("delete", kind, "--timeout=20s", ns=ns)
    c.kubectl("delete", "namespace", ns, "--timeout=60s")
