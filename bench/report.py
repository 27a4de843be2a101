"""Markdown report of a benchmark run (bench/run.py), including the bottleneck analysis."""

from __future__ import annotations


LABELS = {"direct": "direct to upstream", "passthrough": "raw-ASGI pass-through (ceiling)",
          "detour": "Detour", "detour-accesslog": "Detour, access log on",
          "detour-rules": "Detour, header/metadata routes + limits", "direct-sim": "direct to detour-sim",
          "detour-baseline": "Detour, baseline checkout"}
SATURATED = 0.90     # a process/core at or above this share of a core is the bottleneck
TARGET_SHARE = 0.5
FOREIGN_MAX = 0.15   # same threshold as run.py   # Detour's goal: at least half the pass-through ceiling


def _cell(cells: list[dict], target: str, workload: str, conns: int) -> dict | None:
    return next((c for c in cells if (c["target"], c["workload"], c["conns"]) == (target, workload, conns)), None)


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{v:.0%}"


def _ratio(a: dict | None, b: dict | None) -> str:
    return f"{a['rps'] / b['rps']:.2f}" if a and b and b["rps"] else "-"


def analyse(res: dict) -> list[str]:
    """Plain-language findings: who was the bottleneck, where Detour stands against the target."""
    meta, cells, notes = res["meta"], res["cells"], []
    if meta["loadgen_kind"] == "python":
        notes.append("wrk is not installed, so the built-in Python load generator was used: it needs far more "
                     "CPU per request than wrk and shares core 1 with the upstream, so expect it to cap every "
                     "target (`apt-get install -y wrk` for real figures).")
    for workload in ("non-stream", "stream"):
        for conns in meta["concurrency"]:
            d, p, t = (_cell(cells, x, workload, conns) for x in ("direct", "passthrough", "detour"))
            where = f"{workload}, c={conns}"
            if d and p and d["rps"] < 1.25 * p["rps"]:
                notes.append(f"{where}: direct ({d['rps']:,.0f} req/s) is barely above the pass-through "
                             f"({p['rps']:,.0f}): core 1 (load generator + upstream) caps the ceiling, so the "
                             "pass-through figure is a lower bound of the real ceiling.")
            for c in (p, t, _cell(cells, "detour-accesslog", workload, conns)):
                if not c:
                    continue
                name = LABELS[c["target"]]
                if c["errors"]:
                    notes.append(f"{where}: {name} had {c['errors']} failed requests: its figures are not valid.")
                if c["server_cpu"] is not None and c["server_cpu"] < SATURATED and c["core_client"] >= SATURATED:
                    notes.append(f"{where}: {name} used only {c['server_cpu']:.0%} of its core while core 1 was "
                                 f"{c['core_client']:.0%} busy: limited by the load generator/upstream, not by "
                                 "the server.")
                elif c["server_cpu"] is not None and c["server_cpu"] < SATURATED:
                    notes.append(f"{where}: {name} used only {c['server_cpu']:.0%} of its core and core 1 was "
                                 f"{c['core_client']:.0%} busy: neither side saturated (latency-bound; raise "
                                 "the concurrency).")
            share = next((x["detour/passthrough"] for x in res.get("pairs") or ()
                          if (x["workload"], x["conns"]) == (workload, conns) and "detour/passthrough" in x),
                         t["rps"] / p["rps"] if p and t and p["rps"] else None)
            if share is not None and share < TARGET_SHARE:
                notes.append(f"{where}: Detour is at {share:.0%} of the pass-through ceiling, "
                             f"below the {TARGET_SHARE:.0%} target.")
    noisy = [c for c in cells if c.get("foreign", 0) >= FOREIGN_MAX]
    if noisy:
        notes.append(f"{len(noisy)} cell(s) ran while other processes used >= {FOREIGN_MAX} cores despite re-runs "
                     "(max {:.2f}): those figures are pessimistic.".format(max(c["foreign"] for c in noisy)))
    if not notes:
        notes.append("The server under test saturated its core in every proxied cell while core 1 had headroom: "
                     "the figures measure the servers, not the load generator or the upstream.")
    return notes


def render(res: dict) -> str:
    meta, cells = res["meta"], res["cells"]
    concs = meta["concurrency"]
    out = [f"# Detour benchmark ({meta['date']})", ""]
    out.append(f"Machine: {meta['cores']} cores ({meta['cpu']}), {meta['mem_gib']} GiB, Linux {meta['kernel']}, "
               f"Python {meta['python']} (aiohttp/uvicorn/uvloop/httptools/detour "
               f"{meta['aiohttp/uvicorn/uvloop/httptools/detour']}), commit {meta['commit']}.")
    out.append(f"Server under test pinned to core {meta['server_core']}; upstream "
               f"({'bench/upstream.py' if meta['upstream'] == 'raw' else 'detour-sim'}, {meta['chunks']} content "
               f"chunks per stream, no delay) and load generator ({meta['loadgen']}) pinned to core "
               f"{meta['client_core']}. Each run: {meta['warmup_s']:g} s warm-up (discarded), then "
               f"{meta['duration_s']:g} s measured, closed loop over keep-alive connections; every target runs "
               f"once per round, {meta.get('rounds', 1)} rounds per cell, in rotating order."
               + (" **Quick smoke run: not for publication.**" if meta["quick"] else ""))
    out += ["", "## Throughput (requests/s)", ""]
    targets = [t for t in ("direct", "passthrough", "detour", "detour-rules", "detour-accesslog", "detour-baseline")
               if any(c["target"] == t for c in cells)]
    pairs = {(x["workload"], x["conns"]): x for x in res.get("pairs") or ()}
    ratios = [k for k in ("detour/passthrough", "detour/direct", "detour-rules/detour", "detour-accesslog/detour",
                          "detour/detour-baseline")
              if any(k in x for x in pairs.values())]
    names = {"detour/passthrough": "Detour / pass-through", "detour/direct": "Detour / direct",
             "detour-rules/detour": "rules + limits / Detour", "detour-accesslog/detour": "access log / Detour",
             "detour/detour-baseline": "Detour / baseline checkout"}
    out.append("Medians of the runs of each target; the ratios are medians of ratios between runs of the same "
               "round (adjacent in time), so slow drift of the machine's speed cancels out.")
    out.append("")
    out.append("| workload | conc. | " + " | ".join(LABELS[t] for t in targets) + " | "
               + " | ".join(names[k] for k in ratios) + " |")
    out.append("|---|---:|" + "---:|" * (len(targets) + len(ratios)))
    for workload in ("non-stream", "stream"):
        for conns in concs:
            row = [_cell(cells, t, workload, conns) for t in targets]
            pr = pairs.get((workload, conns), {})
            out.append(f"| {workload} | {conns} | " + " | ".join(f"{c['rps']:,.0f}" if c else "-" for c in row)
                       + " | " + " | ".join(f"**{pr[k]:.2f}**" if k == "detour/passthrough" and k in pr
                                            else f"{pr[k]:.3f}" if k in pr else "-" for k in ratios) + " |")
    out += ["", "## Latency and CPU", "",
            "Latency of complete responses (the whole stream for streaming). *Server CPU*: CPU time of the "
            "server process / wall time of the measured run; *core 1*: busy share of the load generator + "
            "upstream core; *others*: cores used by processes that are not part of the benchmark (a cell is re-run "
            "when this exceeds 0.15).", "",
            "| workload | conc. | target | req/s | p50 ms | p90 ms | p99 ms | server CPU | core 1 busy | others |",
            "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|"]
    for workload in ("non-stream", "stream"):
        for conns in concs:
            for tname in targets:
                c = _cell(cells, tname, workload, conns)
                if c:
                    out.append(f"| {workload} | {conns} | {LABELS[tname]} | {c['rps']:,.0f} | {c['p50_ms']:.2f} | "
                               f"{c['p90_ms']:.2f} | {c['p99_ms']:.2f} | {_pct(c['server_cpu'])} | "
                               f"{_pct(c['core_client'])} | {c['foreign']:.2f} |")
    ttft = res.get("ttft") or {}
    if ttft:
        out += ["", f"## Streaming time to first token ({meta['ttft_connections']} connection, "
                f"{meta['ttft_duration_s']:g} s per target, built-in client)", "",
                "Time from sending the request to receiving the first SSE chunk with non-empty `content`, "
                "parsed client-side.", "",
                "| target | requests | TTFT p50 ms | TTFT p90 ms | TTFT p99 ms | whole stream p50 ms |",
                "|---|---:|---:|---:|---:|---:|"]
        for tname, r in ttft.items():
            out.append(f"| {LABELS[tname]} | {r['requests']:,} | {r['ttft_p50_ms']:.3f} | {r['ttft_p90_ms']:.3f} | "
                       f"{r['ttft_p99_ms']:.3f} | {r['total_p50_ms']:.3f} |")
        if "detour" in ttft and "passthrough" in ttft:
            dp50 = (ttft["detour"]["ttft_p50_ms"] - ttft["passthrough"]["ttft_p50_ms"]) * 1000
            dp99 = (ttft["detour"]["ttft_p99_ms"] - ttft["passthrough"]["ttft_p99_ms"]) * 1000
            out += ["", f"Detour's TTFT overhead over the pass-through: **{dp50:+.0f} µs at p50, {dp99:+.0f} µs "
                    "at p99** (this includes the first-token gate: Detour holds the response headers until the "
                    "first content chunk has arrived)."]
    mem = res.get("memory") or {}
    if mem:
        out += ["", "## Memory of the Detour process (RSS)", "",
                "| run | before load | after all cells | peak (VmHWM) |", "|---|---:|---:|---:|"]
        for tname, m in mem.items():
            out.append(f"| {LABELS[tname]} | {m.get('before_kib', 0) / 1024:.1f} MiB | "
                       f"{m.get('after_kib', 0) / 1024:.1f} MiB | {m.get('peak_kib', 0) / 1024:.1f} MiB |")
    sims = [c for c in cells if c["target"] == "direct-sim"]
    if sims:
        out += ["", "## Upstream choice", "",
                "Direct requests/s at the same concurrency against `detour-sim` vs the raw benchmark upstream, "
                "both sharing core 1 with the load generator (the upstream used above is the raw one):", ""]
        for c in sims:
            raw = _cell(cells, "direct", c["workload"], c["conns"])
            out.append(f"- {c['workload']}, c={c['conns']}: detour-sim {c['rps']:,.0f} req/s, raw upstream "
                       f"{raw['rps']:,.0f} req/s" if raw else "")
    out += ["", "## Bottlenecks", ""] + [f"- {n}" for n in analyse(res)]
    return "\n".join(out) + "\n"
