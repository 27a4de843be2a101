"""The operator's readiness (`/readyz`): not ready while kopf keeps it paused for want of its
peering object.

Why: `detour-operator --peering NAME` runs kopf with mandatory peering, and kopf pauses every
replica until the KopfPeering (ClusterKopfPeering when watching all namespaces) NAME exists,
says so only at debug level, and keeps its liveness endpoint answering 200. Such an operator
does nothing while looking healthy. So, besides the warning at start (peering_mode.py), the
operator serves `/readyz` on its own port: 503 with the reason while the object is missing,
200 once it exists, and logs each change once. `kubectl get pods` then shows the operator
0/1 ready, and a rollout of a new operator version does not proceed past it.

Readiness does not mean "this replica leads": a standby replica (another peer has the higher
priority) is ready, otherwise a rolling update would wait for new pods that never lead.

The check is a LIST with a `metadata.name` field selector (the verb the chart's peering Role
grants), every `MISSING_RECHECK` s while the object is missing or unknown, every
`PRESENT_RECHECK` s once it exists (it may be deleted later). A standalone operator is always
ready and runs no check.
"""

from __future__ import annotations

import asyncio
import logging
import urllib.parse
from collections.abc import Sequence

import aiohttp.web

from . import peering_mode

log = logging.getLogger("detour_operator.readiness")
MISSING_RECHECK = 2.0
PRESENT_RECHECK = 30.0


class Readiness:
    def __init__(self, peering: str | None, namespaces: Sequence[str],
                 lookup: peering_mode.Lookup = peering_mode.peering_object_exists) -> None:
        self.peering, self.namespaces, self.lookup = peering, list(namespaces), lookup
        self.ready = peering is None
        self.missing = False  # the last answer was "the object does not exist"
        self.reason = "standalone" if peering is None else f"{self._where()} not checked yet"
        self._task: asyncio.Task[None] | None = None
        self._runner: aiohttp.web.AppRunner | None = None

    def _where(self) -> str:
        assert self.peering is not None
        return peering_mode.where(self.peering, self.namespaces)

    async def check(self) -> None:
        """Look the peering object up once and update the state (logged once per change)."""
        if self.peering is None:
            return
        found = await asyncio.to_thread(self.lookup, self.peering, self.namespaces)
        if found is None:
            return  # the lookup failed (logged by peering_mode): keep what we knew
        if found and not self.ready:
            if self.missing:
                log.warning("%s exists now: ready (kopf resumes this operator)", self._where())
            self.ready, self.missing, self.reason = True, False, f"{self._where()} exists"
        elif not found and not self.missing:
            log.warning("NOT READY: %s does not exist, so kopf keeps this operator paused and nothing is "
                        "reconciled; create it (the chart does when operator.replicas > 1) or run with "
                        "--standalone", self._where())
            self.ready, self.missing = False, True
            self.reason = f"{self._where()} does not exist: kopf keeps this operator paused"

    async def _loop(self) -> None:
        while True:
            try:
                await self.check()
            except Exception:  # never let the readiness loop die; the next round retries
                log.exception("peering readiness check failed")
            await asyncio.sleep(PRESENT_RECHECK if self.ready else MISSING_RECHECK)

    async def _readyz(self, request: aiohttp.web.Request) -> aiohttp.web.Response:
        return aiohttp.web.json_response({"ready": self.ready, "reason": self.reason},
                                         status=200 if self.ready else 503)

    async def start(self, endpoint: str) -> None:
        """Serve `endpoint` (e.g. http://0.0.0.0:8082/readyz) and start the checks."""
        parts = urllib.parse.urlsplit(endpoint)
        app = aiohttp.web.Application()
        app.add_routes([aiohttp.web.get(parts.path or "/readyz", self._readyz)])
        self._runner = aiohttp.web.AppRunner(app, handle_signals=False, shutdown_timeout=1.0)
        await self._runner.setup()
        try:
            await aiohttp.web.TCPSite(self._runner, parts.hostname or "0.0.0.0", parts.port or 8082).start()
        except OSError as exc:  # the port is taken: a readiness probe then fails, which is the signal
            log.error("cannot serve readiness on %s: %s", endpoint, exc)
        if self.peering is not None:
            self._task = asyncio.create_task(self._loop(), name="detour-peering-readiness")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
        if self._runner is not None:
            await self._runner.cleanup()
