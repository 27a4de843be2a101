"""examples/k8s (real providers) and examples/k8s/sim (in-cluster simulators), kind-config.yaml
and the Dockerfile: they parse, have the right kinds, validate against the Kubernetes OpenAPI
schemas and the project's own CRDs, and agree with each other and with the chart."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import jsonschema
import kubernetes_validate
import pytest
import yaml
from kubernetes_validate.utils import latest_version

from chartlib import CHART_DIR, ROOT, render_docs

EXAMPLES = ROOT / "examples" / "k8s"
SIM = EXAMPLES / "sim"


def load_dir(path: Path) -> list[dict[str, Any]]:
    """Objects of every *.yaml in `path` (not recursive), in `kubectl apply -f DIR` order."""
    docs = []
    for f in sorted(path.glob("*.yaml")):
        docs += [d for d in yaml.safe_load_all(f.read_text()) if d]
    return docs


def crd_schemas() -> dict[str, dict[str, Any]]:
    out = {}
    for f in sorted((ROOT / "crds").glob("*.yaml")):
        crd = yaml.safe_load(f.read_text())
        version = next(v for v in crd["spec"]["versions"] if v.get("served", True))
        out[crd["spec"]["names"]["kind"]] = {
            "apiVersion": f"{crd['spec']['group']}/{version['name']}",
            "schema": version["schema"]["openAPIV3Schema"],
        }
    return out


@pytest.fixture(scope="module", params=["real", "sim"])
def example(request: pytest.FixtureRequest) -> tuple[str, list[dict[str, Any]]]:
    return request.param, load_dir(EXAMPLES if request.param == "real" else SIM)


def by_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


def test_example_kinds(example: tuple[str, list[dict[str, Any]]]) -> None:
    name, docs = example
    assert docs[0]["kind"] == "Namespace", "kubectl apply -f DIR applies files in name order: namespace first"
    count = {k: len(by_kind(docs, k)) for k in {d["kind"] for d in docs}}
    expected = {"Namespace": 1, "Secret": 1, "LLMProvider": 3, "RoutingPolicy": 1}
    if name == "sim":
        expected |= {"Deployment": 3, "Service": 3}
    assert count == expected
    ns = docs[0]["metadata"]["name"]
    for d in docs[1:]:
        assert d["metadata"]["namespace"] == ns, f"{d['kind']}/{d['metadata']['name']}"
    for d in by_kind(docs, "LLMProvider") + by_kind(docs, "RoutingPolicy"):
        assert d["apiVersion"] == "detour.dev/v1alpha1"


def test_both_examples_are_an_openai_azure_anthropic_chain(example: tuple[str, list[dict[str, Any]]]) -> None:
    _, docs = example
    providers = {p["metadata"]["name"]: p["spec"] for p in by_kind(docs, "LLMProvider")}
    assert sorted(p["type"] for p in providers.values()) == ["anthropic", "azure-openai", "openai"]
    policy = by_kind(docs, "RoutingPolicy")[0]["spec"]
    chain = [providers[t["providerRef"]]["type"] for t in sorted(policy["targets"], key=lambda t: t["priority"])]
    assert chain == ["openai", "azure-openai", "anthropic"]
    assert policy["strategy"] == "priority"
    azure = next(p for p in providers.values() if p["type"] == "azure-openai")
    assert azure["apiVersion"] and not azure["baseURL"].rstrip("/").endswith("/v1"), \
        "Azure's baseURL is the resource root; the adapter appends /openai/deployments/..."


def test_providers_reference_existing_secret_keys(example: tuple[str, list[dict[str, Any]]]) -> None:
    _, docs = example
    secrets = {s["metadata"]["name"]: set(s.get("stringData", {})) | set(s.get("data", {}))
               for s in by_kind(docs, "Secret")}
    providers = {p["metadata"]["name"] for p in by_kind(docs, "LLMProvider")}
    for p in by_kind(docs, "LLMProvider"):
        ref = p["spec"]["apiKeySecretRef"]
        assert ref["key"] in secrets[ref["name"]], p["metadata"]["name"]
    for t in by_kind(docs, "RoutingPolicy")[0]["spec"]["targets"]:
        assert t["providerRef"] in providers


def test_builtin_objects_validate_against_kubernetes_openapi(example: tuple[str, list[dict[str, Any]]]) -> None:
    _, docs = example
    for d in docs:
        if d["apiVersion"].startswith("detour.dev/"):
            continue
        kubernetes_validate.validate(d, latest_version(), strict=True)


def test_custom_resources_validate_against_the_crds(example: tuple[str, list[dict[str, Any]]]) -> None:
    schemas = crd_schemas()
    if not schemas:
        pytest.skip("crds/*.yaml not generated yet (make crds)")
    _, docs = example
    for d in docs:
        if d["kind"] in ("LLMProvider", "RoutingPolicy"):
            s = schemas[d["kind"]]
            assert d["apiVersion"] == s["apiVersion"]
            jsonschema.Draft202012Validator(s["schema"]).validate(
                {k: v for k, v in d.items() if k != "metadata"} | {"metadata": {}})


def test_custom_resources_are_accepted_by_the_operator_models(example: tuple[str, list[dict[str, Any]]]) -> None:
    specs = pytest.importorskip("detour_operator.specs")
    _, docs = example
    for d in by_kind(docs, "LLMProvider"):
        specs.LLMProviderSpec.model_validate(d["spec"])
    for d in by_kind(docs, "RoutingPolicy"):
        specs.RoutingPolicySpec.model_validate(d["spec"])


def test_sim_providers_point_at_the_in_cluster_simulators() -> None:
    docs = load_dir(SIM)
    services = {s["metadata"]["name"]: s for s in by_kind(docs, "Service")}
    deployments = {d["metadata"]["name"]: d for d in by_kind(docs, "Deployment")}
    ns = docs[0]["metadata"]["name"]
    proxy_image = "{}:{}".format(yaml.safe_load((CHART_DIR / "values.yaml").read_text())["proxy"]["image"]["repository"],
                                 yaml.safe_load((CHART_DIR / "Chart.yaml").read_text())["appVersion"])
    flavors = {}
    for name, dep in deployments.items():
        c = dep["spec"]["template"]["spec"]["containers"][0]
        assert c["image"] == proxy_image, "the simulators run from the proxy image"
        cmd = c["command"]
        assert cmd[0] == "detour-sim"
        args = dict(zip(cmd[1::2], cmd[2::2]))
        assert args["--name"] == name and args["--host"] == "0.0.0.0" and args["--port"] == "9100"
        flavors[name] = args["--flavor"]
        svc = services[name]
        assert svc["spec"]["selector"].items() <= dep["spec"]["template"]["metadata"]["labels"].items()
        assert dep["spec"]["template"]["metadata"]["labels"].get("app.kubernetes.io/component") != "proxy", \
            "a simulator must never look like a proxy peer"
    for p in by_kind(docs, "LLMProvider"):
        url = urlparse(p["spec"]["baseURL"])
        host, _, namespace = url.hostname.partition(".")
        assert namespace.startswith(f"{ns}.svc")
        assert host in services and url.port == services[host]["spec"]["ports"][0]["port"]
        want = "anthropic" if p["spec"]["type"] == "anthropic" else "openai"
        assert flavors[host] == want


def _sim_flavors(docs: list[dict[str, Any]]) -> dict[str, str]:
    out = {}
    for dep in by_kind(docs, "Deployment"):
        cmd = dep["spec"]["template"]["spec"]["containers"][0]["command"]
        out[dep["metadata"]["name"]] = cmd[cmd.index("--flavor") + 1]
    return out


def test_sim_example_fails_over_openai_azure_anthropic_through_the_real_proxy() -> None:
    """The sim example as the operator renders it, served by the real proxy against detour-sim
    processes of the example's flavours on loopback: each hop's type and URL shape really reach
    its simulator, and breaking the hops in order walks the OpenAI -> Azure -> Anthropic chain."""
    import base64

    import httpx

    from detour_operator.render import render
    from detour_operator.settings import OperatorSettings
    from support import ProxyServer, Sim, chat_body

    docs = load_dir(SIM)
    ns = docs[0]["metadata"]["name"]
    secret = by_kind(docs, "Secret")[0]
    secrets = {secret["metadata"]["name"]: {k: base64.b64encode(v.encode()).decode()
                                            for k, v in secret["stringData"].items()}}
    result = render(by_kind(docs, "LLMProvider"), by_kind(docs, "RoutingPolicy"), secrets, OperatorSettings(), ns)
    assert result.error is None and result.config_yaml, result.problems
    config = yaml.safe_load(result.config_yaml)
    sims = {name: Sim(name, flavor) for name, flavor in _sim_flavors(docs).items()}
    try:
        for p in config["providers"]:
            url = urlparse(p["baseURL"])
            host = url.hostname.split(".")[0]
            p["baseURL"] = sims[host].url + url.path  # in-cluster Service -> the same simulator on loopback
            p["apiKey"] = {"value": base64.b64decode(result.credentials[p["name"]]).decode()}
        model = by_kind(docs, "RoutingPolicy")[0]["spec"]["match"]["models"][0]
        with ProxyServer(config) as proxy, httpx.Client(base_url=proxy.url, timeout=30) as client:
            def target() -> str:
                r = client.post("/v1/chat/completions", json=chat_body(model))
                assert r.status_code == 200, r.text
                assert r.json()["choices"][0]["message"]["content"]
                return r.headers["x-detour-target"]

            assert target() == "sim-openai/gpt-4o-mini"
            sims["sim-openai"].faults(status=503)
            assert target() == "sim-azure/gpt-4o-mini"
            assert sims["sim-azure"].requests("/openai/deployments/gpt-4o-mini/chat/completions") == 1
            sims["sim-azure"].faults(status=500)
            assert target() == "sim-anthropic/claude-3-5-haiku-latest"
            assert sims["sim-anthropic"].requests("/v1/messages") == 1
    finally:
        for sim in sims.values():
            sim.stop()


def test_kind_config_maps_localhost_8080_to_the_proxy_nodeport() -> None:
    kind = yaml.safe_load((ROOT / "kind-config.yaml").read_text())
    assert kind["kind"] == "Cluster" and kind["apiVersion"] == "kind.x-k8s.io/v1alpha4"
    roles = sorted(n["role"] for n in kind["nodes"])
    assert roles == ["control-plane", "worker", "worker"]
    mappings = [m for n in kind["nodes"] for m in n.get("extraPortMappings", [])]
    assert len(mappings) == 1 and mappings[0]["hostPort"] == 8080
    kind_values = yaml.safe_load((CHART_DIR / "ci" / "kind-values.yaml").read_text())
    assert mappings[0]["containerPort"] == kind_values["proxy"]["service"]["nodePort"]
    svc = next(d for d in render_docs(kind_values) if d["kind"] == "Service" and d["metadata"]["name"] == "detour")
    assert svc["spec"]["type"] == "NodePort" and svc["spec"]["ports"][0]["nodePort"] == mappings[0]["containerPort"]


def test_dockerfile_targets() -> None:
    text = (ROOT / "Dockerfile").read_text()
    stages = {name: base for base, name in re.findall(r"^FROM\s+(\S+)\s+AS\s+(\S+)", text, re.M | re.I)}
    assert {"builder", "runtime", "proxy", "operator"} <= set(stages)
    assert re.search(r"^ARG PYTHON_IMAGE=python:3\.11-slim$", text, re.M)
    assert stages["proxy"] == stages["operator"] == "runtime"
    assert re.search(r"^USER 10001:10001$", text, re.M)
    assert 'ENTRYPOINT ["detour-proxy"]' in text and 'ENTRYPOINT ["detour-operator"]' in text
    runtime = text.split(" AS runtime")[1]
    assert "gcc" not in runtime and "build-essential" not in runtime and "apt-get install" not in runtime
    assert "COPY --from=builder /opt/detour /opt/detour" in runtime
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert ".venv" in ignored and ".git" in ignored
    for needed in ("proxy", "operator", "pyproject.toml", "README.md"):
        assert needed not in ignored
