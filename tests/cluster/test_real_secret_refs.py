"""The operator reads only the Secrets LLMProviders reference, on the real API server (issue 14.5).

The chart is installed, the operator and one proxy run as their Pods (kubelet.py: the chart's RBAC
and nothing else), and the namespace holds 120 Secrets no LLMProvider references. The API
server's audit log then shows every Secret request the operator made: only LIST/WATCH of the
referenced Secrets, each with the field selector `metadata.name=NAME`, plus its own
`detour-credentials`; none of the 120 is ever fetched, listed or watched. A rotated key still
reaches `detour-credentials` and the proxy's requests, a Secret referenced later is picked up,
and its watch ends when its last reference goes.

With `operator.secretNames` the Role's list/watch on Secrets is narrowed by resourceNames; the real
API server authorises the operator's single-name list/watch against it, and refuses the Secret
left out, which its LLMProvider reports as `SecretUnreadable`.
"""

from __future__ import annotations

import base64
import json
import pathlib
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from cluster.kubelet import PodProcess
from cluster.realkube import Cluster, wait_for
from cluster.scale_support import free_port

ROOT = pathlib.Path(__file__).resolve().parents[2]
REL = "r"
MODEL = "m1"
UNREFERENCED = 120


class KeyRecorder:
    """A minimal OpenAI-compatible upstream on loopback that records the bearer token of each call."""

    def __init__(self) -> None:
        self.keys: list[str] = []
        recorder = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
                self.rfile.read(int(self.headers.get("content-length") or 0))
                recorder.keys.append((self.headers.get("authorization") or "").removeprefix("Bearer "))
                body = json.dumps({
                    "id": "chatcmpl-1", "object": "chat.completion", "created": 0, "model": MODEL,
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}],
                    "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}).encode()
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.v1 = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def provider(name: str, base_url: str, secret: str, key: str) -> dict[str, Any]:
    return {"apiVersion": "detour.dev/v1alpha1", "kind": "LLMProvider", "metadata": {"name": name},
            "spec": {"type": "openai", "baseURL": base_url, "apiKeySecretRef": {"name": secret, "key": key}}}


def policy(name: str, *providers: str) -> dict[str, Any]:
    return {"apiVersion": "detour.dev/v1alpha1", "kind": "RoutingPolicy", "metadata": {"name": name},
            "spec": {"match": {"models": [MODEL]}, "strategy": "priority", "retry": {"attempts": 1},
                     "targets": [{"providerRef": p, "model": MODEL, "priority": i} for i, p in enumerate(providers)]}}


def secret(name: str, **data: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name}, "type": "Opaque", "stringData": data}


def pods(c: Cluster, ns: str, component: str) -> list[str]:
    sel = f"app.kubernetes.io/component={component},app.kubernetes.io/instance={REL}"
    return sorted(c.kubectl("get", "pods", "-l", sel, "-o", "name", ns=ns).stdout.replace("pod/", "").split())


def credential(c: Cluster, ns: str, key: str) -> str | None:
    data = c.get_json("secret", "detour-credentials", ns=ns).get("data") or {}
    return base64.b64decode(data[key]).decode() if key in data else None


def operator_secret_requests(c: Cluster, ns: str, since: float) -> set[tuple[str, str, str, str]]:
    """(verb, object name, fieldSelector, authorization decision) of every Secret request the
    operator's ServiceAccount made, from the API server's audit log."""
    user = f"system:serviceaccount:{ns}:{REL}-detour-operator"
    out = set()
    for ev in c.audit(since):
        ref = ev.get("objectRef") or {}
        if ev.get("user", {}).get("username") != user or ref.get("resource") != "secrets":
            continue
        selector = parse_qs(urlsplit(ev.get("requestURI", "")).query).get("fieldSelector", [""])[0]
        out.add((ev["verb"], ref.get("name", ""), selector,
                 (ev.get("annotations") or {}).get("authorization.k8s.io/decision", "")))
    return out


def watch_ended(c: Cluster, ns: str, name: str, since: float, after: float) -> bool:
    """Whether a watch of Secret `name` by the operator completed after `after` (wall clock)."""
    from datetime import datetime
    user = f"system:serviceaccount:{ns}:{REL}-detour-operator"
    for ev in c.audit(since):
        ref = ev.get("objectRef") or {}
        if (ev.get("user", {}).get("username") == user and ev.get("verb") == "watch"
                and ref.get("resource") == "secrets" and ref.get("name") == name
                and ev.get("stage") == "ResponseComplete"
                and datetime.fromisoformat(ev["stageTimestamp"].replace("Z", "+00:00")).timestamp() >= after):
            return True
    return False


class Release:
    """One namespace with the chart installed and the operator (and optionally a proxy) running."""

    def __init__(self, c: Cluster, tmp: pathlib.Path, *helm_args: str) -> None:
        self.c, self.tmp = c, tmp
        self.ns = f"sr-{int(time.time() * 1000) % 10**8}"
        self.started_at = time.time()
        self.procs: list[PodProcess] = []
        c.kubectl("create", "namespace", self.ns)
        c.helm("install", REL, str(ROOT / "helm/detour"), *helm_args, ns=self.ns)

    def start(self, component: str, **args: str) -> PodProcess:
        want = 1 if component == "operator" else 2
        pod = wait_for(lambda: (p := pods(self.c, self.ns, component)) and len(p) == want and p, 30,
                       f"the {component} Pod(s)")[0]
        extra = {"DETOUR_OPERATOR_METRICS_PORT": str(free_port())} if component == "operator" else {}
        proc = PodProcess(self.c, self.ns, pod, self.tmp, extra_env=extra, args=args).start()
        self.procs.append(proc)
        return proc

    def ready(self, *objs: str) -> None:
        self.c.kubectl("wait", "--for=condition=Ready", "--timeout=60s", *objs, ns=self.ns, timeout=90)

    def close(self) -> None:
        for p in self.procs:
            p.stop()
        self.c.kubectl("delete", "namespace", self.ns, "--wait=false", check=False)


@pytest.fixture
def release(crds: Cluster, tmp_path: pathlib.Path) -> Iterator[Any]:
    made: list[Release] = []

    def make(*helm_args: str) -> Release:
        made.append(Release(crds, tmp_path, *helm_args))
        return made[-1]

    yield make
    for r in made:
        r.close()


def test_unreferenced_secrets_are_never_read_and_referenced_ones_are_followed(release) -> None:
    upstream = KeyRecorder()
    try:
        r = release()
        c, ns = r.c, r.ns
        c.apply([secret(f"unrelated-{i:03d}", token=f"not-an-llm-key-{i}") for i in range(UNREFERENCED)]
                + [secret("keys", a="sk-a-first")], ns=ns)
        c.apply([provider("a", upstream.v1, "keys", "a"), policy("chat", "a")], ns=ns)
        operator = r.start("operator", **{"--liveness": f"http://127.0.0.1:{free_port()}/healthz",
                                          "--readiness": f"http://127.0.0.1:{free_port()}/readyz"})
        r.ready("llmp/a", "rpol/chat")
        port = free_port()
        proxy = r.start("proxy", **{"--host": "127.0.0.1", "--port": str(port)})
        url = f"http://127.0.0.1:{port}"

        def chat_key() -> str | None:
            try:
                resp = httpx.post(url + "/v1/chat/completions", timeout=10,
                                  json={"model": MODEL, "messages": [{"role": "user", "content": "hi"}]})
            except httpx.HTTPError:
                return None
            return upstream.keys[-1] if resp.status_code == 200 and upstream.keys else None

        assert wait_for(chat_key, 30, f"the proxy answering (log: {proxy.log_path})") == "sk-a-first"

        # Rotation of the referenced key: detour-credentials, then (after the kubelet's volume
        # sync) the proxy's next upstream request carries the new key.
        c.kubectl("patch", "secret", "keys", "--type=merge", "-p", '{"stringData": {"a": "sk-a-rotated"}}', ns=ns)
        wait_for(lambda: credential(c, ns, "a") == "sk-a-rotated", 30, "the rotated key in detour-credentials")
        proxy.sync()
        wait_for(lambda: chat_key() == "sk-a-rotated", 30, "the proxy sending the rotated key")

        # Unreferenced Secrets change too: nothing of them reaches the operator.
        c.kubectl("patch", "secret", "unrelated-007", "--type=merge", "-p", '{"stringData": {"token": "x"}}', ns=ns)

        # A Secret referenced later (created after its LLMProvider) is picked up, and followed.
        c.apply([provider("b", upstream.v1, "late-keys", "b"), policy("chat", "a", "b")], ns=ns)
        wait_for(lambda: c.get_json("llmp", "b", ns=ns)["status"]["conditions"], 30, "b's status")
        c.apply(secret("late-keys", b="sk-b-late"), ns=ns)
        r.ready("llmp/b")
        wait_for(lambda: credential(c, ns, "b") == "sk-b-late", 30, "b's key in detour-credentials")
        last = time.time()
        c.kubectl("patch", "secret", "late-keys", "--type=merge", "-p", '{"stringData": {"b": "sk-b-rotated"}}', ns=ns)
        wait_for(lambda: credential(c, ns, "b") == "sk-b-rotated", 30, "b's rotated key in detour-credentials")

        # the audit log holds the operator's last write (so everything before it) once it is flushed
        wait_for(lambda: ("patch", "detour-credentials") in {(v, n) for v, n, _, _ in
                                                             operator_secret_requests(c, ns, last)},
                 30, "the audit event of the operator's last detour-credentials patch")
        requests = operator_secret_requests(c, ns, r.started_at)
        referenced = {"keys", "late-keys"}
        for verb, name, selector, decision in requests:
            assert decision == "allow", (verb, name, selector, decision)
            if name == "detour-credentials":
                assert verb in ("get", "create", "patch") and not selector, (verb, selector)
            else:
                assert verb in ("list", "watch") and name in referenced and selector == f"metadata.name={name}", \
                    f"the operator asked for more than a referenced Secret: {(verb, name, selector)}"
        listed = {(v, n) for v, n, _, _ in requests if v in ("list", "watch")}
        assert listed == {(v, n) for v in ("list", "watch") for n in referenced}, listed
        assert not any(n.startswith("unrelated-") for _, n, _, _ in requests)
        assert "not-an-llm-key" not in operator.log()

        # The last reference to late-keys goes: its watch ends (the audit log's ResponseComplete of
        # that watch, while the operator keeps running).
        dropped = time.time()
        c.apply(policy("chat", "a"), ns=ns)
        c.kubectl("delete", "llmp", "b", ns=ns)
        wait_for(lambda: watch_ended(c, ns, "late-keys", r.started_at, dropped), 30,
                 "the operator's watch of late-keys ending once no LLMProvider references it")
        assert operator.proc is not None and operator.proc.poll() is None
    finally:
        upstream.stop()


def test_secret_names_narrow_the_operators_secret_access_and_the_api_server_enforces_it(release) -> None:
    r = release("--set", "operator.secretNames={keys}")
    c, ns = r.c, r.ns
    c.apply([secret("keys", a="sk-a-first"), secret("other", x="sk-x"),
             provider("a", "http://127.0.0.1:9/v1", "keys", "a"), provider("x", "http://127.0.0.1:9/v1", "other", "x"),
             policy("chat", "a", "x")], ns=ns)
    r.start("operator", **{"--liveness": f"http://127.0.0.1:{free_port()}/healthz",
                           "--readiness": f"http://127.0.0.1:{free_port()}/readyz"})
    r.ready("llmp/a", "rpol/chat")
    c.kubectl("wait", "--for=jsonpath={.status.conditions[?(@.type=='ResolvedRefs')].reason}=SecretUnreadable",
              "llmp/x", "--timeout=60s", ns=ns, timeout=90)
    message = next(cond["message"] for cond in c.get_json("llmp", "x", ns=ns)["status"]["conditions"]
                   if cond["type"] == "ResolvedRefs")
    assert "'other'" in message and "forbidden" in message, message
    # the narrowed watch works: a rotation still arrives
    c.kubectl("patch", "secret", "keys", "--type=merge", "-p", '{"stringData": {"a": "sk-a-rotated"}}', ns=ns)
    wait_for(lambda: credential(c, ns, "a") == "sk-a-rotated", 30, "the rotated key in detour-credentials")
    requests = operator_secret_requests(c, ns, r.started_at)
    decisions = {(v, n, d) for v, n, _, d in requests if v in ("list", "watch")}
    assert {("list", "keys", "allow"), ("watch", "keys", "allow"), ("list", "other", "forbid")} <= decisions, decisions
    assert not {(v, n) for v, n, _, d in requests if d == "allow" and n not in ("keys", "detour-credentials")}
