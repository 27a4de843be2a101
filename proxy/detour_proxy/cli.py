"""`detour-proxy`: serve a routing config file (standalone, or as a pod in Kubernetes)."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import uvicorn

from . import tracing
from .server.app import create_app
from .state import AppState
from .config import ConfigError
from .logs import setup_logging
from .cluster.services import startup_hooks, shutdown_hooks

log = logging.getLogger("detour.cli")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="detour-proxy", description="Detour: a reliability gateway for LLM calls.")
    p.add_argument("--config", required=True, help="routing config file (YAML or JSON)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8080)
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    p.add_argument("--no-access-log", action="store_true", help="do not log one line per request")
    p.add_argument("--wait-for-config", action="store_true",
                   help="start unready while the config file does not exist yet (Kubernetes: the operator publishes it)")
    p.add_argument("--no-watch", action="store_true", help="do not reload the config when the file changes")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    setup_logging(args.log_level, access_log=not args.no_access_log)
    tracing.setup_from_env()   # OpenTelemetry only when OTEL_EXPORTER_OTLP_*ENDPOINT is set
    state = AppState(config_path=args.config)
    if Path(args.config).exists() or not args.wait_for_config:
        try:
            state.load_and_install()
        except ConfigError as exc:
            print(f"detour-proxy: {exc}", file=sys.stderr)
            raise SystemExit(2) from None
    else:
        log.warning("config %s does not exist yet; serving unready until it appears", args.config)
    drain = state.gateway.config.server.drain_timeout if state.gateway else 30.0
    app = create_app(state, on_startup=startup_hooks(args), on_shutdown=shutdown_hooks(args))
    uvicorn.run(app, host=args.host, port=args.port, loop="uvloop", http="httptools", lifespan="on",
                access_log=False, log_config=None, timeout_graceful_shutdown=int(drain),
                server_header=False, date_header=False)


if __name__ == "__main__":
    main()
