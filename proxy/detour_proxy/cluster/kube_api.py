"""A minimal Kubernetes API client: patch a Pod annotation, list and watch one resource.

Used by shared health (Pods) and by the operator's per-name Secret watches
(`detour_operator.secret_refs`), so the raw watch loop exists once.

Why raw aiohttp and not the official client's sync API in a thread: the watch is a stream that
lives for minutes; in a thread it would pin an executor worker and could not be cancelled on
shutdown (uvicorn's loop close waits for the default executor). aiohttp is already the proxy's
I/O library, is cancellable, and needs three calls (list, watch, patch). The official
`kubernetes` package is still used for what it is good at: reading the kubeconfig or the
in-cluster service account (server, CA, client certs, token, token refresh) into a
`Configuration`.
"""

from __future__ import annotations

import asyncio
import os
import ssl
from collections.abc import AsyncGenerator, Callable
from typing import Any
from urllib.parse import quote

import aiohttp
import orjson

__all__ = ["ApiError", "KubeAPI"]


class ApiError(Exception):
    """The API server refused or could not be reached; `reason` is a short, secret-free label."""

    def __init__(self, reason: str, status: int | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status


#: Objects as PartialObjectMetadata (no spec/status): a fraction of a Pod's size per watch event.
#: A list must ask for the List kind: the API server answers 406 to a list that asks for
#: `as=PartialObjectMetadata` (even with a JSON fallback), and a watch for `...List` gets events
#: of full objects' metadata either way; so the two calls ask differently.
METADATA_ONLY_WATCH = "application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1,application/json"
METADATA_ONLY_LIST = "application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1,application/json"


def _accept(metadata_only: bool, kind: str) -> dict[str, str] | None:
    return {"Accept": kind} if metadata_only else None


class KubeAPI:
    """The calls shared health (and the operator's Secret watches) need, over one aiohttp session."""

    def __init__(self, host: str, *, token: Callable[[], str | None] = lambda: None,
                 ssl_context: ssl.SSLContext | bool | None = None, timeout: float = 5.0,
                 user_agent: str = "detour-proxy/shared-health", max_connections: int = 4) -> None:
        """`max_connections`: each open watch holds one (HTTP/1.1) connection; 0 = no limit."""
        self.host = host.rstrip("/")
        self.user_agent = user_agent
        self._max_connections = max_connections
        self._token = token
        self._ssl = ssl_context
        self._timeout = timeout
        self._session: aiohttp.ClientSession | None = None

    @classmethod
    def from_environment(cls, user_agent: str = "detour-proxy/shared-health", max_connections: int = 4) -> KubeAPI:
        """In-cluster service account when running in a Pod, else $KUBECONFIG / ~/.kube/config.
        Blocking (file reads, maybe an exec plugin): call it in a thread."""
        from kubernetes import client, config  # imported lazily: only when shared health is on

        cfg = client.Configuration()
        if os.environ.get("KUBERNETES_SERVICE_HOST"):
            config.load_incluster_config(client_configuration=cfg)  # type: ignore[no-untyped-call]
        else:
            config.load_kube_config(client_configuration=cfg, persist_config=False)  # type: ignore[no-untyped-call]
        ctx: ssl.SSLContext | bool | None = None
        if cfg.host.startswith("https"):
            if cfg.verify_ssl:
                ctx = ssl.create_default_context(cafile=cfg.ssl_ca_cert or None)
                if cfg.assert_hostname is False:
                    ctx.check_hostname = False
            else:
                ctx = False
            if cfg.cert_file:
                if ctx is False:
                    ctx = ssl.create_default_context()
                    ctx.check_hostname = False
                    ctx.verify_mode = ssl.CERT_NONE
                assert isinstance(ctx, ssl.SSLContext)  # made above in both branches
                ctx.load_cert_chain(cfg.cert_file, cfg.key_file)

        def token() -> str | None:
            # Ask the client's own auth settings, not a hand-picked api_key entry: kubernetes>=36
            # stores the token under `BearerToken` (older releases: `authorization`), and this
            # call runs the refresh hook of in-cluster configs (bound SA tokens rotate).
            bearer = cfg.auth_settings().get("BearerToken")
            return bearer.get("value") if bearer else None

        return cls(cfg.host, token=token, ssl_context=ctx, user_agent=user_agent, max_connections=max_connections)

    def _sess(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(ssl=self._ssl if self._ssl is not None else True,
                                               limit=self._max_connections),
                json_serialize=lambda o: orjson.dumps(o).decode())
        return self._session

    def _headers(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        h = {"Accept": "application/json", "User-Agent": self.user_agent}
        tok = self._token()
        if tok:
            h["Authorization"] = tok
        if extra:
            h.update(extra)
        return h

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    @staticmethod
    async def _check(resp: aiohttp.ClientResponse, plural: str = "pods") -> None:
        if resp.status >= 400:
            forbidden = ("forbidden (RBAC: the proxy needs get/list/watch/patch on pods)" if plural == "pods"
                         else f"forbidden (RBAC: needs list/watch on {plural})")
            reason = {401: "unauthorized", 403: forbidden, 404: "not found"}.get(resp.status, f"HTTP {resp.status}")
            raise ApiError(reason, resp.status)

    async def patch_annotation(self, namespace: str, pod: str, key: str, value: str,
                               labels: dict[str, str | None] | None = None) -> None:
        """Merge-patch one annotation (and `labels`; None removes a label) on a Pod."""
        url = f"{self.host}/api/v1/namespaces/{quote(namespace)}/pods/{quote(pod)}"
        md: dict[str, Any] = {"annotations": {key: value}}
        if labels:
            md["labels"] = labels
        body = orjson.dumps({"metadata": md})
        try:
            async with self._sess().patch(
                    url, data=body, timeout=aiohttp.ClientTimeout(total=self._timeout),
                    headers=self._headers({"Content-Type": "application/merge-patch+json"})) as resp:
                await self._check(resp)
                await resp.read()
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
            raise ApiError(f"unreachable ({type(exc).__name__})") from None

    async def list_pods(self, namespace: str, params: dict[str, str], metadata_only: bool = False,
                        ) -> tuple[list[dict[str, Any]], str]:
        return await self.list_objects(namespace, "pods", params, metadata_only)

    def watch_pods(self, namespace: str, params: dict[str, str], resource_version: str,
                   idle_timeout: float, on_open: Callable[[], None] | None = None,
                   metadata_only: bool = False) -> AsyncGenerator[dict[str, Any], None]:
        return self.watch_objects(namespace, "pods", params, resource_version, idle_timeout, on_open, metadata_only)

    async def list_objects(self, namespace: str, plural: str, params: dict[str, str], metadata_only: bool = False,
                           ) -> tuple[list[dict[str, Any]], str]:
        """LIST a core (v1) resource in `namespace`: (items, the list's resourceVersion)."""
        url = f"{self.host}/api/v1/namespaces/{quote(namespace)}/{plural}"
        try:
            async with self._sess().get(url, params=params, headers=self._headers(_accept(metadata_only, METADATA_ONLY_LIST)),
                                        timeout=aiohttp.ClientTimeout(total=self._timeout * 2)) as resp:
                await self._check(resp, plural)
                doc = orjson.loads(await resp.read())
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError, orjson.JSONDecodeError) as exc:
            raise ApiError(f"unreachable ({type(exc).__name__})") from None
        rv = str((doc.get("metadata") or {}).get("resourceVersion") or "")
        return list(doc.get("items") or []), rv

    async def watch_objects(self, namespace: str, plural: str, params: dict[str, str], resource_version: str,
                            idle_timeout: float, on_open: Callable[[], None] | None = None,
                            metadata_only: bool = False) -> AsyncGenerator[dict[str, Any], None]:
        """WATCH a core (v1) resource in `namespace`: events (`{"type", "object"}`) until the server ends the stream or it is idle
        for `idle_timeout` seconds (then the caller re-watches). `on_open` is called once the
        server has accepted the watch (a quiet watch yields nothing for minutes)."""
        url = f"{self.host}/api/v1/namespaces/{quote(namespace)}/{plural}"
        q = dict(params, watch="true", timeoutSeconds="300", allowWatchBookmarks="true")
        if resource_version:
            q["resourceVersion"] = resource_version
        timeout = aiohttp.ClientTimeout(total=None, connect=self._timeout, sock_read=idle_timeout)
        try:
            async with self._sess().get(url, params=q, headers=self._headers(_accept(metadata_only, METADATA_ONLY_WATCH)),
                                        timeout=timeout) as resp:
                await self._check(resp, plural)
                if on_open is not None:
                    on_open()
                buf = b""
                async for chunk in resp.content.iter_any():
                    buf += chunk
                    while b"\n" in buf:
                        line, buf = buf.split(b"\n", 1)
                        if line.strip():
                            yield orjson.loads(line)
        except (aiohttp.ClientError, OSError, orjson.JSONDecodeError) as exc:
            raise ApiError(f"watch broken ({type(exc).__name__})") from None
        except asyncio.TimeoutError:
            return  # idle: re-watch
