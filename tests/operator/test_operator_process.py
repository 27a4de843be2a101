"""`detour-operator` as a process: kopf peering, liveness, metrics, and a clean SIGTERM shutdown."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import urllib.request

from conftest import NS, apply_examples, wait_for


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=1) as resp:
        return resp.read().decode()


def test_cli_runs_with_peering_liveness_metrics_and_stops_on_sigterm(k8s, core, custom):
    custom.create_namespaced_custom_object("kopf.dev", "v1", NS, "kopfpeerings", {
        "apiVersion": "kopf.dev/v1", "kind": "KopfPeering", "metadata": {"name": "detour"}})
    live, metrics, ready = free_port(), free_port(), free_port()
    env = {**os.environ, "KUBECONFIG": str(k8s.kubeconfig), "DETOUR_OPERATOR_METRICS_PORT": str(metrics)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "detour_operator.cli", "-n", NS, "--peering", "detour", "--verbose",
         f"--liveness=http://127.0.0.1:{live}/healthz", f"--readiness=http://127.0.0.1:{ready}/readyz"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_for(lambda: http_get(f"http://127.0.0.1:{live}/healthz"), 15, what="liveness endpoint")
        # the peering object exists: ready (a 503 would raise here)
        wait_for(lambda: '"ready": true' in http_get(f"http://127.0.0.1:{ready}/readyz"), 15, what="ready")
        apply_examples(k8s, custom)
        assert core.read_namespaced_config_map("detour-routing", NS).data["config.yaml"]
        text = wait_for(lambda: (t := http_get(f"http://127.0.0.1:{metrics}/metrics"))
                        and 'result="published"' in t and t, 5)
        assert "detour_operator_reconcile_total" in text and "detour_operator_reconcile_errors_total" in text
        peering = custom.get_namespaced_custom_object("kopf.dev", "v1", NS, "kopfpeerings", "detour")
        assert peering.get("status"), "the operator announced itself in the peering object"
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            out, _ = proc.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, _ = proc.communicate()
    assert proc.returncode == 0, out
    assert "sk-example-openai-key" not in out
