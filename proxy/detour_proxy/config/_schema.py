"""The routing config: the user-facing contract of Detour, and its one source of truth.

The same models validate `detour-proxy --config FILE`, back the operator's rendering, and
generate the CRD schemas (`detour_operator.crdgen`), so a field exists everywhere or nowhere.
Keys are camelCase as users write them; Python attributes are snake_case.
"""

from __future__ import annotations

import fnmatch
import hashlib
from enum import Enum
from pathlib import Path
from collections.abc import Mapping
from typing import Any

import orjson
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic.alias_generators import to_camel

from .durations import Duration, format_duration, parse_duration

__all__ = [
    "ConfigError", "Duration", "format_duration", "parse_duration",
    "SecretSource", "Timeouts", "ActiveProbes", "ProviderType", "VertexPublisher", "ContinuationMode", "Provider", "Limits",
    "Target", "Match", "Strategy", "HiddenFailure", "AffinitySource", "Affinity", "Backoff", "Retry", "Hedge", "StreamFailover", "Route",
    "Breaker", "SlowCall", "Health", "RetryBudget", "ClientAuth", "Server", "SharedHealth",
    "RoutingConfig", "load_config", "parse_config", "config_hash",
]

NAME_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"


class ConfigError(ValueError):
    """A config that cannot be served; the message names the field and the reason."""


class _Model(BaseModel):
    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True,
    )


class SecretSource(_Model):
    """Where a secret comes from: exactly one of env, file or value (value is for local tests only)."""

    env: str | None = Field(None, description="Name of an environment variable holding the secret.")
    file: str | None = Field(None, description="Path of a file holding the secret; re-read when it changes.")
    value: str | None = Field(None, description="The secret inline. For local tests only; never in a ConfigMap.")

    @model_validator(mode="after")
    def _exactly_one(self) -> SecretSource:
        if sum(x is not None for x in (self.env, self.file, self.value)) != 1:
            raise ValueError("set exactly one of env, file or value")
        return self

    def __repr__(self) -> str:  # never print a secret value
        kind = "env" if self.env else "file" if self.file else "value"
        ref = self.env or self.file or "***"
        return f"SecretSource({kind}={ref!r})"

    __str__ = __repr__


class Timeouts(_Model):
    """Per-provider timeouts. Every attempt is also bounded by what is left of the route's deadline."""

    connect: Duration = Field(5.0, description="Time to establish the TCP/TLS connection.")
    first_token: Duration = Field(30.0, description="Streams: time from sending the request to the first content-bearing chunk; later failures cannot be hidden, earlier ones fail over invisibly.")
    stream_idle: Duration = Field(30.0, description="Longest silence allowed between two stream chunks before the stream counts as failed.")
    total: Duration = Field(300.0, description="Longest a single attempt may take, start to end.")


class ActiveProbes(_Model):
    """Cheap active probes of a provider's targets whose breaker is open while no traffic comes.

    Off by default: a probe is a real, billed completion. Cost per open target: at most
    (prompt tokens + maxTokens) per probe, one probe per max(interval, current cooldown), sent by
    one replica at a time (shared health); see README "Active probes".
    """

    enabled: bool = Field(False, description="Probe this provider's targets whose breaker is open (cooldown over) and that saw no request for `interval`: a success closes the breaker before client traffic returns, a failure re-opens it with the doubled cooldown. Off by default (each probe is a billed completion).")
    interval: Duration = Field(60.0, description="A target is probed only after it saw no request (client or probe) for this long; with shared health, one probe per interval across all replicas.")
    timeout: Duration = Field(10.0, description="Longest a probe may take (also bounded by the provider's timeouts.total).")
    max_tokens: int = Field(16, ge=8, le=1024, description="Completion limit of a probe, sent as max_completion_tokens (OpenAI, Azure, compatible servers), max_tokens (Anthropic, Vertex Claude), maxOutputTokens (Gemini) or maxTokens (Bedrock). At least 8: reasoning models refuse or spend a 1-token limit on reasoning; an answer cut at the limit still counts as up.")
    prompt: str = Field("Reply with OK.", min_length=1, max_length=1000, description="The probe's one user message.")


class ProviderType(str, Enum):
    openai = "openai"
    azure_openai = "azure-openai"
    anthropic = "anthropic"
    openai_compatible = "openai-compatible"
    gemini = "gemini"      # the Gemini API (generativelanguage.googleapis.com) with an API key
    vertex = "vertex"      # Google Vertex AI: Claude (rawPredict) and Gemini (generateContent), google-auth
    bedrock = "bedrock"    # AWS Bedrock Converse / ConverseStream, SigV4 with the AWS credential chain


class ContinuationMode(str, Enum):
    """How a provider continues a partly delivered answer (stream failover in `continue` mode)."""

    none = "none"                        # cannot continue: skipped as a continuation target
    prefill = "prefill"                  # trailing assistant message is continued (Anthropic, many OpenAI-compatible servers)
    continue_final_message = "continue-final-message"  # vLLM: `continue_final_message: true, add_generation_prompt: false`
    prefix = "prefix"                    # DeepSeek/Mistral: assistant message with `prefix: true`


class VertexPublisher(str, Enum):
    """Which model family a vertex provider serves; by default chosen by the model name."""

    anthropic = "anthropic"   # Claude: rawPredict / streamRawPredict, the Anthropic Messages body
    google = "google"         # Gemini: generateContent / streamGenerateContent


_RESPONSES_TYPES = (ProviderType.openai, ProviderType.azure_openai, ProviderType.openai_compatible)


class Provider(_Model):
    """One upstream LLM provider endpoint."""

    name: str = Field(..., pattern=NAME_PATTERN, max_length=63, description="Unique name of the provider, used by route targets.")
    type: ProviderType = Field(ProviderType.openai, description="API dialect: openai, azure-openai, anthropic, openai-compatible, gemini, vertex or bedrock.")
    base_url: str = Field("", alias="baseURL", pattern=r"^(?:https?://|$)", description="Base URL, e.g. https://api.openai.com/v1, https://RESOURCE.openai.azure.com, https://generativelanguage.googleapis.com (gemini) or https://us-east5-aiplatform.googleapis.com (vertex). Required, except for bedrock (default https://bedrock-runtime.REGION.amazonaws.com).")
    api_key: SecretSource | None = Field(None, description="The provider API key (bedrock: an optional Bedrock API key, sent as a bearer token instead of SigV4 signing).")
    api_keys: list[SecretSource] | None = Field(None, min_length=1, max_length=16, description="Several API keys of this provider, instead of apiKey: each (model, key) has its own health, breaker and limits; a request refused with 401, 402, 403 or 429 goes to the next key (the refused key is held back: maxCooldown for 401/402/403, its Retry-After for 429) before the route falls back to another target. Keys are tried in list order.")
    api_version: str | None = Field(None, description="azure-openai: api-version query parameter; anthropic: anthropic-version header; vertex: anthropic_version of Claude requests (default vertex-2023-10-16).")
    headers: dict[str, str] = Field(default_factory=dict, description="Extra headers sent on every request to this provider.")
    timeouts: Timeouts = Field(default_factory=Timeouts, description="Connection, first-token, idle and total timeouts.")
    max_tokens_default: int = Field(4096, ge=1, description="max_tokens sent when the client sets none and the provider requires it (anthropic).")
    continuation: ContinuationMode | None = Field(None, description="How this provider continues a partial answer; default prefill for anthropic, none otherwise.")
    project: str | None = Field(None, min_length=1, max_length=100, pattern=r"^[a-z0-9][-a-z0-9.:]*$", description="vertex: the Google Cloud project ID.")
    location: str | None = Field(None, min_length=1, max_length=63, pattern=r"^[a-z0-9-]+$", description="vertex: the region (e.g. us-east5, europe-west1) or global.")
    publisher: VertexPublisher | None = Field(None, description="vertex: anthropic or google; default from the model name (claude-* anthropic, otherwise google).")
    responses_api: bool | None = Field(None, alias="responsesAPI", description="Whether this provider serves the OpenAI Responses API (POST {baseURL}/responses; azure-openai: /openai/responses): POST /v1/responses is then forwarded to it as is, stateful features (previous_response_id, store, background, server-side tools) included; otherwise it is translated to chat completions. Default true for openai and azure-openai, false for the others.")
    credentials_file: str | None = Field(None, min_length=1, description="vertex: a Google credentials JSON file (service account key or external_account / workload identity federation config); re-read when it changes. Unset: Application Default Credentials (GKE workload identity, the metadata server, GOOGLE_APPLICATION_CREDENTIALS).")
    active_probes: ActiveProbes = Field(default_factory=ActiveProbes, description="Cheap active probes of this provider's targets while their breaker is open and no traffic comes (off by default).")
    region: str | None = Field(None, min_length=1, max_length=63, pattern=r"^[a-z0-9-]+$", description="bedrock: the AWS region (e.g. us-east-1); signs requests and sets the default baseURL.")
    profile: str | None = Field(None, min_length=1, max_length=128, description="bedrock: the AWS shared-config profile to take credentials from (default: AWS_PROFILE, else the standard chain: env, shared files, web identity / IRSA, container and instance metadata).")

    @model_validator(mode="before")
    @classmethod
    def _bedrock_base_url(cls, data: Any) -> Any:
        """bedrock's baseURL follows its region unless given (tests point it at the simulator)."""
        if isinstance(data, dict) and str(data.get("type", "")) in ("bedrock", "ProviderType.bedrock") \
                and not data.get("baseURL") and not data.get("base_url") and isinstance(data.get("region"), str):
            data = {**data, "baseURL": f"https://bedrock-runtime.{data['region']}.amazonaws.com"}
        return data

    @model_validator(mode="after")
    def _bedrock_fields(self) -> Provider:
        bedrock = self.type is ProviderType.bedrock
        if not self.base_url:
            raise ValueError("type bedrock needs region" if bedrock else "baseURL is required")
        if bedrock and self.region is None:
            raise ValueError("type bedrock needs region")
        if not bedrock:
            extra = [n for n, v in (("region", self.region), ("profile", self.profile)) if v is not None]
            if extra:
                raise ValueError(f"{', '.join(extra)} apply only to type bedrock")
        return self

    @model_validator(mode="after")
    def _one_key_field(self) -> Provider:
        if self.api_key is not None and self.api_keys is not None:
            raise ValueError("set apiKey or apiKeys, not both (apiKeys: [one] is the same as apiKey)")
        return self

    @property
    def key_sources(self) -> list[SecretSource]:
        """The provider's API keys in order: `apiKeys`, else `apiKey` alone, else none."""
        if self.api_keys is not None:
            return list(self.api_keys)
        return [self.api_key] if self.api_key is not None else []

    @model_validator(mode="after")
    def _google_fields(self) -> Provider:
        vertex = self.type is ProviderType.vertex
        if vertex and (self.project is None or self.location is None):
            raise ValueError("type vertex needs project and location")
        if vertex and (self.api_key is not None or self.api_keys is not None):
            raise ValueError("type vertex authenticates with Google credentials (credentialsFile or "
                             "Application Default Credentials), not apiKey")
        if not vertex:
            extra = [n for n, v in (("project", self.project), ("location", self.location),
                                    ("publisher", self.publisher), ("credentialsFile", self.credentials_file))
                     if v is not None]
            if extra:
                raise ValueError(f"{', '.join(extra)} apply only to type vertex")
        return self

    @model_validator(mode="after")
    def _responses_api_type(self) -> Provider:
        if self.responses_api and self.type not in _RESPONSES_TYPES:
            raise ValueError("responsesAPI applies to types openai, azure-openai and openai-compatible")
        return self

    @property
    def serves_responses(self) -> bool:
        """POST /v1/responses is forwarded natively (see `responses_api`)."""
        if self.responses_api is not None:
            return self.responses_api
        return self.type in (ProviderType.openai, ProviderType.azure_openai)

    @property
    def effective_continuation(self) -> ContinuationMode:
        if self.continuation is not None:
            return self.continuation
        return ContinuationMode.prefill if self.type is ProviderType.anthropic else ContinuationMode.none


class Limits(_Model):
    """Client-side rate limits for one target, enforced before a request is sent."""

    requests_per_minute: int | None = Field(None, ge=1, description="Most requests sent to this target in any minute (across replicas, approximately).")
    tokens_per_minute: int | None = Field(None, ge=1, description="Most tokens (prompt + completion) sent to this target in any minute.")


class Target(_Model):
    """One provider/model pair a route can send to."""

    provider: str = Field(..., description="Name of a provider.")
    model: str = Field(..., min_length=1, description="Model (or Azure deployment) name sent to the provider.")
    priority: int = Field(0, ge=0, description="Lower is tried first (priority strategy).")
    weight: int = Field(1, ge=0, le=10000, description="Relative share of traffic (weighted strategy).")
    limits: Limits | None = Field(None, description="Optional requests/tokens per minute for this target.")
    context_window: int | None = Field(None, ge=1, description="The model's context window in tokens. With `context-window` in the route's hiddenFailures, a prompt too long for a target moves only to targets with a larger contextWindow.")
    overflow_only: bool = Field(False, description="Serve only requests whose prompt was too long for the route's other targets (needs `context-window` in hiddenFailures): a large-context model kept out of normal rotation.")


class Match(_Model):
    """Which requests a route serves; every listed condition must hold. Empty matches everything."""

    models: list[str] = Field(default_factory=list, description="Model names or glob patterns (`chat-*`) the client may ask for.")
    headers: dict[str, str] = Field(default_factory=dict, description="Request headers that must have these exact values.")
    metadata: dict[str, str] = Field(default_factory=dict, description="Keys of the request metadata (`x-detour-metadata` header or OpenAI `metadata` field) that must have these values.")

    def matches_model(self, model: str) -> bool:
        return not self.models or any(fnmatch.fnmatchcase(model, p) for p in self.models)


class Strategy(str, Enum):
    priority = "priority"
    weighted = "weighted"
    latency = "latency"
    least_busy = "least-busy"


class Backoff(_Model):
    """Exponential backoff between retries of the same target, with full jitter."""

    initial: Duration = Field(0.1, description="Backoff cap before the first retry; full jitter picks a wait in [0, cap].")
    max: Duration = Field(2.0, description="Largest backoff cap.")
    multiplier: float = Field(2.0, ge=1.0, le=10.0, description="Growth of the cap per retry.")


class Retry(_Model):
    """Retries of the same target before falling back to the next one."""

    attempts: int = Field(2, ge=1, le=10, description="Tries per target, the first included (1 = no retry).")
    backoff: Backoff = Field(default_factory=Backoff)
    on_status_codes: list[int] = Field(default_factory=lambda: [429, 500, 502, 503, 504, 529], description="Upstream statuses retried on the same target (529: Anthropic overloaded).")
    respect_retry_after: bool = Field(True, description="Wait at least what Retry-After asks before retrying the same target.")
    max_retry_after: Duration = Field(10.0, description="A Retry-After longer than this is not waited for: the request falls back instead.")


class Hedge(_Model):
    """Send a duplicate to the next target when the first is slow (non-streaming requests only)."""

    after: Duration = Field(..., description="Hedge when the first attempt has not answered after this long.")
    max_extra: int = Field(1, ge=1, le=3, description="Most extra requests per client request.")


class HiddenFailure(str, Enum):
    """An answer that looks like a success but is the target's failure (route `hiddenFailures`)."""

    empty = "empty"                    # 200 with no content (or only whitespace), no tool call, no refusal
    reasoning_only = "reasoning-only"  # 200 with reasoning but no content, tool call or refusal
    context_window = "context-window"  # the prompt exceeds the target's context: try a larger one


class AffinitySource(str, Enum):
    """Where a request's prompt-cache affinity key comes from (first one present wins)."""

    session_header = "session-header"      # the `x-detour-session` header
    prompt_cache_key = "prompt-cache-key"  # the OpenAI `prompt_cache_key` field
    user = "user"                          # the OpenAI `user` field
    header = "header"                      # the header named by `affinity.header`
    prefix = "prefix"                      # a hash of the first `prefixMessages` messages


class Affinity(_Model):
    """Prompt-cache affinity: requests with the same key go to the same healthy target on every replica."""

    sources: list[AffinitySource] = Field(
        default_factory=lambda: [AffinitySource.session_header, AffinitySource.prompt_cache_key,
                                 AffinitySource.user, AffinitySource.prefix],
        min_length=1, description="Where the affinity key comes from, in order; the first one a request carries is used: session-header (x-detour-session), prompt-cache-key, user, header (affinity.header), prefix (hash of the first prefixMessages messages).")
    header: str | None = Field(None, min_length=1, max_length=100, pattern=r"^[A-Za-z0-9-]+$", description="A request header carrying the affinity key (source `header`).")
    prefix_messages: int = Field(2, ge=1, le=32, description="Source `prefix`: how many leading messages (system prompt and first turns) make up the shared prefix.")

    @model_validator(mode="after")
    def _header_named(self) -> Affinity:
        if (AffinitySource.header in self.sources) != (self.header is not None):
            raise ValueError("affinity: source `header` and the `header` field go together")
        return self


class StreamFailover(str, Enum):
    error = "error"        # mid-stream failure ends the stream with an error event (no [DONE])
    continue_ = "continue"  # ask the next target to continue the delivered text


LATENCY_TOLERANCE_DEFAULT = 0.2


class Route(_Model):
    """A route: which requests it serves, and the targets, strategy and policies that serve them."""

    name: str = Field(..., pattern=NAME_PATTERN, max_length=63, description="Unique route name (metrics label).")
    match: Match = Field(default_factory=Match)
    strategy: Strategy = Field(Strategy.priority, description="How the first target is chosen: priority, weighted, latency or least-busy.")
    targets: list[Target] = Field(..., min_length=1, max_length=32)
    retry: Retry = Field(default_factory=Retry)
    fallback_on_status_codes: list[int] = Field(default_factory=lambda: [401, 403, 404, 408, 429, 500, 502, 503, 504, 529], description="Upstream statuses that move the request to the next target (besides these, a status the provider's adapter knows as transient always may).")
    timeout: Duration = Field(60.0, description="Deadline for the whole request, all attempts and backoff together.")
    stream_failover: StreamFailover = Field(StreamFailover.error, description="After tokens reached the client: end with an error event (error) or continue on the next target (continue).")
    latency_tolerance: float = Field(LATENCY_TOLERANCE_DEFAULT, ge=0.0, le=10.0, description="latency strategy: targets within this fraction of the best EWMA share traffic.")
    hedge: Hedge | None = Field(None, description="Optional hedging of slow non-streaming requests.")
    hidden_failures: list[HiddenFailure] = Field(default_factory=list, description="Answers that look successful but count as the target's failure and fail over (streams: before the first token, invisibly): empty (no content, or only whitespace, and no tool call or refusal), reasoning-only (reasoning but no content), context-window (the prompt exceeds the target's context, also as a 400: the request moves to a target with a larger contextWindow and no breaker counts it). Off by default: an empty answer can be the right one, and failing over costs a second call.")
    affinity: Affinity | None = Field(None, description="Prompt-cache affinity: requests sharing a key go to the same healthy target on every replica (rendezvous hashing over the best tier's healthy targets; off when unset).")

    @field_validator("retry", "fallback_on_status_codes", mode="after")
    @classmethod
    def _codes_are_http(cls, v: Any) -> Any:
        codes = v.on_status_codes if isinstance(v, Retry) else v
        bad = [c for c in codes if not 100 <= c <= 599]
        if bad:
            raise ValueError(f"not HTTP status codes: {bad}")
        return v

    @model_validator(mode="after")
    def _latency_tolerance_needs_latency(self) -> Route:
        check_latency_tolerance(self.strategy, self.latency_tolerance)
        return self

    @model_validator(mode="after")
    def _overflow_targets(self) -> Route:
        if any(t.overflow_only for t in self.targets):
            if HiddenFailure.context_window not in self.hidden_failures:
                raise ValueError("overflowOnly targets need `context-window` in hiddenFailures")
            if all(t.overflow_only for t in self.targets):
                raise ValueError("a route needs at least one target that is not overflowOnly")
        return self


def check_latency_tolerance(strategy: Strategy | str, tolerance: float) -> None:
    """Cross-field rule, mirrored by a CEL rule in the RoutingPolicy CRD (detour_operator.crdgen).

    A non-default `latencyTolerance` only means something to the latency strategy; elsewhere it
    would be silently ignored, so it is refused. `weight` has no such rule: every strategy uses
    it (priority ties, the latency band, least-busy's weight-0 last resort).
    """
    if tolerance != LATENCY_TOLERANCE_DEFAULT and Strategy(strategy) is not Strategy.latency:
        raise ValueError("latencyTolerance applies only to strategy: latency")


class Breaker(_Model):
    """Per-target circuit breaker."""

    failure_ratio: float = Field(0.5, gt=0.0, le=1.0, description="Open when failures/requests over the window reach this ratio...")
    min_requests: int = Field(10, ge=1, description="...with at least this many requests in the window.")
    consecutive_failures: int = Field(5, ge=1, description="Open after this many failures in a row regardless of the window.")
    cooldown: Duration = Field(30.0, description="First open period; doubles on each failed probe.")
    max_cooldown: Duration = Field(300.0, description="Longest open period.")
    half_open_probes: int = Field(1, ge=1, le=100, description="Real requests admitted as probes after the cooldown.")


class SlowCall(_Model):
    """Slow calls count against health (brownouts)."""

    threshold: Duration = Field(10.0, description="A call slower than this is slow (time to first token for streams).")
    ratio: float = Field(0.5, gt=0.0, le=1.0, description="Open the breaker when this share of calls in the window is slow.")


class Health(_Model):
    """Per-target health: the sliding window, the circuit breaker and the optional slow-call rule."""

    window: Duration = Field(60.0, description="Sliding window of per-target statistics.")
    breaker: Breaker = Field(default_factory=Breaker)
    slow_call: SlowCall | None = Field(None, description="Optional slow-call rule.")


class RetryBudget(_Model):
    """Retries across the process may not exceed ratio x recent requests + minPerSecond x window."""

    ratio: float = Field(0.2, ge=0.0, le=10.0, description="Retries allowed per request over the budget window.")
    min_per_second: float = Field(5.0, ge=0.0, description="Retries always allowed per second, so low traffic can still retry.")
    window: Duration = Field(10.0, description="Window over which requests and retries are counted.")


class ClientAuth(_Model):
    """Keys that Detour's own clients must send as `Authorization: Bearer KEY`."""

    keys: list[SecretSource] = Field(..., min_length=1, description="Accepted client keys.")


class Server(_Model):
    """Limits of the HTTP server facing Detour's clients."""

    max_body_bytes: int = Field(10 * 1024 * 1024, ge=1024, description="Largest accepted request body (413 beyond).")
    max_response_bytes: int = Field(64 * 1024 * 1024, ge=1024, description="Largest non-streamed provider answer read (decompressed); a larger one is that target's failure.")
    drain_timeout: Duration = Field(30.0, description="On shutdown, how long in-flight requests may finish.")
    metrics_auth: bool = Field(False, description="With clientAuth set, /metrics needs a client key too (the scraper sends `Authorization: Bearer KEY`).")


class SharedHealth(_Model):
    """Share breaker state across proxy replicas through Pod annotations (Kubernetes only)."""

    enabled: bool = Field(False, description="Publish and merge health through Pod annotations.")
    heartbeat: Duration = Field(10.0, description="Check this often whether request figures moved enough to publish (breaker changes are published at once).")
    keepalive: Duration = Field(300.0, description="Publish an unchanged report at least this often; readers ignore a report 3 keepalives old.")
    min_interval: Duration = Field(0.5, description="Never publish more often than this.")
    pod_selector: str = Field("app.kubernetes.io/component=proxy", description="Label selector of the peer proxy pods.")
    replicas: int | None = Field(None, ge=1, description="Replica count used to split target limits when no peers are visible.")

    @model_validator(mode="after")
    def _keepalive_covers_heartbeat(self) -> SharedHealth:
        if self.keepalive < self.heartbeat:
            raise ValueError("sharedHealth.keepalive must be at least heartbeat")
        return self


class RoutingConfig(_Model):
    """The whole routing config served by one proxy."""

    providers: list[Provider] = Field(..., min_length=1)
    routes: list[Route] = Field(..., min_length=1)
    health: Health = Field(default_factory=Health)
    retry_budget: RetryBudget = Field(default_factory=RetryBudget)
    client_auth: ClientAuth | None = None
    server: Server = Field(default_factory=Server)
    shared_health: SharedHealth = Field(default_factory=SharedHealth)

    @model_validator(mode="after")
    def _references(self) -> RoutingConfig:
        names = [p.name for p in self.providers]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"duplicate provider names: {dup}")
        rnames = [r.name for r in self.routes]
        rdup = sorted({n for n in rnames if rnames.count(n) > 1})
        if rdup:
            raise ValueError(f"duplicate route names: {rdup}")
        known = set(names)
        for route in self.routes:
            missing = sorted({t.provider for t in route.targets} - known)
            if missing:
                raise ValueError(f"route {route.name!r} names unknown providers: {missing}")
        b = self.health.breaker
        if b.max_cooldown < b.cooldown:
            raise ValueError("health.breaker.maxCooldown must be at least cooldown")
        return self

    def provider(self, name: str) -> Provider:
        for p in self.providers:
            if p.name == name:
                return p
        raise KeyError(name)

    def dump(self) -> dict[str, Any]:
        """The JSON-ready form with camelCase keys and duration strings (defaults omitted)."""
        return self.model_dump(mode="json", by_alias=True, exclude_defaults=True)


def _loc(err: Mapping[str, Any], model: type[BaseModel] = RoutingConfig) -> str:
    parts: list[str] = []
    for p in err["loc"]:
        if isinstance(p, int):
            parts.append(f"[{p}]")
        else:
            parts.append(("." if parts else "") + str(p))
    return "".join(parts) or "(root)"


def _format_errors(exc: ValidationError) -> str:
    lines = [f"{_loc(e)}: {e['msg']}" for e in exc.errors(include_url=False)]
    return "invalid routing config:\n  " + "\n  ".join(lines)


def parse_config(data: dict[str, Any] | str | bytes) -> RoutingConfig:
    """Validate a mapping (or YAML/JSON text) into a RoutingConfig, raising ConfigError."""
    if isinstance(data, (str, bytes)):
        try:
            data = yaml.safe_load(data)
        except yaml.YAMLError as exc:
            # Only the problem and its position: the parser's snippet could quote an inline key.
            mark = getattr(exc, "problem_mark", None)
            where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
            problem = getattr(exc, "problem", None) or "unparsable document"
            raise ConfigError(f"invalid routing config: not YAML/JSON: {problem}{where}") from None
    if not isinstance(data, dict):
        raise ConfigError("invalid routing config: the document must be a mapping")
    try:
        return RoutingConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_format_errors(exc)) from None


def load_config(path: str | Path) -> RoutingConfig:
    try:
        text = Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read config {path}: {exc.strerror}") from None
    return parse_config(text)


def config_hash(config: RoutingConfig) -> str:
    """Stable short hash of the effective config (key order and formatting do not matter)."""
    blob = orjson.dumps(config.model_dump(mode="json", by_alias=True), option=orjson.OPT_SORT_KEYS)
    return hashlib.sha256(blob).hexdigest()[:16]



