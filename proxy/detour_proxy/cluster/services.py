"""Background services started with the app (config watching, shared health, active probes).

Each service is an `on_startup` hook that starts its task and an `on_shutdown` hook that
stops it; none of them ever blocks a request. Started services are kept in
`AppState.services` by name so the shutdown hook (and tests) can reach them.
"""

from __future__ import annotations

import argparse
from typing import Any, Awaitable, Callable

from ..state import AppState

Hook = Callable[[AppState], Awaitable[Any]]


async def start_reload(state: AppState, *, watch: bool = True) -> Any:
    from .reload import ConfigReloader

    svc = ConfigReloader(state, watch=watch)
    await svc.start()
    state.services["reload"] = svc
    return svc


async def start_shared_health(state: AppState, **kwargs: Any) -> Any:
    from .shared_health import SharedHealthService

    svc = SharedHealthService(state, **kwargs)
    await svc.start()
    state.services["shared_health"] = svc
    return svc


async def start_probes(state: AppState) -> Any:
    from .prober import ActiveProber

    svc = ActiveProber(state)
    await svc.start()
    state.services["probes"] = svc
    return svc


async def stop_all(state: AppState) -> None:
    for name in ("probes", "shared_health", "reload"):
        svc = state.services.pop(name, None)
        if svc is not None:
            await svc.stop()


def startup_hooks(args: argparse.Namespace) -> list[Hook]:
    watch = not getattr(args, "no_watch", False)

    async def reload_hook(state: AppState) -> None:
        if state.config_path is not None:
            await start_reload(state, watch=watch)

    async def shared_health_hook(state: AppState) -> None:
        # Always started: it idles until the (possibly reloaded) config enables it.
        await start_shared_health(state)

    async def probes_hook(state: AppState) -> None:
        # Always started: it idles until a provider enables activeProbes.
        await start_probes(state)

    return [reload_hook, shared_health_hook, probes_hook]


def shutdown_hooks(args: argparse.Namespace) -> list[Hook]:
    return [stop_all]
