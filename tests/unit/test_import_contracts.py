"""Import contracts of the data plane, checked from the source (issue 13).

- The packages form a DAG: no import cycle between `config`, `policy`, `adapters`,
  `transport`, `engine`, `server`, `cluster`, `state` and the top-level modules (imports
  made only for type checking do not count: they never run).
- `policy` imports no I/O library (only the stdlib and `detour_proxy.config`).
- aiohttp is imported by `transport` (the one seam to providers) and by the kube API client
  of shared health (`cluster/kube_api.py`) and nowhere else.
- `engine` runs without the server edge or cluster services (it never imports them).
"""

from __future__ import annotations

import ast
from pathlib import Path

import detour_proxy

ROOT = Path(detour_proxy.__file__).parent
IO_LIBS = {"aiohttp", "httpx", "fastapi", "starlette", "uvicorn", "kopf", "kubernetes", "prometheus_client",
           "socket", "asyncio", "ssl", "urllib", "http", "requests", "yaml", "orjson", "opentelemetry"}


def _unit(module: str) -> str:
    """detour_proxy.engine._attempts -> engine; detour_proxy.state -> state."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] != "__version__" else "detour_proxy"


def _runtime_imports(path: Path) -> set[str]:
    """Absolute module names imported by `path`, outside `if TYPE_CHECKING:` blocks."""
    rel = path.relative_to(ROOT.parent).with_suffix("")
    pkg = list(rel.parts[:-1]) if rel.name != "__init__" else list(rel.parts[:-1])
    out: set[str] = set()

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                for other in child.orelse:
                    visit(other)
                continue
            if isinstance(child, ast.Import):
                out.update(a.name for a in child.names)
            elif isinstance(child, ast.ImportFrom):
                if child.level:
                    base = pkg[:len(pkg) - child.level + 1]
                    mod = ".".join(base + ([child.module] if child.module else []))
                    if child.module:
                        out.add(mod)
                    else:
                        out.update(f"{mod}.{a.name}" for a in child.names)
                else:
                    out.add(child.module or "")
            visit(child)

    visit(ast.parse(path.read_text()))
    return out


def _modules() -> dict[str, set[str]]:
    return {str(p.relative_to(ROOT)): _runtime_imports(p) for p in ROOT.rglob("*.py")}


def test_the_packages_form_a_dag():
    graph: dict[str, set[str]] = {}
    for path, imports in _modules().items():
        me = path.split("/")[0].removesuffix(".py")
        for name in imports:
            if name.startswith("detour_proxy."):
                other = _unit(name)
                if other != me and other != "detour_proxy":
                    graph.setdefault(me, set()).add(other)
    seen: dict[str, int] = {}   # 1: on the stack, 2: done

    def walk(node: str, stack: list[str]) -> None:
        seen[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if seen.get(nxt) == 1:
                raise AssertionError("import cycle: " + " -> ".join(stack[stack.index(nxt):] + [node, nxt])
                                     if nxt in stack else f"import cycle through {nxt}")
            if nxt not in seen:
                walk(nxt, stack + [node])
        seen[node] = 2

    for node in sorted(graph):
        if node not in seen:
            walk(node, [])
    assert "engine" in graph and "server" in graph   # the check saw the real layout


def test_policy_imports_no_io():
    for path, imports in _modules().items():
        if path.startswith("policy/"):
            for name in imports:
                top = name.split(".")[0]
                assert top not in IO_LIBS, f"{path} imports {name}"
                if top == "detour_proxy":
                    assert _unit(name) in ("policy", "config", "detour_proxy"), f"{path} imports {name}"


def test_aiohttp_lives_only_in_the_transport_and_the_kube_client():
    users = sorted(path for path, imports in _modules().items() if any(n.split(".")[0] == "aiohttp" for n in imports))
    assert users == ["cluster/kube_api.py", "transport/_aiohttp.py"], users


def test_the_engine_needs_neither_the_server_nor_the_cluster():
    for path, imports in _modules().items():
        if path.startswith("engine/"):
            assert not {_unit(n) for n in imports if n.startswith("detour_proxy.")} & {"server", "cluster", "state"}, path
