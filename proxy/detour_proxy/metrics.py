"""Prometheus metrics of the proxy: `detour_` prefix, base units, bounded labels.

Labels are only config-defined names (route, provider, model) and small enums (outcome,
result, reason): never a user, a key or prompt data. Label children for each route and
target are bound once per config (`RouteMetrics`/`TargetMetrics`) so the hot path does a
plain `inc()`/`observe()`, with no label lookups per request.
"""

from __future__ import annotations

from bisect import bisect_left
from dataclasses import dataclass
from typing import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120)
ATTEMPT_RESULTS = ("success", "http_4xx", "http_429", "http_5xx", "connect", "timeout", "stream",
                   "empty_answer", "context_window")
BREAKER_VALUES = {"closed": 0, "half-open": 1, "open": 2}


class Metrics:
    """All proxy metrics in one registry (one per app, so tests stay isolated)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        r = self.registry = registry or CollectorRegistry()
        self.requests = Counter("detour_requests", "Client requests by route and outcome.", ["route", "outcome"], registry=r)
        self.request_duration = Histogram("detour_request_duration_seconds", "Client request duration, all attempts included.", ["route"], buckets=LATENCY_BUCKETS, registry=r)
        self.ttft = Histogram("detour_time_to_first_token_seconds", "Time to the first content-bearing chunk of streams.", ["route", "provider"], buckets=LATENCY_BUCKETS, registry=r)
        self.in_flight = Gauge("detour_in_flight_requests", "Client requests being served.", ["route"], registry=r)
        self.attempts = Counter("detour_upstream_attempts", "Upstream attempts by result.", ["route", "provider", "model", "result"], registry=r)
        self.attempt_duration = Histogram("detour_upstream_attempt_duration_seconds", "Upstream attempt duration.", ["provider"], buckets=LATENCY_BUCKETS, registry=r)
        self.retries = Counter("detour_retries", "Same-target retries by the failed attempt's result (http_429, http_5xx, connect, ...).", ["route", "provider", "reason"], registry=r)
        self.fallbacks = Counter("detour_fallbacks", "Moves from one target to the next.", ["route", "from_provider", "to_provider"], registry=r)
        self.key_rotations = Counter("detour_key_rotations", "Moves to the same target's next API key after a key refusal (providers with several apiKeys), by the refusal's result (http_4xx, http_429).", ["route", "provider", "model", "reason"], registry=r)
        self.forced = Counter("detour_forced_attempts", "Attempts sent while every target was open (soonest cooldown).", ["route", "provider"], registry=r)
        self.hedges = Counter("detour_hedges", "Hedged (duplicate) attempts sent because the first was slow.", ["route"], registry=r)
        self.budget_rejections = Counter("detour_retry_budget_rejections", "Retries refused by the retry budget.", ["route"], registry=r)
        self.breaker_state = Gauge("detour_breaker_state", "Breaker state per target: 0 closed, 1 half-open, 2 open.", ["provider", "model"], registry=r)
        self.breaker_transitions = Counter("detour_breaker_transitions", "Breaker transitions.", ["provider", "model", "to"], registry=r)
        self.streams_cut = Counter("detour_streams_cut", "Streams ended with an error event after tokens were delivered.", ["route", "provider"], registry=r)
        self.continuations = Counter("detour_stream_continuations", "Streams continued on another target after a mid-stream failure.", ["route", "from_provider", "to_provider"], registry=r)
        self.tokens = Counter("detour_tokens", "Tokens reported by providers' usage.", ["route", "provider", "direction"], registry=r)
        self.config_reloads = Counter("detour_config_reload", "Config reloads by result.", ["result"], registry=r)
        self.config_info = Gauge("detour_config_info", "The active config (value 1, hash as label).", ["hash"], registry=r)
        self.shared_publish = Counter("detour_shared_health_publish", "Health annotation publishes by result (skipped: nothing new at a heartbeat).", ["result"], registry=r)
        self.shared_merge = Counter("detour_shared_health_merges", "Peer health entries merged into local state.", [], registry=r)
        self.shared_api = Gauge("detour_shared_health_api_available", "1 while both shared-health API channels (publishing the annotation, watching peers) work.", [], registry=r)
        self.shared_peers = Gauge("detour_shared_health_peers", "Fresh peer pods currently reporting an open breaker (the only peers watched).", [], registry=r)
        self.shared_ignored = Counter("detour_shared_health_ignored", "Peer health documents ignored, by reason (stale, invalid).", ["reason"], registry=r)
        self.credentials_ok = Gauge("detour_provider_credentials_ok", "vertex and bedrock providers: 1 if the last Google access-token fetch or AWS credential resolution succeeded, 0 if it failed (requests skip the provider once no valid token is left).", ["provider"], registry=r)
        self.credential_fetches = Counter("detour_provider_credential_fetches", "Google access-token fetches of vertex providers and AWS credential resolutions of bedrock providers, by result (success, error).", ["provider", "result"], registry=r)
        self.rejected = Counter("detour_rejected_requests", "Requests refused before routing, by HTTP status.", ["status"], registry=r)
        self.probes = Counter("detour_probe_attempts", "Active probes of targets with an open breaker and no traffic (provider activeProbes), by outcome (success, failure).", ["provider", "outcome"], registry=r)
        self._config_hash: str | None = None
        self._routes: set[str] = set()                   # routes with an in-flight gauge
        self._targets: set[tuple[str, str]] = set()      # (provider, model) with a breaker gauge

    def set_config(self, hash_: str) -> None:
        if self._config_hash is not None:
            self.config_info.remove(self._config_hash)
        self.config_info.labels(hash_).set(1)
        self._config_hash = hash_

    def retain(self, routes: set[str], breakers: dict[tuple[str, str], str]) -> None:
        """Make the gauges match a newly installed config: `routes` are its route names,
        `breakers` maps its targets' (provider, model) to their breaker state now.

        A gauge says what is true *now*, so the series of a route or target the config no
        longer has is removed (a target removed while open would otherwise read 2 forever),
        and a kept (provider, model) is set from its state (a changed baseURL starts a fresh,
        closed breaker). Counters and histograms keep their series: their totals stay true.
        """
        for route in self._routes - routes:
            self.in_flight.remove(route)
        for provider, model in self._targets - breakers.keys():
            self.breaker_state.remove(provider, model)
        for (provider, model), state in breakers.items():
            self.breaker_state.labels(provider, model).set(BREAKER_VALUES.get(state, 0))
        self._routes = set(routes)
        self._targets = set(breakers)

    def credential_fetched(self, provider: str, ok: bool) -> None:
        """A vertex provider's token fetch ended (called from its refresh thread; prometheus_client is thread-safe)."""
        self.credentials_ok.labels(provider).set(1 if ok else 0)
        self.credential_fetches.labels(provider, "success" if ok else "error").inc()

    def breaker_changed(self, provider: str, model: str, new_state: str, gauge: str | None = None) -> None:
        """A breaker moved to `new_state`; `gauge`: the state the (provider, model) gauge shows
        (with several API keys, the best key's), default `new_state`."""
        self.breaker_state.labels(provider, model).set(BREAKER_VALUES.get(gauge or new_state, 0))
        self.breaker_transitions.labels(provider, model, new_state).inc()


Add = Callable[[float], None]


def adder(child: Counter | Gauge) -> Add:
    """`child.inc(amount)` for the per-request updates, minus prometheus_client's per-call
    checks (observability, sign): the bound value's own locked `inc`. Only for children that
    are labelled and only ever incremented by Detour's own non-negative counts (a Gauge's
    `dec()` is `add(-1)`). Falls back to `inc` if the library's internals differ
    (tests/unit/proxy/test_metrics_fast.py compares both on the exposition)."""
    value = getattr(child, "_value", None)
    inc = getattr(value, "inc", None)
    return inc if callable(inc) else child.inc


def observer(child: Histogram) -> Add:
    """`child.observe(amount)` for the per-request updates: the same sum and bucket counts,
    the bucket found by bisection instead of a Python loop over the bounds, without the
    per-call checks. Falls back to `observe` if the library's internals differ."""
    try:
        bounds = list(child._upper_bounds)
        incs = [b.inc for b in child._buckets]
        add_sum = child._sum.inc
    except AttributeError:
        return child.observe
    n = len(bounds)

    def observe(amount: float) -> None:
        add_sum(amount)
        i = bisect_left(bounds, amount)
        if i < n and amount == amount:   # (NaN falls in no bucket, as in `observe`)
            incs[i](1)

    return observe


@dataclass(slots=True)
class TargetMetrics:
    """Children bound for one target of one route."""

    attempts: dict[str, Counter]
    retries: dict[str, Counter]
    forced: Counter
    key_rotations: dict[str, Counter]
    ttft: Histogram
    attempt_duration: Histogram
    prompt_tokens: Counter
    completion_tokens: Counter
    streams_cut: Counter
    # the per-attempt updates, bound once (see `adder` / `observer`)
    count_attempt: dict[str, Add]
    observe_ttft: Add
    observe_attempt_duration: Add
    add_prompt_tokens: Add
    add_completion_tokens: Add

    @classmethod
    def bind(cls, m: Metrics, route: str, provider: str, model: str) -> TargetMetrics:
        attempts = {r: m.attempts.labels(route, provider, model, r) for r in ATTEMPT_RESULTS}
        ttft = m.ttft.labels(route, provider)
        attempt_duration = m.attempt_duration.labels(provider)
        prompt_tokens = m.tokens.labels(route, provider, "prompt")
        completion_tokens = m.tokens.labels(route, provider, "completion")
        return cls(
            attempts=attempts,
            retries={r: m.retries.labels(route, provider, r) for r in ATTEMPT_RESULTS[1:]},
            forced=m.forced.labels(route, provider),
            key_rotations={r: m.key_rotations.labels(route, provider, model, r) for r in ("http_4xx", "http_429")},
            ttft=ttft,
            attempt_duration=attempt_duration,
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            streams_cut=m.streams_cut.labels(route, provider),
            count_attempt={r: adder(c) for r, c in attempts.items()},
            observe_ttft=observer(ttft),
            observe_attempt_duration=observer(attempt_duration),
            add_prompt_tokens=adder(prompt_tokens),
            add_completion_tokens=adder(completion_tokens),
        )


#: `outcome` values of detour_requests_total. `error` is an unexpected exception in Detour
#: itself (a bug, answered 500); `cancelled`, a client that left.
REQUEST_OUTCOMES = ("success", "upstream_error", "client_error", "cancelled", "error")


@dataclass(slots=True)
class RouteMetrics:
    outcomes: dict[str, Counter]  # detour_requests_total by outcome (REQUEST_OUTCOMES)
    duration: Histogram
    in_flight: Gauge
    budget_rejections: Counter
    hedges: Counter
    # the per-request updates, bound once (see `adder` / `observer`)
    count_outcome: dict[str, Add]
    observe_duration: Add
    add_in_flight: Add

    @classmethod
    def bind(cls, m: Metrics, route: str) -> RouteMetrics:
        outcomes = {o: m.requests.labels(route, o) for o in REQUEST_OUTCOMES}
        duration = m.request_duration.labels(route)
        in_flight = m.in_flight.labels(route)
        return cls(
            outcomes=outcomes,
            duration=duration,
            in_flight=in_flight,
            budget_rejections=m.budget_rejections.labels(route),
            hedges=m.hedges.labels(route),
            count_outcome={o: adder(c) for o, c in outcomes.items()},
            observe_duration=observer(duration),
            add_in_flight=adder(in_flight),
        )
