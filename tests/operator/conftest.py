"""Fixtures for the operator suites: the emulated API server, and real kopf running the operator.

The settings file and metrics port are set before `detour_operator.handlers` is imported (kopf
imports it inside KopfRunner), because the handlers read them at import time.
"""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from typing import Any

import kubernetes
import pytest
import yaml

ROOT = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))

from k8s_emulator import K8sEmulator, wait_for  # noqa: E402

CRDS = sorted((ROOT / "crds").glob("*.yaml"))
EXAMPLES = ROOT / "examples" / "crds"
NS = "default"
G, V = "detour.dev", "v1alpha1"
LLMP_RES, RPOL_RES = f"{G}/{V}/llmproviders", f"{G}/{V}/routingpolicies"

_settings = pathlib.Path(tempfile.mkdtemp(prefix="detour-op-")) / "settings.yaml"
_settings.write_text("healthInterval: 100ms\nsharedHealth: {enabled: true}\n")
os.environ.setdefault("DETOUR_SETTINGS_FILE", str(_settings))
os.environ.setdefault("DETOUR_OPERATOR_METRICS_PORT", "0")


@pytest.fixture()
def k8s(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[K8sEmulator]:
    with K8sEmulator(kubeconfig=tmp_path / "kubeconfig", crds=CRDS) as srv:
        # kubernetes reads $KUBECONFIG at import time, so patch its default as well
        monkeypatch.setenv("KUBECONFIG", str(srv.kubeconfig))
        monkeypatch.setattr(kubernetes.config.kube_config, "KUBE_CONFIG_DEFAULT_LOCATION", str(srv.kubeconfig))
        kubernetes.config.load_kube_config(config_file=str(srv.kubeconfig))
        yield srv


@pytest.fixture()
def operator(k8s: K8sEmulator) -> Iterator[Any]:
    """Real kopf running `detour_operator.handlers` in-process, watching all namespaces."""
    from kopf.testing import KopfRunner

    args = ["run", "-A", "--standalone", "--verbose", "-m", "detour_operator.handlers"]
    with KopfRunner(args, timeout=30) as runner:
        emu = k8s.emulator
        wait_for(lambda: len(emu[emu.action.WATCH, emu.resource(LLMP_RES)]) and
                 len(emu[emu.action.WATCH, emu.resource(RPOL_RES)]), 10, what="kopf watching the CRDs")
        runner.forbidden = []  # strings that must never appear in the operator's log (see forbid_in_log)
        yield runner
    assert runner.exception is None, runner.output
    leaked = [s for s in runner.forbidden if s in runner.output]
    assert not leaked, f"secret material in the operator log: {len(leaked)} value(s)"


def forbid_in_log(runner: Any, *values: str) -> None:
    """Assert (when the operator stops) that none of `values` was ever logged; kopf's log is complete only then."""
    runner.forbidden.extend(values)


@pytest.fixture()
def custom() -> kubernetes.client.CustomObjectsApi:
    return kubernetes.client.CustomObjectsApi()


@pytest.fixture()
def core() -> kubernetes.client.CoreV1Api:
    return kubernetes.client.CoreV1Api()


def kubectl(k8s: K8sEmulator, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run kubectl 1.32 against the emulator."""
    return subprocess.run(["kubectl", f"--kubeconfig={k8s.kubeconfig}", *args], capture_output=True,
                          text=True, timeout=20, check=check)


def example_docs() -> list[dict[str, Any]]:
    docs = []
    for path in sorted(EXAMPLES.glob("*.yaml")):
        docs += [d for d in yaml.safe_load_all(path.read_text()) if d]
    return docs


# ---- helpers shared by the operator suites ----

def get(custom: Any, plural: str, name: str) -> dict[str, Any]:
    return custom.get_namespaced_custom_object(G, V, NS, plural, name)


def cond(obj: dict[str, Any], ctype: str) -> dict[str, Any] | None:
    return next((c for c in (obj.get("status") or {}).get("conditions", []) if c["type"] == ctype), None)


def ready(custom: Any, plural: str, name: str, status: str = "True") -> dict[str, Any] | None:
    obj = get(custom, plural, name)
    c = cond(obj, "Ready")
    ok = c and c["status"] == status and obj["status"].get("observedGeneration") == obj["metadata"]["generation"]
    return obj if ok else None


def apply_examples(k8s: Any, custom: Any) -> None:
    kubectl(k8s, "apply", "--validate=false", "-f", str(EXAMPLES))
    for plural, name in [("llmproviders", "openai"), ("llmproviders", "azure"), ("llmproviders", "anthropic"),
                         ("routingpolicies", "chat")]:
        wait_for(lambda: ready(custom, plural, name), 10, what=f"{plural}/{name} Ready")
