"""Everything built once per config: providers with adapters and keys, routes with planners and
bound metrics, and the compiled router. A reload builds a new `Gateway` and swaps it in one
assignment; requests keep the `Gateway` they started with. Health state lives in the
long-lived `HealthRegistry`, keyed by target identity, so it survives reloads.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field, replace
from typing import Any, Callable


from ..adapters import Adapter, adapter_for
from ..config import HiddenFailure, Provider, ProviderType, Route, RoutingConfig, Target, config_hash
from ..config.credentials import ClientKeys, Credential
from ..metrics import Metrics, RouteMetrics, TargetMetrics
from ..policy import Clock, HealthRegistry, RetryBudget, RoutePlanner, TargetKey, TargetState, merge_limits
from .router import Router
from ..transport import ConnectTimeout, client_timeout
from ..transport.google_auth import GoogleToken
from ..transport.aws_auth import AwsCredentials


@dataclass(slots=True)
class ProviderRuntime:
    config: Provider
    adapter: Adapter
    credential: Credential | GoogleToken | AwsCredentials | None   # GoogleToken: vertex; AwsCredentials: bedrock
    client_timeout: ConnectTimeout          # connect only; built once per config
    can_continue: bool
    supports_embeddings: bool
    #: every API key of the provider (`apiKeys`), for redaction and key-file refresh
    key_credentials: tuple[Credential, ...] = ()
    #: which of them `credential` is (0 with one key); a provider with several keys has one
    #: runtime per key, shared by its targets
    key_index: int = 0

    def api_key(self) -> str | None:
        return self.credential.get() if self.credential is not None else None

    def all_api_keys(self) -> list[str | None]:
        """Every configured key of this provider (redaction must remove each of them)."""
        if len(self.key_credentials) > 1:
            return [c.get() for c in self.key_credentials]
        return [self.api_key()]


@dataclass(slots=True)
class TargetRuntime:
    index: int
    target: Target
    key: TargetKey
    provider: ProviderRuntime
    state: TargetState
    metrics: TargetMetrics
    label: str          # "provider/model": the x-detour-target header value
    #: with several API keys: the key's index (the x-detour-key header value), never the key
    key_label: bytes | None = None


@dataclass(slots=True)
class RouteRuntime:
    route: Route
    targets: list[TargetRuntime]
    planner: RoutePlanner
    metrics: RouteMetrics
    embeddings_eligible: Callable[[int], bool]
    continue_eligible: Callable[[int], bool]
    max_response_bytes: int   # `server.maxResponseBytes`: the cap of a non-streamed answer
    #: the route's hiddenFailures judged on stream chunks (all but context-window), built once
    stream_hidden: frozenset[Any] = frozenset()


@dataclass(slots=True)
class Gateway:
    """One immutable generation of the routing config, ready to serve."""

    config: RoutingConfig
    hash: str
    providers: dict[str, ProviderRuntime]
    routes: list[RouteRuntime]
    router: Router
    client_keys: ClientKeys | None
    model_ids: list[str]
    extra: dict[str, Any] = field(default_factory=dict)


def _aws_credentials(p: Provider, prev: object, metrics: Metrics) -> AwsCredentials:
    """A bedrock provider's AWS credentials: the previous generation's when its profile did not
    change (no re-resolution on reload), else a new chain whose first resolution starts now."""
    if isinstance(prev, AwsCredentials) and prev.profile == p.profile and prev.region == p.region:
        return prev
    name = p.name
    creds = AwsCredentials(p.profile, region=p.region, name=name, on_result=lambda ok: metrics.credential_fetched(name, ok))
    creds.start()
    return creds


def _google_token(p: Provider, prev: Credential | GoogleToken | None, metrics: Metrics) -> GoogleToken:
    """The provider's Google token source: the previous generation's when its credentials did
    not change (no refetch on reload), else a new one whose first fetch starts now."""
    if isinstance(prev, GoogleToken) and prev.file == p.credentials_file:
        return prev
    name = p.name
    token = GoogleToken(p.credentials_file, name=name, on_result=lambda ok: metrics.credential_fetched(name, ok))
    token.start()
    return token


def _renewer(registry: HealthRegistry, clock: Clock, provider: str, index: int) -> Callable[[], None]:
    def renew() -> None:
        registry.renew_key(provider, index, clock.now())
    return renew


def build_gateway(config: RoutingConfig, *, registry: HealthRegistry, budget: RetryBudget,
                  metrics: Metrics, rng: random.Random, clock: Clock,
                  previous: Gateway | None = None) -> Gateway:
    """Build all per-config structures. Raises only for programming errors: config is validated."""
    old_creds: dict[str, Any] = {}
    old_keys: dict[tuple[str, int, str], Credential] = {}
    if previous is not None:
        old_creds = {name: p.credential for name, p in previous.providers.items()}
        old_keys = {(name, j, c.describe): c for name, p in previous.providers.items()
                    for j, c in enumerate(p.key_credentials)}
    providers: dict[str, ProviderRuntime] = {}
    key_runtimes: dict[str, list[ProviderRuntime]] = {}   # providers with several keys: one per key
    for p in config.providers:
        adapter = adapter_for(p)
        cred: Credential | GoogleToken | AwsCredentials | None = None
        keys: tuple[Credential, ...] = ()
        if p.key_sources:
            # Keep cached credentials whose source did not change (no extra file reads).
            # (per provider and position; an inline value is cheap and its description hides it)
            keys = tuple((old_keys.get((p.name, j, repr(src))) if src.value is None else None) or Credential(src)
                         for j, src in enumerate(p.key_sources))
            cred = keys[0]
        elif p.type is ProviderType.vertex:
            cred = _google_token(p, old_creds.get(p.name), metrics)
        elif p.type is ProviderType.bedrock:
            cred = _aws_credentials(p, old_creds.get(p.name), metrics)
        providers[p.name] = ProviderRuntime(
            config=p, adapter=adapter, credential=cred,
            client_timeout=client_timeout(p.timeouts.connect),
            can_continue=adapter.can_continue, supports_embeddings=adapter.supports("embeddings"),
            key_credentials=keys,
        )
        for j, c in enumerate(keys):   # a replaced key starts afresh (its refusals were the old key's)
            c.on_change = _renewer(registry, clock, p.name, j) if len(keys) > 1 else None
        if len(keys) > 1:
            key_runtimes[p.name] = [replace(providers[p.name], credential=c, key_index=j) for j, c in enumerate(keys)]
    registry.update_settings(config.health)
    routes: list[RouteRuntime] = []
    all_keys: list[TargetKey] = []
    limits: dict[TargetKey, Any] = {}
    for route in config.routes:
        targets: list[TargetRuntime] = []
        groups: list[int] = []
        for g, t in enumerate(route.targets):
            tm = TargetMetrics.bind(metrics, route.name, t.provider, t.model)
            # A provider with several keys: one planner target per key (policy.keygroups).
            for prov in key_runtimes.get(t.provider) or [providers[t.provider]]:
                key = TargetKey(t.provider, t.model, prov.config.base_url, prov.key_index)
                all_keys.append(key)
                if t.limits is not None:   # limits are per key: each key has the provider's quota
                    limits[key] = merge_limits(limits.get(key), t.limits)
                targets.append(TargetRuntime(
                    index=len(targets), target=t, key=key, provider=prov, state=registry.state(key),
                    metrics=tm, label=f"{t.provider}/{t.model}",
                    key_label=str(prov.key_index).encode() if t.provider in key_runtimes else None,
                ))
                groups.append(g)
        expanded = len(targets) > len(route.targets)
        if expanded:   # the planner indexes targets per key: the route lists each target once per key
            route = route.model_copy(update={"targets": [t.target for t in targets]})
        planner = RoutePlanner(route, [t.key for t in targets], registry, budget, rng,
                               groups=groups if expanded else None)
        emb = tuple(t.provider.supports_embeddings for t in targets)
        cont = tuple(t.provider.can_continue for t in targets)
        routes.append(RouteRuntime(
            route=route, targets=targets, planner=planner,
            metrics=RouteMetrics.bind(metrics, route.name),
            embeddings_eligible=emb.__getitem__, continue_eligible=cont.__getitem__,
            max_response_bytes=config.server.max_response_bytes,
            stream_hidden=frozenset(route.hidden_failures) - {HiddenFailure.context_window},
        ))
    # Rate limits live on the (long-lived) target states; each replica enforces its share.
    registry.set_limits(limits, config.shared_health.replicas)
    registry.retain(all_keys)   # the gauges follow in AppState.install, once the build succeeded
    model_ids: list[str] = []
    for route in config.routes:
        for m in route.match.models:
            if not any(ch in m for ch in "*?[") and m not in model_ids:
                model_ids.append(m)
    client_keys = ClientKeys(list(config.client_auth.keys)) if config.client_auth else None
    return Gateway(
        config=config, hash=config_hash(config), providers=providers, routes=routes,
        router=Router(routes), client_keys=client_keys, model_ids=model_ids,
    )
