"""Render one namespace's LLMProviders and RoutingPolicies into the proxies' routing config.

Pure: objects in (plain dicts as the API returns them), config + credentials + per-object
problems out. Why pure: every rule about what gets published (exclusion of broken objects, the
last good config staying, byte-stable output) is then testable without a cluster, and the kopf
handlers only move data between the API and this function.

Rules:
- provider name = LLMProvider metadata.name; route name = RoutingPolicy metadata.name;
  routes are ordered by (spec.order, name); providers by name.
- an object whose spec is invalid, or whose references (Secrets, LLMProviders) are missing, is
  excluded and gets a problem naming the reason. A policy whose targets name a missing or
  excluded provider keeps the targets that resolve (problem `Degraded` naming the others:
  one broken fallback must not take the route down); it is excluded only when no target resolves.
- whatever remains is published if it is a valid `RoutingConfig`; otherwise nothing is published.
- API keys are copied (still base64, never decoded) into the credentials Secret data under the
  provider's name; the config refers to them as files under the mount path (a vertex provider's
  Secret key is its Google credentials JSON, referred to as `credentialsFile`; without one it uses
  workload identity).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from detour_proxy import config as cfg

from . import specs
from .settings import OperatorSettings

LLMP, RPOL = "LLMProvider", "RoutingPolicy"
#: ResolvedRefs reason of a policy that is published without some of its targets (they do not resolve).
DEGRADED = "Degraded"
Key = tuple[str, str]  # (kind, name)


@dataclass(frozen=True)
class Problem:
    """Why an object is not part of the config: the condition it fails, a reason and a message."""

    condition: str  # Accepted | ResolvedRefs
    reason: str
    message: str


@dataclass
class RenderResult:
    config: cfg.RoutingConfig | None = None
    config_yaml: bytes | None = None
    config_hash: str | None = None
    # provider name -> base64 key. When nothing is published (`error`), the keys that still
    # resolve: the reconciler prunes the credentials Secret to them, so the last good config
    # stays but a deleted provider's (or a removed Secret key's) copy does not.
    credentials: dict[str, str] = field(default_factory=dict)
    problems: dict[Key, list[Problem]] = field(default_factory=dict)
    included: set[Key] = field(default_factory=set)
    error: str | None = None  # why nothing could be published
    error_reason: str = "NoValidConfig"  # Programmed reason when nothing could be published

    def refuse(self, reason: str, message: str) -> None:
        """Nothing can be published after all (e.g. too large): the last good config stays."""
        self.config = self.config_yaml = self.config_hash = None
        self.included.clear()
        self.error, self.error_reason = message, reason

    def add(self, key: Key, problem: Problem) -> None:
        self.problems.setdefault(key, []).append(problem)


def _errors(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors(include_url=False):
        loc = ".".join(str(p) for p in err["loc"]) or "spec"
        parts.append(f"{loc}: {err['msg']}")
    return "; ".join(parts)


def _live(objs: Iterable[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """Objects not being deleted, sorted by name (input order must not matter)."""
    alive = [o for o in objs if not o.get("metadata", {}).get("deletionTimestamp")]
    return sorted(alive, key=lambda o: o["metadata"]["name"])


def _validate(model: type[BaseModel], data: Any) -> tuple[BaseModel | None, str | None]:
    try:
        return model.model_validate(data or {}), None
    except ValidationError as exc:
        return None, _errors(exc)


def secret_names(obj: Mapping[str, Any]) -> set[str]:
    """The Secrets an LLMProvider references (by name, in its namespace): the operator reads and
    watches these and no other Secret (secret_refs.py)."""
    return {name for name, _ in specs.secret_refs(dict(obj.get("spec") or {}))}   # apiKeySecretRef(s)


def _provider(obj: Mapping[str, Any], secrets: Mapping[str, Mapping[str, str]],
              settings: OperatorSettings, result: RenderResult,
              unreadable: Mapping[str, str] | None = None) -> dict[str, Any] | None:
    name = obj["metadata"]["name"]
    key = (LLMP, name)
    spec, err = _validate(specs.LLMProviderSpec, obj.get("spec"))
    if spec is None:
        result.add(key, Problem("Accepted", "InvalidSpec", err or "invalid spec"))
        return None
    data = spec.model_dump(mode="json", by_alias=True, exclude_defaults=True,
                           exclude={"api_key_secret_ref", "api_key_secret_refs"})
    data["name"] = name
    ref = spec.api_key_secret_ref  # type: ignore[attr-defined]  # required unless openai-compatible/vertex (spec rule)
    refs = spec.api_key_secret_refs  # type: ignore[attr-defined]  # several keys (apiKeys)
    mount = settings.credentials_mount_path.rstrip('/')
    if ref is not None:
        path = f"{mount}/{name}"
        if spec.type is cfg.ProviderType.vertex:  # type: ignore[attr-defined]
            data["credentialsFile"] = path   # the service-account / external_account JSON, read by google-auth
        else:
            data["apiKey"] = {"file": path}
    elif refs is not None:   # each key its own file in the credentials Secret, never in the ConfigMap
        data["apiKeys"] = [{"file": f"{mount}/{specs.credential_key(name, j)}"} for j in range(len(refs))]
    provider, err = _validate(cfg.Provider, data)
    if provider is None:
        result.add(key, Problem("Accepted", "InvalidSpec", err or "invalid provider"))
        return None
    copied: dict[str, str] = {}
    for j, r in enumerate([ref] if ref is not None else refs or []):
        secret = secrets.get(r.name)
        if secret is None and (why := (unreadable or {}).get(r.name)):
            result.add(key, Problem("ResolvedRefs", "SecretUnreadable",
                                    f"the operator cannot read Secret {r.name!r}: {why}"))
            return None
        if secret is None:
            result.add(key, Problem("ResolvedRefs", "SecretNotFound", f"Secret {r.name!r} not found"))
            return None
        if r.key not in secret or not secret[r.key]:
            result.add(key, Problem("ResolvedRefs", "SecretKeyNotFound",
                                    f"Secret {r.name!r} has no key {r.key!r}"))
            return None
        copied[specs.credential_key(name, j)] = secret[r.key]
    result.credentials.update(copied)
    return data


def _route(obj: Mapping[str, Any], providers: set[str], excluded: set[str], result: RenderResult,
           ) -> tuple[int, str, dict[str, Any]] | None:
    name = obj["metadata"]["name"]
    key = (RPOL, name)
    spec, err = _validate(specs.RoutingPolicySpec, obj.get("spec"))
    if spec is None:
        result.add(key, Problem("Accepted", "InvalidSpec", err or "invalid spec"))
        return None
    data = spec.model_dump(mode="json", by_alias=True, exclude_defaults=True, exclude={"order", "targets"})
    data["name"] = name
    targets = []
    for t in spec.targets:  # type: ignore[attr-defined]
        td = t.model_dump(mode="json", by_alias=True, exclude_defaults=True, exclude={"provider_ref"})
        targets.append({"provider": t.provider_ref, **td})
    data["targets"] = targets
    route, err = _validate(cfg.Route, data)
    if route is None:
        result.add(key, Problem("Accepted", "InvalidSpec", err or "invalid route"))
        return None
    kept, left_out = [], []
    for i, t in enumerate(targets):
        why = ("not found" if t["provider"] not in providers else
               "not ready" if t["provider"] in excluded else None)
        if why is None:
            kept.append(t)
        else:
            left_out.append(f"target {i + 1} ({t['provider']}/{t['model']}: LLMProvider {why})")
    if not kept:
        missing = sorted({t["provider"] for t in targets if t["provider"] not in providers})
        if missing:
            result.add(key, Problem("ResolvedRefs", "ProviderNotFound", "LLMProvider not found: " + ", ".join(missing)))
        else:
            broken = sorted({t["provider"] for t in targets})
            result.add(key, Problem("ResolvedRefs", "ProviderNotReady", "LLMProvider not ready: " + ", ".join(broken)))
        return None
    if left_out:
        # Serve with the targets that resolve rather than take the whole route down (issue 14.1);
        # the reduced route must still be a valid route (e.g. hedge/strategy rules on target count).
        reduced, err = _validate(cfg.Route, {**data, "targets": kept})
        if reduced is None:
            result.add(key, Problem("ResolvedRefs", "ProviderNotReady",
                                    "left out " + "; ".join(left_out) + f"; the rest is not a valid route: {err}"))
            return None
        data = {**data, "targets": kept}
        result.add(key, Problem("ResolvedRefs", DEGRADED,
                                f"serving with {len(kept)} of {len(targets)} targets; left out: " + "; ".join(left_out)))
    return spec.order, name, data  # type: ignore[attr-defined]


def target_summary(policy: Mapping[str, Any]) -> str:
    """`status.targets` of a RoutingPolicy: the LLMProviders its targets name, in spec order, once each.

    One string because the API server's printer columns print only the first result of a JSONPath
    (`.spec.targets[*].providerRef` would show just the first provider).
    """
    targets = (policy.get("spec") or {}).get("targets")
    refs = [t.get("providerRef") for t in targets if isinstance(t, Mapping)] if isinstance(targets, list) else []
    return ",".join(dict.fromkeys(r for r in refs if isinstance(r, str) and r))


#: The API server refuses a ConfigMap whose data exceed 1 MiB (and etcd a request over 1.5 MiB).
CONFIGMAP_LIMIT = 1024 * 1024 - 16 * 1024  # room for metadata (owner references, labels)


def canonical_yaml(config: cfg.RoutingConfig, namespace: str) -> bytes:
    """Byte-stable YAML: defaults omitted, keys sorted, lists in their semantic order."""
    header = f"# Rendered by detour-operator from LLMProviders and RoutingPolicies in namespace {namespace}.\n"
    body = yaml.safe_dump(config.dump(), sort_keys=True, default_flow_style=False, allow_unicode=True, width=1000)
    return (header + body).encode()


def render(providers: Iterable[Mapping[str, Any]], policies: Iterable[Mapping[str, Any]],
           secrets: Mapping[str, Mapping[str, str]], settings: OperatorSettings,
           namespace: str = "default", unreadable: Mapping[str, str] | None = None) -> RenderResult:
    """Render one namespace. `secrets` maps Secret name -> its `data` (base64 values);
    `unreadable` maps the name of a referenced Secret the operator may not read -> why."""
    result = RenderResult()
    live_providers = _live(providers)
    rendered: list[dict[str, Any]] = []
    for obj in live_providers:
        data = _provider(obj, secrets, settings, result, unreadable)
        if data is not None:
            rendered.append(data)
            result.included.add((LLMP, data["name"]))
    known = {o["metadata"]["name"] for o in live_providers}
    good = {p["name"] for p in rendered}
    routes = []
    for obj in _live(policies):
        item = _route(obj, known, known - good, result)
        if item is not None:
            routes.append(item)
    routes.sort(key=lambda r: (r[0], r[1]))
    for _, name, _ in routes:
        result.included.add((RPOL, name))
    if not rendered or not routes:
        result.error = "no valid " + ("LLMProvider" if not rendered else "RoutingPolicy")
        result.included.clear()
        return result
    doc = {"providers": rendered, "routes": [r[2] for r in routes], **settings.global_config()}
    try:
        config = cfg.parse_config(doc)
    except cfg.ConfigError as exc:
        result.error = str(exc).replace("\n", " ")
        result.included.clear()
        return result
    result.config = config
    result.config_yaml = canonical_yaml(config, namespace)
    result.config_hash = cfg.config_hash(config)
    if len(result.config_yaml) > CONFIGMAP_LIMIT:
        result.refuse("ConfigTooLarge", f"the rendered config is {len(result.config_yaml)} bytes, over the "
                      f"{CONFIGMAP_LIMIT} bytes a ConfigMap can hold; split the routes across namespaces "
                      "or trim headers and models")
    return result
