"""Reconciler without a cluster: write order of the Secret and ConfigMap, and the error counter.

The Kubernetes clients are replaced by an in-memory fake that records every write, so the order
in which a reconcile writes is visible; everything else (render, manifests, conditions) is real.
"""

from __future__ import annotations

import base64
import logging
from typing import Any

import kubernetes
import pytest
import yaml
from prometheus_client import REGISTRY

from detour_operator import conditions, reconcile
from support import poll
from detour_operator.reconcile import Indexes, Reconciler
from detour_operator.settings import OperatorSettings

NS = "team"
LOG = logging.getLogger("test")


class FakeCore:
    """CoreV1Api's ConfigMap/Secret calls over a dict, recording writes as (verb, kind, object)."""

    def __init__(self) -> None:
        self.objects: dict[str, dict[str, Any]] = {}
        self.writes: list[tuple[str, str, dict[str, Any]]] = []
        self.fail_reads = False

    def _read(self, kind: str, name: str) -> dict[str, Any]:
        if self.fail_reads:
            raise kubernetes.client.ApiException(status=500, reason="Internal Server Error")
        if (kind, name) not in self.objects:
            raise kubernetes.client.ApiException(status=404, reason="Not Found")
        return self.objects[(kind, name)]

    def _create(self, kind: str, obj: dict[str, Any]) -> dict[str, Any]:
        self.objects[(kind, obj["metadata"]["name"])] = obj
        self.writes.append(("create", kind, obj))
        return obj

    def _patch(self, kind: str, name: str, patch: dict[str, Any]) -> dict[str, Any]:
        obj = conditions.merge_patch_apply(self.objects[(kind, name)], patch)
        self.objects[(kind, name)] = obj
        self.writes.append(("patch", kind, obj))
        return obj

    def read_namespaced_secret(self, name: str, ns: str) -> dict[str, Any]:
        return self._read("Secret", name)

    def read_namespaced_config_map(self, name: str, ns: str) -> dict[str, Any]:
        return self._read("ConfigMap", name)

    def create_namespaced_secret(self, ns: str, obj: dict[str, Any]) -> dict[str, Any]:
        return self._create("Secret", obj)

    def create_namespaced_config_map(self, ns: str, obj: dict[str, Any]) -> dict[str, Any]:
        return self._create("ConfigMap", obj)

    def patch_namespaced_secret(self, name: str, ns: str, patch: dict[str, Any], **_: Any) -> dict[str, Any]:
        return self._patch("Secret", name, patch)

    def patch_namespaced_config_map(self, name: str, ns: str, patch: dict[str, Any], **_: Any) -> dict[str, Any]:
        return self._patch("ConfigMap", name, patch)


class FakeCustom:
    def patch_namespaced_custom_object_status(self, group: str, version: str, ns: str, plural: str, name: str,
                                              body: dict[str, Any], **_: Any) -> dict[str, Any]:
        return {"status": body["status"]}


def provider(name: str) -> dict[str, Any]:
    return {"kind": "LLMProvider", "metadata": {"name": name, "namespace": NS, "uid": f"u-{name}", "generation": 1},
            "spec": {"baseURL": "https://api.example.com/v1", "apiKeySecretRef": {"name": "keys", "key": name}}}


def policy(*refs: str) -> dict[str, Any]:
    return {"kind": "RoutingPolicy", "metadata": {"name": "chat", "namespace": NS, "uid": "u-chat", "generation": 1},
            "spec": {"targets": [{"providerRef": r, "model": "m"} for r in refs]}}


def indexes(*names: str) -> Indexes:
    return Indexes(providers={NS: [provider(n) for n in names]}, policies={NS: [policy(*names)]}, pods={})


class FakeSecretRefs:
    """Stands in for `SecretRefs`: Secret `keys` holds keys a and b; records what is watched."""

    def __init__(self) -> None:
        self.secrets = {(NS, "keys"): {n: base64.b64encode(f"sk-{n}".encode()).decode() for n in ("a", "b")}}
        self.wanted: dict[str, set[str]] = {}

    def want(self, ns: str, names: Any) -> None:
        self.wanted[ns] = set(names)

    async def wait_loaded(self, ns: str, names: Any, timeout: float) -> None:
        pass

    def data(self, ns: str, name: str) -> dict[str, str] | None:
        return self.secrets.get((ns, name))

    def error(self, ns: str, name: str) -> str | None:
        return None

    async def close(self) -> None:
        pass


@pytest.fixture()
def reconciler(monkeypatch: pytest.MonkeyPatch) -> Reconciler:
    monkeypatch.setattr(reconcile.kopf, "event", lambda *a, **k: None)  # Events need a running kopf
    r = Reconciler(OperatorSettings(), api=kubernetes.client.ApiClient(kubernetes.client.Configuration()),
                   secret_refs=FakeSecretRefs())  # type: ignore[arg-type]
    r.core, r.custom = FakeCore(), FakeCustom()  # type: ignore[assignment]
    return r


def named_providers(cm: dict[str, Any]) -> list[str]:
    return [p["name"] for p in yaml.safe_load(cm["data"]["config.yaml"])["providers"]]


async def test_a_new_key_is_written_before_the_config_that_names_it(reconciler):
    await reconciler.request(NS, "LLMProvider", indexes("a"), LOG)
    reconciler.core.writes.clear()
    await reconciler.request(NS, "LLMProvider", indexes("a", "b"), LOG)
    kinds = [(kind, sorted(obj["data"]) if kind == "Secret" else named_providers(obj))
             for _, kind, obj in reconciler.core.writes]
    assert kinds == [("Secret", ["a", "b"]), ("ConfigMap", ["a", "b"])]


async def test_a_removed_key_goes_only_after_the_config_stopped_naming_it(reconciler):
    await reconciler.request(NS, "LLMProvider", indexes("a", "b"), LOG)
    reconciler.core.writes.clear()
    await reconciler.request(NS, "LLMProvider", indexes("a"), LOG)
    kinds = [(kind, sorted(obj["data"]) if kind == "Secret" else named_providers(obj))
             for _, kind, obj in reconciler.core.writes]
    # the owners change first (b's key kept), then the config drops b, then the key goes
    assert kinds == [("Secret", ["a", "b"]), ("ConfigMap", ["a"]), ("Secret", ["a"])]


async def test_a_failing_reconcile_counts_an_error_and_raises(reconciler):
    def sample(name: str, **labels: str) -> float:
        return REGISTRY.get_sample_value(name, labels) or 0.0
    errors = sample("detour_operator_reconcile_errors_total")
    failed = sample("detour_operator_reconcile_total", kind="Secret", result="error")
    reconciler.core.fail_reads = True  # e.g. the API server answers 500
    with pytest.raises(kubernetes.client.ApiException):
        await reconciler.request(NS, "Secret", indexes("a"), LOG)
    assert sample("detour_operator_reconcile_errors_total") == errors + 1
    assert sample("detour_operator_reconcile_total", kind="Secret", result="error") == failed + 1
    # the namespace is not stuck: kopf does not retry event handlers, the reconciler does (1 s later)
    reconciler.core.fail_reads = False
    retried = sample("detour_operator_reconcile_total", kind="Retry", result="published")
    # the retry's render is counted once it finished (status writes included), after the ConfigMap
    await poll(lambda: sample("detour_operator_reconcile_total", kind="Retry", result="published") > retried,
               5, "the retry")
    assert ("ConfigMap", "detour-routing") in reconciler.core.objects


async def test_when_nothing_is_valid_the_config_stays_but_a_deleted_providers_key_goes(reconciler):
    await reconciler.request(NS, "LLMProvider", indexes("a", "b"), LOG)
    cm = reconciler.core.objects[("ConfigMap", "detour-routing")]
    assert reconciler.secret_refs.wanted == {NS: {"keys"}}
    gone = Indexes(providers={NS: []}, policies={NS: [policy("a", "b")]}, pods={})
    await reconciler.request(NS, "LLMProvider", gone, LOG)  # every provider deleted: nothing valid
    assert reconciler.secret_refs.wanted == {NS: set()}  # no reference left: no Secret watched
    assert reconciler.core.objects[("ConfigMap", "detour-routing")] == cm  # the last good config stays
    assert reconciler.core.objects[("Secret", "detour-credentials")]["data"] == {}


def test_only_events_that_can_change_the_config_trigger_a_render(reconciler):
    body = {"metadata": {"uid": "u1", "generation": 1}}
    assert reconciler.spec_changed(None, body)                       # first sight (initial listing)
    assert not reconciler.spec_changed("MODIFIED", body)             # our status write, kopf's finalizer
    assert reconciler.spec_changed("MODIFIED", {"metadata": {"uid": "u1", "generation": 2}})
    deleting = {"metadata": {"uid": "u1", "generation": 2, "deletionTimestamp": "2026-01-01T00:00:00Z"}}
    assert reconciler.spec_changed("MODIFIED", deleting) and not reconciler.spec_changed("MODIFIED", deleting)
    assert reconciler.spec_changed("DELETED", deleting)
