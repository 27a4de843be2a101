"""Prompt-cache affinity across two Detour replicas that share nothing (issue 16), openai SDK."""

from __future__ import annotations

from collections import Counter

import openai

from support import ProxyServer


def config(*sims, affinity: bool = True):
    route = {"name": "chat", "match": {"models": ["gpt-4o-mini"]}, "strategy": "weighted",
             "targets": [{"provider": s.name, "model": "gpt-4o-mini"} for s in sims],
             "retry": {"attempts": 1}, "timeout": "10s"}
    if affinity:
        route["affinity"] = {}
    return {
        "providers": [{"name": s.name, "type": "openai", "baseURL": s.v1, "apiKey": {"value": f"sk-{s.name}"}}
                      for s in sims],
        "routes": [route],
        "health": {"breaker": {"consecutiveFailures": 1, "cooldown": "60s"}},
    }


def target(c: openai.OpenAI, session: str | None = None, **kw) -> str:
    headers = {"x-detour-session": session} if session else {}
    raw = c.chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], extra_headers=headers, **kw)
    assert raw.parse().choices[0].message.content
    return raw.headers["x-detour-target"].split("/")[0]


def test_sessions_stick_to_one_target_on_both_replicas_and_fall_over_together(primary, secondary, azure):
    sims = (primary, secondary, azure)
    with ProxyServer(config(*sims)) as a, ProxyServer(config(*sims)) as b:
        ca = openai.OpenAI(base_url=a.v1, api_key="x", max_retries=0)
        cb = openai.OpenAI(base_url=b.v1, api_key="x", max_retries=0)
        home = {}
        for s in range(30):
            picks = {target(c, f"s{s}") for c in (ca, cb, ca, cb)}
            assert len(picks) == 1, f"session s{s} split: {picks}"
            home[s] = picks.pop()
        assert len(set(home.values())) == 3, "sessions are spread over all targets"
        # the OpenAI `user` field is a key too, the same on both replicas
        assert target(ca, user="alice") == target(cb, user="alice")
        # One target fails: only its sessions move, and to the same next target on both replicas.
        victim = home[0]
        next(s for s in sims if s.name == victim).faults(status=503)
        moved = {}
        for s in range(30):
            picks = {target(c, f"s{s}") for c in (ca, cb, ca, cb)}
            assert len(picks) == 1 and victim not in picks
            moved[s] = picks.pop()
        assert {s for s in home if home[s] != moved[s]} == {s for s in home if home[s] == victim}


def test_without_affinity_a_session_is_spread(primary, secondary, azure):
    with ProxyServer(config(primary, secondary, azure, affinity=False)) as a:
        ca = openai.OpenAI(base_url=a.v1, api_key="x", max_retries=0)
        assert len(Counter(target(ca, "s1") for _ in range(30))) > 1
