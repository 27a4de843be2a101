"""``detour-sim`` command line: run one simulated provider.

The readiness line ``detour-sim NAME (FLAVOR) listening on http://HOST:PORT`` is printed
and flushed only once the socket is bound, so a parent process (tests, ``make run``, the
benchmark) can read one line from stdout and then connect — with ``--port 0`` that line is
also how it learns the port. SIGTERM/SIGINT stop the server and exit with status 0;
in-flight (possibly deliberately stalled) streams get a short grace period, not minutes.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys

from .runner import SimServer
from .server import FLAVORS
from .text import DEFAULT_CHUNKS, DEFAULT_EMBEDDING_DIMS, DEFAULT_REPLY


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="detour-sim", description="Simulated LLM provider with fault injection.")
    p.add_argument("--flavor", choices=FLAVORS, default="openai")
    p.add_argument("--name", default="sim", help="sim name (shown in x-detour-sim header and stats)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0, help="0 picks a free port (printed on start)")
    p.add_argument("--reply", default=DEFAULT_REPLY, help="canonical reply text")
    p.add_argument("--chunks", type=int, default=DEFAULT_CHUNKS, help="stream the reply in N chunks")
    p.add_argument("--chunk-delay", type=float, default=0.0, help="seconds between stream chunks")
    p.add_argument("--embedding-dims", type=int, default=DEFAULT_EMBEDDING_DIMS)
    p.add_argument("--model", action="append", dest="models", help="model id for /v1/models (repeatable)")
    p.add_argument("--access-log", action="store_true", help="log every request (slow)")
    p.add_argument("--log-level", default="WARNING")
    args = p.parse_args(argv)
    if args.chunks < 1:
        p.error("--chunks must be >= 1")
    if args.chunk_delay < 0:
        p.error("--chunk-delay must be >= 0")
    if args.embedding_dims < 1:
        p.error("--embedding-dims must be >= 1")
    return args


async def serve(args: argparse.Namespace) -> None:
    server = SimServer(
        args.flavor, args.name, host=args.host, port=args.port, access_log=args.access_log,
        reply=args.reply, chunks=args.chunks, chunk_delay=args.chunk_delay,
        embedding_dims=args.embedding_dims, models=args.models,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await server.start()
    try:
        print(f"detour-sim {args.name} ({args.flavor}) listening on {server.url}", flush=True)
        await stop.wait()
    finally:
        await server.close()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        import uvloop  # type: ignore[import-not-found]
    except ImportError:
        uvloop = None
    try:
        if uvloop is not None:
            uvloop.run(serve(args))
        else:
            asyncio.run(serve(args))
    except KeyboardInterrupt:
        pass
    except OSError as exc:
        print(f"detour-sim {args.name}: {exc}", file=sys.stderr, flush=True)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
