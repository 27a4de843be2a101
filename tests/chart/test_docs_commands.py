"""The Kubernetes commands in README.md, docs/kubernetes.md, the chart README and the Dockerfile
agree with the files they drive: someone pasting them must end up with images the chart finds,
loaded into the cluster kind-config.yaml creates, installed with values files that exist."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from chartlib import CHART_DIR, KIND_VALUES, ROOT

DOCS = [ROOT / "README.md", ROOT / "docs" / "kubernetes.md", CHART_DIR / "README.md",
        ROOT / "examples" / "k8s" / "README.md", ROOT / "Dockerfile", ROOT / "kind-config.yaml"]
APP_VERSION = str(yaml.safe_load((CHART_DIR / "Chart.yaml").read_text())["appVersion"])
VALUES = yaml.safe_load((CHART_DIR / "values.yaml").read_text())
KIND = yaml.safe_load((ROOT / "kind-config.yaml").read_text())
IMAGES = {"proxy": VALUES["proxy"]["image"]["repository"], "operator": VALUES["operator"]["image"]["repository"]}


def _commands(path: Path) -> list[str]:
    """Shell lines of a document, with `\\` continuations joined and `&&` chains split."""
    text = re.sub(r"\\\n\s*", " ", path.read_text())
    return [part.strip().lstrip("#").strip() for line in text.splitlines() for part in line.split("&&")]


def _lines(prefix: str) -> list[tuple[str, str]]:
    return [(p.name, c) for p in DOCS for c in _commands(p) if c.startswith(prefix)]


def test_the_kind_walkthrough_is_in_the_readme_and_the_guide() -> None:
    for doc in (ROOT / "README.md", ROOT / "docs" / "kubernetes.md"):
        text = doc.read_text()
        for step in ("kind create cluster --config kind-config.yaml", "docker build --target proxy",
                     "docker build --target operator", "kind load docker-image", "helm install",
                     "kubectl apply -f examples/k8s/sim/", "get llmp", "/v1/chat/completions"):
            assert step in text, f"{doc.name}: {step}"


def test_docker_builds_tag_the_images_the_chart_pulls() -> None:
    builds = _lines("docker build")
    assert len(builds) >= 4
    for where, cmd in builds:
        target = re.search(r"--target\s+(\S+)", cmd).group(1)
        tag = re.search(r"-t\s+(\S+)", cmd).group(1)
        assert tag == f"{IMAGES[target]}:{APP_VERSION}", f"{where}: {cmd!r}: the chart pulls {IMAGES[target]}:{APP_VERSION}"


def test_kind_load_names_the_cluster_and_images_of_kind_config() -> None:
    loads = _lines("kind load docker-image")
    assert loads
    for where, cmd in loads:
        name = re.search(r"--name\s+(\S+)", cmd)
        assert name and name.group(1) == KIND["name"], f"{where}: {cmd!r} must load into cluster {KIND['name']!r}"
        images = [w for w in cmd.split()[3:] if not w.startswith("-") and w != name.group(1)]
        assert sorted(images) == sorted(f"{r}:{APP_VERSION}" for r in IMAGES.values()), f"{where}: {cmd!r}"
    for where, cmd in _lines("kind delete cluster"):
        assert f"--name {KIND['name']}" in cmd, f"{where}: {cmd!r}"


def test_kind_nodes_and_port_named_in_the_guide_match_kind_config() -> None:
    guide = (ROOT / "docs" / "kubernetes.md").read_text()
    workers = sum(n["role"] == "worker" for n in KIND["nodes"])
    nodes = [f"{KIND['name']}-control-plane", f"{KIND['name']}-worker"] + \
            [f"{KIND['name']}-worker{i}" for i in range(2, workers + 1)]
    for node in nodes:
        assert node in guide, f"docs/kubernetes.md should name node {node}"
    host_port = next(m["hostPort"] for n in KIND["nodes"] for m in n.get("extraPortMappings", []))
    for doc in (ROOT / "README.md", ROOT / "docs" / "kubernetes.md"):
        ports = set(re.findall(r"localhost:(\d+)/v1/chat/completions", doc.read_text()))
        assert ports == {str(host_port)}, f"{doc.name}: curl must use the mapped host port {host_port}"
    assert KIND_VALUES["proxy"]["service"]["nodePort"] == next(
        m["containerPort"] for n in KIND["nodes"] for m in n.get("extraPortMappings", []))


def test_helm_installs_use_the_chart_and_values_files_that_exist() -> None:
    installs = _lines("helm install")
    assert installs
    for where, cmd in installs:
        words = cmd.split()
        assert words[3] == "helm/detour", f"{where}: {cmd!r}"
        for flag in ("-f", "--values"):
            for i, w in enumerate(words):
                if w == flag:
                    assert (ROOT / words[i + 1]).is_file(), f"{where}: {cmd!r}: {words[i + 1]} does not exist"
    assert any("-f helm/detour/ci/kind-values.yaml" in c for _, c in installs)


@pytest.mark.parametrize("doc", DOCS[:4], ids=lambda p: str(p.relative_to(ROOT)))
def test_repository_paths_named_in_the_docs_exist(doc: Path) -> None:
    text = doc.read_text()
    paths = set(re.findall(r"(?<![\w./-])((?:helm/detour|examples/k8s|docs|operator|proxy)/[\w./-]*[\w/])", text))
    paths |= {p for p in ("kind-config.yaml", "Dockerfile") if p in text}
    missing = sorted(p for p in paths if not (ROOT / p).exists())  # commands run from the repository root
    assert missing == []
