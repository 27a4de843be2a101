"""RBAC that allows one API channel and not the other (patch but not list/watch, or the reverse):
the proxy says so once, `detour_shared_health_api_available` stays 0 without flapping while the
working channel keeps working, and when both work again it says so once and the gauge is 1.

A tiny aiohttp stand-in for the API server on 127.0.0.1 answers 403 on the forbidden channel
(the shared emulator has no RBAC); the service talks to it through the real `KubeAPI`.
"""

from __future__ import annotations

import asyncio
import logging

import pytest
from aiohttp import web

from detour_proxy.state import AppState
from detour_proxy.config import parse_config
from detour_proxy.cluster.shared_health import KubeAPI, SharedHealthService
from support import poll

FORBIDDEN = {"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "Forbidden", "code": 403}


class StubAPIServer:
    """PATCH pod, list pods, watch pods; `forbid` names the channel answered with 403."""

    def __init__(self, forbid: str) -> None:
        self.forbid = forbid
        self.patches = self.lists = self.watches = 0
        self._closing = asyncio.Event()

    async def _patch(self, request: web.Request) -> web.Response:
        self.patches += 1
        if self.forbid == "publish":
            return web.json_response(FORBIDDEN, status=403)
        return web.json_response({"kind": "Pod", "metadata": {"name": request.match_info["pod"]}})

    async def _pods(self, request: web.Request) -> web.StreamResponse:
        watch = request.query.get("watch") == "true"
        if watch:
            self.watches += 1
        else:
            self.lists += 1
        if self.forbid == "watch":
            return web.json_response(FORBIDDEN, status=403)
        if not watch:
            return web.json_response({"kind": "PodList", "metadata": {"resourceVersion": "7"}, "items": []})
        resp = web.StreamResponse(headers={"Content-Type": "application/json"})
        await resp.prepare(request)
        await self._closing.wait()  # a quiet watch, open until the test ends
        return resp

    async def __aenter__(self) -> StubAPIServer:
        app = web.Application()
        app.router.add_patch("/api/v1/namespaces/{ns}/pods/{pod}", self._patch)
        app.router.add_get("/api/v1/namespaces/{ns}/pods", self._pods)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._closing.set()
        await self._runner.cleanup()


def lines(caplog: pytest.LogCaptureFixture, text: str) -> int:
    return sum(text in r.getMessage() for r in caplog.records if r.name == "detour.shared_health")


@pytest.mark.parametrize("forbid", ["watch", "publish"])
async def test_one_forbidden_channel_is_reported_once_and_the_gauge_does_not_flap(forbid, caplog):
    caplog.set_level(logging.INFO, logger="detour.shared_health")
    state = AppState()
    state.install(parse_config({
        "providers": [{"name": "p", "baseURL": "http://127.0.0.1:1/v1"}],
        "routes": [{"name": "r", "targets": [{"provider": "p", "model": "m"}]}],
        "sharedHealth": {"enabled": True, "heartbeat": "0.1s", "keepalive": "0.1s", "minInterval": "0.05s"},
    }))
    gauge = lambda: state.metrics.registry.get_sample_value("detour_shared_health_api_available")  # noqa: E731
    async with StubAPIServer(forbid) as server:
        svc = SharedHealthService(state, pod="pod-1", namespace="ns", api_factory=lambda: KubeAPI(server.url))
        seen: list[float] = []

        async def sample() -> None:
            while True:
                if lines(caplog, "Kubernetes API not available"):
                    seen.append(gauge())
                await asyncio.sleep(0.005)

        sampler = asyncio.create_task(sample())
        await svc.start()
        try:
            if forbid == "watch":  # publishing works (keepalive every 0.1 s), listing is refused with backoff
                await poll(lambda: server.lists >= 2 and server.patches >= 8, 5, "patches and refused lists")
                assert state.metrics.registry.get_sample_value(
                    "detour_shared_health_publish_total", {"result": "success"}) >= 8
            else:              # watching works (one quiet watch), patches are refused with backoff
                await poll(lambda: server.patches >= 2 and server.watches >= 1, 5, "refused patches and a watch")
                assert server.lists == 1 and server.watches == 1, "the working watch is not torn down"
            assert lines(caplog, "Kubernetes API not available") == 1, caplog.text
            call = "watch pods: forbidden" if forbid == "watch" else "patch pod pod-1: forbidden"
            assert call in caplog.text, "the line names the refused call"
            assert lines(caplog, "reachable again") == 0, caplog.text
            assert seen and set(seen) == {0.0}, "the gauge must not flap while one channel fails"

            server.forbid = ""  # RBAC fixed: both channels work at the next retry
            await poll(lambda: gauge() == 1.0, 5, "the gauge to show the API available")
            assert lines(caplog, "reachable again") == 1
            assert lines(caplog, "Kubernetes API not available") == 1
        finally:
            sampler.cancel()
            await svc.stop()
