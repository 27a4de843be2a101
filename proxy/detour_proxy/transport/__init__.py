"""The one I/O seam to providers: aiohttp lives here and nowhere else in the data plane.

`Upstream.send(request, timeout) -> Response` (status, headers, bounded `read`, `readany`,
`arm_idle`, `release`/`close`); failures are `TimeoutError` or a `TransportError`
(`Disconnected`, `ProtocolError`, `BodyTooLarge`)."""

from ._aiohttp import (BodyTooLarge, ConnectTimeout, Disconnected, ProtocolError, Response, TransportError,
                       Upstream, client_timeout)

__all__ = ["Upstream", "Response", "ConnectTimeout", "client_timeout", "TransportError", "Disconnected",
           "ProtocolError", "BodyTooLarge"]
