"""Hot reload: config rewrites under steady load drop nothing, invalid ones are refused, SIGHUP,
--wait-for-config, breaker state surviving a reload, rotated key files.

Subprocess tests run the real `python -m detour_proxy` (uvloop, its startup hooks); the
in-thread ones use `support.ProxyServer` with the reload service started on its loop, to reach
the `HealthRegistry` directly. Waits poll an observable outcome with a bounded timeout.
"""

from __future__ import annotations

import asyncio
import signal
import threading
import time
from dataclasses import dataclass

import httpx
import orjson
import pytest
import yaml
from aiohttp import web

from detour_proxy.cluster import services
from detour_proxy.config import credentials
from detour_proxy.policy import BreakerState, TargetKey
from e2e.proxyproc import K8sVolume, ProxyProcess, write_atomic
from detour_proxy.config import parse_config
from support import ProxyServer, chat_body, poll, wait_until

MODEL = "gpt-4o-mini"


def config(sims: dict, target: str, *, extra_route: bool = False, secret: str = "sk-inline-SECRET",
           **health) -> dict:
    route = {"name": "chat", "match": {"models": [MODEL]}, "targets": [{"provider": target, "model": MODEL}],
             "retry": {"attempts": 1}, "timeout": "10s"}
    routes = [route]
    if extra_route:
        routes.append({"name": "other", "match": {"models": ["other-*"]},
                       "targets": [{"provider": "secondary", "model": "x"}]})
    return {
        "providers": [{"name": name, "type": "openai", "baseURL": sim.v1, "apiKey": {"value": secret}}
                      for name, sim in sims.items()],
        "routes": routes,
        "health": {"breaker": {"consecutiveFailures": 3, "cooldown": "30s", **health}},
        "retryBudget": {"ratio": 1.0, "minPerSecond": 100},
        "server": {"drainTimeout": "2s"},
    }


def dump(cfg: dict) -> str:
    return yaml.safe_dump(cfg, sort_keys=False)




@dataclass
class Result:
    sent: float
    done: float
    status: int
    target: str
    error: str = ""


async def steady_load(url: str, rate: float, duration: float, out: list[Result]) -> None:
    """`rate` requests per second on a fixed schedule (open loop) for `duration` seconds."""
    body = orjson.dumps({"model": MODEL, "messages": [{"role": "user", "content": "hi"}]})
    limits = httpx.Limits(max_connections=200, max_keepalive_connections=200)
    async with httpx.AsyncClient(base_url=url, timeout=10, limits=limits) as client:
        async def one() -> None:
            sent = time.monotonic()
            try:
                r = await client.post("/v1/chat/completions", content=body,
                                      headers={"content-type": "application/json"})
                out.append(Result(sent, time.monotonic(), r.status_code, r.headers.get("x-detour-target", "")))
            except Exception as exc:  # a dropped connection is a failed request too
                out.append(Result(sent, time.monotonic(), -1, "", repr(exc)))

        loop = asyncio.get_running_loop()
        start = loop.time()
        tasks = []
        i = 0
        while loop.time() - start < duration:
            tasks.append(asyncio.create_task(one()))
            i += 1
            await asyncio.sleep(max(0.0, start + i / rate - loop.time()))
        await asyncio.gather(*tasks)


def first_served_by(results: list[Result], target: str, after: float) -> Result | None:
    hits = [r for r in results if r.target == target and r.done >= after]
    return min(hits, key=lambda r: r.done) if hits else None


@pytest.fixture()
def three(primary, secondary, azure):
    return {"primary": primary, "secondary": secondary, "third": azure}


async def test_rewrites_under_200_rps_drop_nothing_and_switch_within_2s(tmp_path, three):
    vol = K8sVolume(tmp_path / "config", {"config.yaml": dump(config(three, "primary"))})
    proxy = ProxyProcess(vol.path("config.yaml")).wait_started()
    try:
        results: list[Result] = []
        load = asyncio.create_task(steady_load(proxy.url, 200, 5.0, results))
        await poll(lambda: len(results) >= 100, 5, "load to be running")

        # 1) Kubernetes ConfigMap update: new version dir + atomic `..data` symlink swap.
        t1 = time.monotonic()
        vol.update({"config.yaml": dump(config(three, "secondary"))})
        hit1 = await poll(lambda: first_served_by(results, f"secondary/{MODEL}", t1), 3, "secondary in use")
        # 2) An editor-style atomic rename over the file itself.
        await poll(lambda: sum(r.target == f"secondary/{MODEL}" for r in results) >= 20, 3,
                   "a few requests on the second config")
        t2 = time.monotonic()
        write_atomic(vol.path("config.yaml"), config(three, "third"))
        hit2 = await poll(lambda: first_served_by(results, f"third/{MODEL}", t2), 3, "third in use")
        await asyncio.wait_for(load, 30)

        failed = [r for r in results if r.status != 200]
        assert not failed, f"{len(failed)} failed requests, e.g. {failed[:3]}"
        span = max(r.sent for r in results) - min(r.sent for r in results)
        assert len(results) / span >= 180, f"load generator too slow: {len(results) / span:.0f} req/s"
        assert hit1.done - t1 < 2.0 and hit2.done - t2 < 2.0, (hit1.done - t1, hit2.done - t2)
        # Once the new route answered, nothing started later went to the old one.
        assert all(r.target == f"secondary/{MODEL}" for r in results if hit1.done < r.sent < t2)
        assert all(r.target == f"third/{MODEL}" for r in results if r.sent > hit2.done)
        assert proxy.metric("detour_config_reload_total", result="success") == 2
        assert proxy.metric("detour_config_reload_total", result="error") == 0
        ready = proxy.readyz().json()
        assert ready["status"] == "ready" and proxy.metric("detour_config_info", hash=ready["configHash"]) == 1
        print(f"\nreload under load: {len(results)} requests at {len(results) / span:.0f} req/s, "
              f"new route in use after {hit1.done - t1:.2f}s (..data swap) and {hit2.done - t2:.2f}s (rename)")
    finally:
        proxy.stop()


def test_invalid_rewrite_is_refused_old_config_serves_and_readyz_says_why(tmp_path, three):
    path = tmp_path / "config.yaml"
    write_atomic(path, config(three, "primary"))
    proxy = ProxyProcess(path).wait_started()
    try:
        good_hash = proxy.readyz().json()["configHash"]
        bad = config(three, "nobody", secret="sk-LEAKED-123")          # unknown provider
        write_atomic(path, bad)
        deadline = time.monotonic() + 3
        while proxy.metric("detour_config_reload_total", result="error") < 1:
            assert time.monotonic() < deadline, "invalid config not noticed within 3s"
            time.sleep(0.05)
        r = proxy.chat()
        assert r.status_code == 200 and r.headers["x-detour-target"] == f"primary/{MODEL}"
        ready = proxy.readyz()
        assert ready.status_code == 200
        doc = ready.json()
        assert doc["status"] == "ready" and doc["configHash"] == good_hash
        assert "unknown providers" in doc["lastReloadError"] and "nobody" in doc["lastReloadError"]
        # Not YAML at all, with a key pasted in it: refused, and the key is not echoed.
        write_atomic(path, "providers: [\n  {name: x, apiKey: sk-LEAKED-456\n routes: ]]")
        deadline = time.monotonic() + 3
        while proxy.metric("detour_config_reload_total", result="error") < 2:
            assert time.monotonic() < deadline, "second invalid config not noticed within 3s"
            time.sleep(0.05)
        log = proxy.log()
        refusals = [line for line in log.splitlines() if "config reload refused" in line]
        assert len(refusals) == 2 and "unknown providers" in refusals[0], log
        assert "sk-LEAKED" not in log and "sk-LEAKED" not in proxy.readyz().text
        assert proxy.metric("detour_config_reload_total", result="success") == 0
        # A valid write clears the error.
        write_atomic(path, config(three, "secondary"))
        deadline = time.monotonic() + 3
        while proxy.chat().headers["x-detour-target"] != f"secondary/{MODEL}":
            assert time.monotonic() < deadline, "valid config after invalid ones not loaded"
            time.sleep(0.05)
        assert "lastReloadError" not in proxy.readyz().json()
    finally:
        proxy.stop()


def test_sighup_forces_a_reload_with_watching_disabled(tmp_path, three):
    path = tmp_path / "config.yaml"
    write_atomic(path, config(three, "primary"))
    proxy = ProxyProcess(path, "--no-watch").wait_started()
    try:
        write_atomic(path, config(three, "secondary"))
        # --no-watch: for longer than a poll interval the change is not picked up by itself.
        end = time.monotonic() + 1.2
        while time.monotonic() < end:
            assert proxy.chat().headers["x-detour-target"] == f"primary/{MODEL}"
            time.sleep(0.1)
        proxy.signal(signal.SIGHUP)
        deadline = time.monotonic() + 2
        while proxy.chat().headers["x-detour-target"] != f"secondary/{MODEL}":
            assert time.monotonic() < deadline, "SIGHUP did not reload within 2s"
            time.sleep(0.02)
        assert proxy.metric("detour_config_reload_total", result="success") == 1
        assert proxy.proc.poll() is None, "SIGHUP must not stop the proxy"
        assert '"SIGHUP: reloading' in proxy.log()
    finally:
        proxy.stop()


def test_wait_for_config_becomes_ready_when_the_file_appears(tmp_path, three):
    path = tmp_path / "config" / "config.yaml"
    path.parent.mkdir()
    proxy = ProxyProcess(path, "--wait-for-config").wait_started()
    try:
        assert proxy.readyz().status_code == 503
        K8sVolume(path.parent, {"config.yaml": dump(config(three, "primary"))})  # the operator publishes it
        deadline = time.monotonic() + 2
        while proxy.readyz().status_code != 200:
            assert time.monotonic() < deadline, "not ready within 2s of the config appearing"
            time.sleep(0.02)
        assert proxy.chat().headers["x-detour-target"] == f"primary/{MODEL}"
    finally:
        proxy.stop()


def _start_reload(proxy: ProxyServer):
    async def start():
        return await services.start_reload(proxy.state)
    return proxy.call(start)


def _stop_services(proxy: ProxyServer) -> None:
    async def stop():
        await services.stop_all(proxy.state)
    proxy.call(stop)


def test_breaker_state_survives_a_reload_for_unchanged_targets(tmp_path, primary, secondary):
    sims = {"primary": primary, "secondary": secondary}
    cfg = config(sims, "primary")
    cfg["routes"][0]["targets"].append({"provider": "secondary", "model": MODEL, "priority": 1})
    path = tmp_path / "config.yaml"
    write_atomic(path, cfg)
    primary.faults(status=503)
    with ProxyServer(cfg, config_path=path) as proxy:
        _start_reload(proxy)
        try:
            c = httpx.Client(base_url=proxy.url, timeout=10)
            body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}
            for _ in range(3):  # 3 consecutive failures open primary's breaker (each falls back)
                assert c.post("/v1/chat/completions", json=body).headers["x-detour-target"] == f"secondary/{MODEL}"
            reg = proxy.state.registry
            key_p = TargetKey("primary", MODEL, primary.v1)
            state_p = reg.get(key_p)
            assert state_p.breaker_state(proxy.state.clock.now()) is BreakerState.OPEN
            until = state_p.cooldown_until
            old_hash = proxy.state.gateway.hash
            # Reload: a new route and a new timeout; primary's identity is unchanged.
            cfg2 = config(sims, "primary", extra_route=True)
            cfg2["routes"][0]["targets"].append({"provider": "secondary", "model": MODEL, "priority": 1})
            cfg2["routes"][0]["timeout"] = "20s"
            write_atomic(path, cfg2)
            deadline = time.monotonic() + 2
            while proxy.state.gateway.hash == old_hash:
                assert time.monotonic() < deadline, "not reloaded within 2s"
                time.sleep(0.02)
            assert reg.get(key_p) is state_p and state_p.cooldown_until == until
            gw = proxy.state.gateway
            assert gw.routes[0].targets[0].state is state_p, "the new gateway uses the surviving state"
            seen = primary.requests()
            for _ in range(5):
                assert c.post("/v1/chat/completions", json=body).headers["x-detour-target"] == f"secondary/{MODEL}"
            assert primary.requests() == seen, "the open breaker kept traffic off primary after the reload"
            # A changed identity (new baseURL) starts fresh; the old state is forgotten.
            cfg3 = {**cfg2, "providers": [dict(p) for p in cfg2["providers"]]}
            cfg3["providers"][0]["baseURL"] = primary.url + "/v1/"
            write_atomic(path, cfg3)
            deadline = time.monotonic() + 2
            while proxy.state.gateway.hash == gw.hash:
                assert time.monotonic() < deadline, "not reloaded within 2s"
                time.sleep(0.02)
            assert reg.get(key_p) is None
            fresh = reg.get(TargetKey("primary", MODEL, primary.url + "/v1/"))
            assert fresh is not None and fresh.breaker_state(proxy.state.clock.now()) is BreakerState.CLOSED
            c.close()
        finally:
            _stop_services(proxy)


class RecordingUpstream:
    """A minimal OpenAI-compatible upstream that records the Authorization header it gets
    (the simulator redacts it)."""

    def __init__(self) -> None:
        self.auth: list[str] = []
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.url = ""

    async def _chat(self, request: web.Request) -> web.Response:
        self.auth.append(request.headers.get("Authorization", ""))
        return web.json_response({
            "id": "chatcmpl-1", "object": "chat.completion", "created": 0, "model": MODEL,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}})

    async def _start(self) -> None:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._chat)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        port = self.runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{port}"

    def __enter__(self) -> RecordingUpstream:
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(10)
        return self

    def __exit__(self, *exc) -> None:
        asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


def test_rotated_key_files_are_used_at_once_through_the_watcher(tmp_path, monkeypatch):
    # The per-use re-check of key files is pushed an hour away: only the config watcher's
    # `refresh()` can make the rotated provider key and client key take effect.
    monkeypatch.setattr(credentials, "RECHECK_SECONDS", 3600.0)
    secrets = K8sVolume(tmp_path / "credentials", {"upstream": "sk-old-key\n", "client": "ck-old\n"})
    with RecordingUpstream() as up:
        cfg = {"providers": [{"name": "up", "type": "openai", "baseURL": up.url + "/v1",
                              "apiKey": {"file": str(secrets.path("upstream"))}}],
               "routes": [{"name": "chat", "targets": [{"provider": "up", "model": MODEL}]}],
               "clientAuth": {"keys": [{"file": str(secrets.path("client"))}]}}
        path = tmp_path / "config.yaml"
        write_atomic(path, cfg)
        with ProxyServer(cfg, config_path=path) as proxy:
            _start_reload(proxy)
            try:
                c = httpx.Client(base_url=proxy.url, timeout=10)
                body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}

                def chat(client_key: str) -> httpx.Response:
                    return c.post("/v1/chat/completions", json=body,
                                  headers={"Authorization": f"Bearer {client_key}"})

                assert chat("ck-old").status_code == 200
                assert up.auth[-1] == "Bearer sk-old-key"
                hash_before = proxy.state.gateway.hash
                t0 = time.monotonic()
                secrets.update({"upstream": "sk-new-key\n", "client": "ck-new\n"})  # `..data` swap
                while chat("ck-new").status_code != 200:
                    assert time.monotonic() - t0 < 2.0, "rotated client key not accepted within 2s"
                    time.sleep(0.02)
                assert up.auth[-1] == "Bearer sk-new-key", "provider key rotated in the same refresh"
                assert chat("ck-old").status_code == 401, "the rotated-out client key is refused"
                assert proxy.state.gateway.hash == hash_before  # a key rotation needs no reload
                assert proxy.state.metrics.config_reloads.labels("success")._value.get() == 0
                c.close()
            finally:
                _stop_services(proxy)


def test_every_api_key_file_of_a_provider_is_watched(tmp_path, monkeypatch):
    """apiKeys: rotating the file of a provider's second key reaches that key through the watcher
    (the per-use re-check is an hour away), with no reload."""
    monkeypatch.setattr(credentials, "RECHECK_SECONDS", 3600.0)
    secrets = K8sVolume(tmp_path / "credentials", {"up": "sk-first\n", "up.1": "sk-second-old\n"})
    with RecordingUpstream() as up:
        cfg = {"providers": [{"name": "up", "type": "openai", "baseURL": up.url + "/v1",
                              "apiKeys": [{"file": str(secrets.path("up"))}, {"file": str(secrets.path("up.1"))}]}],
               "routes": [{"name": "chat", "targets": [{"provider": "up", "model": MODEL}]}]}
        path = tmp_path / "config.yaml"
        write_atomic(path, cfg)
        with ProxyServer(cfg, config_path=path) as proxy:
            _start_reload(proxy)
            try:
                second = proxy.state.gateway.providers["up"].key_credentials[1]
                assert second.get() == "sk-second-old"
                t0 = time.monotonic()
                secrets.update({"up": "sk-first\n", "up.1": "sk-second-new\n"})   # `..data` swap
                while second.get() != "sk-second-new":
                    assert time.monotonic() - t0 < 2.0, "the second key's rotation was not picked up within 2s"
                    time.sleep(0.02)
                assert proxy.state.metrics.config_reloads.labels("success")._value.get() == 0
            finally:
                _stop_services(proxy)


async def _read_stream(client: httpx.AsyncClient, body: dict) -> tuple[int, str, str]:
    async with client.stream("POST", "/v1/chat/completions", json=body) as r:
        text = "".join([chunk async for chunk in r.aiter_text()])
        return r.status_code, r.headers.get("x-detour-target", ""), text


async def test_in_flight_requests_and_streams_finish_on_the_config_they_started_with(tmp_path, primary, secondary):
    sims = {"primary": primary, "secondary": secondary}
    path = tmp_path / "config.yaml"
    write_atomic(path, config(sims, "primary"))
    # Every request to primary waits 1.5 s for its headers; streams then send 8 chunks 0.1 s apart.
    primary.faults(latency=1.5, chunkDelay=0.1)
    with ProxyServer(config(sims, "primary"), config_path=path) as proxy:
        reloader = _start_reload(proxy)
        try:
            async with httpx.AsyncClient(base_url=proxy.url, timeout=10) as client:
                body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}
                slow = asyncio.create_task(client.post("/v1/chat/completions", json=body))
                stream = asyncio.create_task(_read_stream(client, {**body, "stream": True}))
                await asyncio.to_thread(primary.wait, "requests./v1/chat/completions", 2)

                write_atomic(path, config(sims, "secondary"))
                assert await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(
                    reloader.reload(reason="test"), proxy.loop)), "the new config was installed"
                r = await client.post("/v1/chat/completions", json=body)
                assert r.headers["x-detour-target"] == f"secondary/{MODEL}", "new requests use the new route"
                assert not slow.done() and not stream.done(), "both were still in flight at the swap"

                done = await slow
                status, target, text = await stream
            assert done.status_code == 200 and done.headers["x-detour-target"] == f"primary/{MODEL}"
            assert done.json()["choices"][0]["message"]["content"] == "The quick brown fox jumps over the lazy dog."
            assert status == 200 and target == f"primary/{MODEL}"
            assert text.rstrip().endswith("data: [DONE]") and "lazy" in text and "error" not in text
            assert primary.stats()["requests"]["/v1/chat/completions"] == 2, "no retry hid a failure"
            assert secondary.requests() == 1
        finally:
            primary.clear()
            _stop_services(proxy)


def _torn_writes(path, full: str, prefix: str, cycles: int, stop: threading.Event) -> None:
    """Rewrite `path` in place (same inode: truncate, write), leaving the half-written `prefix`
    visible for 0.15 s each time (under the 0.5 s poll), then the rest."""
    assert full.startswith(prefix)
    for _ in range(cycles):
        if stop.is_set():
            return
        with open(path, "r+") as fh:
            fh.truncate(0)
            fh.write(prefix)
            fh.flush()
            time.sleep(0.15)
            fh.write(full[len(prefix):])
        time.sleep(0.2)


def _hammer(url: str, body: dict, headers: dict, stop: threading.Event, statuses: list[int]) -> None:
    with httpx.Client(timeout=10) as c:
        while not stop.is_set():
            statuses.append(c.post(url, json=body, headers=headers).status_code)
            time.sleep(0.005)


def _under_torn_writes(proxy: ProxyServer, path, full: str, prefix: str, body: dict, headers: dict,
                       cycles: int = 12) -> list[int]:
    stop = threading.Event()
    statuses: list[int] = []
    client = threading.Thread(target=_hammer, args=(proxy.v1 + "/chat/completions", body, headers, stop, statuses))
    client.start()
    try:
        _torn_writes(path, full, prefix, cycles, stop)
    finally:
        stop.set()
        client.join(10)
    return statuses


def test_a_torn_in_place_config_write_is_never_installed(tmp_path, primary, secondary):
    """Issue 13: a poll that reads a config mid-write (in place) installed the prefix when it parsed:
    here the prefix lacks the second route, so its model answered 404 until the next poll."""
    sims = {"primary": primary, "secondary": secondary}
    cfg = config(sims, "primary", extra_route=True)
    full = dump(cfg)
    prefix = full[: full.index("- name: other")]
    assert [r.name for r in parse_config(prefix).routes] == ["chat"], "the torn prefix must parse"
    path = tmp_path / "config.yaml"
    path.write_text(full)
    with ProxyServer(cfg, config_path=path) as proxy:
        _start_reload(proxy)
        try:
            statuses = _under_torn_writes(proxy, path, full, prefix, chat_body("other-1"), {})
            assert len(statuses) > 100
            assert statuses.count(404) == 0, f"{statuses.count(404)} of {len(statuses)} got 404"
            assert set(statuses) == {200}
        finally:
            _stop_services(proxy)


def test_a_config_cut_before_client_auth_never_serves_requests_without_a_key(tmp_path, primary, secondary):
    """Issue 13: with clientAuth cut off by a torn write, requests without a key were served; a file
    left truncated (the writer died) is refused too: the serving config requires keys."""
    sims = {"primary": primary, "secondary": secondary}
    key_file = tmp_path / "client-key"
    key_file.write_text("ck-real-key\n")
    cfg = {**config(sims, "primary"), "clientAuth": {"keys": [{"file": str(key_file)}]}}
    full = dump(cfg)
    prefix = full[: full.index("clientAuth:")]
    assert parse_config(prefix).client_auth is None, "the torn prefix must parse"
    path = tmp_path / "config.yaml"
    path.write_text(full)
    with ProxyServer(cfg, config_path=path) as proxy:
        _start_reload(proxy)
        try:
            statuses = _under_torn_writes(proxy, path, full, prefix, chat_body(), {})
            assert len(statuses) > 100
            assert set(statuses) == {401}, f"{len(statuses) - statuses.count(401)} served without a key"
            # The writer died after the prefix: the file stays cut, stable across reads.
            with open(path, "r+") as fh:
                fh.truncate(0)
                fh.write(prefix)
            wait_until(lambda: proxy.state.reload_error, 5, "the cut config to be refused")
            assert "clientAuth" in proxy.state.reload_error
            r = httpx.post(proxy.v1 + "/chat/completions", json=chat_body(), timeout=10)
            assert r.status_code == 401
            assert httpx.get(proxy.url + "/readyz", timeout=5).json()["lastReloadError"]
            # Turning client auth off is an explicit act.
            path.write_text(prefix + "clientAuth: null\n")
            wait_until(lambda: httpx.post(proxy.v1 + "/chat/completions", json=chat_body(),
                                          timeout=10).status_code == 200, 5, "clientAuth: null to be installed")
        finally:
            _stop_services(proxy)


def test_a_torn_in_place_client_key_write_never_lets_its_prefix_in(tmp_path, primary, secondary):
    """Issue 13, key files: a client key caught mid-write must not become the key."""
    sims = {"primary": primary, "secondary": secondary}
    key_file = tmp_path / "client-key"
    key_file.write_text("ck-real-key\n")
    cfg = {**config(sims, "primary"), "clientAuth": {"keys": [{"file": str(key_file)}]}}
    path = tmp_path / "config.yaml"
    path.write_text(dump(cfg))
    with ProxyServer(cfg, config_path=path) as proxy:
        _start_reload(proxy)
        try:
            real = {"authorization": "Bearer ck-real-key"}
            assert httpx.post(proxy.v1 + "/chat/completions", json=chat_body(), headers=real).status_code == 200
            statuses = _under_torn_writes(proxy, key_file, "ck-real-key\n", "ck-", chat_body(),
                                          {"authorization": "Bearer ck-"})
            assert len(statuses) > 100
            assert set(statuses) == {401}, f"{len(statuses) - statuses.count(401)} served with the key's prefix"
            wait_until(lambda: httpx.post(proxy.v1 + "/chat/completions", json=chat_body(), headers=real,
                                          timeout=10).status_code == 200, 5, "the real key to be accepted")
        finally:
            _stop_services(proxy)


def test_client_auth_removed_by_an_atomic_update_is_taken_as_written(tmp_path, primary, secondary):
    """The cut-short guard is for in-place writes: a `..data` swap (the operator turning client
    auth off in its ConfigMap) cannot be cut short and is installed."""
    sims = {"primary": primary, "secondary": secondary}
    key_file = tmp_path / "client-key"
    key_file.write_text("ck-real-key\n")
    without = config(sims, "primary")
    vol = K8sVolume(tmp_path / "cfg", {"config.yaml": dump({**without, "clientAuth": {"keys": [{"file": str(key_file)}]}})})
    with ProxyServer(parse_config(vol.path("config.yaml").read_text()), config_path=vol.path("config.yaml")) as proxy:
        _start_reload(proxy)
        try:
            assert httpx.post(proxy.v1 + "/chat/completions", json=chat_body(), timeout=10).status_code == 401
            vol.update({"config.yaml": dump(without)})
            wait_until(lambda: httpx.post(proxy.v1 + "/chat/completions", json=chat_body(),
                                          timeout=10).status_code == 200, 5, "the swapped config to be installed")
            assert proxy.state.reload_error is None
        finally:
            _stop_services(proxy)
