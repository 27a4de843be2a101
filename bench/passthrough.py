"""The ceiling: a zero-logic raw-ASGI pass-through (uvicorn + uvloop + httptools).

One shared aiohttp session (same connector settings as Detour's upstream seam) forwards the
client's method, path and body bytes to the upstream and relays the response: status,
content-type and the body, streamed chunk by chunk as it is read. No parsing, no routing,
no retries, no metrics, no logging. Whatever Detour does on top costs relative to this.

Run: `python bench/passthrough.py --upstream http://127.0.0.1:P --port Q`.
"""

from __future__ import annotations

import argparse
from typing import Any

import aiohttp
import uvicorn


class PassThrough:
    def __init__(self, upstream: str) -> None:
        self.upstream = upstream.rstrip("/")
        self.session: aiohttp.ClientSession | None = None

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                msg = await receive()
                if msg["type"] == "lifespan.startup":
                    connector = aiohttp.TCPConnector(limit=0, limit_per_host=0, keepalive_timeout=30.0)
                    self.session = aiohttp.ClientSession(connector=connector, skip_auto_headers=("User-Agent",),
                                                         read_bufsize=2**16)
                    await send({"type": "lifespan.startup.complete"})
                elif msg["type"] == "lifespan.shutdown":
                    if self.session is not None:
                        await self.session.close()
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        chunks = []
        while True:
            msg = await receive()
            chunks.append(msg.get("body", b""))
            if not msg.get("more_body"):
                break
        async with self.session.request(scope["method"], self.upstream + scope["path"], data=b"".join(chunks),
                                        headers={"Content-Type": "application/json"}) as resp:
            headers = [(b"content-type", resp.headers.get("Content-Type", "application/json").encode())]
            await send({"type": "http.response.start", "status": resp.status, "headers": headers})
            if resp.headers.get("Transfer-Encoding") == "chunked":
                async for data in resp.content.iter_any():
                    await send({"type": "http.response.body", "body": data, "more_body": True})
                await send({"type": "http.response.body", "body": b"", "more_body": False})
            else:
                await send({"type": "http.response.body", "body": await resp.read(), "more_body": False})


def main() -> None:
    p = argparse.ArgumentParser(description="zero-logic raw-ASGI pass-through (benchmark ceiling)")
    p.add_argument("--upstream", required=True, help="e.g. http://127.0.0.1:9000")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8090)
    a = p.parse_args()
    uvicorn.run(PassThrough(a.upstream), host=a.host, port=a.port, loop="uvloop", http="httptools",
                lifespan="on", access_log=False, log_level="warning", server_header=False, date_header=False)


if __name__ == "__main__":
    main()
