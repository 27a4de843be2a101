"""A full outage is shed, not hammered (issue 13): with every breaker open, at most
`halfOpenProbes` attempts are in flight per target whether forced or not, the cooldown doubles
once per failed probe round, and refused requests learn when the next probe may go."""

from __future__ import annotations

from detour_proxy.policy import BreakerState, GiveUp, Outcome, Try

from test_policy_planner import make

DEAD = Outcome.connect_error("refused", duration=0.01)


def _open_all(planner, clock, cooldown=30.0):
    now = clock.now()
    sts = [planner.registry.state(k) for k in planner.keys]
    for st in sts:
        st.breaker.trip(now)   # opened by local evidence
    return sts


def test_while_open_at_most_half_open_probes_are_forced_in_flight():
    planner, clock = make(n=1, breaker={"cooldown": 30.0, "half_open_probes": 2})
    (st,) = _open_all(planner, clock)
    plans = [planner.begin(clock.now()) for _ in range(10)]
    steps = [p.next(clock.now()) for p in plans]
    forced = [s for s in steps if isinstance(s, Try)]
    refused = [s for s in steps if isinstance(s, GiveUp)]
    assert [s.reason for s in forced] == ["forced", "forced"] and st.in_flight == 2
    assert len(refused) == 8
    assert all(g.reason == "unavailable" and g.breaker_open and not g.rate_limited for g in refused)
    assert all(29.0 < g.retry_after <= 30.0 for g in refused)   # the cooldown's end: when a probe may go


def test_a_failed_forced_probe_doubles_once_and_stops_forcing_until_the_cooldown_ends():
    planner, clock = make(n=1, breaker={"cooldown": 30.0, "max_cooldown": 600.0, "half_open_probes": 2})
    (st,) = _open_all(planner, clock)
    a, b = planner.begin(clock.now()), planner.begin(clock.now())
    assert a.next(clock.now()).reason == "forced" and b.next(clock.now()).reason == "forced"
    clock.advance(0.5)
    a.record(DEAD, clock.now())
    b.record(DEAD, clock.now())   # the same probe round: a stale probe, doubles nothing
    assert st.cooldown_until == clock.now() + 60.0 - 0.0   # 30 s doubled once, from the first failure
    first_until = st.cooldown_until
    for _ in range(20):            # every later request in this open period is refused, not forced
        clock.advance(0.05)
        step = planner.begin(clock.now()).next(clock.now())
        assert isinstance(step, GiveUp) and step.breaker_open
        assert abs(step.retry_after - (first_until - clock.now())) < 1e-9
    assert st.cooldown_until == first_until and st.in_flight == 0
    clock.advance(first_until - clock.now())   # the cooldown ends: half-open probes, no forcing needed
    assert st.breaker_state(clock.now()) is BreakerState.HALF_OPEN
    p = planner.begin(clock.now())
    step = p.next(clock.now())
    assert step.reason == "first"
    p.record(Outcome.success(duration=0.1), clock.now())
    assert st.breaker_state(clock.now()) is BreakerState.CLOSED


def test_a_burst_at_cooldown_expiry_sends_only_the_probes():
    planner, clock = make(n=1, breaker={"cooldown": 30.0, "max_cooldown": 600.0, "half_open_probes": 2})
    (st,) = _open_all(planner, clock)
    clock.advance(30.0)
    plans = [planner.begin(clock.now()) for _ in range(64)]
    steps = [p.next(clock.now()) for p in plans]
    tries = [(p, s) for p, s in zip(plans, steps) if isinstance(s, Try)]
    assert len(tries) == 2 and st.in_flight == 2
    refused = [s for s in steps if isinstance(s, GiveUp)]
    assert all(s.breaker_open and s.retry_after is not None and s.retry_after > 0 for s in refused)
    clock.advance(1.0)
    for p, _ in tries:
        p.record(DEAD, clock.now())
    assert st.cooldown_until == clock.now() + 60.0   # one doubling for the whole burst


def test_two_open_targets_each_get_their_probes_and_no_more():
    planner, clock = make(n=2, breaker={"cooldown": 30.0, "half_open_probes": 1})
    sts = _open_all(planner, clock)
    steps = [planner.begin(clock.now()).next(clock.now()) for _ in range(6)]
    tries = [s for s in steps if isinstance(s, Try)]
    assert len(tries) == 2 and [st.in_flight for st in sts] == [1, 1]   # one probe each, then refusals
    assert all(isinstance(s, GiveUp) and s.breaker_open for s in steps[2:])


def test_a_failed_forced_probe_gives_up_with_when_the_next_probe_may_go():
    planner, clock = make(n=1, breaker={"cooldown": 30.0, "max_cooldown": 600.0, "half_open_probes": 1})
    (st,) = _open_all(planner, clock)
    p = planner.begin(clock.now())
    assert p.next(clock.now()).reason == "forced"
    clock.advance(0.5)
    p.record(Outcome.http(503, duration=0.5), clock.now())
    step = p.next(clock.now())
    assert isinstance(step, GiveUp) and step.reason == "exhausted"
    assert step.retry_after is not None and abs(step.retry_after - (st.cooldown_until - clock.now())) < 1e-9
