"""The rendered chart: RBAC grants exactly what the operator and proxy need; the operator pod.

Rendering uses the real Helm v4 engine (helm-python-sdk), for the default values, a values set
with every optional feature on (chartlib.FULL_VALUES) and the kind walkthrough's values
(ci/kind-values.yaml).
"""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from chartlib import FULL_VALUES, NAMESPACE, find, find_container, kinds, named_port, render_docs

# RBAC: exactly these grants, nothing else
#
# The statement of need, written from the code, not from the template: every (apiGroup, resource,
# verb) the chart may grant, with the call that uses it. A grant missing here fails the exact
# comparisons below, and so does a needed grant the chart forgets.
#
# Operator (kopf 1.x + detour_operator.reconcile):
OPERATOR_NEEDS: list[tuple[str, str, str, str]] = [
    # kopf watches its resources: an initial LIST, then WATCH (kopf/_cogs/clients/watching.py);
    # it never GETs single objects.
    ("detour.dev", "llmproviders", "list", "kopf: index + handlers (handlers.py providers_idx, provider_changed)"),
    ("detour.dev", "llmproviders", "watch", "kopf: index + handlers"),
    ("detour.dev", "routingpolicies", "list", "kopf: index + handlers (policies_idx, policy_changed)"),
    ("detour.dev", "routingpolicies", "watch", "kopf: index + handlers"),
    # kopf merge-patches the object itself only to remove a finalizer an older operator left (the
    # handlers are event handlers: no finalizer, no progress or last-handled annotations).
    ("detour.dev", "llmproviders", "patch", "kopf: removes a legacy finalizer"),
    ("detour.dev", "routingpolicies", "patch", "kopf: removes a legacy finalizer"),
    # Reconciler._patch_status: patch_namespaced_custom_object_status (merge patch); never PUT.
    ("detour.dev", "llmproviders/status", "patch", "reconcile.Reconciler._patch_status"),
    ("detour.dev", "routingpolicies/status", "patch", "reconcile.Reconciler._patch_status"),
    # Reconciler._publish: read_namespaced_*, create_namespaced_* when absent, else
    # patch_namespaced_* (merge patch). Never listed/watched/updated/deleted (owner references GC).
    # get/patch are narrowed to the one object by resourceNames ("resource#name" here).
    ("", "configmaps#detour-routing", "get", "reconcile.Reconciler._publish: read detour-routing"),
    ("", "configmaps", "create", "reconcile.Reconciler._publish: first publish (create cannot be narrowed)"),
    ("", "configmaps#detour-routing", "patch", "reconcile.Reconciler._publish: later publishes"),
    ("", "secrets#detour-credentials", "get", "reconcile.Reconciler._publish: read detour-credentials"),
    ("", "secrets", "create", "reconcile.Reconciler._publish: first publish"),
    ("", "secrets#detour-credentials", "patch", "reconcile.Reconciler._publish: later publishes"),
    # secret_refs.SecretRefs: per referenced Secret one LIST + WATCH with fieldSelector
    # metadata.name=NAME (never namespace-wide, never GET); narrowed by operator.secretNames.
    ("", "secrets", "list", "secret_refs.SecretRefs._run: the referenced Secret, by name"),
    ("", "secrets", "watch", "secret_refs.SecretRefs._follow: the referenced Secret, by name"),
    # kopf.event -> kopf/_cogs/clients/events.py post_event: POST to v1 events, nothing else.
    ("", "events", "create", "kopf.event (Accepted/Rejected/Degraded)"),
    ("", "pods", "list", "kopf: proxy_pods_idx (health roll-up)"),
    ("", "pods", "watch", "kopf: proxy_pods_idx"),
]
# kopf peering (kopf/_core/engines/peering.py): the observer lists + watches the peering
# objects, keepalive/clean merge-patch its status (the CRDs have no status subresource).
PEERING_NEEDS: list[tuple[str, str, str]] = [
    ("list", "kopf peering observer"), ("watch", "kopf peering observer"), ("patch", "kopf peering keepalive/clean")]
# Proxy shared health (detour_proxy.cluster.shared_health.KubeApi): LIST + WATCH peers, PATCH own Pod.
PROXY_NEEDS: list[tuple[str, str, str, str]] = [
    ("", "pods", "list", "shared_health: list_pods"),
    ("", "pods", "watch", "shared_health: watch_pods"),
    ("", "pods", "patch", "shared_health: publish (own Pod's detour.dev/health annotation)"),
]

OPERATOR_RULES = {(g, r, v) for g, r, v, _ in OPERATOR_NEEDS}
PROXY_RULES = {(g, r, v) for g, r, v, _ in PROXY_NEEDS}


def peering_rules(resource: str) -> set[tuple[str, str, str]]:
    return {("kopf.dev", resource, v) for v, _ in PEERING_NEEDS}


def _grants(docs: list[dict[str, Any]]) -> dict[tuple[str, str], set[tuple[str, str, str]]]:
    """(role kind, role name) -> flattened (apiGroup, resource, verb) grants."""
    out: dict[tuple[str, str], set[tuple[str, str, str]]] = {}
    for doc in docs:
        if doc["kind"] not in ("Role", "ClusterRole"):
            continue
        assert "aggregationRule" not in doc
        flat: set[tuple[str, str, str]] = set()
        for rule in doc["rules"]:
            assert set(rule) <= {"apiGroups", "resources", "verbs", "resourceNames"}, f"unexpected rule fields {rule}"
            for g in rule["apiGroups"]:
                for r in rule["resources"]:
                    for v in rule["verbs"]:
                        assert "*" not in (g, r, v), f"wildcard grant in {doc['metadata']['name']}: {rule}"
                        for name in rule.get("resourceNames") or [""]:
                            flat.add((g, f"{r}#{name}" if name else r, v))
        out[(doc["kind"], doc["metadata"]["name"])] = flat
    return out


def _bindings(docs: list[dict[str, Any]]) -> dict[tuple[str, str], list[tuple[str, str]]]:
    """(role kind, role name) -> [(sa namespace, sa name)]."""
    out: dict[tuple[str, str], list[tuple[str, str]]] = {}
    for doc in docs:
        if doc["kind"] not in ("RoleBinding", "ClusterRoleBinding"):
            continue
        ref = doc["roleRef"]
        assert ref["apiGroup"] == "rbac.authorization.k8s.io"
        if doc["kind"] == "ClusterRoleBinding":
            assert ref["kind"] == "ClusterRole"
        subjects = [(s["namespace"], s["name"]) for s in doc["subjects"] if s["kind"] == "ServiceAccount"]
        assert len(subjects) == len(doc["subjects"]), "only ServiceAccounts may be bound"
        out.setdefault((ref["kind"], ref["name"]), []).extend(subjects)
    return out


def test_rbac_default_is_namespaced_and_exact(default_docs: list[dict[str, Any]]) -> None:
    assert _grants(default_docs) == {
        ("Role", "detour-operator"): OPERATOR_RULES,
        ("Role", "detour-proxy"): PROXY_RULES,
    }
    assert _bindings(default_docs) == {
        ("Role", "detour-operator"): [(NAMESPACE, "detour-operator")],
        ("Role", "detour-proxy"): [(NAMESPACE, "detour-proxy")],
    }
    for doc in default_docs:
        if doc["kind"] in ("Role", "RoleBinding"):
            assert doc["metadata"]["namespace"] == NAMESPACE


def test_rbac_with_peering_is_namespaced_and_exact(full_docs: list[dict[str, Any]]) -> None:
    # There is no cluster-wide mode (issue 14.5): replicas > 1 adds kopf peering, still namespaced.
    assert _grants(full_docs) == {
        ("Role", "detour-operator"): OPERATOR_RULES,
        ("Role", "detour-operator-peering"): peering_rules("kopfpeerings"),
        ("Role", "detour-proxy"): PROXY_RULES,
    }
    assert _bindings(full_docs) == {
        ("Role", "detour-operator"): [(NAMESPACE, "detour-operator")],
        ("Role", "detour-operator-peering"): [(NAMESPACE, "detour-operator")],
        ("Role", "detour-proxy"): [(NAMESPACE, "detour-proxy")],
    }
    assert not kinds(full_docs, "ClusterRole") and not kinds(full_docs, "ClusterRoleBinding")


def test_cluster_wide_mode_is_gone() -> None:
    with pytest.raises(Exception, match="watchAllNamespaces"):
        render_docs({"operator": {"watchAllNamespaces": True}})


def test_rbac_namespaced_peering_and_no_shared_health() -> None:
    docs = render_docs({"operator": {"replicas": 2}, "settings": {"sharedHealth": {"enabled": False}}})
    assert _grants(docs) == {
        ("Role", "detour-operator"): OPERATOR_RULES,
        ("Role", "detour-operator-peering"): peering_rules("kopfpeerings"),
    }
    proxy = find(docs, "Deployment", "detour-proxy")["spec"]["template"]["spec"]
    assert proxy["automountServiceAccountToken"] is False  # no API access needed without shared health


def test_secret_names_narrow_the_referenced_secrets_grant_to_those_names() -> None:
    docs = render_docs({"operator": {"secretNames": ["llm-keys", "team-keys"]}})
    broad = {("", "secrets", "list"), ("", "secrets", "watch")}
    narrow = {("", f"secrets#{name}", verb) for name in ("llm-keys", "team-keys") for verb in ("list", "watch")}
    assert _grants(docs)[("Role", "detour-operator")] == (OPERATOR_RULES - broad) | narrow


def test_rbac_can_be_turned_off() -> None:
    docs = render_docs({"rbac": {"create": False}})
    assert not [d for d in docs if d["kind"] in ("Role", "ClusterRole", "RoleBinding", "ClusterRoleBinding")]


def test_service_accounts_do_not_automount_tokens(any_docs: list[dict[str, Any]]) -> None:
    for sa in kinds(any_docs, "ServiceAccount"):
        assert sa["automountServiceAccountToken"] is False  # pods opt in explicitly


def test_no_lease_or_unused_verbs_are_granted(any_docs: list[dict[str, Any]]) -> None:
    """Leader election is kopf peering, so no coordination.k8s.io Leases; and none of the verbs
    the operator never calls (update/delete, list/watch on ConfigMaps, get on watched kinds)."""
    grants = set().union(*_grants(any_docs).values())
    assert not {g for g in grants if g[0] == "coordination.k8s.io"}
    assert not {g for g in grants if g[2] in ("update", "delete", "deletecollection", "*")}
    assert not {g for g in grants if g[1].startswith("configmaps") and g[2] in ("list", "watch")}
    # the ConfigMap/Secret the operator publishes are the only ones it may read or patch
    assert not {g for g in grants if g[1] in ("configmaps", "secrets") and g[2] in ("get", "patch")}
    assert ("detour.dev", "llmproviders", "get") not in grants


def _pod_service_account(docs: list[dict[str, Any]], deployment: str) -> tuple[str, str]:
    deploy = find(docs, "Deployment", deployment)
    return deploy["metadata"]["namespace"], deploy["spec"]["template"]["spec"]["serviceAccountName"]


SA_CASES = {
    "default": None,
    "full": FULL_VALUES,
    "named service accounts": {"proxy": {"serviceAccount": {"name": "gw"}},
                               "operator": {"serviceAccount": {"name": "ctl"}, "replicas": 2}},
    "existing service accounts": {"proxy": {"serviceAccount": {"create": False, "name": "gw-existing"}},
                                  "operator": {"serviceAccount": {"create": False, "name": "ctl-existing"}}},
}


@pytest.mark.parametrize("values", SA_CASES.values(), ids=SA_CASES.keys())
def test_each_deployment_runs_as_the_service_account_its_roles_are_bound_to(values: dict[str, Any] | None) -> None:
    docs = render_docs(values)
    bindings = _bindings(docs)
    operator_sa = _pod_service_account(docs, "detour-operator")
    proxy_sa = _pod_service_account(docs, "detour-proxy")
    for (kind, role), subjects in bindings.items():
        want = proxy_sa if role == "detour-proxy" else operator_sa
        assert subjects == [want], f"{kind} {role} is bound to {subjects}, the pods run as {want}"
    assert {r for _, r in bindings} >= {"detour-operator", "detour-proxy"}
    created = {(sa["metadata"]["namespace"], sa["metadata"]["name"]) for sa in kinds(docs, "ServiceAccount")}
    for component, sa in (("proxy", proxy_sa), ("operator", operator_sa)):
        create = (values or {}).get(component, {}).get("serviceAccount", {}).get("create", True)
        assert (sa in created) is create, f"{component} ServiceAccount {sa}: created={sa in created}"


# operator leader election: the kopf peering object


def _peering_arg(docs: list[dict[str, Any]]) -> str:
    args = find_container(find(docs, "Deployment", "detour-operator"), "operator")["args"]
    return args[args.index("--peering") + 1]


def test_single_operator_is_standalone_without_a_peering_object(default_docs: list[dict[str, Any]]) -> None:
    assert "--standalone" in find_container(find(default_docs, "Deployment", "detour-operator"), "operator")["args"]
    assert not [d for d in default_docs if d["apiVersion"].startswith("kopf.dev/")]


def test_namespaced_replicas_get_a_kopfpeering_named_like_their_peering_flag() -> None:
    docs = render_docs({"operator": {"replicas": 3, "peeringName": "detour-ha"}})
    peering = find(docs, "KopfPeering")
    assert peering["apiVersion"] == "kopf.dev/v1"
    assert peering["metadata"]["name"] == _peering_arg(docs) == "detour-ha"
    # kopf looks for a namespaced peering in the namespace it watches: the release namespace
    args = find_container(find(docs, "Deployment", "detour-operator"), "operator")["args"]
    assert args[args.index("--namespace") + 1] == peering["metadata"]["namespace"] == NAMESPACE
    assert not kinds(docs, "ClusterKopfPeering")


def test_replicas_get_a_namespaced_kopfpeering(full_docs: list[dict[str, Any]]) -> None:
    peering = find(full_docs, "KopfPeering")
    assert peering["metadata"]["name"] == _peering_arg(full_docs) == "detour"
    assert peering["metadata"]["namespace"] == NAMESPACE
    assert not kinds(full_docs, "ClusterKopfPeering")


def test_peering_object_is_rendered_even_without_chart_rbac() -> None:
    docs = render_docs({"operator": {"replicas": 2}, "rbac": {"create": False}})
    assert find(docs, "KopfPeering")["metadata"]["name"] == _peering_arg(docs)


def test_peered_replicas_get_distinct_kopf_priorities(monkeypatch: pytest.MonkeyPatch) -> None:
    from detour_operator import cli

    docs = render_docs({"operator": {"replicas": 2}})
    args = find_container(find(docs, "Deployment", "detour-operator"), "operator")["args"]
    priorities = set()
    for pod in ("detour-operator-7d9f8-abcde", "detour-operator-7d9f8-fghij"):
        monkeypatch.setenv("POD_ID", pod)
        kopf = cli.kopf_args(args)
        prio = [a for a in kopf if a.startswith("--priority")]
        assert prio, f"no --priority in {kopf}"
        priorities.add(prio[0])
    assert len(priorities) == 2, "two replicas with the same kopf priority both pause"


# operator


def test_operator_default_is_namespaced_standalone(default_docs: list[dict[str, Any]]) -> None:
    deploy = find(default_docs, "Deployment", "detour-operator")
    c = find_container(deploy, "operator")
    assert deploy["spec"]["replicas"] == 1
    assert deploy["spec"]["strategy"]["type"] == "Recreate"  # never two standalone operators at once
    assert c["command"] == ["detour-operator"]
    assert c["args"] == ["--namespace", NAMESPACE, "--standalone"]
    assert c["image"] == "detour-operator:0.1.0"
    live = c["livenessProbe"]["httpGet"]
    assert (live["path"], named_port(c, live["port"])) == ("/healthz", 8081)
    # detour-operator's --readiness default: 503 while kopf waits for a missing peering object
    ready = c["readinessProbe"]["httpGet"]
    assert (ready["path"], named_port(c, ready["port"])) == ("/readyz", 8082)
    from detour_operator import cli
    assert cli.DEFAULT_READINESS == "http://0.0.0.0:8082/readyz"
    assert named_port(c, "metrics") == 9090
    assert deploy["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/component"] == "operator"


def test_operator_replicas_with_peering(full_docs: list[dict[str, Any]]) -> None:
    deploy = find(full_docs, "Deployment", "detour-operator")
    c = find_container(deploy, "operator")
    assert deploy["spec"]["replicas"] == 2 and deploy["spec"]["strategy"]["type"] == "RollingUpdate"
    assert c["args"] == ["--namespace", NAMESPACE, "--peering", "detour", "--verbose"]
    env = {e["name"]: e for e in c["env"]}
    assert env["POD_ID"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}  # kopf peer identity


def test_operator_settings_file(any_docs: list[dict[str, Any]]) -> None:
    deploy = find(any_docs, "Deployment", "detour-operator")
    c = find_container(deploy, "operator")
    env = {e["name"]: e.get("value") for e in c["env"]}
    assert env["DETOUR_SETTINGS_FILE"] == "/etc/detour/settings/settings.yaml"
    mount = next(m for m in c["volumeMounts"] if m["mountPath"] == "/etc/detour/settings")
    vol = next(v for v in deploy["spec"]["template"]["spec"]["volumes"] if v["name"] == mount["name"])
    cm = find(any_docs, "ConfigMap", vol["configMap"]["name"])
    assert set(cm["data"]) == {"settings.yaml"}
    # the pod template changes (rolls) when the settings change
    assert deploy["spec"]["template"]["metadata"]["annotations"]["checksum/settings"]


def _settings(docs: list[dict[str, Any]]) -> dict[str, Any]:
    return yaml.safe_load(find(docs, "ConfigMap", "detour-operator-settings")["data"]["settings.yaml"])


def test_settings_validate_against_the_config_models(any_docs: list[dict[str, Any]]) -> None:
    """The rendered settings use exactly the config's camelCase keys (extra="forbid" models)."""
    from detour_proxy import config as cfg

    settings = _settings(any_docs)
    models = {"health": cfg.Health, "retryBudget": cfg.RetryBudget, "clientAuth": cfg.ClientAuth,
              "server": cfg.Server, "sharedHealth": cfg.SharedHealth}
    assert set(settings) - {"proxyPodSelector"} <= set(models)
    for key, model in models.items():
        if key in settings:
            model.model_validate(settings[key])
    proxy_labels = find(any_docs, "Deployment", "detour-proxy")["spec"]["template"]["metadata"]["labels"]
    for selector in (settings["sharedHealth"]["podSelector"], settings["proxyPodSelector"]):
        terms = dict(t.split("=", 1) for t in selector.split(","))
        assert terms["app.kubernetes.io/component"] == "proxy"
        assert set(terms.items()) <= set(proxy_labels.items()), "the selector must match this release's proxies"


def test_settings_are_accepted_by_the_operator(any_docs: list[dict[str, Any]]) -> None:
    opsettings = pytest.importorskip("detour_operator.settings")
    s = opsettings.OperatorSettings.model_validate(_settings(any_docs))
    assert s.pod_labels()["app.kubernetes.io/component"] == "proxy"


def test_full_settings_carry_the_values(full_docs: list[dict[str, Any]]) -> None:
    s = _settings(full_docs)
    assert s["health"]["slowCall"] == {"threshold": "8s", "ratio": 0.6}
    assert s["clientAuth"]["keys"][0] == {"file": "/etc/detour/client-auth/app1"}
    assert s["sharedHealth"]["replicas"] == 3


def test_default_settings_leave_off_blocks_out(default_docs: list[dict[str, Any]]) -> None:
    s = _settings(default_docs)
    assert "clientAuth" not in s and "slowCall" not in s["health"] and "replicas" not in s["sharedHealth"]
    assert s["sharedHealth"]["enabled"] is True
