"""Health roll-up from pod annotations."""

from __future__ import annotations

import datetime
import json

from detour_operator import health

NOW = datetime.datetime(2026, 11, 25, 15, 0, 30, tzinfo=datetime.timezone.utc)


def rep(pod, targets, updated="2026-11-25T15:00:20Z", hb=10):
    return {"version": 1, "pod": pod, "updated": updated, "heartbeatSeconds": hb, "targets": targets}


def t(provider, state="closed", requests=10, ratio=0.0, err=None, at=None, model="m", key=None):
    d = {"provider": provider, "model": model, "endpoint": "e", "state": state, "requests": requests, "failureRatio": ratio}
    if key is not None:
        d["key"] = key
    if err:
        d.update(lastError=err, lastErrorAt=at)
    return d


def test_counts_pods_that_opened_it_themselves_and_weights_the_failure_ratio():
    imported = {**t("p", "open", 5, 0.0), "imported": True}
    reports = [rep("a", [t("p", "open", 30, 1.0, "http_503", "2026-11-25T15:00:10Z")]),
               rep("b", [t("p", "closed", 70, 0.0, "timeout", "2026-11-25T14:59:00Z")]),
               rep("c", [t("p", "half-open", 0, 0.0), t("other")]),
               rep("d", [imported])]
    h = health.rollup(reports, "p", NOW)
    # one pod's open breaker is imported by every pod: the provider is avoided everywhere
    assert h == {"state": "Unavailable", "breaker": "2/4 open", "requests": 105, "failureRatio": 0.286, "pods": 4,
                 "lastError": "http_503", "lastErrorAt": "2026-11-25T15:00:10Z",
                 "models": [{"name": "m", "state": "Unavailable", "keys": 1, "readyKeys": 0}], "modelsReady": "m 0/1"}


def test_truncated_reports_are_counted_and_named_in_available():
    from detour_operator.conditions import available_condition
    h = health.rollup([{**rep("a", [t("p")]), "omitted": 1500}, rep("b", [t("p")])], "p", NOW)
    assert h["truncatedReports"] == 1 and h["state"] == "Healthy"
    assert "1 pod(s) left closed targets out" in available_condition(h, 1)["message"]


def test_states():
    assert health.rollup([], "p", NOW)["state"] == "Unknown"
    assert health.rollup([rep("a", [t("p", "open")]), rep("b", [t("p")])], "p", NOW)["state"] == "Unavailable"
    assert health.rollup([rep("a", [{**t("p", "open"), "imported": True}])], "p", NOW)["state"] == "Healthy"
    assert health.rollup([rep("a", [t("p")])], "p", NOW)["state"] == "Healthy"
    assert health.rollup([rep("a", [t("p", requests=10, ratio=0.6)])], "p", NOW)["state"] == "Degraded"
    assert health.rollup([rep("a", [t("other", "open")])], "p", NOW)["state"] == "Unknown"


def test_stale_reports_are_ignored():
    stale = rep("a", [t("p", "open")], updated="2026-11-25T14:59:59Z", hb=10)  # 31 s > 3 x 10 s
    fresh = rep("b", [t("p")], updated="2026-11-25T15:00:00Z", hb=10)           # exactly 30 s
    h = health.rollup([stale, fresh], "p", NOW)
    assert h["pods"] == 1 and h["state"] == "Healthy" and "lastError" not in h


def test_parsing_rejects_garbage_and_unknown_versions():
    assert health.parse_report(None) is None
    assert health.parse_report("{not json") is None
    assert health.parse_report(json.dumps({"version": 2, "targets": []})) is None
    pods = [{"metadata": {"annotations": {health.ANNOTATION: json.dumps(rep("a", []))}}}, {"metadata": {}}]
    assert len(health.reports_from_pods(pods)) == 1


def test_settle_keeps_figures_that_only_drift_so_an_unchanged_picture_is_not_rewritten():
    from detour_operator.health import settle
    old = {"state": "Healthy", "breaker": "0/3 open", "pods": 3, "requests": 400, "failureRatio": 0.01,
           "lastError": "http_503", "lastErrorAt": "2026-01-01T00:00:00Z"}
    drift = {**old, "requests": 430, "failureRatio": 0.03, "lastErrorAt": "2026-01-01T00:00:20Z"}
    assert settle(old, drift) == old
    assert settle(old, {**drift, "requests": 600})["requests"] == 600          # moved by 25 % or more
    assert settle(old, {**drift, "failureRatio": 0.2})["failureRatio"] == 0.2
    assert settle(old, {**drift, "lastErrorAt": "2026-01-01T00:01:00Z"})["lastErrorAt"].endswith("01:00Z")
    assert settle(old, {**drift, "state": "Degraded"}) == {**drift, "state": "Degraded"}  # state: all current
    assert settle(None, drift) == drift and settle(old, {**old, "requests": 0})["requests"] == 0


def test_a_failing_model_does_not_take_its_provider_down():
    """Health rolls up per model: one model's open breaker leaves the provider Degraded (Available,
    naming the model), not Unavailable; only every model out makes it Unavailable."""
    from detour_operator.conditions import available_condition
    reports = [rep("a", [t("p", "open", model="gpt-4o"), t("p", model="gpt-4o-mini")]),
               rep("b", [t("p", model="gpt-4o"), t("p", model="gpt-4o-mini")])]
    h = health.rollup(reports, "p", NOW)
    assert h["state"] == "Degraded"
    assert h["models"] == [{"name": "gpt-4o", "state": "Unavailable", "keys": 1, "readyKeys": 0},
                           {"name": "gpt-4o-mini", "state": "Healthy", "keys": 1, "readyKeys": 1}]
    assert h["modelsReady"] == "gpt-4o 0/1, gpt-4o-mini 1/1"
    cond = available_condition(h, 3)
    assert (cond["status"], cond["reason"]) == ("True", "ModelsUnavailable")
    assert "models unavailable: gpt-4o;" in cond["message"]
    both = [rep("a", [t("p", "open", model="gpt-4o"), t("p", "open", model="gpt-4o-mini")])]
    assert health.rollup(both, "p", NOW)["state"] == "Unavailable"


def test_keys_roll_up_per_model_by_index():
    """Three keys: key 1 open for gpt-4o (a 401 somewhere), every key open for o1: the column
    says how many keys each model has ready, without naming any key."""
    from detour_operator.conditions import available_condition
    reports = [rep("a", [t("p", model="gpt-4o"), t("p", "open", model="gpt-4o", key=1),
                         t("p", "open", model="o1"), t("p", "open", model="o1", key=1),
                         t("p", "open", model="o1", key=2)]),
               rep("b", [{**t("p", "open", model="gpt-4o", key=2), "imported": True}])]
    h = health.rollup(reports, "p", NOW, keys=3)
    assert h["models"] == [{"name": "gpt-4o", "state": "Degraded", "keys": 3, "readyKeys": 2},
                           {"name": "o1", "state": "Unavailable", "keys": 3, "readyKeys": 0}]
    assert h["state"] == "Degraded" and h["modelsReady"] == "o1 0/3, gpt-4o 2/3"
    msg = available_condition(h, 1)["message"]
    assert "models unavailable: o1 (0/3 keys ready)" in msg and "gpt-4o 2/3 keys ready" in msg
    # a model reported on one key only still counts the provider's 3 keys (the others are unused, ready)
    assert health.rollup([rep("a", [t("p", model="m")])], "p", NOW, keys=3)["modelsReady"] == "m 3/3"


def test_the_models_column_stays_short():
    many = [rep("a", [t("p", model=f"model-{i:02d}") for i in range(40)] + [t("p", "open", model="zz-down")])]
    text = health.rollup(many, "p", NOW)["modelsReady"]
    assert len(text) <= health.MODELS_READY_MAX and text.startswith("zz-down 0/1, ") and text.endswith(" more")
