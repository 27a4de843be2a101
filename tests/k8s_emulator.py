"""A realistic Kubernetes API server for tests: kmock 0.8 plus the server-side behaviour it lacks.

Why this module exists: there is no real API server (no kind, no Docker) on the build machines,
but the operator tests must run *real* kopf, the official `kubernetes` client and kubectl over
HTTP. Stock kmock serves the API shape; the gaps below are what kopf/kubectl rely on and are
filled here, in one place, so every suite (operator tests today, multi-proxy shared-health tests
later) talks to the same emulator.

Gaps filled (adapted from /work/shared/reference/kmock/kmock_realistic.py, plus the ones marked NEW):
- create: uid, resourceVersion, creationTimestamp, generation=1, metadata.namespace, generateName,
  kind/apiVersion; HTTP 201.
- every write bumps a cluster-wide resourceVersion; DELETE with finalizers too.
- list: kind/apiVersion, a real resourceVersion; equality label selectors (`a=b`, `a!=b`, `a`, `!a`)
  and metadata.name/namespace field selectors.
- watch: resumes from `?resourceVersion=`, subscribes before replaying (stock kmock loses events
  in between), `application/json` content type (kubectl refuses octet-stream).
- 422 instead of 500 for a failed JSON-patch `test` op (kopf's optimistic concurrency).
- core discovery says `v1` (not `/v1`); `/api/v1/namespaces[/name]` paths.
- NEW status subresource isolation for resources that declare `status`: a PATCH to `/status`
  changes only `.status`; a PATCH/POST to the main resource ignores `.status` (as the real API does).
- NEW metadata.generation increments only when something outside metadata/status changes.
- NEW Secret `stringData` is merged into base64 `data` on create/patch (kubectl apply sends it).
- NEW Namespace objects `default` and `kube-system` exist from the start, as in a real cluster
  (kopf with `--namespace` waits until it sees the namespace listed).
- NEW CRDs are registered from their `apiextensions.k8s.io/v1` YAML (kind, plural, short names,
  subresources), so discovery is what kubectl/kopf would see from the real cluster.

Still missing (not needed by the current suites): PUT/replace, server-side apply, dryRun,
schema validation and defaulting, owner-reference garbage collection, watch bookmarks/410 Gone,
delete-collection. A concurrent pair of spec patches may both compute the same next generation
(the generation is computed just before kmock applies the patch under its own lock).

Usage::

    with K8sEmulator(kubeconfig=tmp_path / "kubeconfig", crds=CRD_FILES) as k8s:
        k8s.url, k8s.kubeconfig          # hand to kopf, kubectl, other processes
        k8s.emulator.objects[...]         # server-side state for assertions
"""

from __future__ import annotations

import asyncio
import base64
import copy
import datetime
import itertools
import pathlib
import sys
import threading
import time
import uuid
from collections.abc import Iterable
from typing import Any, NamedTuple

import jsonpatch
import kmock
import yaml
from kmock._internal import dicts, parsing

_orig_parse_path = parsing.parse_path


def _parse_path(path: str) -> parsing.ParsedPath:
    """kmock parses /api/v1/namespaces[/name] as "namespace=<name>, no resource"; fix that."""
    p = path.strip("/").split("/")
    if p[:3] == ["api", "v1", "namespaces"] and (len(p) <= 4 or (len(p) == 5 and p[4] in ("status", "finalize"))):
        return parsing.ParsedPath("", "v1", "namespaces", None, *(p[3:5] + [None, None])[:2])
    return _orig_parse_path(path)


parsing.parse_path = _parse_path


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _label_match(selector: str, labels: dict[str, str]) -> bool:
    for term in filter(None, (t.strip() for t in selector.split(","))):
        if "!=" in term:
            k, v = term.split("!=", 1)
            ok = labels.get(k.strip()) != v.strip()
        elif "=" in term:
            k, v = term.replace("==", "=").split("=", 1)
            ok = labels.get(k.strip()) == v.strip()
        elif term.startswith("!"):
            ok = term[1:].strip() not in labels
        else:
            ok = term in labels
        if not ok:
            return False
    return True


def _spec_part(obj: dict[str, Any]) -> dict[str, Any]:
    """Everything that counts for metadata.generation: all but metadata and status."""
    return {k: v for k, v in obj.items() if k not in ("metadata", "status", "kind", "apiVersion")}


class RealisticEmulator(kmock.KubernetesEmulator):
    """kmock's in-memory API server with the server-side behaviour listed in the module docstring."""

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        self._rv = itertools.count(1)
        self._last_rv = 0

    def _bump(self) -> str:
        self._last_rv = next(self._rv)
        return str(self._last_rv)

    def _has_status(self, resource: Any) -> bool:
        return resource in self.resources and "status" in self.resources[resource].subresources

    @staticmethod
    def _selected(request: Any, obj: dict[str, Any]) -> bool:
        md = obj.get("metadata", {})
        if not _label_match(request.params.get("labelSelector") or "", md.get("labels") or {}):
            return False
        for term in filter(None, (request.params.get("fieldSelector") or "").split(",")):
            neg = "!=" in term
            k, v = term.replace("!=", "=").replace("==", "=").split("=", 1)
            fields = {"metadata.name": md.get("name"), "metadata.namespace": md.get("namespace")}
            if k.strip() in fields and (fields[k.strip()] == v.strip()) == neg:
                return False
        return True

    def _isolate_status(self, request: Any) -> None:
        """Status subresource semantics: /status writes only status; main writes never status."""
        if not self._has_status(request.resource):
            return
        to_status = request.subresource == "status"
        data = request.data
        if isinstance(data, dict):
            if to_status:
                meta = data.get("metadata") or {}
                keep = {k: meta[k] for k in ("resourceVersion",) if k in meta}
                for key in list(data):
                    if key != "status":
                        del data[key]
                if keep:
                    data["metadata"] = keep
            else:
                data.pop("status", None)
        elif isinstance(data, list):
            def is_status(op: dict[str, Any]) -> bool:
                path = op.get("path", "")
                return path == "/status" or path.startswith("/status/")
            data[:] = [op for op in data if op.get("op") == "test" or is_status(op) == to_status]

    @staticmethod
    def _secret_string_data(request: Any) -> None:
        """The API server folds Secret stringData into base64 data and never stores stringData."""
        data = request.data
        if (request.resource is None or request.resource.plural != "secrets" or not isinstance(data, dict)
                or not isinstance(data.get("stringData"), dict)):
            return
        encoded = {k: base64.b64encode(str(v).encode()).decode() for k, v in data.pop("stringData").items()}
        data["data"] = {**(data.get("data") or {}), **encoded}

    async def _next_generation(self, request: Any) -> int | None:
        """The generation after this PATCH, if it changes anything outside metadata/status."""
        key = (request.resource, request.namespace, request.name)
        async with self._lock:
            if key not in self.objects or self.objects[key].deleted:
                return None
            old = copy.deepcopy(self.objects[key].raw)
        try:
            new = dicts.patch_dict(old, request.data)
        except Exception:  # the real patch will fail again and report it
            return None
        if _spec_part(dict(new)) == _spec_part(old):
            return None
        return int(old.get("metadata", {}).get("generation") or 1) + 1

    async def _handle(self, request: Any) -> Any:
        if request.resource is not None and isinstance(request.data, (dict, list)):
            if request.action in (kmock.action.CREATE, kmock.action.UPDATE):
                self._isolate_status(request)
                self._secret_string_data(request)
            generation = None
            if request.action == kmock.action.UPDATE and request.subresource is None:
                generation = await self._next_generation(request)
            rv = self._bump()
            if request.action == kmock.action.CREATE and isinstance(request.data, dict):
                md = request.data.setdefault("metadata", {})
                if request.namespace and "namespace" not in md:
                    md["namespace"] = request.namespace
                if "generateName" in md and "name" not in md:
                    md["name"] = md["generateName"] + uuid.uuid4().hex[:5]
                md.setdefault("uid", str(uuid.uuid4()))
                md.setdefault("creationTimestamp", _now())
                md["resourceVersion"] = rv
                md.setdefault("generation", 1)
                info = self.resources[request.resource] if request.resource in self.resources else None
                if info is not None and info.kind:
                    request.data.setdefault("kind", info.kind)
                    api_version = f"{request.resource.group}/{request.resource.version}".lstrip("/")
                    request.data.setdefault("apiVersion", api_version)
            elif request.action == kmock.action.UPDATE:
                if isinstance(request.data, dict):
                    md = request.data.setdefault("metadata", {})
                    md["resourceVersion"] = rv
                    if generation is not None:
                        md["generation"] = generation
                else:
                    request.data.append({"op": "add", "path": "/metadata/resourceVersion", "value": rv})
                    if generation is not None:
                        request.data.append({"op": "add", "path": "/metadata/generation", "value": generation})
        if request.action == kmock.action.DELETE and request.name is not None:
            key = (request.resource, request.namespace, request.name)
            async with self._lock:
                if key in self.objects and not self.objects[key].deleted:
                    self.objects[key].patch({"metadata": {"resourceVersion": self._bump()}})
        response = await super()._handle(request)
        if request.action == kmock.action.CREATE and response.status == 200:
            response.set_status(201)  # kubernetes>=37 create_* decodes only 201
        return response

    async def _serve_version(self, request: Any) -> Any:
        doc = await super()._serve_version(request)
        doc["groupVersion"] = doc["groupVersion"].lstrip("/")
        return doc

    async def _serve_list(self, request: Any) -> Any:
        doc = await super()._serve_list(request)
        res = request.resource
        info = self.resources[res] if res in self.resources else None
        doc["apiVersion"] = f"{res.group}/{res.version}".lstrip("/")
        doc["kind"] = f"{info.kind}List" if info and info.kind else "List"
        doc["metadata"]["resourceVersion"] = str(self._last_rv)
        doc["items"] = [item for item in doc["items"] if self._selected(request, item)]
        return doc

    def _serve_watch(self, request: Any) -> Any:
        return kmock.Response(headers={"Content-Type": "application/json"}, payload=self._watch(request))

    async def _watch(self, request: Any) -> Any:
        yield b""
        rv = request.params.get("resourceVersion") or "0"
        since = int(rv) if rv.isdigit() else 0
        bus = self._buses[request.resource]

        def match(obj: dict[str, Any]) -> bool:
            md = obj.get("metadata", {})
            return ((request.namespace is None or md.get("namespace") == request.namespace)
                    and (request.name is None or md.get("name") == request.name)
                    and self._selected(request, obj))

        async with self._lock:
            marker = await bus.mark()
            replay = [obj.raw for (res, _, _), obj in self.objects.items()
                      if res == request.resource and not obj.deleted and match(obj.raw)
                      and int(obj.raw.get("metadata", {}).get("resourceVersion") or 0) > since]
        try:
            for raw in replay:
                yield {"type": "ADDED", "object": raw}
            async for event in bus.stream(since=marker):
                if match(event.get("object", {})):
                    yield event
        finally:
            await bus.unmark(marker)

    async def _render_error(self, exc: Exception) -> Any:
        if isinstance(exc, (jsonpatch.JsonPatchTestFailed, jsonpatch.JsonPatchConflict)):
            exc = kmock.KubernetesError(status=422, reason="Invalid", message=str(exc))
        return await super()._render_error(exc)

    def register_crd(self, crd: dict[str, Any]) -> None:
        """Serve a CustomResourceDefinition's resources as the real API server would after install."""
        spec = crd["spec"]
        names = spec["names"]
        for version in spec["versions"]:
            subresources = set((version.get("subresources") or {}).keys())
            self.resources[f"{spec['group']}/{version['name']}/{names['plural']}"] = kmock.ResourceInfo(
                kind=names["kind"], singular=names.get("singular", names["kind"].lower()),
                namespaced=spec.get("scope", "Namespaced") == "Namespaced",
                shortnames=set(names.get("shortNames", [])), categories=set(names.get("categories", [])),
                verbs={"get", "list", "watch", "create", "patch", "update", "delete", "deletecollection"},
                subresources=subresources)


class K8sEmulator:
    """The emulator in its own thread and event loop, with a kubeconfig pointing at it.

    One instance can serve kopf in-process, kubectl, and any number of subprocesses (e.g. several
    proxies sharing health through Pod annotations): they all get `url`/`kubeconfig`.
    """

    def __init__(self, kubeconfig: str | pathlib.Path, port: int = 0, namespace: str = "default",
                 crds: Iterable[str | pathlib.Path] = ()) -> None:
        self.port, self.kubeconfig, self.namespace = port, pathlib.Path(kubeconfig), namespace
        self.crd_files = [pathlib.Path(p) for p in crds]
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="k8s-emulator", daemon=True)
        self.url = ""

    def call(self, coro: Any) -> Any:
        """Run a coroutine in the emulator's loop (for direct server-side access from tests)."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result()

    @property
    def emulator(self) -> RealisticEmulator:
        return self._kmock

    async def _start(self) -> None:
        self._kmock = RealisticEmulator()
        await self._kmock.__aenter__()
        self._kmock.resources.load_bundled()  # ~200 builtin resources: pods, configmaps, secrets, events, leases...
        for path in self.crd_files:
            for doc in yaml.safe_load_all(path.read_text()):
                if doc and doc.get("kind") == "CustomResourceDefinition":
                    self._kmock.register_crd(doc)
        for ns in ("default", "kube-system"):
            self._kmock.objects["v1/namespaces", None, ns] = {
                "apiVersion": "v1", "kind": "Namespace", "status": {"phase": "Active"},
                "metadata": {"name": ns, "uid": str(uuid.uuid4()), "resourceVersion": self._kmock._bump(),
                             "creationTimestamp": _now(), "labels": {"kubernetes.io/metadata.name": ns}}}
        self.server = kmock.Server(self._kmock, port=self.port)
        await self.server.__aenter__()

    async def _stop(self) -> None:
        await self.server.__aexit__(None, None, None)
        await self._kmock.__aexit__(None, None, None)

    def __enter__(self) -> K8sEmulator:
        self.thread.start()
        self.call(self._start())
        self.url = str(self.server.url).rstrip("/")
        self.kubeconfig.write_text(
            "apiVersion: v1\nkind: Config\ncurrent-context: emulator\n"
            f"clusters: [{{name: emulator, cluster: {{server: '{self.url}'}}}}]\n"
            "users: [{name: emulator, user: {token: dummy}}]\n"
            f"contexts: [{{name: emulator, context: {{cluster: emulator, user: emulator, namespace: {self.namespace}}}}}]\n")
        return self

    def __exit__(self, *exc: Any) -> None:
        try:
            self.call(self._stop())
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(5)

    def object(self, resource: str, namespace: str | None, name: str) -> dict[str, Any] | None:
        """The current server-side state of one object (None if absent), read in the server loop."""
        async def get() -> dict[str, Any] | None:
            key = (kmock.resource(resource) if isinstance(resource, str) else resource, namespace, name)
            if key not in self._kmock.objects or self._kmock.objects[key].deleted:
                return None
            return copy.deepcopy(self._kmock.objects[key].raw)
        return self.call(get())

    def history(self, resource: str, namespace: str | None, name: str) -> int:
        """How many versions of an object the server stored (counts writes, for no-churn checks)."""
        async def count() -> int:
            key = (kmock.resource(resource), namespace, name)  # a plain string never matches a stored key
            return len(self._kmock.objects[key].history) if key in self._kmock.objects else 0
        return self.call(count())


def wait_for(predicate: Any, timeout: float = 10.0, interval: float = 0.02, what: str = "") -> Any:
    """Poll `predicate` until it returns something truthy; bounded, for outcome-based test waits.

    `what` describes the awaited outcome in the TimeoutError; a callable is evaluated then (e.g. to
    show the object's current status).
    """
    deadline = time.monotonic() + timeout
    last_exc: Exception | None = None
    while True:
        try:
            result = predicate()
            if result:
                return result
        except Exception as exc:  # e.g. 404 before the object exists
            last_exc = exc
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what() if callable(what) else what or predicate}: last error {last_exc!r}")
        time.sleep(interval)


# ------------------------------------------------------------------------------------------------
# Shared-health helpers (added for issue 4: multi-proxy tests). Kept separate from the classes
# above so the operator suites are unaffected. Pods are created over HTTP like any client would
# (the server assigns uid/resourceVersion); label-selector watches, fieldSelector `!=`, and
# merge-patching pod annotations already work through RealisticEmulator.
# `api_calls` (every request, with its subresource) and `versions` (an object's write history, with
# resourceVersions to order writes across objects) serve the operator suites' no-churn and
# write-order checks.
# ------------------------------------------------------------------------------------------------

def create_pod(k8s: K8sEmulator, name: str, labels: dict[str, str] | None = None,
               namespace: str | None = None, phase: str = "Running") -> dict[str, Any]:
    """Create a minimal Pod (one container, `status.phase`) and return what the server stored."""
    import httpx

    ns = namespace or k8s.namespace
    body = {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": ns, "labels": dict(labels or {})},
            "spec": {"containers": [{"name": "proxy", "image": "detour:test"}]},
            "status": {"phase": phase}}
    r = httpx.post(f"{k8s.url}/api/v1/namespaces/{ns}/pods", json=body, timeout=10)
    r.raise_for_status()
    return r.json()


def pod_annotation(k8s: K8sEmulator, name: str, key: str, namespace: str | None = None) -> str | None:
    """One annotation of a Pod as stored server-side (None if the Pod or the key is absent)."""
    obj = k8s.object(kmock.resource("v1/pods"), namespace or k8s.namespace, name)  # type: ignore[arg-type]
    return ((obj or {}).get("metadata", {}).get("annotations") or {}).get(key)


class ApiCall(NamedTuple):
    """One request the emulated server received (see `api_calls`)."""

    method: str        # GET, POST, PATCH, ...
    action: str        # LIST, WATCH, FETCH, CREATE, UPDATE, DELETE
    plural: str        # resource plural, "" for discovery and the like
    namespace: str     # "" for cluster-wide requests
    name: str          # "" for collection requests
    subresource: str   # "status", or ""
    field_selector: str = ""  # the request's fieldSelector, e.g. "metadata.name=llm-keys"


def api_calls(k8s: K8sEmulator) -> list[ApiCall]:
    """Every request the server got so far, in arrival order, read in the server loop.

    Count them to measure a client's API load, e.g. status writes of one object:
    `[c for c in api_calls(k8s) if c.method == "PATCH" and c.subresource == "status" and c.name == "openai"]`.
    """
    async def collect() -> list[ApiCall]:
        return [ApiCall(str(getattr(req.method, "value", req.method) or ""),
                        str(getattr(req.action, "value", req.action) or ""),
                        req.resource.plural if req.resource is not None else "",
                        req.namespace or "", req.name or "", req.subresource or "",
                        str(req.params.get("fieldSelector") or ""))
                for req in list(k8s.emulator)]
    return k8s.call(collect())


def api_requests(k8s: K8sEmulator) -> list[tuple[str, str, str, str]]:
    """Every request the server got so far as `(method, action, resource plural, object name)`,
    read in the server loop: count them to measure the API load of a set of clients."""
    return [(c.method, c.action, c.plural, c.name) for c in api_calls(k8s)]


def versions(k8s: K8sEmulator, resource: str, namespace: str | None, name: str) -> list[dict[str, Any]]:
    """Every version of one object the server stored, oldest first (each with its resourceVersion):
    the write history, to check the order of writes across objects."""
    async def collect() -> list[dict[str, Any]]:
        key = (kmock.resource(resource), namespace, name)
        if key not in k8s.emulator.objects:
            return []
        return [copy.deepcopy(dict(v.raw)) for v in k8s.emulator.objects[key].history.raw if v is not None]
    return k8s.call(collect())


def resource_version(obj: dict[str, Any]) -> int:
    """A stored version's resourceVersion as a number (the emulator's are one cluster-wide counter)."""
    return int(obj["metadata"]["resourceVersion"])


if __name__ == "__main__":  # standalone: python tests/k8s_emulator.py PORT KUBECONFIG [CRD.yaml...]
    with K8sEmulator(sys.argv[2], port=int(sys.argv[1]), crds=sys.argv[3:]) as k:
        print("emulator listening on", k.url, flush=True)
        while True:
            time.sleep(3600)
