"""`make run` end to end: the real entry (`python -m detour_proxy.devrun`) on free ports, its
printed guide followed as a user would, and a clean stop of every process it started."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time

import httpx
import psutil
import pytest

from support import OutputReaders, chat_body, wait_until


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class DevRun:
    """The `make run` process in its own process group, stdout and stderr collected by lines."""

    def __init__(self, *args: str) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
        self.proc = subprocess.Popen([sys.executable, "-m", "detour_proxy.devrun", *args],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                                     start_new_session=True)
        self._readers = OutputReaders(self.proc)
        self.stdout, self.stderr = self._readers.stdout, self._readers.stderr

    def guide(self, timeout: float = 30) -> str:
        def printed() -> str | None:
            assert self.proc.poll() is None, f"devrun exited: {self.stdout} {self.stderr}"
            lines = list(self.stdout)
            return "\n".join(lines) if any(line.startswith("Stop:") for line in lines) else None
        return wait_until(printed, timeout, "the guide", interval=0.05)

    def close(self) -> None:
        if self.proc.poll() is None:            # a failed test: stop everything it started
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        self._readers.join(5)


@pytest.fixture()
def devrun():
    started: list[DevRun] = []
    yield lambda *args: started.append(DevRun(*args)) or started[-1]
    for d in started:
        d.close()


def children_exit_on(run: DevRun, stop: callable) -> None:
    children = psutil.Process(run.proc.pid).children(recursive=True)
    names = sorted(" ".join(c.cmdline()[1:3]) for c in children)
    assert names == ["-m detour_proxy", "-m detour_sim", "-m detour_sim"], names
    stop()
    assert run.proc.wait(15) == 0, run.stderr
    _, alive = psutil.wait_procs(children, timeout=10)
    assert not alive, f"still running after devrun exited: {alive}"


def test_make_run_serves_follows_its_guide_and_stops_everything(devrun):
    port = free_port()
    run = devrun("--port", str(port), "--primary-port", "0", "--secondary-port", "0")
    guide = run.guide()
    url = f"http://127.0.0.1:{port}"
    assert f"Detour is listening on {url}" in guide
    # Printed once the gateway is ready (its startup lines come first), so the first try works.
    lines = guide.splitlines()
    assert any("Application startup complete" in line for line in
               lines[:next(i for i, line in enumerate(lines) if line.startswith("Detour is listening"))])
    with httpx.Client(base_url=url, timeout=10) as c:
        r = c.post("/v1/chat/completions", json=chat_body())
        assert r.status_code == 200 and r.headers["x-detour-target"] == "primary/gpt-4o-mini"
        # "Break the primary": run the printed command.
        m = re.search(r"curl -s -X PUT (\S+/_sim/faults) -d '([^']+)'", guide)
        assert m, guide
        httpx.put("http://" + m.group(1), content=m.group(2), timeout=5).raise_for_status()
        targets = []
        for _ in range(8):
            r = c.post("/v1/chat/completions", json=chat_body())
            assert r.status_code == 200, r.text
            targets.append(r.headers["x-detour-target"])
        assert set(targets) == {"secondary/llama-3-8b"}
        assert 'detour_breaker_state{model="gpt-4o-mini",provider="primary"} 2.0' in c.get("/metrics").text
    # SIGTERM to devrun alone (a supervisor, `kill`): it must stop its children itself.
    children_exit_on(run, lambda: run.proc.send_signal(signal.SIGTERM))


def test_ctrl_c_stops_everything(devrun):
    run = devrun("--port", str(free_port()), "--primary-port", "0", "--secondary-port", "0")
    run.guide()
    # Ctrl-C in a terminal signals the whole foreground process group.
    children_exit_on(run, lambda: os.killpg(run.proc.pid, signal.SIGINT))


def test_busy_port_fails_at_once_and_says_so(devrun):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        t0 = time.monotonic()
        run = devrun("--port", str(port))
        assert run.proc.wait(15) == 1
        elapsed = time.monotonic() - t0
    run.close()
    assert f"127.0.0.1:{port} is already in use" in "\n".join(run.stderr), run.stderr
    assert not any("Detour is listening" in line for line in run.stdout)
    assert elapsed < 10
