"""Spec and status models of the Detour custom resources, derived from the routing-config models.

Why derived: `detour_proxy.config` is the one schema. An LLMProvider spec *is* a `Provider`
without `name` (metadata.name) and `apiKey` (a Secret reference instead); a RoutingPolicy spec
*is* a `Route` without `name`, whose targets say `providerRef`, plus `order`. Building the models
from the config models' fields means a new config field shows up in the CRDs (and in
`crds/*.yaml`, checked by a test) without anyone remembering to add it.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, create_model, model_validator
from pydantic.alias_generators import to_camel

from detour_proxy import config as cfg

GROUP = "detour.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"

HttpStatus = Annotated[int, Field(ge=100, le=599)]


def _derive(name: str, base: type[BaseModel], drop: set[str], doc: str,
            validators: dict[str, Any] | None = None, **extra: Any) -> type[BaseModel]:
    """A model with `base`'s fields (same aliases, bounds, descriptions) minus `drop`, plus `extra`.

    Field bounds carry over; cross-field validators do not (they may name dropped fields), so
    the ones that still apply are passed in `validators`. Each mirrors a CEL rule of the CRD
    (crdgen.PROVIDER_RULES / POLICY_RULES), so the operator refuses exactly what the API
    server would (checked by tests/unit/operator/test_op_cel_rules.py).
    """
    fields: dict[str, Any] = {
        fname: (finfo.annotation, finfo) for fname, finfo in base.model_fields.items() if fname not in drop
    }
    fields.update(extra)
    model = create_model(name, __config__=base.model_config, __doc__=doc, __validators__=validators or {}, **fields)
    return model


#: Types that may run without apiKeySecretRef: an open server, vertex on workload identity,
#: bedrock on the AWS credential chain (IRSA / EKS Pod Identity, env, shared files).
KEYLESS_TYPES = (cfg.ProviderType.openai_compatible, cfg.ProviderType.vertex, cfg.ProviderType.bedrock)


def _key_needed_unless_openai_compatible(spec: Any) -> Any:
    if spec.api_key_secret_ref is None and spec.api_key_secret_refs is None and spec.type not in KEYLESS_TYPES:
        raise ValueError("apiKeySecretRef is required unless type is openai-compatible, vertex or bedrock")
    return spec


def _one_key_field(spec: Any) -> Any:
    if spec.api_key_secret_ref is not None and spec.api_key_secret_refs is not None:
        raise ValueError("set apiKeySecretRef or apiKeySecretRefs, not both")
    return spec


def secret_refs(spec: Any) -> list[tuple[str, str]]:
    """(Secret name, key) of every API key an LLMProvider spec (a plain dict) references, in key
    order: `apiKeySecretRef`, else each of `apiKeySecretRefs`. Malformed entries are skipped
    (the spec is refused elsewhere)."""
    if not isinstance(spec, dict):
        return []
    refs = spec.get("apiKeySecretRefs")
    items = refs if isinstance(refs, list) else [spec.get("apiKeySecretRef")]
    return [(r["name"], r.get("key", "")) for r in items
            if isinstance(r, dict) and isinstance(r.get("name"), str) and r["name"]]


def credential_key(provider: str, index: int) -> str:
    """Key of the provider's `index`-th API key in Secret detour-credentials (and its file name
    under the mount path): the provider's name for the first, `<name>.<index>` for the others
    (provider names have no dots, so they never collide)."""
    return provider if index == 0 else f"{provider}.{index}"


def _bedrock_needs_region(spec: Any) -> Any:
    if spec.type is cfg.ProviderType.bedrock and spec.region is None:
        raise ValueError("type bedrock needs region")
    if spec.type is not cfg.ProviderType.bedrock and not spec.base_url:
        raise ValueError("baseURL is required unless type is bedrock")
    return spec


def _vertex_needs_project_and_location(spec: Any) -> Any:
    if spec.type is cfg.ProviderType.vertex and (spec.project is None or spec.location is None):
        raise ValueError("type vertex needs project and location")
    return spec


def _latency_tolerance_needs_latency(spec: Any) -> Any:
    cfg.check_latency_tolerance(spec.strategy, spec.latency_tolerance)
    return spec


class SecretKeyRef(BaseModel):
    """A key in a Secret of the same namespace."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True)

    name: str = Field(..., min_length=1, max_length=253, description="Name of the Secret in the LLMProvider's namespace.")
    key: str = Field(..., min_length=1, max_length=253, description="Key within the Secret that holds the API key.")


LLMProviderSpec = _derive(
    "LLMProviderSpec", cfg.Provider, {"name", "api_key", "api_keys", "credentials_file"},
    "One upstream LLM provider endpoint; the provider's name is the object's metadata.name.",
    validators={"_key_rule": model_validator(mode="after")(_key_needed_unless_openai_compatible),
                "_vertex_rule": model_validator(mode="after")(_vertex_needs_project_and_location),
                "_bedrock_rule": model_validator(mode="after")(_bedrock_needs_region),
                "_one_key_rule": model_validator(mode="after")(_one_key_field)},
    api_key_secret_ref=(SecretKeyRef | None, Field(None, description=(
        "Secret key holding the provider API key (vertex: a Google service-account key or external_account "
        "JSON; without it, vertex uses workload identity / Application Default Credentials; bedrock: an optional "
        "Bedrock API key, without it the AWS credential chain, e.g. IRSA); required unless "
        "type is openai-compatible, vertex or bedrock. "
        "The operator copies it into Secret detour-credentials, never into the ConfigMap."))),
    api_key_secret_refs=(list[SecretKeyRef] | None, Field(None, min_length=1, max_length=16, description=(
        "Several API keys of this provider, instead of apiKeySecretRef (not with type vertex): each "
        "(model, key) has its own health, breaker and limits, and a request refused with 401, 402, 403 "
        "or 429 goes to the next key before the route falls back to another provider. The operator "
        "copies each into Secret detour-credentials, never into the ConfigMap; status, metrics and "
        "logs name a key by its index in this list."))),
)

PolicyTarget = _derive(
    "PolicyTarget", cfg.Target, {"provider"},
    "One provider/model pair the policy can send to.",
    provider_ref=(str, Field(..., pattern=cfg.NAME_PATTERN, max_length=63,
                             description="Name of an LLMProvider in the same namespace.")),
)

RoutingPolicySpec = _derive(
    "RoutingPolicySpec", cfg.Route, {"name", "targets", "fallback_on_status_codes"},
    "One route of the routing config; the route's name is the object's metadata.name.",
    validators={"_latency_rule": model_validator(mode="after")(_latency_tolerance_needs_latency)},
    targets=(list[PolicyTarget], Field(..., min_length=1, max_length=32, description="Targets, in priority order for the priority strategy.")),  # type: ignore[valid-type]
    fallback_on_status_codes=(list[HttpStatus], Field(
        default_factory=lambda: [401, 403, 404, 408, 429, 500, 502, 503, 504],
        description=cfg.Route.model_fields["fallback_on_status_codes"].description)),
    order=(int, Field(0, ge=-1000000, le=1000000, description=(
        "When several policies match a request, lower order is tried first; ties are broken by name."))),
)

# Fields of the config models the specs leave out on purpose (tests check nothing else is lost).
PROVIDER_DROPPED = {"name", "api_key", "api_keys", "credentials_file"}   # credentials_file: vertex's apiKeySecretRef
ROUTE_DROPPED = {"name"}
TARGET_RENAMED = {"provider": "provider_ref"}


class _Status(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True)


class Condition(_Status):
    """A Kubernetes API convention condition."""

    type: str = Field(..., description="Accepted, ResolvedRefs, Programmed, Ready or Available.")
    status: Literal["True", "False", "Unknown"] = Field(..., description="True, False or Unknown.")
    reason: str = Field(..., description="CamelCase reason for the condition's last transition.")
    message: str = Field("", description="Human-readable details.")
    last_transition_time: str = Field(..., description="When status last changed (RFC 3339).", json_schema_extra={"format": "date-time"})
    observed_generation: int | None = Field(None, ge=0, description="metadata.generation the condition was computed for.")


class ModelHealth(_Status):
    """Health of one model of the provider, over its API keys (one target per (model, key))."""

    name: str = Field(..., description="The model (or Azure deployment) name the policies' targets use.")
    state: Literal["Healthy", "Degraded", "Unavailable"] = Field(..., description="Unavailable: every key's breaker is open (opened by some pod, shared with every pod); Degraded: some key's is, or the model's failure ratio is at or above the threshold; else Healthy.")
    keys: int = Field(1, ge=1, description="API keys of the provider (1 without apiKeySecretRefs): one target per (model, key).")
    ready_keys: int = Field(0, ge=0, description="Keys whose breaker for this model is not open.")


class ProviderHealth(_Status):
    """Roll-up of the health that proxy pods publish in their `detour.dev/health` annotation."""

    state: Literal["Healthy", "Degraded", "Unavailable", "Unknown"] = Field(..., description="Healthy, Degraded (failure ratio at or above the threshold, or some model or key unavailable), Unavailable (no model has a key whose breaker is closed: pods opened them, every pod imports them) or Unknown (no fresh reports).")
    breaker: str = Field("", description="Pods that opened the breaker on their own evidence out of the pods reporting it, e.g. `1/3 open`.")
    last_error: str | None = Field(None, description="Most recent error class seen by any pod, e.g. http_503.")
    last_error_at: str | None = Field(None, description="When the most recent error happened (RFC 3339).")
    requests: int = Field(0, ge=0, description="Requests in the health window, summed over pods.")
    failure_ratio: float = Field(0.0, ge=0.0, le=1.0, description="Request-weighted failure ratio over the window.")
    pods: int = Field(0, ge=0, description="Proxy pods with a fresh report for this provider.")
    truncated_reports: int | None = Field(None, ge=0, description="Pods whose report left closed targets out to stay under the annotation size limit.")
    models: list[ModelHealth] | None = Field(None, description="Health per model (over its API keys): a failing model or a refused key does not take the provider's other models down.")
    models_ready: str | None = Field(None, description="Per model, `name ready/total` keys (1 total without apiKeySecretRefs), unavailable models first: the Models column of `kubectl get llmp`.")


class LLMProviderStatus(_Status):
    observed_generation: int | None = Field(None, description="Last metadata.generation the operator processed.")
    conditions: list[Condition] = Field(default_factory=list, description="Accepted, ResolvedRefs, Programmed, Ready, Available.")
    config_hash: str | None = Field(None, description="Hash of the routing config (ConfigMap detour-routing) in which this provider's current state was first published; it does not move when other objects change.")
    health: ProviderHealth | None = Field(None, description="Health roll-up from the proxy pods.")


class RoutingPolicyStatus(_Status):
    observed_generation: int | None = Field(None, description="Last metadata.generation the operator processed.")
    conditions: list[Condition] = Field(default_factory=list, description="Accepted, ResolvedRefs, Programmed, Ready.")
    config_hash: str | None = Field(None, description="Hash of the routing config (ConfigMap detour-routing) in which this policy's current state was first published; it does not move when other objects change.")
    # One string, not a list: a printer column prints only the first result of its JSONPath.
    targets: str = Field("", description="The LLMProviders that the targets name, comma-separated in spec order (the Targets column).")
