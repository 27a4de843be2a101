"""Shared test harness: simulated providers as real processes, the proxy on real loopback HTTP.

`Sim` runs `python -m detour_sim` and drives its admin API; `ProxyServer` runs the real
app under uvicorn in a background thread (so tests can reach its `AppState`, e.g. to
advance a FakeClock instead of sleeping through a cooldown). Everything binds 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
import time
from typing import Any

import httpx
import uvicorn

from detour_proxy.server import create_app
from detour_proxy.state import AppState
from detour_proxy.config import RoutingConfig, parse_config


class Sim:
    """A `detour-sim` process on an ephemeral loopback port."""

    def __init__(self, name: str, flavor: str = "openai", *extra: str) -> None:
        self.name = name
        self.flavor = flavor
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "detour_sim", "--flavor", flavor, "--name", name,
             "--host", "127.0.0.1", "--port", "0", *extra],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if "listening on" not in line:
            self.proc.kill()
            raise RuntimeError(f"detour-sim {name} did not start: {line!r} {self.proc.stderr.read() if self.proc.stderr else ''}")
        self.url = line.strip().rsplit(" ", 1)[-1].rstrip("/")
        self.admin = httpx.Client(base_url=self.url, timeout=10)

    @property
    def v1(self) -> str:
        return self.url + "/v1"

    def faults(self, **faults: Any) -> None:
        self.admin.put("/_sim/faults", json=faults).raise_for_status()

    def clear(self) -> None:
        self.admin.delete("/_sim/faults").raise_for_status()

    def reset(self) -> None:
        self.admin.post("/_sim/reset").raise_for_status()

    def stats(self) -> dict[str, Any]:
        return self.admin.get("/_sim/stats").json()

    def requests(self, path: str = "/v1/chat/completions") -> int:
        return int(self.stats()["requests"].get(path, 0))

    def wait(self, key: str, at_least: int, timeout: float = 5.0) -> dict[str, Any]:
        r = self.admin.get("/_sim/wait", params={"key": key, "atLeast": at_least, "timeout": timeout},
                           timeout=timeout + 5)
        assert r.status_code == 200, f"sim {self.name}: {key} did not reach {at_least} in {timeout}s: {r.text}"
        return r.json()

    def stop(self) -> None:
        self.admin.close()
        self.proc.terminate()
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()


class ProxyServer:
    """The real Detour app served by uvicorn on 127.0.0.1 in a background thread."""

    def __init__(self, config: dict[str, Any] | RoutingConfig, **state_kwargs: Any) -> None:
        self.config = config if isinstance(config, RoutingConfig) else parse_config(config)
        self.state = AppState(**state_kwargs)
        self.state.install(self.config)
        self.loop: asyncio.AbstractEventLoop | None = None

        async def capture_loop(_state: AppState) -> None:
            self.loop = asyncio.get_running_loop()

        self.app = create_app(self.state, on_startup=[capture_loop])
        self._server = uvicorn.Server(uvicorn.Config(
            self.app, host="127.0.0.1", port=0, loop="asyncio", http="httptools", lifespan="on",
            access_log=False, log_config=None, timeout_graceful_shutdown=2))
        self._thread = threading.Thread(target=self._server.run, name="detour-proxy", daemon=True)
        self.port = 0

    def __enter__(self) -> ProxyServer:
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("proxy did not start")
            time.sleep(0.005)
        self.port = self._server.servers[0].sockets[0].getsockname()[1]
        return self

    def __exit__(self, *exc: Any) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=10)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def v1(self) -> str:
        return self.url + "/v1"

    def call(self, fn: Any) -> Any:
        """Run a coroutine function on the proxy's loop (to inspect or poke state safely)."""
        assert self.loop is not None, "proxy not started"
        return asyncio.run_coroutine_threadsafe(fn(), self.loop).result(10)


def chat_body(model: str = "gpt-4o-mini", text: str = "hi", **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": text}], **extra}


def two_provider_config(primary: Sim, secondary: Sim, **route_overrides: Any) -> dict[str, Any]:
    """The README's example shape, pointed at two simulators."""
    route = {
        "name": "chat",
        "match": {"models": ["gpt-4o-mini", "chat-*"]},
        "strategy": "priority",
        "targets": [
            {"provider": "primary", "model": "gpt-4o-mini", "priority": 0},
            {"provider": "secondary", "model": "llama-3-8b", "priority": 1},
        ],
        "retry": {"attempts": 2, "backoff": {"initial": "10ms", "max": "50ms"}},
        "timeout": "10s",
    }
    route.update(route_overrides)
    return {
        "providers": [
            {"name": "primary", "type": "openai", "baseURL": primary.v1, "apiKey": {"value": "sk-primary-SECRET"}},
            {"name": "secondary", "type": "openai-compatible", "baseURL": secondary.v1,
             "apiKey": {"value": "sk-secondary-SECRET"}},
        ],
        "routes": [route],
        "health": {"window": "60s", "breaker": {"failureRatio": 0.5, "minRequests": 10,
                                                 "consecutiveFailures": 3, "cooldown": "30s",
                                                 "maxCooldown": "5m", "halfOpenProbes": 1}},
        "retryBudget": {"ratio": 0.5, "minPerSecond": 100},
    }


def wait_until(predicate: Any, timeout: float, what: str, interval: float = 0.02) -> Any:
    """Poll `predicate` until it returns something truthy (bounded); for state with no event to await."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


async def poll(predicate: Any, timeout: float, what: str, interval: float = 0.02) -> Any:
    """`wait_until` for async tests: yields to the loop between checks."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(interval)


class OutputReaders:
    """A subprocess's stdout and stderr read line by line into `stdout` / `stderr`, each from a
    daemon thread, so a chatty process never blocks on a full pipe and tests can poll its lines."""

    def __init__(self, proc: subprocess.Popen) -> None:
        self.stdout: list[str] = []
        self.stderr: list[str] = []
        self._threads = [threading.Thread(target=self._read, args=(stream, lines), daemon=True)
                         for stream, lines in ((proc.stdout, self.stdout), (proc.stderr, self.stderr))]
        for t in self._threads:
            t.start()

    @staticmethod
    def _read(stream: Any, lines: list[str]) -> None:
        for line in stream:
            lines.append(line.rstrip("\n"))

    def join(self, timeout: float = 5) -> None:
        for t in self._threads:
            t.join(timeout)


def record_figures(path: Any, section: str, figures: dict[str, Any], tag: str) -> None:
    """Merge one section of measured figures into the JSON file `path` (git-ignored) and print it."""
    import json
    import pathlib

    path = pathlib.Path(path)
    path.parent.mkdir(exist_ok=True)
    try:
        doc = json.loads(path.read_text())
    except (FileNotFoundError, ValueError):
        doc = {}
    doc[section] = {"measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **figures}
    path.write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")
    print(f"\n[{tag}] {section}: {json.dumps(figures, sort_keys=True)}")
