"""The one I/O seam to providers (aiohttp lives here and nowhere else in the data plane)."""

from ._aiohttp import CONNECT_ERRORS, STREAM_ERRORS, Upstream, arm_read_timeout, client_timeout

__all__ = ["Upstream", "client_timeout", "CONNECT_ERRORS", "STREAM_ERRORS", "arm_read_timeout"]
