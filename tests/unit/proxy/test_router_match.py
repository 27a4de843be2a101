"""Route matching on model, headers and metadata: compiled once, first match wins."""

from __future__ import annotations

from types import SimpleNamespace

import orjson

from detour_proxy import config
from detour_proxy.engine.router import Router, request_metadata


def routes(*matches):
    out = []
    for i, m in enumerate(matches):
        r = config.Route(name=f"r{i}", match=config.Match(**m),
                         targets=[config.Target(provider="p", model="m")])
        out.append(SimpleNamespace(route=r))
    return out


def name(found):
    return found.route.name if found is not None else None


def test_model_only_router_is_cached_and_first_match_wins():
    router = Router(routes({"models": ["gpt-4o*"]}, {"models": ["gpt-4o-mini"]}, {}))
    assert not (router.uses_headers or router.uses_metadata)
    assert name(router.match("gpt-4o-mini")) == "r0"
    assert name(router.match("claude")) == "r2"          # catch-all
    assert name(router.match("gpt-4o-mini")) == "r0"      # from the cache


def test_header_routes_all_conditions_must_hold():
    router = Router(routes(
        {"models": ["chat-*"], "headers": {"X-Team": "search", "x-tier": "gold"}},
        {"headers": {"x-team": "search"}},
        {"models": ["chat-*"]},
    ))
    assert router.uses_headers and not router.uses_metadata
    h = {b"x-team": b"search", b"x-tier": b"gold"}
    assert name(router.match("chat-a", h)) == "r0"
    assert name(router.match("other", h)) == "r1"          # r0 needs the model too
    assert name(router.match("chat-a", {b"x-team": b"search"})) == "r1"
    assert name(router.match("chat-a", {b"x-team": b"Search"})) == "r2"  # values are exact
    assert name(router.match("chat-a", None)) == "r2"
    assert name(router.match("other", {})) is None


def test_metadata_from_header_or_openai_field():
    router = Router(routes({"metadata": {"team": "search", "priority": "true"}},
                           {"metadata": {"team": "search"}}, {}))
    assert router.uses_metadata
    body = {"model": "m", "metadata": {"team": "search"}}
    assert name(router.match("m", {}, body)) == "r1"
    hdr = {b"x-detour-metadata": orjson.dumps({"team": "search", "priority": True})}
    assert name(router.match("m", hdr, {"model": "m"})) == "r0"   # JSON true matches "true"
    # the header wins over the body on a key both set
    hdr = {b"x-detour-metadata": b'{"team": "ads"}'}
    assert name(router.match("m", hdr, body)) == "r2"
    # a header that is not a JSON object is ignored
    assert name(router.match("m", {b"x-detour-metadata": b"not json"}, body)) == "r1"
    assert name(router.match("m", {b"x-detour-metadata": b"[1]"}, None)) == "r2"
    # null / objects never match a string condition
    assert name(router.match("m", {b"x-detour-metadata": b'{"team": null}'}, body)) == "r2"


def test_metadata_values_in_json_spelling():
    md = request_metadata({b"x-detour-metadata": b'{"n": 1, "f": 1.5, "b": false}'}, None)
    router = Router(routes({"metadata": {"n": "1", "f": "1.5", "b": "false"}}))
    assert md == {"n": 1, "f": 1.5, "b": False}
    assert name(router.match("m", {b"x-detour-metadata": b'{"n": 1, "f": 1.5, "b": false}'}, None)) == "r0"


def test_non_latin1_header_values_compile():
    router = Router(routes({"headers": {"x-team": "日本"}}, {}))
    assert name(router.match("m", {b"x-team": "日本".encode()})) == "r0"
