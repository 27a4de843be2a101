"""Built-in load generator (aiohttp client), run as its own process by `bench/run.py`.

Two modes, both closed-loop with N keep-alive connections, each connection sending its next
request as soon as the previous response has been read completely:

  throughput  for `--warmup` s (discarded) then `--duration` s: requests/s, latency p50/p90/p99
              of complete responses. Used when `wrk` is not installed; a Python client is far
              slower than wrk, so on the shared core it is usually the bottleneck (run.py says so).
  ttft        streaming only: time from sending the request to the first *content-bearing*
              SSE chunk (a delta with non-empty `content`), parsed client-side like an SDK
              would see it, and the time to the end of the stream.

Prints one line `BENCH_JSON {...}` (latencies in microseconds).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time

import aiohttp
import orjson

from procs import HEADERS  # same directory: the headers every target gets


def pct(values: list[float], p: float) -> float:
    if not values:
        return 0.0
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(p / 100 * len(s) + 0.5) - 1))]


def _first_content(buf: bytes) -> bool:
    """True once `buf` holds a complete SSE event whose delta has non-empty content."""
    for event in buf.split(b"\n\n")[:-1]:
        for line in event.split(b"\n"):
            if not line.startswith(b"data:"):
                continue
            data = line[5:].strip()
            if data == b"[DONE]":
                continue
            try:
                doc = orjson.loads(data)
            except orjson.JSONDecodeError:
                continue
            for choice in doc.get("choices") or ():
                if (choice.get("delta") or {}).get("content"):
                    return True
    return False


def _mark_start(loop: asyncio.AbstractEventLoop, t_start: float) -> list[float]:
    """At the end of the warm-up, tell the parent (which then samples CPU counters) and note our CPU."""
    cpu = [time.process_time()]

    def mark() -> None:
        cpu[0] = time.process_time()
        print("MEASURE_START", flush=True)

    loop.call_at(t_start, mark)
    return cpu


async def throughput(url: str, body: bytes, conns: int, warmup: float, duration: float) -> dict:
    headers = dict(HEADERS)
    connector = aiohttp.TCPConnector(limit=conns, force_close=False)
    lat: list[float] = []
    errors = 0
    loop = asyncio.get_running_loop()
    t_start = loop.time() + warmup
    t_end = t_start + duration
    cpu = _mark_start(loop, t_start)

    async with aiohttp.ClientSession(connector=connector, skip_auto_headers=("User-Agent",)) as s:
        async def worker() -> None:
            nonlocal errors
            while True:
                t0 = time.perf_counter()
                now = loop.time()
                if now >= t_end:
                    return
                try:
                    async with s.post(url, data=body, headers=headers) as resp:
                        await resp.read()
                        ok = resp.status == 200
                except aiohttp.ClientError:
                    ok = False
                if loop.time() >= t_start and now >= t_start:
                    if ok:
                        lat.append(time.perf_counter() - t0)
                    else:
                        errors += 1

        await asyncio.gather(*(worker() for _ in range(conns)))
    n = len(lat)
    return {"requests": n, "cpu_s": time.process_time() - cpu[0], "duration_us": int(duration * 1e6), "errors_status": errors,
            "p50_us": pct(lat, 50) * 1e6, "p90_us": pct(lat, 90) * 1e6, "p99_us": pct(lat, 99) * 1e6,
            "mean_us": (sum(lat) / n * 1e6) if n else 0.0}


async def ttft(url: str, body: bytes, conns: int, warmup: float, duration: float) -> dict:
    headers = dict(HEADERS)
    connector = aiohttp.TCPConnector(limit=conns)
    firsts: list[float] = []
    totals: list[float] = []
    errors = 0
    loop = asyncio.get_running_loop()
    t_start = loop.time() + warmup
    t_end = t_start + duration
    cpu = _mark_start(loop, t_start)

    async with aiohttp.ClientSession(connector=connector, skip_auto_headers=("User-Agent",)) as s:
        async def worker() -> None:
            nonlocal errors
            while loop.time() < t_end:
                measure = loop.time() >= t_start
                t0 = time.perf_counter()
                first = None
                try:
                    async with s.post(url, data=body, headers=headers) as resp:
                        buf = b""
                        async for data in resp.content.iter_any():
                            if first is None:
                                buf += data
                                if _first_content(buf):
                                    first = time.perf_counter() - t0
                        ok = resp.status == 200 and first is not None
                except aiohttp.ClientError:
                    ok = False
                if measure:
                    if ok:
                        firsts.append(first)
                        totals.append(time.perf_counter() - t0)
                    else:
                        errors += 1

        await asyncio.gather(*(worker() for _ in range(conns)))
    return {"requests": len(firsts), "errors_status": errors, "cpu_s": time.process_time() - cpu[0],
            "ttft_p50_us": pct(firsts, 50) * 1e6, "ttft_p90_us": pct(firsts, 90) * 1e6,
            "ttft_p99_us": pct(firsts, 99) * 1e6,
            "total_p50_us": pct(totals, 50) * 1e6, "total_p99_us": pct(totals, 99) * 1e6}


def main() -> int:
    p = argparse.ArgumentParser(description="Detour benchmark load generator (aiohttp)")
    p.add_argument("--url", required=True)
    p.add_argument("--body-file", required=True)
    p.add_argument("--connections", type=int, default=16)
    p.add_argument("--warmup", type=float, default=2.0)
    p.add_argument("--duration", type=float, default=10.0)
    p.add_argument("--mode", choices=("throughput", "ttft"), default="throughput")
    a = p.parse_args()
    with open(a.body_file, "rb") as f:
        body = f.read()
    fn = throughput if a.mode == "throughput" else ttft
    try:
        import uvloop
        result = uvloop.run(fn(a.url, body, a.connections, a.warmup, a.duration))
    except ImportError:
        result = asyncio.run(fn(a.url, body, a.connections, a.warmup, a.duration))
    print("BENCH_JSON " + orjson.dumps(result).decode(), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
