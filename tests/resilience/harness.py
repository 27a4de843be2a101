"""Shared machinery of the resilience suite: the proxy as a real subprocess, a bounded load
generator, Prometheus scraping, process sampling and the results file.

Everything targets 127.0.0.1. Every load run is bounded by a request count and/or a
duration *and* by a hard wall-clock cap, so nothing here can run away.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import socket
import statistics
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import aiohttp
import httpx
import psutil

SOAK = os.environ.get("DETOUR_SOAK") == "1"
SCALE = "soak" if SOAK else "ci"
HERE = Path(__file__).resolve().parent
RESULTS_DIR = HERE / "results"
REPO = HERE.parent.parent


def scaled(ci: Any, soak: Any) -> Any:
    """The CI-scale value, or the soak-scale one under DETOUR_SOAK=1."""
    return soak if SOAK else ci


# --------------------------------------------------------------------------- results file

def record_result(scenario: str, figures: dict[str, Any]) -> None:
    """Merge one scenario's figures into results/<scale>.json and print them (pytest -s)."""
    RESULTS_DIR.mkdir(exist_ok=True)
    path = RESULTS_DIR / f"{SCALE}.json"
    try:
        doc = json.loads(path.read_text())
    except (FileNotFoundError, ValueError):
        doc = {}
    figures = {"measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "scale": SCALE, **figures}
    doc[scenario] = figures
    path.write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")
    print(f"\n[resilience:{SCALE}] {scenario}: {json.dumps(figures, sort_keys=True)}")


# --------------------------------------------------------------------------- config

def sim_port(sim: Any) -> int:
    return int(sim.url.rsplit(":", 1)[1])


def gateway_config(*sims: Any, strategy: str = "priority", retry: dict[str, Any] | None = None,
                   breaker: dict[str, Any] | None = None, timeouts: dict[str, Any] | None = None,
                   retry_budget: dict[str, Any] | None = None, route: dict[str, Any] | None = None,
                   server: dict[str, Any] | None = None, health: dict[str, Any] | None = None) -> dict[str, Any]:
    """One route `chat` (model gpt-4o-mini) over the given simulators, in priority order."""
    providers = []
    targets = []
    for i, s in enumerate(sims):
        name = s.name
        prov = {"name": name, "type": "openai-compatible", "baseURL": s.v1, "apiKey": {"value": f"sk-{name}-SECRET"}}
        if timeouts:
            prov["timeouts"] = timeouts
        providers.append(prov)
        targets.append({"provider": name, "model": "gpt-4o-mini", "priority": i})
    r = {"name": "chat", "match": {"models": ["gpt-4o-mini"]}, "strategy": strategy, "targets": targets,
         "retry": retry or {"attempts": 2, "backoff": {"initial": "10ms", "max": "50ms"}}, "timeout": "10s"}
    r.update(route or {})
    cfg = {"providers": providers, "routes": [r],
           "health": {"window": "60s", "breaker": {"failureRatio": 0.5, "minRequests": 10, "consecutiveFailures": 5,
                                                   "cooldown": "1s", "maxCooldown": "3s", "halfOpenProbes": 1,
                                                   **(breaker or {})}, **(health or {})},
           "retryBudget": retry_budget or {"ratio": 0.2, "minPerSecond": 5}}
    if server:
        cfg["server"] = server
    return cfg


# --------------------------------------------------------------------------- proxy process

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ProxyProcess:
    """`python tests/resilience/proxy_entry.py --config FILE` (the real CLI) on 127.0.0.1."""

    def __init__(self, config: dict[str, Any], workdir: Path, *, env: dict[str, str] | None = None,
                 name: str = "proxy") -> None:
        self.config_path = workdir / f"{name}-config.json"
        self.config_path.write_text(json.dumps(config))
        self.log_path = workdir / f"{name}.log"
        self.port = free_port()
        self._env = {**os.environ, **(env or {})}
        self._log = None
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def __enter__(self) -> ProxyProcess:
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            [sys.executable, str(HERE / "proxy_entry.py"), "--config", str(self.config_path),
             "--host", "127.0.0.1", "--port", str(self.port), "--no-access-log", "--no-watch",
             "--log-level", "warning"],
            stdout=self._log, stderr=subprocess.STDOUT, env=self._env, cwd=str(REPO))
        deadline = time.monotonic() + 20
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"proxy exited at start ({self.proc.returncode}): {self.log()}")
            try:
                if httpx.get(self.url + "/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"proxy did not start: {self.log()}")
            time.sleep(0.05)
        return self

    def __exit__(self, *exc: Any) -> None:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        if self._log is not None:
            self._log.close()

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def assert_healthy(self) -> None:
        """Alive, answering /healthz quickly, and nothing unhandled in its log."""
        assert self.proc is not None and self.proc.poll() is None, f"proxy died: {self.log()[-4000:]}"
        t0 = time.monotonic()
        r = httpx.get(self.url + "/healthz", timeout=2)
        assert r.status_code == 200 and time.monotonic() - t0 < 1.0
        self.assert_no_crash_in_log()

    def assert_no_crash_in_log(self) -> None:
        text = self.log()
        bad = [ln for ln in text.splitlines()
               if "Traceback" in ln or "Exception in ASGI" in ln or '"level":"error"' in ln
               or '"level":"critical"' in ln]
        assert not bad, "proxy logged errors:\n" + "\n".join(bad[:20]) + "\n" + text[-4000:]

    # -- process sampling -------------------------------------------------------------
    def rss(self) -> int:
        """Resident set size in bytes, from /proc/PID/status."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise RuntimeError("no VmRSS")

    def connections(self, upstream_ports: set[int] | None = None) -> dict[str, int]:
        """ESTABLISHED TCP sockets of the proxy: client-facing (local port = proxy port) and
        upstream (remote port in `upstream_ports`, or any other)."""
        out = {"client": 0, "upstream": 0, "other": 0}
        for c in psutil.Process(self.pid).net_connections(kind="tcp"):
            if c.status != psutil.CONN_ESTABLISHED:
                continue
            if c.laddr and c.laddr.port == self.port:
                out["client"] += 1
            elif upstream_ports is None or (c.raddr and c.raddr.port in upstream_ports):
                out["upstream"] += 1
            else:
                out["other"] += 1
        return out

    def introspect(self) -> dict[str, Any]:
        return httpx.get(self.url + "/_test/introspect", timeout=5).json()

    def metrics(self) -> Metrics:
        return Metrics(httpx.get(self.url + "/metrics", timeout=5).text)


# --------------------------------------------------------------------------- Prometheus text

_SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)')
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


class Metrics:
    def __init__(self, text: str) -> None:
        self.samples: list[tuple[str, dict[str, str], float]] = []
        for line in text.splitlines():
            if not line or line.startswith("#"):
                continue
            m = _SAMPLE.match(line)
            if m:
                labels = dict(_LABEL.findall(m.group(2) or ""))
                self.samples.append((m.group(1), labels, float(m.group(3))))

    def get(self, name: str, **labels: str) -> float:
        """Sum of the samples of `name` whose labels include `labels`."""
        return sum(v for n, lab, v in self.samples
                   if n == name and all(lab.get(k) == val for k, val in labels.items()))


def wait_for_metric(proxy: ProxyProcess, name: str, pred: Callable[[float], bool], timeout: float,
                    **labels: str) -> float:
    """Poll /metrics (bounded) until pred(value) holds; returns the value."""
    deadline = time.monotonic() + timeout
    while True:
        v = proxy.metrics().get(name, **labels)
        if pred(v):
            return v
        if time.monotonic() > deadline:
            raise AssertionError(f"{name}{labels} = {v} did not satisfy the condition within {timeout}s")
        time.sleep(0.05)


# --------------------------------------------------------------------------- load generator

@dataclass(slots=True)
class Sample:
    t: float          # start, seconds since the run began
    latency: float
    status: int       # 0 = transport error / client timeout
    target: str
    attempts: int
    stream: bool
    error: str = ""   # non-empty for anything the client would see as an error
    retry_after: str = ""   # the Retry-After header of the reply, if any


@dataclass
class LoadResult:
    samples: list[Sample] = field(default_factory=list)
    wall: float = 0.0

    @property
    def n(self) -> int:
        return len(self.samples)

    def errors(self, t0: float = 0.0, t1: float = float("inf")) -> list[Sample]:
        return [s for s in self.samples if s.error and t0 <= s.t < t1]

    def targets(self, t0: float = 0.0, t1: float = float("inf")) -> Counter[str]:
        return Counter(s.target for s in self.samples if t0 <= s.t < t1)

    def latencies(self, t0: float = 0.0, t1: float = float("inf")) -> list[float]:
        return sorted(s.latency for s in self.samples if t0 <= s.t < t1)

    def pct(self, q: float, t0: float = 0.0, t1: float = float("inf")) -> float:
        lat = self.latencies(t0, t1)
        if not lat:
            return float("nan")
        return lat[min(len(lat) - 1, int(q * len(lat)))]

    def rps(self) -> float:
        return self.n / self.wall if self.wall else 0.0

    def summary(self) -> dict[str, Any]:
        lat = self.latencies()
        return {"requests": self.n, "wall_s": round(self.wall, 2), "rps": round(self.rps(), 1),
                "client_errors": len(self.errors()),
                "error_kinds": dict(Counter(s.error.split(":")[0] for s in self.errors())),
                "p50_ms": round(1000 * self.pct(0.5), 1) if lat else None,
                "p99_ms": round(1000 * self.pct(0.99), 1) if lat else None,
                "max_ms": round(1000 * lat[-1], 1) if lat else None,
                "targets": dict(self.targets()),
                "mean_attempts_per_request": round(statistics.fmean(s.attempts for s in self.samples), 3)
                if self.samples else None}


def chat(model: str = "gpt-4o-mini", text: str = "hi", stream: bool = False, **extra: Any) -> dict[str, Any]:
    body = {"model": model, "messages": [{"role": "user", "content": text}], **extra}
    if stream:
        body["stream"] = True
    return body


async def one_request(session: aiohttp.ClientSession, url: str, body: dict[str, Any], t_run: float,
                      timeout: float) -> Sample:
    """One client request; a stream is read to the end and judged like an SDK would."""
    stream = bool(body.get("stream"))
    t0 = time.monotonic()
    status, target, attempts, error, retry_after = 0, "", 0, "", ""
    try:
        async with asyncio.timeout(timeout):
            async with session.post(url + "/v1/chat/completions", json=body) as resp:
                status = resp.status
                target = resp.headers.get("x-detour-target", "")
                attempts = int(resp.headers.get("x-detour-attempts", "0") or 0)
                retry_after = resp.headers.get("retry-after", "")
                raw = await resp.read()
        if status != 200:
            error = f"http_{status}"
        elif stream:
            if b"event: error" in raw or not raw.rstrip().endswith(b"data: [DONE]"):
                error = "stream_error"
            elif b'"content"' not in raw:
                error = "stream_empty"
        else:
            doc = json.loads(raw)
            if not doc.get("choices") or not doc["choices"][0]["message"].get("content"):
                error = "empty_body"
    except TimeoutError:
        error = "client_timeout"
    except (aiohttp.ClientError, ValueError) as exc:
        error = f"transport:{type(exc).__name__}"
    return Sample(t0 - t_run, time.monotonic() - t0, status, target, attempts, stream, error, retry_after)


async def run_load(url: str, *, body: Callable[[int], dict[str, Any]], concurrency: int,
                   requests: int | None = None, duration: float | None = None, rate: float | None = None,
                   timeout: float = 15.0, on_progress: Callable[[int], Any] | None = None,
                   hard_cap: float | None = None, stop: asyncio.Event | None = None) -> LoadResult:
    """Send requests with at most `concurrency` in flight, until `requests` were sent or
    `duration` passed (whichever first). With `rate`, request i starts no earlier than
    i/rate s into the run (open-ish loop: steady offered load, bounded concurrency).
    `stop` ends the run early (in-flight requests finish). `hard_cap` (default
    duration+timeout+10 or 600 s) stops everything regardless."""
    assert requests is not None or duration is not None
    limit = requests if requests is not None else 10**9
    cap = hard_cap or ((duration or 0) + timeout + 10 if duration else 600.0)
    result = LoadResult()
    t_run = time.monotonic()
    next_i = 0
    connector = aiohttp.TCPConnector(limit=concurrency, limit_per_host=concurrency, force_close=False)

    async def worker(session: aiohttp.ClientSession) -> None:
        nonlocal next_i
        while True:
            i = next_i
            if i >= limit:
                return
            next_i = i + 1          # no await since the read: workers never share an index
            if rate is not None:
                wait = t_run + i / rate - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
            if duration is not None and time.monotonic() - t_run >= duration:
                return
            if stop is not None and stop.is_set():
                return
            s = await one_request(session, url, body(i), t_run, timeout)
            result.samples.append(s)
            if on_progress is not None:
                on_progress(len(result.samples))

    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=None)) as session:
        async with asyncio.timeout(cap):
            await asyncio.gather(*(worker(session) for _ in range(concurrency)))
    result.wall = time.monotonic() - t_run
    result.samples.sort(key=lambda s: s.t)
    return result


class MetricTimeline:
    """Polls /metrics in the background (bounded by the caller's cancel) and keeps
    (t, value) for chosen series, so transitions can be timed without fixed sleeps."""

    def __init__(self, url: str, series: dict[str, tuple[str, dict[str, str]]], interval: float = 0.05) -> None:
        self.url = url
        self.series = series
        self.interval = interval
        self.points: list[tuple[float, dict[str, float]]] = []
        self.t0 = time.monotonic()

    async def run(self) -> None:
        async with httpx.AsyncClient(timeout=2) as c:
            while True:
                try:
                    m = Metrics((await c.get(self.url + "/metrics")).text)
                    self.points.append((time.monotonic() - self.t0,
                                        {k: m.get(n, **lab) for k, (n, lab) in self.series.items()}))
                except httpx.HTTPError:
                    pass
                await asyncio.sleep(self.interval)

    def first_time(self, key: str, pred: Callable[[float], bool], after: float = 0.0) -> float | None:
        for t, vals in self.points:
            if t >= after and pred(vals[key]):
                return t
        return None
