"""The retry budget: ratio x requests + minPerSecond x window retries per window."""

from __future__ import annotations

import pytest

from detour_proxy import config
from detour_proxy.policy import FakeClock, RetryBudget


def budget(ratio: float, min_per_second: float, window: float = 10.0) -> RetryBudget:
    return RetryBudget(config.RetryBudget(ratio=ratio, min_per_second=min_per_second, window=window),
                       FakeClock())


@pytest.mark.parametrize(
    ("ratio", "min_per_second", "requests", "allowed"),
    [
        (0.0, 1.0, 0, 10),     # floor only: 1/s over 10 s
        (0.0, 0.0, 100, 0),    # no budget at all
        (0.2, 0.0, 50, 10),    # 20% of 50 requests
        (0.2, 0.5, 50, 15),    # both
        (0.25, 0.0, 10, 2),    # 2.5 -> 2 whole retries
    ],
)
def test_spend_up_to_the_limit(ratio, min_per_second, requests, allowed):
    b = budget(ratio, min_per_second)
    for _ in range(requests):
        b.record_request(5.0)
    spent = sum(b.try_spend(5.0) for _ in range(allowed + 5))
    assert spent == allowed
    assert b.stats(5.0) == (requests, allowed)


def test_denied_spend_consumes_nothing_and_more_requests_make_room():
    b = budget(0.5, 0.0)
    b.record_request(0.0)
    b.record_request(0.0)
    assert b.try_spend(0.0)
    assert not b.try_spend(0.0) and not b.try_spend(0.0)
    assert b.stats(0.0) == (2, 1)
    b.record_request(0.5)
    b.record_request(0.5)
    assert b.try_spend(0.5)


def test_budget_replenishes_after_the_window():
    b = budget(0.0, 0.2, window=10.0)  # 2 retries per 10 s
    assert b.try_spend(0.0) and b.try_spend(0.0) and not b.try_spend(0.0)
    assert not b.try_spend(9.9)
    assert b.try_spend(10.0)


def test_update_settings_applies_new_limits():
    b = budget(0.0, 0.1)  # 1 per window
    assert b.try_spend(0.0) and not b.try_spend(0.0)
    b.update_settings(config.RetryBudget(ratio=0.0, min_per_second=0.3, window=10.0))
    assert b.try_spend(0.0) and b.try_spend(0.0) and not b.try_spend(0.0)
