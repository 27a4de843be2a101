"""`make run`: two simulated providers and the gateway on the embedded default config.

Starts `detour-sim` as `primary` (:9101) and `secondary` (:9102), then `detour-proxy --config
examples/standalone.yaml` on 127.0.0.1:8080 in the foreground, and prints what to try.
Ctrl-C stops all three.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "examples" / "standalone.yaml"

GUIDE = """
Detour is listening on http://127.0.0.1:8080 (config: examples/standalone.yaml)
  primary   = simulated OpenAI on http://127.0.0.1:9101
  secondary = simulated OpenAI-compatible server on http://127.0.0.1:9102

Try:
  curl -s localhost:8080/v1/chat/completions -H 'content-type: application/json' \\
       -d '{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}]}' -i
  (the x-detour-target header names who answered)

Break the primary and watch requests keep succeeding via the secondary:
  curl -s -X PUT localhost:9101/_sim/faults -d '{"status":503}'
  for i in $(seq 20); do curl -s -o /dev/null -w '%{http_code} ' localhost:8080/v1/chat/completions \\
       -H 'content-type: application/json' -d '{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}]}'; done
  curl -s localhost:8080/metrics | grep -E 'detour_breaker_state|detour_fallbacks_total'
Heal it:   curl -s -X DELETE localhost:9101/_sim/faults
Python:    OpenAI(base_url="http://127.0.0.1:8080/v1", api_key="unused").chat.completions.create(...)
"""


def _start_sim(name: str, port: int, flavor: str = "openai") -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "detour_sim", "--flavor", flavor, "--name", name, "--host", "127.0.0.1",
         "--port", str(port)], stdout=subprocess.PIPE, text=True)
    line = proc.stdout.readline() if proc.stdout else ""
    if "listening" not in line:
        proc.kill()
        raise SystemExit(f"detour-sim {name} failed to start on port {port} (is the port in use?)")
    return proc


def main() -> None:
    sims = [_start_sim("primary", 9101), _start_sim("secondary", 9102)]
    print(GUIDE, flush=True)
    try:
        os.environ.setdefault("PYTHONUNBUFFERED", "1")
        subprocess.run([sys.executable, "-m", "detour_proxy", "--config", str(CONFIG),
                        "--host", "127.0.0.1", "--port", "8080"], check=False)
    except KeyboardInterrupt:
        pass
    finally:
        for p in sims:
            p.terminate()
        for p in sims:
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                p.kill()


if __name__ == "__main__":
    main()
