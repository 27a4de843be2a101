"""Process plumbing for the benchmark: pinned child processes that are always cleaned up,
and the /proc readings (CPU time, per-core busy time, RSS) used to find the bottleneck."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

CLK_TCK = os.sysconf("SC_CLK_TCK")


class Procs:
    """Starts child processes pinned to a core; `close()` (also on errors/Ctrl-C) ends them all."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.children: list[subprocess.Popen] = []

    def start(self, name: str, argv: list[str], core: int, env: dict | None = None,
              pipe: bool = False) -> subprocess.Popen:
        """Start `argv` pinned to `core`; output goes to <log_dir>/<name>.log (stdout to a pipe if `pipe`)."""
        log = open(self.log_dir / f"{name}.log", "wb")
        proc = subprocess.Popen(
            argv, stdout=subprocess.PIPE if pipe else log, stderr=log if pipe else subprocess.STDOUT,
            stdin=subprocess.DEVNULL, env=env,
            preexec_fn=lambda: os.sched_setaffinity(0, {core}), start_new_session=True,
        )
        log.close()
        self.children.append(proc)
        return proc

    def stop(self, proc: subprocess.Popen, grace: float = 5.0) -> None:
        if proc.poll() is None:
            try:
                proc.send_signal(signal.SIGTERM)
                proc.wait(grace)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
            except ProcessLookupError:
                pass
        if proc in self.children:
            self.children.remove(proc)

    def close(self) -> None:
        for proc in list(self.children):
            try:
                self.stop(proc)
            except Exception:  # noqa: BLE001 - best effort: keep killing the others
                if proc.poll() is None:
                    proc.kill()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


#: Request headers of every benchmark request, to every target (the "rules + limits" run routes on
#: `x-team` and `x-detour-metadata`; the other targets ignore them). post.lua sends the same.
HEADERS = {"Content-Type": "application/json", "Authorization": "Bearer bench-key", "x-team": "bench",
           "x-detour-metadata": '{"tier":"standard"}'}


def wait_ready(proc: subprocess.Popen, url: str, body: bytes, timeout: float = 30.0) -> None:
    """Poll until a POST to `url` answers 200 (the server is up and routes to the upstream)."""
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args[:4]} exited with {proc.returncode}")
        try:
            req = urllib.request.Request(url, data=body, headers=HEADERS)
            with urllib.request.urlopen(req, timeout=2) as resp:
                resp.read()
                if resp.status == 200:
                    return
        except Exception as exc:  # noqa: BLE001 - not up yet
            last = exc
        time.sleep(0.1)
    raise RuntimeError(f"{url} not ready after {timeout}s: {last}")


def proc_cpu(pid: int) -> float:
    """User+system CPU seconds of a process."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def core_busy() -> dict[int, tuple[float, float]]:
    """Per core: (busy ticks, total ticks) from /proc/stat."""
    out = {}
    with open("/proc/stat") as f:
        for line in f:
            if line.startswith("cpu") and line[3].isdigit():
                name, *vals = line.split()
                v = [int(x) for x in vals[:8]]
                total = sum(v)
                out[int(name[3:])] = (total - v[3] - v[4], total)
    return out


def busy_share(before: dict, after: dict, core: int) -> float:
    b = after[core][0] - before[core][0]
    t = after[core][1] - before[core][1]
    return b / t if t else 0.0


def wait_idle(max_wait: float, threshold: float = 0.10, window: float = 1.0) -> float:
    """Wait (up to `max_wait` s) until the whole machine is idle: less than `threshold` of one core
    busy over a `window`, twice in a row. Returns the last busy level (in cores)."""
    deadline = time.monotonic() + max_wait
    quiet, busy = 0, 0.0
    while True:
        before = core_busy()
        time.sleep(window)
        after = core_busy()
        busy = sum(busy_share(before, after, c) for c in after)
        quiet = quiet + 1 if busy < threshold else 0
        if quiet >= 2 or time.monotonic() >= deadline:
            return busy


def rss_kib(pid: int) -> dict[str, int]:
    """VmRSS (now) and VmHWM (peak) of a process, in KiB."""
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(("VmRSS:", "VmHWM:")):
                k, v = line.split(":")
                out[k] = int(v.split()[0])
    return {"rss": out.get("VmRSS", 0), "peak": out.get("VmHWM", 0)}
