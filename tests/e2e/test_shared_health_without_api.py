"""Without API access the proxy serves on local health only, says so once, and never waits for
the API server: not when it refuses connections, and not when it accepts them and never answers
(a blackhole) while requests trip a breaker, which wakes the publisher."""

from __future__ import annotations

import socket
import threading
import time

import yaml

from e2e.conftest import MODEL, NS, config
from e2e.proxyproc import ProxyProcess, free_port, write_atomic
from support import wait_until


class Blackhole:
    """A loopback TCP server that accepts connections and never reads or answers."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.accepted: list[socket.socket] = []
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted.append(conn)

    def close(self) -> None:
        self.sock.close()
        for c in self.accepted:
            c.close()


def kubeconfig(path, server: str):
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "x",
        "clusters": [{"name": "x", "cluster": {"server": server}}],
        "users": [{"name": "x", "user": {"token": "t"}}],
        "contexts": [{"name": "x", "context": {"cluster": "x", "user": "x"}}]}))
    return path


def test_without_api_access_the_proxy_serves_on_local_health_and_says_so_once(tmp_path, sim_a, sim_b):
    sim_a.reset()
    sim_b.reset()
    hole = Blackhole()
    refused = kubeconfig(tmp_path / "refused", f"http://127.0.0.1:{free_port()}")  # nothing listens
    blackholed = kubeconfig(tmp_path / "blackholed", f"http://127.0.0.1:{hole.port}")
    healthy = tmp_path / "healthy.yaml"
    write_atomic(healthy, config(sim_a, sim_b, fail_a=False, heartbeat=0.5))
    failing = tmp_path / "failing.yaml"   # A fails for this proxy: its breaker opens on the 1st request
    write_atomic(failing, config(sim_a, sim_b, fail_a=True, heartbeat=0.5))
    env = {"POD_NAME": "pod-1", "POD_NAMESPACE": NS}
    down = ProxyProcess(healthy, env={**env, "KUBECONFIG": str(refused)}, log_path=tmp_path / "down.log")
    hung = ProxyProcess(failing, env={**env, "KUBECONFIG": str(blackholed)}, log_path=tmp_path / "hung.log")
    no_env = ProxyProcess(healthy, env={"POD_NAME": "", "POD_NAMESPACE": "", "KUBECONFIG": str(refused)},
                          log_path=tmp_path / "no-env.log")
    try:
        for p in (down, hung, no_env):
            p.wait_started()

        # Blackholed API: requests trip A's breaker (the publisher is woken) and keep flowing fast.
        wait_until(lambda: hole.accepted, 5, "the proxy to connect to the blackholed API server")
        latencies, targets = [], []
        for _ in range(15):
            t0 = time.monotonic()
            r = hung.chat(MODEL)
            latencies.append(time.monotonic() - t0)
            assert r.status_code == 200
            targets.append(r.headers["x-detour-target"])
        t0 = time.monotonic()
        assert hung.readyz().status_code == 200
        latencies.append(time.monotonic() - t0)
        assert hung.metric("detour_breaker_state", provider="a", model=MODEL) == 2, "A's breaker opened"
        assert set(targets) == {f"b/{MODEL}"}
        assert max(latencies) < 1.0, f"a request waited for the API server: {max(latencies):.2f}s"
        assert hung.metric("detour_shared_health_publish_total", result="success") == 0
        assert hung.metric("detour_shared_health_api_available") == 0

        # Refused connections: retries with backoff, one log line, the gauge at 0.
        wait_until(lambda: down.metric("detour_shared_health_publish_total", result="error") >= 3, 10,
                   "publish retries")
        for p in (down, no_env):
            r = p.chat(MODEL)
            assert r.status_code == 200 and r.headers["x-detour-target"] == f"a/{MODEL}"
            assert p.readyz().status_code == 200
            assert p.metric("detour_shared_health_api_available") == 0
        log = down.log()
        assert log.count("Kubernetes API not available") == 1, log
        assert no_env.log().count("POD_NAME/POD_NAMESPACE not set") == 1
        assert no_env.metric("detour_shared_health_publish_total", result="error") == 0
    finally:
        for p in (down, hung, no_env):
            p.stop()
        hole.close()
