"""SecretRefs: each referenced Secret is listed and watched by name only; watches follow the
references; a data change re-renders its namespace; a Secret not yet read is waited for, and one
the operator may not read is reported as such (issue 14.5).

The API is a scripted stand-in for `KubeAPI` (list_objects / watch_objects) that records every
call's namespace, resource and field selector; the cluster test (tests/cluster/
test_real_secret_refs.py) runs the same code against the real API server.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from detour_operator.secret_refs import SecretRefs
from detour_proxy.cluster.kube_api import ApiError
from support import poll


def secret(name: str, rv: int, type_: str = "Opaque", **data: str) -> dict[str, Any]:
    return {"metadata": {"name": name, "namespace": "ns", "resourceVersion": str(rv)}, "type": type_, "data": data}


class FakeAPI:
    """A namespace of Secrets; each watch gets the events pushed with `emit` for its name."""

    def __init__(self, secrets: dict[str, dict[str, Any]]) -> None:
        self.secrets = secrets
        self.calls: list[tuple[str, str, str, dict[str, str]]] = []
        self.queues: dict[str, list[asyncio.Queue[dict[str, Any]]]] = {}
        self.forbidden: set[str] = set()
        self.list_gate = asyncio.Event()
        self.list_gate.set()
        self.closed = False

    @staticmethod
    def _name(params: dict[str, str]) -> str:
        field, _, name = params["fieldSelector"].partition("=")
        assert field == "metadata.name" and name, params
        return name

    async def list_objects(self, ns: str, plural: str, params: dict[str, str], metadata_only: bool = False):
        self.calls.append(("list", ns, plural, dict(params)))
        await self.list_gate.wait()
        name = self._name(params)
        if name in self.forbidden:
            raise ApiError("forbidden (RBAC: needs list/watch on secrets)", 403)
        return ([self.secrets[name]] if name in self.secrets else []), "10"

    async def watch_objects(self, ns: str, plural: str, params: dict[str, str], rv: str, idle: float,
                            on_open: Any = None, metadata_only: bool = False):
        self.calls.append(("watch", ns, plural, dict(params)))
        q: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.queues.setdefault(self._name(params), []).append(q)
        while True:
            yield await q.get()

    def emit(self, name: str, event: dict[str, Any]) -> None:
        for q in self.queues.get(name, []):
            q.put_nowait(event)

    async def close(self) -> None:
        self.closed = True


@pytest.fixture()
async def refs():
    api = FakeAPI({"keys": secret("keys", 5, a="YQ=="), "other": secret("other", 6, x="eA=="),
                   "tls": secret("tls", 7, "kubernetes.io/tls", a="YQ==")})
    changed: list[str] = []
    r = SecretRefs(changed.append, api_factory=lambda: api)
    r.api, r.changed = api, changed  # type: ignore[attr-defined]
    yield r
    await r.close()


async def test_only_referenced_secrets_are_requested_and_only_by_name(refs):
    refs.want("ns", {"keys"})
    await refs.wait_loaded("ns", {"keys"}, 5)
    assert refs.data("ns", "keys") == {"a": "YQ=="}
    await poll(lambda: "keys" in refs.api.queues, 5, "the watch of keys")
    assert refs.api.calls == [("list", "ns", "secrets", {"fieldSelector": "metadata.name=keys"}),
                              ("watch", "ns", "secrets", {"fieldSelector": "metadata.name=keys"})]
    assert refs.data("ns", "other") is None and refs.changed == []  # the first read renders in the caller


async def test_a_change_rerenders_the_namespace_and_an_unchanged_event_does_not(refs):
    refs.want("ns", {"keys"})
    await refs.wait_loaded("ns", {"keys"}, 5)
    await poll(lambda: "keys" in refs.api.queues, 5, "the watch of keys")
    refs.api.emit("keys", {"type": "MODIFIED", "object": secret("keys", 11, a="YQ==")})  # labels only
    refs.api.emit("keys", {"type": "MODIFIED", "object": secret("keys", 12, a="Yg==")})
    await poll(lambda: refs.changed, 5, "the rotation noticed")
    assert refs.changed == ["ns"] and refs.data("ns", "keys") == {"a": "Yg=="}
    refs.api.emit("keys", {"type": "DELETED", "object": secret("keys", 13, a="Yg==")})
    await poll(lambda: len(refs.changed) == 2, 5, "the deletion noticed")
    assert refs.data("ns", "keys") is None


async def test_watches_follow_the_references(refs):
    refs.want("ns", {"keys"})
    await refs.wait_loaded("ns", {"keys"}, 5)
    refs.want("ns", {"keys", "other"})  # a new reference: watched from now on
    await refs.wait_loaded("ns", {"keys", "other"}, 5)
    assert refs.watched() == {("ns", "keys"), ("ns", "other")}
    refs.want("ns", {"other"})  # the last reference to keys went: its watch stops, its data is forgotten
    assert refs.watched() == {("ns", "other")} and refs.data("ns", "keys") is None
    await poll(lambda: "other" in refs.api.queues, 5, "the watch of other")
    refs.api.emit("keys", {"type": "MODIFIED", "object": secret("keys", 20, a="Yw==")})
    refs.api.emit("other", {"type": "MODIFIED", "object": secret("other", 21, x="eQ==")})
    await poll(lambda: refs.changed, 5, "other's change noticed")
    assert refs.changed == ["ns"] and refs.data("ns", "other") == {"x": "eQ=="}


async def test_a_secret_not_read_yet_is_waited_for_not_taken_as_missing(refs):
    refs.api.list_gate.clear()  # the API server is slow to answer
    refs.want("ns", {"keys"})
    with pytest.raises(TimeoutError):
        await refs.wait_loaded("ns", {"keys"}, 0.05)
    refs.api.list_gate.set()
    # the render gave up on it (and is retried), so the late first read re-renders the namespace
    await poll(lambda: refs.changed == ["ns"], 5, "the late first read")
    assert refs.data("ns", "keys") == {"a": "YQ=="}


async def test_a_forbidden_secret_is_reported_and_other_types_read_as_absent(refs):
    refs.api.forbidden.add("other")
    refs.want("ns", {"other", "tls"})
    await refs.wait_loaded("ns", {"other", "tls"}, 5)
    assert refs.data("ns", "other") is None and "forbidden" in (refs.error("ns", "other") or "")
    assert refs.data("ns", "tls") is None and refs.error("ns", "tls") is None  # not Opaque: never an API key


async def test_a_client_that_cannot_be_built_yet_is_retried_not_fatal(monkeypatch):
    monkeypatch.setattr("detour_operator.secret_refs.RETRY_MAX", 0.01)
    api = FakeAPI({"keys": secret("keys", 5, a="YQ==")})
    attempts = []

    def factory() -> FakeAPI:
        attempts.append(1)
        if len(attempts) == 1:
            raise OSError("no kubeconfig yet")
        return api
    refs = SecretRefs(lambda ns: None, api_factory=factory)
    try:
        refs.want("ns", {"keys"})
        await refs.wait_loaded("ns", {"keys"}, 5)
        assert refs.data("ns", "keys") == {"a": "YQ=="} and len(attempts) == 2
    finally:
        await refs.close()
