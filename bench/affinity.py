"""Prompt-cache hit rate with and without Detour's prompt-cache affinity (issue 16).

    .venv/bin/python bench/affinity.py [--targets 4] [--sessions 200] [--turns 5]    # ~20 s

N simulated providers (detour-sim, openai flavour, each counting hits of its own simulated
prompt cache: a request whose system prompt and first message that instance served before)
behind two Detour replicas that share nothing. M conversations of T turns each; every turn
goes to a random replica. Routes use `strategy: weighted` over the N targets, once without
and once with `affinity: {}` (default sources; the conversations send no session header or
`prompt_cache_key`, so the key is the hash of the first two messages). A third run keeps
affinity on and takes one target down (503) for the middle third of the turns, to show that
only that target's conversations move and come back when it recovers.

The ideal is (T - 1) / T: the first turn of a conversation is always a miss. Writes
bench/results/affinity.md and .json.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
from support import ProxyServer, Sim  # noqa: E402

SYSTEM = {"role": "system", "content": "You are a helpful assistant for the ACME support desk."}


def config(sims: list[Sim], affinity: bool) -> dict:
    route: dict = {"name": "chat", "match": {"models": ["gpt-4o-mini"]}, "strategy": "weighted",
                   "targets": [{"provider": s.name, "model": "gpt-4o-mini"} for s in sims],
                   "retry": {"attempts": 1}, "timeout": "10s"}
    if affinity:
        route["affinity"] = {}
    return {"providers": [{"name": s.name, "type": "openai", "baseURL": s.v1, "apiKey": {"value": "sk-bench"}}
                          for s in sims],
            "routes": [route],
            "health": {"breaker": {"consecutiveFailures": 1, "cooldown": "2s", "maxCooldown": "2s"}}}


def run(sims: list[Sim], affinity: bool, sessions: int, turns: int, seed: int, outage: bool = False) -> dict:
    for s in sims:
        s.reset()
    rng = random.Random(seed)
    convs = [[SYSTEM, {"role": "user", "content": f"Conversation {i}: my order #{1000 + i} has not arrived."}]
             for i in range(sessions)]
    errors = 0
    with ProxyServer(config(sims, affinity)) as a, ProxyServer(config(sims, affinity)) as b, \
            httpx.Client(timeout=10) as http:
        urls = [a.v1 + "/chat/completions", b.v1 + "/chat/completions"]
        for turn in range(turns):
            if outage and turn == turns // 3:
                sims[0].faults(status=503)
            if outage and turn == 2 * turns // 3:
                sims[0].clear()
                time.sleep(2.1)   # the breakers' cooldown: the next request to it is a probe
            for msgs in convs:
                r = http.post(rng.choice(urls), json={"model": "gpt-4o-mini", "messages": msgs})
                if r.status_code != 200:
                    errors += 1
                    continue
                msgs.append({"role": "assistant", "content": r.json()["choices"][0]["message"]["content"]})
                msgs.append({"role": "user", "content": f"Turn {turn + 2}: any news?"})
    stats = [s.stats() for s in sims]
    hits = sum(st["promptCacheHits"] for st in stats)
    misses = sum(st["promptCacheMisses"] for st in stats)
    total = hits + misses
    return {"affinity": affinity, "outage": outage, "requests": total, "errors": errors,
            "hits": hits, "hit_rate": hits / total if total else 0.0,
            "follow_up_hit_rate": hits / (total - sessions) if total > sessions else 0.0,
            "per_target_requests": [st["promptCacheHits"] + st["promptCacheMisses"] for st in stats]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--targets", type=int, default=4)
    ap.add_argument("--sessions", type=int, default=200)
    ap.add_argument("--turns", type=int, default=6)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "affinity"))
    args = ap.parse_args(argv)
    sims = [Sim(f"sim{i}") for i in range(args.targets)]
    try:
        rows = [run(sims, False, args.sessions, args.turns, args.seed),
                run(sims, True, args.sessions, args.turns, args.seed),
                run(sims, True, args.sessions, args.turns, args.seed, outage=True)]
    finally:
        for s in sims:
            s.stop()
    ideal = (args.turns - 1) / args.turns
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    doc = {"date": when, "targets": args.targets, "sessions": args.sessions, "turns": args.turns,
           "ideal_hit_rate": ideal, "runs": rows}
    Path(args.out + ".json").write_text(json.dumps(doc, indent=2) + "\n")
    lines = [f"# Detour: simulated prompt-cache hit rate with and without affinity ({when})", "",
             f"{args.targets} simulated providers behind 2 Detour replicas (no shared state), {args.sessions} "
             f"conversations x {args.turns} turns, each turn to a random replica, `strategy: weighted`. "
             f"A hit: the instance served this conversation's system prompt and first message before. "
             f"Ideal: {ideal:.1%} (a conversation's first turn always misses). Script: bench/affinity.py.", "",
             "| run | requests | errors | hit rate | follow-up turns hit | requests per target |",
             "|---|---:|---:|---:|---:|---|"]
    names = {(False, False): "without affinity", (True, False): "affinity (prefix key)",
             (True, True): "affinity, target 0 down (503) for the middle third"}
    for r in rows:
        lines.append(f"| {names[(r['affinity'], r['outage'])]} | {r['requests']} | {r['errors']} | "
                     f"{r['hit_rate']:.1%} | {r['follow_up_hit_rate']:.1%} | {r['per_target_requests']} |")
    Path(args.out + ".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
