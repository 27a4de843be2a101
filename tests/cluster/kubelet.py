"""A kubelet stand-in: runs the container of a real (Pending) Pod as a local process, the way the
kubelet would run it, so the chart's own Pod spec is what gets tested.

What it does for one Pod object read from the API server:
- command/args: the container's, with `detour-proxy`/`detour-operator` taken from this venv;
- env: literal values and `fieldRef` (metadata.name/namespace, spec.serviceAccountName);
- volumes: ConfigMap, Secret (with `items`, `optional`) and emptyDir, laid out like the kubelet's
  atomic writer (`<key> -> ..data/<key>`, `..data -> ..<version>`), bind-mounted at the container's
  mountPaths inside a private mount namespace (`unshare --mount`, needs root); `sync()` re-reads
  them from the API server, as the kubelet's periodic sync does;
- the ServiceAccount: a token bound to this Pod (TokenRequest), the cluster CA and the namespace at
  /var/run/secrets/kubernetes.io/serviceaccount, plus KUBERNETES_SERVICE_HOST/PORT, so the process
  authenticates exactly as in a cluster (in-cluster config, the chart's RBAC).
"""

from __future__ import annotations

import base64
import json
import os
import pathlib
import shlex
import subprocess
import sys
from typing import Any

from cluster.realkube import Cluster

SA_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"
VENV_BIN = pathlib.Path(sys.executable).parent


class Volume:
    """A directory laid out like a kubelet-mounted ConfigMap/Secret volume."""

    def __init__(self, root: pathlib.Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.version = 0
        self.keys: set[str] = set()

    def write(self, files: dict[str, bytes]) -> None:
        self.version += 1
        vdir = self.root / f"..v{self.version:04d}"
        vdir.mkdir()
        for key, data in files.items():
            (vdir / key).write_bytes(data)
        tmp = self.root / "..data_tmp"
        os.symlink(vdir.name, tmp)
        os.replace(tmp, self.root / "..data")
        for key in files.keys() - self.keys:
            os.symlink(f"..data/{key}", self.root / key)
        for key in self.keys - files.keys():
            (self.root / key).unlink()
        self.keys = set(files)


class PodProcess:
    def __init__(self, cluster: Cluster, ns: str, pod: str, workdir: pathlib.Path,
                 extra_env: dict[str, str] | None = None, args: dict[str, str] | None = None) -> None:
        """`args` replaces the value of a flag of the container's args (or appends the flag): the
        processes share one host, so listen addresses move to free loopback ports."""
        self.arg_overrides = args or {}
        self.cluster, self.ns, self.name = cluster, ns, pod
        self.pod = cluster.get_json("pod", pod, ns=ns)
        spec = self.pod["spec"]
        self.container = spec["containers"][0]
        self.dir = workdir / pod
        self.dir.mkdir(parents=True, exist_ok=True)
        self.volumes: dict[str, tuple[dict[str, Any], Volume]] = {}
        for v in spec.get("volumes", []):
            if "configMap" in v or "secret" in v or "emptyDir" in v:
                self.volumes[v["name"]] = (v, Volume(self.dir / "volumes" / v["name"]))
        self.sync()
        sa = Volume(self.dir / "serviceaccount")
        sa.write({"token": cluster.token(spec["serviceAccountName"], ns, pod=pod).encode(),
                  "ca.crt": (cluster.dir / "pki" / "ca.crt").read_bytes(), "namespace": ns.encode()})
        self.mounts = [(str(sa.root), SA_DIR)]
        for m in self.container.get("volumeMounts", []):
            if m["name"] in self.volumes and not self._shadows_host(m["mountPath"]):
                self.mounts.append((str(self.volumes[m["name"]][1].root), m["mountPath"]))
        self.env = self._env(extra_env or {})
        self.log_path = self.dir / "log.txt"
        self.proc: subprocess.Popen[bytes] | None = None

    def _shadows_host(self, mount_path: str) -> bool:
        """A mount over a directory holding the venv, the checkout or the pod's own work dir
        (the chart's `/tmp` emptyDir when the suite runs from a clone under /tmp) would hide them
        from the process: the processes share one host, so such a scratch mount is left out."""
        dst = pathlib.Path(mount_path)
        return any(p == dst or dst in p.parents for p in (VENV_BIN, pathlib.Path.cwd(), self.dir))

    def _env(self, extra: dict[str, str]) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("KUBE")}
        env.update(PATH=f"{VENV_BIN}:{env.get('PATH', '')}", KUBERNETES_SERVICE_HOST="127.0.0.1",
                   KUBERNETES_SERVICE_PORT=self.cluster.server.rsplit(":", 1)[1], HOSTNAME=self.name)
        fields = {"metadata.name": self.name, "metadata.namespace": self.ns,
                  "spec.serviceAccountName": self.pod["spec"]["serviceAccountName"]}
        for e in self.container.get("env", []):
            if "value" in e:
                env[e["name"]] = e["value"]
            elif "fieldRef" in e.get("valueFrom", {}):
                env[e["name"]] = fields[e["valueFrom"]["fieldRef"]["fieldPath"]]
        env.update(extra)
        return env

    def _files(self, v: dict[str, Any]) -> dict[str, bytes]:
        if "emptyDir" in v:
            return {}
        kind, src = ("configmap", v["configMap"]) if "configMap" in v else ("secret", v["secret"])
        name = src.get("name") or src.get("secretName")
        proc = self.cluster.kubectl("get", kind, name, "-o", "json", ns=self.ns, check=False)
        if proc.returncode != 0:
            assert src.get("optional"), f"{kind} {name} missing and not optional: {proc.stderr}"
            return {}
        obj = json.loads(proc.stdout)
        data = {k: (base64.b64decode(val) if kind == "secret" else val.encode())
                for k, val in (obj.get("data") or {}).items()}
        if src.get("items"):
            data = {i["path"]: data[i["key"]] for i in src["items"] if i["key"] in data}
        return data

    def sync(self) -> None:
        """What the kubelet's periodic sync does: bring every ConfigMap/Secret volume up to date."""
        for v, vol in self.volumes.values():
            files = self._files(v)
            if vol.version == 0 or files != {k: (vol.root / k).read_bytes() for k in vol.keys}:
                vol.write(files)

    def start(self) -> PodProcess:
        args = list(self.container.get("args", []))
        for flag, value in self.arg_overrides.items():
            if flag in args:
                args[args.index(flag) + 1] = value
            else:
                args += [flag, value]
        argv = [*self.container.get("command", []), *args]
        script = []
        for src, dst in self.mounts:
            os.makedirs(dst, exist_ok=True)  # an empty mount point on the host, like the kubelet's
            script.append(f"mount --bind {shlex.quote(src)} {shlex.quote(dst)}")
        script.append("exec " + " ".join(shlex.quote(a) for a in argv))
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(["unshare", "--mount", "--propagation", "private", "sh", "-c",
                                      " && ".join(script)], env=self.env, stdout=self._log,
                                     stderr=subprocess.STDOUT, cwd=self.dir)
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        if self.proc:
            self._log.close()
