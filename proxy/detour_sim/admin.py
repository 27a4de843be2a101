"""The ``/_sim/`` control API: faults, stats, reset, and an event-driven long-poll.

Tests and the resilience suite drive sims that run as separate processes (or in other
pods), so control is plain HTTP+JSON. Admin requests are deliberately *not* counted in the
stats and never have faults applied, so observing a sim does not change what it reports.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import orjson
from aiohttp import web

from .faults import FaultError, parse_fault_set
from .server import json_response

if TYPE_CHECKING:
    from .server import Sim

MAX_WAIT = 300.0


def _bad(message: str) -> web.Response:
    return json_response({"error": message}, status=400)


def add_admin_routes(app: web.Application, sim: "Sim") -> None:
    stats, faults = sim.stats, sim.faults

    async def get_faults(request: web.Request) -> web.Response:
        return json_response(faults.to_json())

    async def put_faults(request: web.Request) -> web.Response:
        raw = await request.read()
        try:
            spec = orjson.loads(raw) if raw.strip() else {}
        except orjson.JSONDecodeError as exc:
            return _bad(f"invalid JSON: {exc}")
        try:
            rules = parse_fault_set(spec)
        except FaultError as exc:
            return _bad(str(exc))
        faults.replace(rules)
        return json_response(faults.to_json())

    async def delete_faults(request: web.Request) -> web.Response:
        faults.clear()
        return json_response(faults.to_json())

    async def get_stats(request: web.Request) -> web.Response:
        return json_response({"name": sim.name, "flavor": sim.flavor, **stats.to_json()})

    async def post_reset(request: web.Request) -> web.Response:
        stats.reset()
        sim.prompt_cache.clear()
        faults.clear()
        reset_api = getattr(sim.api, "reset", None)   # flavour settings (google: token lifetime, outage)
        if reset_api is not None:
            reset_api()
        return json_response({"name": sim.name, "flavor": sim.flavor, **stats.to_json()})

    async def wait(request: web.Request) -> web.Response:
        q = request.query
        key = q.get("key", "total")
        if not stats.valid_key(key):
            return _bad(f"unknown stat {key!r}")
        try:
            at_most = int(q["atMost"]) if "atMost" in q else None
            at_least = int(q["atLeast"]) if "atLeast" in q else (None if at_most is not None else 1)
            timeout = min(float(q.get("timeout", "5")), MAX_WAIT)
        except ValueError:
            return _bad("atLeast/atMost must be integers and timeout a number")
        ok = await stats.wait_for(key, at_least, timeout, at_most)
        body = {"name": sim.name, "flavor": sim.flavor, "key": key, "value": stats.value(key),
                "reached": ok, **stats.to_json()}
        return json_response(body, status=200 if ok else 408)

    async def health(request: web.Request) -> web.Response:
        return json_response({"ok": True, **sim.info()})

    r = app.router
    r.add_get("/_sim/faults", get_faults)
    r.add_put("/_sim/faults", put_faults)
    r.add_post("/_sim/faults", put_faults)
    r.add_delete("/_sim/faults", delete_faults)
    r.add_get("/_sim/stats", get_stats)
    r.add_post("/_sim/reset", post_reset)
    r.add_get("/_sim/wait", wait)
    r.add_get("/_sim/health", health)
