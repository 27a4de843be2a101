"""`make run`: two simulated providers and the gateway on the embedded default config.

Starts `detour-sim` as `primary` (:9101) and `secondary` (:9102), then `detour-proxy --config
examples/standalone.yaml` on 127.0.0.1:8080, waits until its `/readyz` answers 200 and only
then prints what to try: a guide printed earlier would send people to a port nothing listens
on yet (or, if 8080 is taken, to someone else's server). Ctrl-C or SIGTERM stops all three.

Ports can be moved with `--port/--primary-port/--secondary-port` or `DETOUR_RUN_PORT`,
`DETOUR_RUN_PRIMARY_PORT`, `DETOUR_RUN_SECONDARY_PORT` (`DETOUR_RUN_PORT=8081 make run`); a
provider port of 0 picks a free one. With other provider ports the example config is copied
to a temporary file with its two baseURLs rewritten.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "examples" / "standalone.yaml"
DEFAULT_PORTS = {"primary": 9101, "secondary": 9102}
READY_TIMEOUT = 30.0

GUIDE = """
Detour is listening on http://127.0.0.1:{port} (config: examples/standalone.yaml)
  primary   = simulated OpenAI on http://127.0.0.1:{primary}
  secondary = simulated OpenAI-compatible server on http://127.0.0.1:{secondary}

Try:
  curl -s 127.0.0.1:{port}/v1/chat/completions -H 'content-type: application/json' \\
       -d '{{"model":"gpt-4o-mini","messages":[{{"role":"user","content":"hi"}}]}}' -i
  (the x-detour-target header names who answered)

Break the primary and watch requests keep succeeding via the secondary:
  curl -s -X PUT 127.0.0.1:{primary}/_sim/faults -d '{{"status":503}}'
  for i in $(seq 20); do curl -s -o /dev/null -w '%{{http_code}} ' 127.0.0.1:{port}/v1/chat/completions \\
       -H 'content-type: application/json' -d '{{"model":"gpt-4o-mini","messages":[{{"role":"user","content":"hi"}}]}}'; done
  curl -s 127.0.0.1:{port}/metrics | grep -E 'detour_breaker_state|detour_fallbacks_total'
Heal it:   curl -s -X DELETE 127.0.0.1:{primary}/_sim/faults
Python:    OpenAI(base_url="http://127.0.0.1:{port}/v1", api_key="unused").chat.completions.create(...)
Stop:      Ctrl-C
"""


class Stop(Exception):
    """SIGTERM: unwind like Ctrl-C so the children are stopped too."""


def parse_args(argv: list[str] | None = None, env: Any = os.environ) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m detour_proxy.devrun", description=__doc__.splitlines()[0])
    p.add_argument("--port", type=int, default=int(env.get("DETOUR_RUN_PORT", 8080)),
                   help="the gateway's port on 127.0.0.1 (env DETOUR_RUN_PORT)")
    p.add_argument("--primary-port", type=int, default=int(env.get("DETOUR_RUN_PRIMARY_PORT", 9101)),
                   help="the primary simulator's port; 0 picks a free one (env DETOUR_RUN_PRIMARY_PORT)")
    p.add_argument("--secondary-port", type=int, default=int(env.get("DETOUR_RUN_SECONDARY_PORT", 9102)),
                   help="the secondary simulator's port; 0 picks a free one (env DETOUR_RUN_SECONDARY_PORT)")
    return p.parse_args(argv)


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)   # as uvicorn binds it
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _spawn_sim(name: str, port: int) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "detour_sim", "--flavor", "openai", "--name", name, "--host", "127.0.0.1",
         "--port", str(port)], stdout=subprocess.PIPE, text=True)


def _sim_port(name: str, port: int, proc: subprocess.Popen[str]) -> int:
    """The simulator's port, once its readiness line is printed (it is bound by then)."""
    line = proc.stdout.readline() if proc.stdout else ""
    if "listening on" not in line:
        raise SystemExit(f"devrun: detour-sim {name} failed to start on 127.0.0.1:{port} (is the port in use? "
                         f"set DETOUR_RUN_{name.upper()}_PORT)")
    return int(line.strip().rsplit(":", 1)[-1].rstrip("/"))


def _config_for(ports: dict[str, int], tmpdir: str) -> Path:
    """The example config, or a copy pointing at the simulators' actual ports."""
    if ports == DEFAULT_PORTS:
        return CONFIG
    text = CONFIG.read_text()
    for name, default in DEFAULT_PORTS.items():
        old = f"127.0.0.1:{default}/"
        if old not in text:
            raise SystemExit(f"devrun: {CONFIG} has no {old} for {name}; cannot move it")
        text = text.replace(old, f"127.0.0.1:{ports[name]}/")
    path = Path(tmpdir) / "standalone.yaml"
    path.write_text(text)
    return path


def _wait_ready(proxy: subprocess.Popen[bytes], port: int) -> None:
    """Poll /readyz until it answers 200; fail if the proxy exits or takes too long."""
    deadline = time.monotonic() + READY_TIMEOUT
    with httpx.Client(timeout=1.0) as client:
        while True:
            code = proxy.poll()
            if code is not None:
                raise SystemExit(f"devrun: detour-proxy exited with status {code} before it was ready "
                                 f"(is 127.0.0.1:{port} in use?)")
            try:
                if client.get(f"http://127.0.0.1:{port}/readyz").status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise SystemExit(f"devrun: detour-proxy not ready on 127.0.0.1:{port} after {READY_TIMEOUT:.0f}s")
            time.sleep(0.05)


def _stop(procs: list[subprocess.Popen[Any]]) -> None:
    """Terminate the children (gateway first) and wait for them; a second Ctrl-C or SIGTERM
    must not abandon them half-stopped."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    for p in procs:
        if p.poll() is None:
            p.terminate()
    for p in procs:
        try:
            p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def _on_sigterm(signum: int, frame: Any) -> None:
    raise Stop()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not _port_free(args.port):
        print(f"devrun: 127.0.0.1:{args.port} is already in use (another `make run`?). Stop it, or pick "
              f"another port: DETOUR_RUN_PORT=8081 make run", file=sys.stderr, flush=True)
        return 1
    signal.signal(signal.SIGTERM, _on_sigterm)
    children: list[subprocess.Popen[Any]] = []
    try:
        with tempfile.TemporaryDirectory(prefix="detour-run-") as tmpdir:
            try:
                wanted = {"primary": args.primary_port, "secondary": args.secondary_port}
                sims = {name: _spawn_sim(name, port) for name, port in wanted.items()}   # start in parallel
                children.extend(sims.values())
                ports = {name: _sim_port(name, wanted[name], proc) for name, proc in sims.items()}
                config = _config_for(ports, tmpdir)
                env = {**os.environ, "PYTHONUNBUFFERED": "1"}
                proxy = subprocess.Popen([sys.executable, "-m", "detour_proxy", "--config", str(config),
                                          "--host", "127.0.0.1", "--port", str(args.port)], env=env)
                children.insert(0, proxy)   # stopped first: it may still be talking to the sims
                _wait_ready(proxy, args.port)
                print(GUIDE.format(port=args.port, **ports), flush=True)
                return proxy.wait()
            except (KeyboardInterrupt, Stop):
                return 0
            finally:
                _stop(children)
    except SystemExit as exc:
        if isinstance(exc.code, str):
            print(exc.code, file=sys.stderr, flush=True)
            return 1
        raise


if __name__ == "__main__":
    sys.exit(main())
