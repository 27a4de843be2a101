"""The engine stays pure: stdlib + config only, and no clock reads outside clock.py."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import detour_proxy.policy as policy

PKG = Path(policy.__file__).parent
ALLOWED = {"__future__", "collections", "dataclasses", "enum", "math", "random", "typing", "time",
           "hashlib", "json",   # pure: affinity hashes keys (policy.affinity)
           "detour_proxy"}


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            names.add(node.module or "")
    return names


def test_only_stdlib_and_config_imports():
    for path in PKG.glob("*.py"):
        for name in _imports(path):
            assert name.split(".")[0] in ALLOWED, f"{path.name} imports {name}"
            if name.startswith("detour_proxy"):
                assert name == "detour_proxy", f"{path.name} imports {name}"


def test_no_clock_reads_outside_clock_module():
    for path in PKG.glob("*.py"):
        if path.name == "clock.py":
            continue
        assert not {"time", "datetime"} & _imports(path), path.name


def test_importing_the_engine_loads_no_web_or_k8s_stack():
    code = ("import sys, detour_proxy.policy; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in "
            "{'fastapi','httpx','aiohttp','kopf','prometheus_client','kubernetes','uvicorn'}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_public_surface():
    for name in policy.__all__:
        assert hasattr(policy, name), name
    assert {"Clock", "FakeClock", "MonotonicClock", "TargetKey", "Outcome", "OutcomeKind",
            "BreakerState", "HealthRegistry", "TargetState", "RetryBudget", "RoutePlanner",
            "RequestPlan", "Try", "GiveUp"} <= set(policy.__all__)
    assert policy.BreakerState.HALF_OPEN.value == "half-open"
    clock = policy.FakeClock()
    assert clock.now() == 0.0 and clock.advance(1.5) == 1.5
    assert isinstance(clock, policy.Clock) and isinstance(policy.MonotonicClock(), policy.Clock)
