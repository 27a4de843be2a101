"""The benchmark rows of the inbound APIs: POST /v1/responses and POST /v1/messages.

    .venv/bin/python bench/inbound.py      # about 3 minutes; needs valgrind (apt-get install valgrind)

For each endpoint, non-streamed and streamed: CPU instructions per request (callgrind, as in
bench/instructions.py: drift-proof) and requests/s (bench/loadgen.py, 16 connections, the server
pinned to core 0), for the raw-ASGI pass-through (bench/passthrough.py, forwarding the request
to a same-format upstream: /v1/responses to a Responses upstream, /v1/messages to a Messages
upstream) and for Detour. Detour forwards natively (issue 15): a Responses request reaches its
OpenAI target as the Responses API, a Messages request its Anthropic target as Messages, the
answer and stream events relayed as sent. The `translated` rows send the same request to a
target of the other format (Responses -> an openai-compatible target as chat completions,
Messages -> an OpenAI target as chat completions: two translations each way), against the
same pass-through. Chat is measured the same way for reference. The upstream sends a
Responses or Messages stream in one write (chat streams: one write per event), so the
pass-through streams of those two endpoints are cheaper than its chat stream.
Writes bench/results/inbound.md and .json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from instructions import callgrind, total_instructions  # noqa: E402
from procs import HEADERS, Procs, free_port, wait_ready  # noqa: E402
from run import BENCH, BODY, MODEL, PY, ROOT  # noqa: E402

import http.client  # noqa: E402

ENDPOINTS = {
    "chat": ("/v1/chat/completions", BODY),
    "responses": ("/v1/responses", {"model": MODEL, "instructions": "You are a helpful assistant.",
                                    "input": "Say something short."}),
    "messages": ("/v1/messages", {"model": MODEL, "max_tokens": 64, "system": "You are a helpful assistant.",
                                  "messages": [{"role": "user", "content": "Say something short."}]}),
}
CONFIG = """
providers:
  - {{name: bench, type: openai, baseURL: "{upstream}/v1", apiKey: {{value: sk-bench}}}}
  - {{name: claude, type: anthropic, baseURL: "{upstream}", apiKey: {{value: sk-ant-bench}}}}
  - {{name: compat, type: openai-compatible, baseURL: "{upstream}/v1", apiKey: {{value: sk-bench}}}}
routes:
  - name: translated-responses
    match: {{models: ["responses-translated"]}}
    targets: [{{provider: compat, model: {model}}}]
    retry: {{attempts: 2}}
  - name: translated-messages
    match: {{models: ["messages-translated"]}}
    targets: [{{provider: bench, model: {model}}}]
    retry: {{attempts: 2}}
  - name: chat
    match: {{models: ["{model}"]}}
    targets: [{{provider: bench, model: {model}}}]
    retry: {{attempts: 2}}
  - name: claude
    match: {{models: ["claude-bench"]}}
    targets: [{{provider: claude, model: {model}}}]
    retry: {{attempts: 2}}
"""


def drive(port: int, path: str, body: dict, n: int) -> None:
    raw = json.dumps(body).encode()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        for _ in range(n):
            conn.request("POST", path, raw, {**HEADERS, "anthropic-version": "2023-06-01"})
            resp = conn.getresponse()
            data = resp.read()
            if resp.status != 200:
                raise RuntimeError(f"HTTP {resp.status} on {path}: {data[:200]!r}")
    finally:
        conn.close()


def cells(server: str) -> list[tuple[str, str, dict]]:
    out = []
    for ep, (path, body) in ENDPOINTS.items():
        variants = [(ep, body)]
        if server == "detour" and ep == "messages":
            variants = [(ep, {**body, "model": "claude-bench"})]
        if ep != "chat":
            variants.append((f"{ep} translated", {**body, "model": f"{ep}-translated"} if server == "detour" else body))
        for name, b in variants:
            for stream in (False, True):
                out.append((f"{name} {'stream' if stream else 'non-stream'}", path,
                            {**b, "stream": True} if stream else b))
    return out


def start(server: str, upstream: str, tmp: Path, procs: Procs, core: int, wrap: list[str]) -> tuple[object, int]:
    port = free_port()
    if server == "passthrough":
        argv = [PY, str(BENCH / "passthrough.py"), "--upstream", upstream, "--port", str(port)]
    else:
        cfg = tmp / "detour.yaml"
        cfg.write_text(CONFIG.format(upstream=upstream, model=MODEL))
        argv = [PY, "-m", "detour_proxy", "--config", str(cfg), "--port", str(port), "--no-watch", "--no-access-log"]
    proc = procs.start(f"{server}{'-cg' if wrap else ''}", [*wrap, *argv], core)
    wait_ready(proc, f"http://127.0.0.1:{port}/v1/chat/completions", json.dumps(BODY).encode(), timeout=300)
    return proc, port


def instructions(server: str, upstream: str, tmp: Path, procs: Procs, a: argparse.Namespace) -> dict:
    prefix = tmp / f"cg.{server}"
    proc, port = start(server, upstream, tmp, procs, a.server_core,
                       ["valgrind", "--tool=callgrind", f"--callgrind-out-file={prefix}.%p"])
    out = {}
    try:
        for name, path, body in cells(server):
            drive(port, path, body, a.warmup)
            callgrind("-z", proc.pid)
            before = set(tmp.glob(f"{prefix.name}.{proc.pid}.*"))
            drive(port, path, body, a.requests)
            callgrind("-d", proc.pid)
            out[name] = total_instructions(prefix, proc.pid, before) / a.requests
            print(f"  {server:12} {name:22} {out[name] / 1000:8,.0f} k instructions/request", flush=True)
    finally:
        procs.stop(proc)
    return out


def throughput(server: str, upstream: str, tmp: Path, procs: Procs, a: argparse.Namespace) -> dict:
    proc, port = start(server, upstream, tmp, procs, a.server_core, [])
    out = {}
    try:
        for name, path, body in cells(server):
            body_file = tmp / "body.json"
            body_file.write_text(json.dumps(body))
            res = subprocess.run([PY, str(BENCH / "loadgen.py"), "--url", f"http://127.0.0.1:{port}{path}",
                                  "--body-file", str(body_file), "--connections", "16", "--warmup", "1",
                                  "--duration", str(a.duration)], capture_output=True, text=True, timeout=120,
                                 cwd=str(BENCH))
            line = next(x for x in res.stdout.splitlines() if x.startswith("BENCH_JSON "))
            doc = json.loads(line.split(" ", 1)[1])
            errors = sum(v for k, v in doc.items() if k.startswith("errors_"))
            out[name] = doc["requests"] / (doc["duration_us"] / 1e6)
            print(f"  {server:12} {name:22} {out[name]:9,.0f} req/s" + (f"  ERRORS {errors}" if errors else ""),
                  flush=True)
    finally:
        procs.stop(proc)
    return out


def render(res: dict) -> str:
    m, i, t = res["meta"], res["instructions"], res["throughput"]
    lines = [f"# Detour: inbound API rows ({m['date']}, commit {m['commit']})", "",
             f"Instructions: callgrind, {m['requests']} sequential keep-alive requests per cell after {m['warmup']} "
             f"warm-up requests. req/s: bench/loadgen.py (Python, 16 connections, {m['duration']} s; it shares "
             "core 1 with the upstream, so absolute req/s are capped by the client: compare the ratios). "
             "Pass-through forwards each endpoint to a same-format upstream; Detour forwards natively, "
             "and translates in the `translated` rows (see bench/inbound.py).", "",
             "| endpoint | pass-through k instr/req | Detour k instr/req | instr Detour / pass-through | "
             "pass-through req/s | Detour req/s | req/s Detour / pass-through |", "|---|---:|---:|---:|---:|---:|---:|"]
    for name in i["passthrough"]:
        p, d = i["passthrough"][name], i["detour"][name]
        tp, td = t["passthrough"][name], t["detour"][name]
        lines.append(f"| {name} | {p / 1000:,.0f} | {d / 1000:,.0f} | {d / p:.2f} | {tp:,.0f} | {td:,.0f} | "
                     f"{td / tp:.2f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--requests", type=int, default=300)
    p.add_argument("--warmup", type=int, default=60)
    p.add_argument("--duration", type=float, default=4.0)
    p.add_argument("--server-core", type=int, default=0)
    p.add_argument("--client-core", type=int, default=1)
    p.add_argument("--out", default=str(BENCH / "results"))
    a = p.parse_args(argv)
    if not shutil.which("valgrind"):
        p.error("valgrind is not installed (apt-get install -y valgrind)")
    tmp = Path(tempfile.mkdtemp(prefix="detour-inbound-"))
    procs = Procs(tmp)
    try:
        os.sched_setaffinity(0, {a.client_core})
        uport = free_port()
        up = procs.start("upstream", [PY, str(BENCH / "upstream.py"), "--port", str(uport)], a.client_core)
        upstream = f"http://127.0.0.1:{uport}"
        wait_ready(up, upstream + "/v1/chat/completions", json.dumps(BODY).encode())
        servers = ("passthrough", "detour")
        res = {"instructions": {s: instructions(s, upstream, tmp, procs, a) for s in servers},
               "throughput": {s: throughput(s, upstream, tmp, procs, a) for s in servers}}
    finally:
        procs.close()
    res["meta"] = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "requests": a.requests,
                   "warmup": a.warmup, "duration": a.duration,
                   "commit": subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                                            capture_output=True, text=True).stdout.strip()}
    md = render(res)
    print()
    print(md)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "inbound.md").write_text(md)
    (out / "inbound.json").write_text(json.dumps(res, indent=2) + "\n")
    shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
