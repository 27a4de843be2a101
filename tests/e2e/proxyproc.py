"""The real `python -m detour_proxy` as a subprocess on a loopback port, plus config-file helpers.

Used by the hot-reload integration tests (SIGHUP, steady load against uvloop) and the shared
health e2e tests (three proxies with their own POD_NAME against one emulated API server).
"""

from __future__ import annotations

import os
import pathlib
import signal
import socket
import subprocess
import sys
import time
from typing import Any

import httpx
import yaml
from prometheus_client.parser import text_string_to_metric_families


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_atomic(path: pathlib.Path, config: dict[str, Any] | str) -> None:
    """Write next to `path` and rename over it (what editors and most tools do)."""
    text = config if isinstance(config, str) else yaml.safe_dump(config, sort_keys=False)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


class K8sVolume:
    """A directory laid out like a mounted ConfigMap/Secret: `<dir>/<key> -> ..data/<key>`,
    `..data -> ..<version>`; `update()` writes a new version dir and swaps `..data` atomically."""

    def __init__(self, root: pathlib.Path, files: dict[str, str]) -> None:
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)
        self.version = 0
        self._write(files)
        for key in files:
            os.symlink(f"..data/{key}", self.root / key)

    def _write(self, files: dict[str, str]) -> None:
        self.version += 1
        vdir = self.root / f"..2026_{self.version:04d}"
        vdir.mkdir()
        for key, text in files.items():
            (vdir / key).write_text(text)
        tmp = self.root / "..data_tmp"
        os.symlink(vdir.name, tmp)
        os.replace(tmp, self.root / "..data")

    def update(self, files: dict[str, str]) -> None:
        self._write(files)

    def path(self, key: str) -> pathlib.Path:
        return self.root / key


class ProxyProcess:
    def __init__(self, config_path: pathlib.Path, *extra: str, env: dict[str, str] | None = None,
                 log_path: pathlib.Path | None = None) -> None:
        self.port = free_port()
        self.config_path = config_path
        self.log_path = log_path or config_path.with_name(f"proxy-{self.port}.log")
        self._log = open(self.log_path, "w")
        full_env = dict(os.environ)
        full_env.update(env or {})
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "detour_proxy", "--config", str(config_path), "--host", "127.0.0.1",
             "--port", str(self.port), "--no-access-log", *extra],
            stdout=self._log, stderr=subprocess.STDOUT, env=full_env)
        self.http = httpx.Client(base_url=self.url, timeout=10)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def wait_started(self, timeout: float = 15.0) -> ProxyProcess:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"proxy exited with {self.proc.returncode}: {self.log()}")
            try:
                if self.http.get("/healthz", timeout=1).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        raise TimeoutError(f"proxy did not start in {timeout}s: {self.log()}")

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text()

    def readyz(self) -> httpx.Response:
        return self.http.get("/readyz")

    def metrics(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        """Samples as {(name, sorted labels): value}."""
        out = {}
        for fam in text_string_to_metric_families(self.http.get("/metrics").text):
            for s in fam.samples:
                out[(s.name, tuple(sorted(s.labels.items())))] = s.value
        return out

    def metric(self, name: str, **labels: str) -> float:
        return self.metrics().get((name, tuple(sorted(labels.items()))), 0.0)

    def chat(self, model: str = "gpt-4o-mini") -> httpx.Response:
        return self.http.post("/v1/chat/completions",
                              json={"model": model, "messages": [{"role": "user", "content": "hi"}]})

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def stop(self) -> None:
        if self.proc.poll() is None:
            try:
                os.kill(self.proc.pid, signal.SIGCONT)  # in case a test froze it
            except OSError:
                pass
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.http.close()
        self._log.close()
