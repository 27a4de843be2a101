"""The real control plane for tests: start it (hack/cluster/up.sh), talk to it as admin or as a
ServiceAccount, read its audit log.

Why a real API server and not only the emulator: the emulator accepts any caller and any object.
The real one authenticates (a proxy that sends no token is `system:anonymous`), authorizes with the
chart's RBAC, validates CRD schemas and CEL rules, enforces object size limits, runs admission
(Pod Security, ValidatingAdmissionPolicy) and garbage-collects owned objects.

API (used by tests/cluster/conftest.py's fixtures):
- `Cluster.ensure(root)` starts the cluster of the work tree `root` unless it is up; `started` says
  whether this call started it (the fixture then stops it at the end of the session).
- `kubectl(*args, ns=None, input=None, check=True, kubeconfig=None)` and `helm(*args, ...)`: run the
  built binaries as admin (or with another kubeconfig); return `subprocess.CompletedProcess` (text).
- `get(kind, name, ns)` / `get_json(*args)`: parsed JSON.
- `token(sa, ns, pod=None, seconds=3600)`: a TokenRequest token of ServiceAccount `sa`, bound to a
  Pod when `pod` is given (what the kubelet mounts into that Pod).
- `sa_kubeconfig(sa, ns, path, pod=None)`: a kubeconfig that authenticates as that ServiceAccount.
- `audit(since)`: audit events (dicts) received at or after the wall-clock time `since`.
- `wait_for(predicate, timeout, what)`: poll a condition with a deadline (no fixed sleeps).
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from typing import Any, TypeVar

T = TypeVar("T")
ROOT = pathlib.Path(__file__).resolve().parents[2]


class Cluster:
    def __init__(self, root: pathlib.Path = ROOT) -> None:
        self.root = root
        self.dir = root / ".cluster"
        self.bin = self.dir / "bin"
        self.kubeconfig = self.dir / "kubeconfig"
        self.started = False

    @classmethod
    def ensure(cls, root: pathlib.Path = ROOT) -> Cluster:
        c = cls(root)
        was_up = c._up()
        proc = subprocess.run([str(root / "hack/cluster/up.sh")], capture_output=True, text=True,
                              timeout=3600)
        if proc.returncode != 0:
            raise RuntimeError(f"make cluster failed:\n{proc.stdout}\n{proc.stderr}")
        c.started = not was_up
        return c

    def _up(self) -> bool:
        if not self.kubeconfig.exists():
            return False
        return self.kubectl("get", "--raw", "/readyz", check=False, timeout=10).returncode == 0

    def stop(self) -> None:
        subprocess.run([str(self.root / "hack/cluster/down.sh")], capture_output=True, timeout=60)

    @property
    def server(self) -> str:
        return f"https://127.0.0.1:{(self.dir / 'api-port').read_text().strip()}"

    @property
    def env(self) -> dict[str, str]:
        """Environment for child processes (operator, proxies): these binaries first on PATH."""
        return {**os.environ, "PATH": f"{self.bin}:{os.environ.get('PATH', '')}",
                "KUBECONFIG": str(self.kubeconfig)}

    def _run(self, tool: str, args: tuple[str, ...], *, input: str | None, check: bool,
             timeout: float, kubeconfig: pathlib.Path | None) -> subprocess.CompletedProcess[str]:
        cmd = [str(self.bin / tool), "--kubeconfig", str(kubeconfig or self.kubeconfig), *args]
        proc = subprocess.run(cmd, input=input, capture_output=True, text=True, timeout=timeout,
                              env=self.env)
        if check and proc.returncode != 0:
            raise AssertionError(f"{tool} {' '.join(args)} failed ({proc.returncode}):\n"
                                 f"{proc.stdout}\n{proc.stderr}")
        return proc

    def kubectl(self, *args: str, ns: str | None = None, input: str | None = None, check: bool = True,
                timeout: float = 60, kubeconfig: pathlib.Path | None = None) -> subprocess.CompletedProcess[str]:
        if ns:
            args = ("-n", ns, *args)
        return self._run("kubectl", args, input=input, check=check, timeout=timeout, kubeconfig=kubeconfig)

    def helm(self, *args: str, ns: str | None = None, check: bool = True, timeout: float = 180,
             kubeconfig: pathlib.Path | None = None) -> subprocess.CompletedProcess[str]:
        if ns:
            args = ("-n", ns, *args)
        return self._run("helm", args, input=None, check=check, timeout=timeout, kubeconfig=kubeconfig)

    def get_json(self, *args: str, ns: str | None = None) -> Any:
        return json.loads(self.kubectl("get", *args, "-o", "json", ns=ns).stdout)

    def apply(self, manifest: dict[str, Any] | list[dict[str, Any]] | str, ns: str | None = None,
              check: bool = True) -> subprocess.CompletedProcess[str]:
        if not isinstance(manifest, str):
            items = manifest if isinstance(manifest, list) else [manifest]
            manifest = json.dumps({"apiVersion": "v1", "kind": "List", "items": items})
        return self.kubectl("apply", "-f", "-", ns=ns, input=manifest, check=check)

    def token(self, sa: str, ns: str, pod: str | None = None, seconds: int = 3600) -> str:
        args = ["create", "token", sa, f"--duration={seconds}s"]
        if pod:
            args += ["--bound-object-kind", "Pod", "--bound-object-name", pod]
        return self.kubectl(*args, ns=ns).stdout.strip()

    def sa_kubeconfig(self, sa: str, ns: str, path: pathlib.Path, pod: str | None = None) -> pathlib.Path:
        """A kubeconfig that is exactly this ServiceAccount (no admin certificate in it)."""
        tok = self.token(sa, ns, pod)
        ca = self.dir / "pki" / "ca.crt"
        cfg = {
            "apiVersion": "v1", "kind": "Config", "current-context": "sa",
            "clusters": [{"name": "c", "cluster": {"server": self.server, "certificate-authority": str(ca)}}],
            "users": [{"name": "u", "user": {"token": tok}}],
            "contexts": [{"name": "sa", "context": {"cluster": "c", "user": "u", "namespace": ns}}],
        }
        path.write_text(json.dumps(cfg))
        return path

    def audit(self, since: float) -> Iterator[dict[str, Any]]:
        """Audit events whose request was received at or after `since` (time.time())."""
        for f in (self.dir / "audit.log",):
            if not f.exists():
                continue
            with f.open() as fh:
                for line in fh:
                    try:
                        ev = json.loads(line)
                    except ValueError:
                        continue  # a line being written
                    ts = datetime.fromisoformat(ev["requestReceivedTimestamp"].replace("Z", "+00:00"))
                    if ts.timestamp() >= since:
                        yield ev


def wait_for(predicate: Callable[[], T], timeout: float, what: str, interval: float = 0.2) -> T:
    """Poll `predicate` until it returns something truthy; fail with `what` after `timeout` s."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        try:
            last = predicate()
        except AssertionError as exc:  # a kubectl call that failed this time
            last = exc
        else:
            if last:
                return last
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}; last: {last!r}")
        time.sleep(interval)
