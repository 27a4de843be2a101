"""Run a sim inside the current event loop (used by the CLI, tests and the benchmark).

``async with SimServer("openai", "primary") as s: ... s.url ... s.sim.faults`` binds
127.0.0.1 on a free port, without the cost of a subprocess. Access logging is off by
default: it costs more than the sim's own work per request. The shutdown grace is short
because stalled streams are *meant* to hang and must not hold up teardown for a minute.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from .server import SIM_KEY, Sim, build_app

SHUTDOWN_GRACE = 1.0


class SimServer:
    def __init__(
        self,
        flavor: str = "openai",
        name: str = "sim",
        host: str = "127.0.0.1",
        port: int = 0,
        access_log: bool = False,
        **app_kwargs: Any,
    ) -> None:
        self.app = build_app(flavor, name, **app_kwargs)
        self.sim: Sim = self.app[SIM_KEY]
        self.host = host
        self.port = port
        self._access_log = access_log
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        host = self.host if ":" not in self.host else f"[{self.host}]"
        return f"http://{host}:{self.port}"

    async def start(self) -> str:
        kwargs: dict[str, Any] = {} if self._access_log else {"access_log": None}
        self._runner = web.AppRunner(self.app, shutdown_timeout=SHUTDOWN_GRACE, **kwargs)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port, reuse_address=True)
        try:
            await site.start()
        except BaseException:
            await self._runner.cleanup()
            self._runner = None
            raise
        self.port = self._runner.addresses[0][1]
        return self.url

    async def close(self) -> None:
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()

    async def __aenter__(self) -> "SimServer":
        await self.start()
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()
