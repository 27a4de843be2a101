"""Background services started with the app (config watching, shared health).

Each service is an `on_startup` hook that starts its task and an `on_shutdown` hook that
stops it; none of them ever blocks a request.
"""

from __future__ import annotations

import argparse
from typing import Any, Awaitable, Callable

from .app_state import AppState

Hook = Callable[[AppState], Awaitable[Any]]


def startup_hooks(args: argparse.Namespace) -> list[Hook]:
    return []


def shutdown_hooks(args: argparse.Namespace) -> list[Hook]:
    return []
