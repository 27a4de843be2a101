"""Shared health fans out O(N), not O(N^2), on the real API server (issue 14.3): 30 simulated
replicas (the real SharedHealthService each, with its own pod-bound token, see fanout.py).

At rest nothing is written and no watch event is delivered; during an outage that every replica
sees at once, the first replica to announce the open suppresses the others' announcements (they
import it instead), so the incident costs a few writes x N watchers, within the staleness bound. bench/shared_health_fanout.py
runs the same at 50 and 200 replicas (figures in bench/results/ and README)."""

from __future__ import annotations

from cluster.fanout import measure
from cluster.realkube import Cluster

N = 30


def test_rest_costs_nothing_and_an_outage_costs_o_n(cluster: Cluster, namespace: str) -> None:
    figures = measure(cluster, namespace, N, window=3.0)
    print(f"\n[shared-health fan-out, {N} replicas] {figures}")
    rest, outage = figures["at_rest"], figures["outage"]
    assert rest["patches"] == 0 and rest["watch_events"] == 0, rest
    assert rest["lists"] == 0, rest
    # Every replica sees the outage at once and many open the breaker on their own evidence, but
    # the first announcement suppresses the rest: a few writes, each an event for N-1 watchers.
    # (Unlabelled writes of request figures, at most one per replica per heartbeat, reach only the
    # operator's watch: they are not peer watch events.)
    assert outage["opened_locally"] >= 1 and 1 <= outage["patches"] <= N + 5, outage
    assert 0 < outage["watch_events"] <= 5 * (N - 1), f"more than a few announcements: {outage}"
    assert outage["watch_events"] < N * N / 4, f"O(N^2) fan-out: {outage}"
    assert outage["staleness_s"] < 2.0, outage
