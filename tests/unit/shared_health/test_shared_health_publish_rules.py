"""health_publish: what is worth a write, and how a report stays under the annotation size limit."""

from __future__ import annotations

import orjson

from detour_proxy.cluster.health_codec import decode
from detour_proxy.cluster.health_publish import MAX_REPORT_BYTES, fit, reports_open, significant


def doc(*targets: dict, updated: str = "2026-01-01T00:00:00.000Z") -> str:
    return orjson.dumps({"version": 1, "pod": "p", "updated": updated, "heartbeatSeconds": 300,
                         "targets": list(targets)}).decode()


def entry(model: str = "m", state: str = "closed", **extra) -> dict:
    return {"provider": "p", "model": model, "endpoint": "abcd0123", "state": state,
            "requests": 100, "failureRatio": 0.1, **extra}


def test_only_news_is_significant_not_the_clock_or_drifting_figures():
    base = decode(doc(entry()))
    assert significant(None, base)
    assert not significant(base, decode(doc(entry(), updated="2026-01-01T00:05:00.000Z")))
    assert not significant(base, decode(doc(entry(requests=120, failureRatio=0.12))))
    assert significant(base, decode(doc(entry(requests=125))))             # moved by 25 %
    assert significant(base, decode(doc(entry(failureRatio=0.16))))        # moved by 0.05
    assert significant(base, decode(doc(entry(lastError="http_503"))))     # a new error class (figures)
    assert not significant(base, decode(doc(entry(lastError="http_503"))), figures=False)
    assert significant(base, decode(doc(entry(state="open", openUntil="2026-01-01T00:01:00Z"))))
    assert significant(base, decode(doc(entry(), entry("m2"))))             # a new target


def test_an_imported_open_is_no_news_and_no_open_report():
    base = decode(doc(entry()))
    imported = decode(doc(entry(state="open", openUntil="2026-01-01T00:01:00Z", imported=True)))
    assert not significant(base, imported) and not reports_open(imported)
    assert reports_open(decode(doc(entry(state="half-open"))))


def test_a_report_over_the_limit_keeps_open_targets_and_says_how_many_it_left_out():
    targets = [entry(f"model-{i:05d}") for i in range(3000)]
    targets[7] = entry("model-00007", state="open", openUntil="2026-01-01T00:01:00Z")
    text = doc(*targets)
    assert len(text) > MAX_REPORT_BYTES
    small, omitted = fit(text)
    parsed = orjson.loads(small)
    assert len(small.encode()) <= MAX_REPORT_BYTES and omitted == 2999 and parsed["omitted"] == 2999
    assert [t["model"] for t in parsed["targets"]] == ["model-00007"]
    assert fit(doc(entry())) == (doc(entry()), 0)
    # thousands of open targets: as many as fit
    many_open = doc(*[entry(f"model-{i:05d}", state="open", openUntil="2026-01-01T00:01:00Z") for i in range(3000)])
    cut, left_out = fit(many_open)
    assert len(cut.encode()) <= MAX_REPORT_BYTES and 0 < left_out < 3000
    assert decode(cut).targets and orjson.loads(cut)["omitted"] == left_out


def test_a_local_open_a_peer_already_announced_is_no_news_and_figures_wait_for_the_heartbeat():
    base = decode(doc(entry()))
    opened = decode(doc(entry(state="open", openUntil="2026-01-01T00:01:00Z", lastError="http_503", failureRatio=0.9)))
    ident = frozenset({("p", "m", "abcd0123")})
    assert significant(base, opened, figures=False)                            # news: announce it
    assert not significant(base, opened, figures=False, announced=ident)       # a peer already did
    assert not reports_open(opened, ident) and reports_open(opened)
    assert significant(base, opened, figures=True, announced=ident)            # at the heartbeat: figures
