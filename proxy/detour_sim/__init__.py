"""Detour provider simulator: fake OpenAI / Anthropic upstreams with run-time fault injection.

Integration tests, ``make run``, the benchmark and the resilience suite all need upstreams
that answer like the real providers (so the real SDKs parse them) but that can be told,
over HTTP and while running, to fail in precisely the ways real providers fail. Every sim
answers one canonical reply, so a test can check that a stream stitched together by the
proxy across a failover is exactly that reply. See README.md for the API.
"""

from .text import DEFAULT_CHUNKS, DEFAULT_REPLY

__all__ = ["DEFAULT_CHUNKS", "DEFAULT_REPLY", "build_app"]
__version__ = "0.1.0"


def build_app(*args, **kwargs):
    """Lazy re-export of :func:`detour_sim.server.build_app` (keeps ``import detour_sim`` cheap)."""
    from .server import build_app as _build_app

    return _build_app(*args, **kwargs)
