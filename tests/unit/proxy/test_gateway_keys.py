"""The gateway's per-key build: a provider with several API keys is one planner target per
(model, key), and a reload keeps each provider's own keys."""

from __future__ import annotations

from detour_proxy.config import parse_config
from detour_proxy.policy import FakeClock, TargetKey
from detour_proxy.state import AppState


def cfg(second: str = "sk-b-1") -> dict:
    return {"providers": [{"name": "a", "baseURL": "https://a.example/v1",
                           "apiKeys": [{"value": "sk-a-0"}, {"value": "sk-a-1"}]},
                          {"name": "b", "baseURL": "https://b.example/v1",
                           "apiKeys": [{"value": "sk-b-0"}, {"value": second}]}],
            "routes": [{"name": "r", "targets": [{"provider": "a", "model": "m"}, {"provider": "b", "model": "m"}]}]}


def test_each_key_is_a_target_with_its_own_credential_and_a_reload_keeps_them_apart():
    state = AppState(clock=FakeClock(0.0))
    gw = state.install(parse_config(cfg()))
    route = gw.routes[0]
    assert [(t.key, t.provider.api_key(), t.key_label) for t in route.targets] == [
        (TargetKey("a", "m", "https://a.example/v1", 0), "sk-a-0", b"0"),
        (TargetKey("a", "m", "https://a.example/v1", 1), "sk-a-1", b"1"),
        (TargetKey("b", "m", "https://b.example/v1", 0), "sk-b-0", b"0"),
        (TargetKey("b", "m", "https://b.example/v1", 1), "sk-b-1", b"1")]
    assert route.planner.key_groups is not None and route.planner.key_groups.group_of == [0, 0, 1, 1]
    # a reload: inline keys all describe alike ("value=***"), yet each provider keeps its own,
    # and a changed inline key is taken
    gw = state.install(parse_config(cfg(second="sk-b-new")))
    assert [t.provider.api_key() for t in gw.routes[0].targets] == ["sk-a-0", "sk-a-1", "sk-b-0", "sk-b-new"]


def test_a_replaced_key_file_starts_its_key_afresh(tmp_path):
    """Key 0 was refused (401: held back for maxCooldown); the operator rotates its Secret: the new
    key is used from the next request on, not after the old key's cooldown."""
    import os

    from detour_proxy.policy import BreakerState, Outcome

    key_file = tmp_path / "a"
    key_file.write_text("sk-revoked\n")
    config = cfg()
    config["providers"][0]["apiKeys"][0] = {"file": str(key_file)}
    clock = FakeClock(0.0)
    state = AppState(clock=clock)
    gw = state.install(parse_config(config))
    key0, key1 = gw.routes[0].targets[0], gw.routes[0].targets[1]
    assert key0.provider.api_key() == "sk-revoked"
    key0.state.record(Outcome.http(401), clock.now())
    key0.state.key_refused(Outcome.http(401), clock.now())
    key1.state.record(Outcome.http(503), clock.now())
    assert key0.state.breaker_state(clock.now()) is BreakerState.OPEN and not key0.state.admits(clock.now())
    new = tmp_path / "a.new"
    new.write_text("sk-fresh\n")
    os.replace(new, key_file)                   # a rename: complete when seen
    key0.provider.credential.refresh()
    assert key0.provider.api_key() == "sk-fresh"
    assert key0.state.breaker_state(clock.now()) is BreakerState.CLOSED and key0.state.admits(clock.now())
    assert key0.state.window_stats(clock.now()) == (0, 0, 0)
    assert key1.state.window_stats(clock.now()) == (1, 1, 0)   # the other key keeps its own history
    assert state.metrics.registry.get_sample_value(
        "detour_breaker_transitions_total", {"provider": "a", "model": "m", "to": "closed"}) == 1
