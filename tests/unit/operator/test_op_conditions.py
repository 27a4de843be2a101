"""Condition helpers: Kubernetes conventions, transition times, the Ready summary."""

from __future__ import annotations

from detour_operator import conditions as c
from detour_operator.render import Problem


def types(conds):
    return {x["type"]: (x["status"], x["reason"]) for x in conds}


def test_all_good_is_ready_and_no_message_names_a_config_hash():
    conds = c.object_conditions([], True, None, 3)
    assert types(conds) == {"Accepted": ("True", "Accepted"), "ResolvedRefs": ("True", "ResolvedRefs"),
                            "Programmed": ("True", "Programmed"), "Ready": ("True", "Ready")}
    assert all(x["observedGeneration"] == 3 for x in conds)
    # Another object's edit makes a new config: this object's conditions must not change with it.
    assert conds == c.object_conditions([], True, None, 3)


def test_degraded_policy_is_programmed_and_ready_but_says_what_was_left_out():
    conds = c.object_conditions([Problem("ResolvedRefs", "Degraded", "serving with 1 of 2 targets; left out: x")],
                                True, None, 2)
    t = types(conds)
    assert t["ResolvedRefs"] == ("False", "Degraded") and t["Programmed"] == ("True", "Programmed")
    assert t["Ready"] == ("True", "Degraded") and "left out: x" in conds[-1]["message"]


def test_own_config_hash_moves_only_with_the_objects_own_state():
    conds = c.merge(None, c.object_conditions([], True, None, 1), "T1")
    known = {"configHash": "h1", "conditions": conds}
    assert c.own_config_hash(known, c.object_conditions([], True, None, 1), True, "h2") == "h1"
    assert c.own_config_hash(known, c.object_conditions([], True, None, 2), True, "h2") == "h2"  # own edit
    assert c.own_config_hash({}, c.object_conditions([], True, None, 1), True, "h2") == "h2"    # first publish
    assert c.own_config_hash(known, c.object_conditions([], False, None, 1), False, "h2") is None


def test_missing_ref_makes_ready_false_with_the_reason():
    conds = c.object_conditions([Problem("ResolvedRefs", "ProviderNotFound", "LLMProvider not found: x")],
                                False, None, 1)
    t = types(conds)
    assert t["ResolvedRefs"] == ("False", "ProviderNotFound") and t["Programmed"] == ("False", "Excluded")
    ready = conds[-1]
    assert ready["status"] == "False" and ready["reason"] == "ProviderNotFound" and "not found: x" in ready["message"]


def test_invalid_spec_leaves_refs_unknown_and_no_config_is_explained():
    conds = c.object_conditions([Problem("Accepted", "InvalidSpec", "bad")], False, "no valid RoutingPolicy", 1)
    t = types(conds)
    assert t["Accepted"] == ("False", "InvalidSpec") and t["ResolvedRefs"][0] == "Unknown"
    assert t["Programmed"] == ("False", "NoValidConfig") and t["Ready"] == ("False", "InvalidSpec")


def test_last_transition_time_moves_only_when_status_flips():
    first = c.merge(None, c.object_conditions([], True, None, 1), "T1")
    second = c.merge(first, c.object_conditions([], True, None, 2), "T2")
    assert {x["lastTransitionTime"] for x in second} == {"T1"}
    assert second[2]["observedGeneration"] == 2
    third = c.merge(second, c.object_conditions([Problem("ResolvedRefs", "SecretNotFound", "s")], False, None, 2), "T3")
    ltt = {x["type"]: x["lastTransitionTime"] for x in third}
    assert ltt == {"Accepted": "T1", "ResolvedRefs": "T3", "Programmed": "T3", "Ready": "T3"}


def test_merge_keeps_conditions_owned_by_others_in_a_fixed_order():
    base = c.merge(None, [c.available_condition({"state": "Healthy", "breaker": "0/2 open"}, 1)], "T0")
    merged = c.merge(base, c.object_conditions([], True, None, 1), "T1")
    assert [x["type"] for x in merged] == ["Accepted", "ResolvedRefs", "Programmed", "Ready", "Available"]
    assert merged[-1]["lastTransitionTime"] == "T0"


def test_available_from_health():
    assert c.available_condition({"state": "Unavailable", "breaker": "2/2 open"}, 1)["status"] == "False"
    assert c.available_condition({"state": "Degraded"}, 1)["status"] == "True"
    assert c.available_condition(None, 1)["status"] == "Unknown"


def test_status_patch_is_none_when_the_server_already_holds_the_desired_status():
    assert c.status_patch({"a": 1, "b": 2}, {"a": 1}) is None  # keys others own are left alone
    assert c.status_patch({"a": 1}, {"b": None}) is None  # None means absent
    assert c.status_patch({"a": 1}, {"a": 2}) == {"a": 2}
    assert c.status_patch({"a": 1, "h": {"x": 1}}, {"a": 1, "h": {"x": 1}}) is None


def test_status_patch_removes_nested_keys_no_longer_desired():
    # An error that went away: the merge patch must null lastError, or the server keeps it forever.
    current = {"observedGeneration": 1, "health": {"state": "Degraded", "lastError": "http_503", "lastErrorAt": "T"}}
    desired = {"health": {"state": "Unknown"}}
    patch = c.status_patch(current, desired)
    assert patch == {"health": {"state": "Unknown", "lastError": None, "lastErrorAt": None}}
    held = c.merge_patch_apply(current, patch)
    assert held == {"observedGeneration": 1, "health": {"state": "Unknown"}}
    assert c.status_patch(held, desired) is None  # the next tick with the same picture writes nothing


def test_merge_patch_apply_follows_rfc_7386():
    assert c.merge_patch_apply({"a": {"b": 1, "c": 2}, "d": 3}, {"a": {"b": None, "e": [1]}, "d": None}) == {"a": {"c": 2, "e": [1]}}
    assert c.merge_patch_apply({"a": 1}, {"a": {"b": None}}) == {"a": {}}
