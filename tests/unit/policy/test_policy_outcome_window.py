"""Outcome classification and the bucketed sliding window."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

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


class _SummingWindow:
    """The window without running sums: every `totals` sums the buckets inside the window
    (the definition; `SlidingWindow` keeps running sums and must agree with it exactly)."""

    def __init__(self, width: float, buckets: int, fields: int) -> None:
        self.width, self.buckets, self.fields = width, buckets, fields
        self.slices: list[list[int]] = []

    def add(self, now: float, *counts: int) -> None:
        index = math.floor(now / self.width)
        if not self.slices or self.slices[-1][0] < index:
            self.slices.append([index] + [0] * self.fields)
            self.slices = [s for s in self.slices if s[0] > index - self.buckets]
        for i, c in enumerate(counts, start=1):
            self.slices[-1][i] += c

    def totals(self, now: float) -> tuple[int, ...]:
        oldest = math.floor(now / self.width) - self.buckets
        return tuple(sum(s[i + 1] for s in self.slices if s[0] > oldest) for i in range(self.fields))


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.floats(0, 100), st.lists(st.integers(0, 5), min_size=0, max_size=3),
                          st.booleans()), max_size=60),
       st.sampled_from([1, 3, 10]), st.booleans())
def test_window_totals_match_the_definition(ops, buckets, forward):
    """The running sums give exactly what summing the buckets inside the window gives, for
    any interleaving of adds, reads (also of past or future times), and time jumps."""
    w = SlidingWindow(10.0, buckets=buckets, fields=3)
    ref = _SummingWindow(w._width, buckets, 3)
    t = 0.0
    for dt, counts, read in ops:
        t = t + dt / 10 if forward else dt
        if read:
            for at in (t, t - 7.5, t + 20.0):
                assert w.totals(at) == ref.totals(at)
        else:
            w.add(t, *counts)
            ref.add(t, *counts)
    assert w.totals(t) == ref.totals(t)
    w.reset()
    assert w.totals(t) == (0, 0, 0)
