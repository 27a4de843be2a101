"""Usage accounting on the hot path: provider rate-limit headers and token reservations.

Two hooks the engine calls (the decisions are `policy`'s: `TargetState.quota_exhausted`,
`RateLimiter.reserve`; these only read headers and usage) around each upstream attempt:

- `check_rate_headers(tr, headers, now)` on every response (success or error), right after
  the headers arrived: when the provider says the remaining requests or tokens are 0, the
  target is sidelined until the reset it announced (at most `maxCooldown`), so the next
  request goes elsewhere before any 429 arrives. Cost when the provider sends no rate-limit
  headers: two case-insensitive lookups in the response's header map. When it does (OpenAI
  and Anthropic send them on every response) the remaining counts are compared with 0; the
  full adapter parse (`adapter.rate_limits`) runs only for an exhausted budget.
- `reserve(tr, ctx, now)` before an attempt and `settle(meter, usage)` after it, for targets
  with `limits.tokensPerMinute`: prompt tokens are estimated from the request size
  (bytes / 4) and corrected from the provider's `usage`. Streams are settled from the text
  they delivered (estimate + chars / 4) because most streams carry no usage. A target
  without a token limit costs one attribute test.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..config import ProviderType
from ..policy import Reservation, estimate_tokens
from ..policy.target import DEFAULT_QUOTA_RESET

if TYPE_CHECKING:
    from ._executor import RequestContext
    from .gateway import TargetRuntime

__all__ = ["check_rate_headers", "reserve", "settle", "settle_stream",
           "DEFAULT_RESET"]

#: Sideline length when a provider reports an exhausted budget without a reset time (policy's).
DEFAULT_RESET = DEFAULT_QUOTA_RESET

_OPENAI_PROBES = ("x-ratelimit-remaining-requests", "x-ratelimit-remaining-tokens")
_ANTHROPIC_PROBES = ("anthropic-ratelimit-requests-remaining", "anthropic-ratelimit-tokens-remaining",
                     "anthropic-ratelimit-input-tokens-remaining", "anthropic-ratelimit-output-tokens-remaining")
_PROBES = {t: (_ANTHROPIC_PROBES if t is ProviderType.anthropic else _OPENAI_PROBES) for t in ProviderType}


def _exhausted(value: str) -> bool:
    try:
        return int(value) <= 0
    except ValueError:
        try:
            return float(value) <= 0
        except ValueError:
            return False


def check_rate_headers(tr: TargetRuntime, headers: Any, now: float) -> float | None:
    """Sideline `tr` when its response says a rate-limit budget is exhausted.

    Returns the sideline end (engine clock) or None. `headers` is a case-insensitive
    mapping (aiohttp's CIMultiDictProxy)."""
    prov = tr.provider
    hit = False
    for name in _PROBES[prov.config.type]:
        v = headers.get(name)
        if v is not None and _exhausted(v):
            hit = True
            break
    if not hit:
        return None
    try:
        info = prov.adapter.rate_limits(headers)
    except (ValueError, TypeError, OverflowError):  # a provider's odd header must not fail the call
        return None
    if info is None:
        return None
    resets = []
    if info.remaining_requests is not None and info.remaining_requests <= 0:
        resets.append(info.reset_requests_s)
    if info.remaining_tokens is not None and info.remaining_tokens <= 0:
        resets.append(info.reset_tokens_s)
    if not resets:
        return None
    return tr.state.quota_exhausted(resets, now)   # policy decides how long


def reserve(tr: TargetRuntime, ctx: RequestContext, now: float) -> Reservation | None:
    """Count the request's estimated prompt tokens against the target's token limit."""
    lim = tr.state.limiter
    if lim is None or lim.tpm is None:
        return None
    return lim.reserve(estimate_tokens(len(ctx.raw)), now)


def settle(meter: Reservation | None, usage: Any) -> None:
    """Correct a reservation from an OpenAI-shaped `usage` object (total, else prompt + completion)."""
    if meter is None or not isinstance(usage, dict):
        return
    total = usage.get("total_tokens")
    if not isinstance(total, int):
        p, c = usage.get("prompt_tokens"), usage.get("completion_tokens")
        total = (p if isinstance(p, int) else meter.estimate) + (c if isinstance(c, int) else 0)
    meter.settle(total)


def settle_stream(meter: Reservation | None, delivered_chars: int) -> None:
    """Settle a stream attempt: the prompt estimate plus ~chars/4 of the text it delivered
    (from a count: a stream relayed in `error` mode keeps no text)."""
    if meter is not None:
        meter.settle(meter.estimate + delivered_chars // 4)
