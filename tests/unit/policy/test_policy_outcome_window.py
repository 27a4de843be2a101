"""Outcome classification and the bucketed sliding window."""

from __future__ import annotations

import pytest

from detour_proxy.policy import Outcome, OutcomeKind, SlidingWindow


@pytest.mark.parametrize(
    ("outcome", "ok", "counts", "label"),
    [
        (Outcome.success(1.0), True, False, ""),
        (Outcome.http(200), True, False, ""),
        (Outcome.http(400), False, False, "http_400"),
        (Outcome.http(413), False, False, "http_413"),
        (Outcome.http(422), False, False, "http_422"),
        (Outcome.http(401), False, True, "http_401"),
        (Outcome.http(404), False, True, "http_404"),
        (Outcome.http(429, retry_after=2), False, True, "http_429"),
        (Outcome.http(503), False, True, "http_503"),
        (Outcome.connect_error(), False, True, "connect"),
        (Outcome.timeout(), False, True, "timeout"),
        (Outcome.stream_error(), False, True, "stream"),
        (Outcome(OutcomeKind.HTTP_ERROR, status=502, error_class="custom"), False, True, "custom"),
    ],
)
def test_outcome_classification(outcome, ok, counts, label):
    assert outcome.ok is ok
    assert outcome.counts_against_target is counts
    assert outcome.error_class == label


def test_latency_prefers_ttft():
    assert Outcome.success(duration=9.0, ttft=0.4).latency == 0.4
    assert Outcome.success(duration=9.0).latency == 9.0
    assert Outcome.success().latency is None


def test_window_counts_and_expires_by_bucket():
    w = SlidingWindow(10.0, buckets=10, fields=3)
    w.add(0.0, 1, 1, 0)
    w.add(0.5, 1, 0, 1)
    w.add(5.0, 1, 0, 0)
    assert w.totals(5.0) == (3, 1, 1)
    assert w.totals(9.99) == (3, 1, 1)
    # the bucket [0, 1) leaves the window once a full window has passed after it
    assert w.totals(10.0) == (1, 0, 0)
    assert w.totals(15.0) == (0, 0, 0)


def test_window_keeps_bounded_memory_and_late_adds_are_not_lost():
    w = SlidingWindow(1.0, buckets=4, fields=1)
    for i in range(1000):
        w.add(i * 0.25, 1)  # one add per 0.25 s bucket
    assert len(w._slices) <= 4
    assert w.totals(249.75) == (4,)
    w.add(50.0, 1)  # older than the newest bucket: counted, not dropped
    assert w.totals(249.75) == (5,)


def test_window_reset():
    w = SlidingWindow(10.0)
    w.add(1.0, 3, 2, 1)
    w.reset()
    assert w.totals(1.0) == (0, 0, 0)
