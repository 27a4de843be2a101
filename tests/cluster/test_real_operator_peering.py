"""`detour-operator`'s kopf peering on the real API server.

kopf run with `--peering detour` and no KopfPeering object pauses every replica, silently (debug
log), while its liveness endpoint answers 200: the operator used to default to that. Now, without
a flag, it looks for the object first: absent, it acts standalone and says so once; present, it
joins the peering (and, as the only peer, acts). With an explicit `--peering NAME` and the object
missing it says so loudly and its `/readyz` answers 503 until the object is created.
"""

from __future__ import annotations

import json
import pathlib
import subprocess
import urllib.error
import urllib.request
import sys
from collections.abc import Iterator

import pytest

from cluster.realkube import Cluster, wait_for
from cluster.scale_support import free_port

OBJECTS = [
    {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "keys"}, "stringData": {"a": "sk-a-0123456789"}},
    {"apiVersion": "detour.dev/v1alpha1", "kind": "LLMProvider", "metadata": {"name": "a"},
     "spec": {"type": "openai", "baseURL": "http://127.0.0.1:9/v1", "apiKeySecretRef": {"name": "keys", "key": "a"}}},
    {"apiVersion": "detour.dev/v1alpha1", "kind": "RoutingPolicy", "metadata": {"name": "chat"},
     "spec": {"match": {"models": ["m1"]}, "targets": [{"providerRef": "a", "model": "m1"}]}},
]


@pytest.fixture
def operator(crds: Cluster, namespace: str, tmp_path: pathlib.Path) -> Iterator[subprocess.Popen[str]]:
    """`detour-operator --namespace NS` (no peering flag), as the cluster admin a user would be."""
    log = (tmp_path / "operator.log").open("w")
    env = {**crds.env, "DETOUR_OPERATOR_METRICS_PORT": str(free_port())}
    env.pop("DETOUR_SETTINGS_FILE", None)
    procs: list[subprocess.Popen[str]] = []

    def start(*extra: str) -> subprocess.Popen[str]:
        live, ready = free_port(), free_port()
        proc = subprocess.Popen([sys.executable, "-m", "detour_operator.cli", "--namespace", namespace,
                                 f"--liveness=http://127.0.0.1:{live}/healthz",
                                 f"--readiness=http://127.0.0.1:{ready}/readyz", *extra],
                                stdout=log, stderr=subprocess.STDOUT, env=env, cwd=tmp_path, text=True)
        proc.log_path = tmp_path / "operator.log"  # type: ignore[attr-defined]
        proc.liveness = f"http://127.0.0.1:{live}/healthz"  # type: ignore[attr-defined]
        proc.readiness = f"http://127.0.0.1:{ready}/readyz"  # type: ignore[attr-defined]
        procs.append(proc)
        return proc

    yield start  # type: ignore[misc]
    for p in procs:
        p.terminate()
        try:
            p.wait(20)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(5)
    log.close()


def _ready(c: Cluster, ns: str) -> None:
    c.apply(OBJECTS, ns=ns)
    c.kubectl("wait", "--for=condition=Ready", "llmp/a", "rpol/chat", "--timeout=60s", ns=ns, timeout=90)


def test_without_a_peering_object_it_acts_standalone_and_says_so(crds: Cluster, namespace: str, operator) -> None:
    proc = operator()
    _ready(crds, namespace)
    log = proc.log_path.read_text()
    line = f"KopfPeering 'detour' in namespace(s) {namespace} was not found: acting standalone"
    assert log.count(line) == 1, log


def test_with_the_peering_object_it_joins_the_peering_and_acts(crds: Cluster, namespace: str, operator) -> None:
    crds.apply({"apiVersion": "kopf.dev/v1", "kind": "KopfPeering", "metadata": {"name": "detour"}}, ns=namespace)
    proc = operator()
    _ready(crds, namespace)
    assert "KopfPeering 'detour' in namespace(s) " + namespace + " exists: joining the peering" in proc.log_path.read_text()
    # kopf's keep-alive in the peering object: this replica is a live peer.
    wait_for(lambda: crds.get_json("kopfpeering", "detour", ns=namespace).get("status"), 30,
             "the operator's keep-alive in KopfPeering detour")


def _probe(url: str) -> tuple[int, dict | None]:
    """(status, JSON body) of a probe endpoint; (0, None) while nothing listens."""
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return resp.status, json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")
    except OSError:
        return 0, None


def test_explicit_peering_without_its_object_is_loud_and_not_ready_until_created(
        crds: Cluster, namespace: str, operator) -> None:
    crds.apply(OBJECTS, ns=namespace)
    proc = operator("--peering", "detour")
    where = f"KopfPeering 'detour' in namespace(s) {namespace}"
    # 503 from the start ("not checked yet"), then with the reason once the lookup answered
    status, body = wait_for(lambda: (got := _probe(proc.readiness))[0] == 503 and "exist" in str(got[1]) and got,
                            60, f"/readyz answering 503 (log: {proc.log_path})")
    assert body == {"ready": False, "reason": f"{where} does not exist: kopf keeps this operator paused"}
    assert _probe(proc.liveness)[0] == 200  # kopf's liveness says nothing about it: readiness does
    log = proc.log_path.read_text()
    assert log.count(f"{where} does not exist: kopf keeps this operator PAUSED") == 1, log
    assert log.count(f"NOT READY: {where} does not exist") == 1, log
    # paused indeed: nothing was reconciled, although the objects were there before it started
    assert not crds.get_json("llmp", "a", ns=namespace).get("status")
    assert "detour-routing" not in crds.kubectl("get", "configmaps", "-o", "name", ns=namespace).stdout

    crds.apply({"apiVersion": "kopf.dev/v1", "kind": "KopfPeering", "metadata": {"name": "detour"}}, ns=namespace)
    wait_for(lambda: _probe(proc.readiness) == (200, {"ready": True, "reason": f"{where} exists"}), 30,
             "/readyz answering 200 once the peering object exists")
    crds.kubectl("wait", "--for=condition=Ready", "llmp/a", "rpol/chat", "--timeout=60s", ns=namespace, timeout=90)
    assert proc.log_path.read_text().count(f"{where} exists now: ready") == 1
