"""Active probes (policy.probes): when a target is due, and which replica's claim wins, on a fake clock."""

from __future__ import annotations

from detour_proxy.policy import BreakerState, Outcome, ProbeClaims, probe_due

E503 = Outcome.http(503)
OK = Outcome.success(duration=0.1)
INTERVAL = 60.0


def opened(make_state, clock, **breaker):
    """A target whose breaker opened at clock.now() (one 503, consecutiveFailures 1, cooldown 30 s)."""
    st, log = make_state(consecutive_failures=1, cooldown=30.0, max_cooldown=300.0, **breaker)
    assert st.try_acquire(clock.now())
    st.record(E503, clock.now())
    assert st.breaker_state(clock.now()) is BreakerState.OPEN
    return st, log


def test_an_open_breaker_is_not_due_before_its_cooldown_ends(make_state, clock):
    st, _ = opened(make_state, clock)
    clock.advance(29.9)
    assert not probe_due(st, clock.now(), 10.0)      # a probe never shortens a cooldown
    clock.advance(0.1)
    assert probe_due(st, clock.now(), 10.0)          # half-open, idle for 30 s >= 10 s


def test_a_closed_breaker_is_never_due(make_state, clock):
    st, _ = make_state()
    clock.advance(3600)
    assert not probe_due(st, clock.now(), INTERVAL)


def test_due_only_after_the_interval_without_traffic(make_state, clock):
    st, _ = opened(make_state, clock)
    clock.advance(30)                                # cooldown over: half-open
    assert not probe_due(st, clock.now(), INTERVAL)  # the failing request was 30 s ago
    clock.advance(30)
    assert probe_due(st, clock.now(), INTERVAL)


def test_client_traffic_suppresses_probes(make_state, clock):
    st, _ = opened(make_state, clock)
    clock.advance(INTERVAL)
    assert probe_due(st, clock.now(), INTERVAL)
    ticket = st.acquire(clock.now())                 # a client request takes the half-open probe slot
    assert ticket is not None
    assert not probe_due(st, clock.now(), INTERVAL), "the client request is the probe"
    st.release(clock.now(), ticket)                  # ...and was abandoned: the slot is free again
    assert not probe_due(st, clock.now(), INTERVAL), "but it was traffic: wait a whole interval"
    clock.advance(INTERVAL)
    assert probe_due(st, clock.now(), INTERVAL)


def test_a_sidelined_target_is_not_probed(make_state, clock):
    st, _ = opened(make_state, clock)
    st.sideline(clock.now() + 120)                   # the provider said Retry-After: 120
    clock.advance(INTERVAL)
    assert not probe_due(st, clock.now(), INTERVAL)
    clock.advance(60)
    assert probe_due(st, clock.now(), INTERVAL)


def test_a_peer_claim_is_respected(make_state, clock):
    st, _ = opened(make_state, clock)
    clock.advance(INTERVAL)
    assert probe_due(st, clock.now(), INTERVAL)
    assert not probe_due(st, clock.now(), INTERVAL, claimed_by_peer=True)


def test_probe_outcome_is_recorded_like_a_half_open_attempt(make_state, clock):
    """Success closes the breaker; failure re-opens it with the doubled cooldown (the next probe
    waits for it)."""
    st, log = opened(make_state, clock)
    clock.advance(INTERVAL)
    ticket = st.acquire(clock.now())
    assert ticket is not None and ticket.kind == "probe"
    st.record(E503, clock.now(), ticket)
    assert st.breaker_state(clock.now()) is BreakerState.OPEN
    assert st.cooldown_until == clock.now() + 60.0   # 30 s doubled
    clock.advance(INTERVAL - 0.1)
    assert not probe_due(st, clock.now(), INTERVAL)
    clock.advance(0.1)
    ticket = st.acquire(clock.now())
    st.record(OK, clock.now(), ticket)
    assert st.breaker_state(clock.now()) is BreakerState.CLOSED
    assert log[-1] == ("half-open", "closed")
    assert not probe_due(st, clock.now() + 3600, INTERVAL)


def test_claims_expire_by_themselves(clock):
    claims = ProbeClaims()
    claims.claim("t", "pod-2", since=5000.0, until=clock.now() + INTERVAL)
    assert claims.claimed_by_other("t", "pod-1", clock.now())
    assert not claims.claimed_by_other("t", "pod-2", clock.now())   # one's own claim is not a peer's
    clock.advance(INTERVAL - 0.01)
    assert claims.winner("t", clock.now()) == "pod-2"
    clock.advance(0.01)                                             # the prober died: nothing holds
    assert not claims.claimed_by_other("t", "pod-1", clock.now())
    assert claims.winner("t", clock.now()) is None


def test_simultaneous_claims_have_one_winner_everywhere(clock):
    """Two replicas claimed at once: each sees both claims and both pick the earliest `since`
    (ties: the pod name), so exactly one probes."""
    on_1, on_2 = ProbeClaims(), ProbeClaims()
    for table in (on_1, on_2):
        table.claim("t", "pod-1", since=5000.20, until=clock.now() + INTERVAL)
        table.claim("t", "pod-2", since=5000.10, until=clock.now() + INTERVAL)
        table.claim("u", "pod-2", since=5000.00, until=clock.now() + INTERVAL)
        table.claim("u", "pod-1", since=5000.00, until=clock.now() + INTERVAL)
    assert on_1.winner("t", clock.now()) == on_2.winner("t", clock.now()) == "pod-2"
    assert on_1.winner("u", clock.now()) == on_2.winner("u", clock.now()) == "pod-1"


def test_a_peer_report_replaces_its_claims_and_a_gone_peer_claims_nothing(clock):
    claims = ProbeClaims()
    claims.claim("mine", "pod-1", since=1.0, until=clock.now() + 10)
    claims.replace_pod("pod-2", [("t", 2.0, clock.now() + 10), ("u", 2.0, clock.now() - 1)], clock.now())
    assert claims.claimed_by_other("t", "pod-1", clock.now())
    assert not claims.claimed_by_other("u", "pod-1", clock.now())   # expired on arrival
    claims.replace_pod("pod-2", [], clock.now())                    # its next report has none
    assert not claims.claimed_by_other("t", "pod-1", clock.now())
    claims.replace_pod("pod-2", [("t", 3.0, clock.now() + 10)], clock.now())
    claims.forget_pod("pod-2")                                      # its Pod was deleted
    assert not claims.claimed_by_other("t", "pod-1", clock.now())
    assert [k for k, _ in claims.held_by("pod-1", clock.now())] == ["mine"]
    claims.withdraw("mine", "pod-1")
    assert claims.held_by("pod-1", clock.now()) == []
