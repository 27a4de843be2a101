"""The operator's /readyz: 503 while its kopf peering object is missing (kopf keeps it paused
while liveness stays 200), 200 once it exists or when standalone; each change logged once
(issue 14). The real API server version: tests/cluster/test_real_operator_peering.py."""

from __future__ import annotations

import socket

import aiohttp

from detour_operator.readiness import Readiness


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def test_not_ready_while_the_peering_object_is_missing_and_each_change_logged_once(caplog):
    answers = [False, False, None, True, True, False]
    r = Readiness("detour", ["team-a"], lookup=lambda name, namespaces: answers.pop(0))
    assert not r.ready and "not checked yet" in r.reason
    await r.check()
    await r.check()
    assert not r.ready and r.reason == "KopfPeering 'detour' in namespace(s) team-a does not exist: kopf keeps this operator paused"
    assert caplog.text.count("NOT READY: KopfPeering 'detour' in namespace(s) team-a does not exist") == 1
    await r.check()  # the lookup failed (API down, RBAC): what we knew stands
    assert not r.ready
    await r.check()
    await r.check()
    assert r.ready and caplog.text.count("exists now: ready") == 1
    await r.check()  # deleted later: not ready again
    assert not r.ready and caplog.text.count("NOT READY") == 2


async def test_found_at_start_is_ready_without_noise_and_standalone_needs_no_lookup(caplog):
    r = Readiness("detour", [], lookup=lambda name, namespaces: True)
    await r.check()
    assert r.ready and r.reason == "ClusterKopfPeering 'detour' exists" and not caplog.text
    standalone = Readiness(None, [], lookup=lambda *_: 1 / 0)
    await standalone.check()
    assert standalone.ready


async def test_readyz_answers_503_then_200():
    found = [False]
    r = Readiness("detour", ["ns"], lookup=lambda name, namespaces: found[0])
    port = free_port()
    await r.start(f"http://127.0.0.1:{port}/readyz")
    try:
        async with aiohttp.ClientSession() as http:
            await r.check()
            async with http.get(f"http://127.0.0.1:{port}/readyz") as resp:
                assert resp.status == 503 and (await resp.json())["ready"] is False
            found[0] = True
            await r.check()
            async with http.get(f"http://127.0.0.1:{port}/readyz") as resp:
                assert resp.status == 200 and await resp.json() == {"ready": True, "reason": "KopfPeering 'detour' in namespace(s) ns exists"}
    finally:
        await r.stop()
