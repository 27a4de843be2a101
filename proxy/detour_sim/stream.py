"""Writing SSE streams, with the stream-level faults applied between content chunks.

Flavours only *encode*: they hand over a :class:`StreamPlan` (preamble bytes, one encoded
event per content chunk, epilogue bytes). This module decides *when* and *whether* each part
is written, so every stream fault (ttft, chunkDelay, reset/cut/stall/malformed/inband after
N chunks) behaves identically for OpenAI and Anthropic.

The preamble (OpenAI role chunk; Anthropic message_start, content_block_start, ping) goes
out with the headers; ``ttft`` delays the first *content* chunk, which is what a proxy's
first-token timeout must measure. A fault "after N chunks" with N >= the number of content
chunks fires after the last content chunk, before the epilogue.

Client disconnects: ``build_app`` turns on aiohttp's ``handler_cancellation``, so when the
client goes away the handler task is cancelled wherever it is awaiting — a sleep between
chunks or an idle stall — and we count ``streamsClientClosed`` right then. A failed write
(``ConnectionError``) is the other way we notice. If someone runs the app with
cancellation forced off, a stall still notices the closed transport within 250 ms.
"""

from __future__ import annotations

import asyncio
import socket
import struct
from typing import TYPE_CHECKING, Callable, NamedTuple, Sequence

from aiohttp import web

if TYPE_CHECKING:
    from .faults import Fault
    from .server import Ctx, Sim

SSE_CONTENT_TYPE = "text/event-stream"
_LINGER_RST = struct.pack("ii", 1, 0)


class StreamPlan(NamedTuple):
    head: bytes
    pieces: Sequence[bytes]
    tail: bytes
    #: the API's in-band error event (type, message) -> bytes; None: the flavour's default
    inband: Callable[[str | None, str | None], bytes] | None = None
    #: the stream's content type (bedrock: the binary AWS event stream)
    content_type: str = "text/event-stream"


def client_gone(request: web.BaseRequest) -> bool:
    t = request.transport
    return t is None or t.is_closing()


async def until_client_gone(request: web.BaseRequest) -> None:
    """Return once the client connection is closed.

    Normally we never get past the first sleep: handler cancellation interrupts it the
    moment the transport is lost. The loop is only a fallback.
    """
    while not client_gone(request):
        await asyncio.sleep(0.25)


def abort_connection(request: web.BaseRequest) -> None:
    """Close the TCP connection abruptly (RST, not FIN), like a crashed upstream or LB."""
    t = request.transport
    if t is None:
        return
    sock = t.get_extra_info("socket")
    if sock is not None:
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RST)
        except (OSError, AttributeError):
            pass
    t.abort()


def _at(n: int | None, i: int, total: int) -> bool:
    """Does a fault configured for "after n chunks" fire at checkpoint i (of total)?"""
    return n is not None and (n == i or (i == total and n > total))


async def send_stream(sim: "Sim", ctx: "Ctx", plan: StreamPlan) -> web.StreamResponse:
    fault = ctx.fault
    stats = sim.stats
    delay = sim.chunk_delay
    if fault is not None and fault.chunk_delay is not None:
        delay = fault.chunk_delay
    if not delay and (fault is None or not fault.touches_stream):
        # Fast path: nothing to pace or break, send the whole stream in one body.
        stats.bump("streamsStarted")
        body = plan.head + b"".join(plan.pieces) + plan.tail
        stats.bump("streamsCompleted")
        return web.Response(
            body=body, headers=ctx.headers, content_type=plan.content_type,
            charset="utf-8" if plan.content_type == SSE_CONTENT_TYPE else None,
        )

    request = ctx.request
    resp = web.StreamResponse(headers=ctx.headers)
    resp.content_type = plan.content_type
    if plan.content_type == SSE_CONTENT_TYPE:
        resp.charset = "utf-8"
    resp.headers["Cache-Control"] = "no-cache"
    await resp.prepare(request)
    stats.bump("streamsStarted")
    try:
        await resp.write(plan.head)
        finished = await _body(sim, ctx, resp, plan, fault, delay)
        if finished:
            await resp.write(plan.tail)
            await resp.write_eof()
            stats.bump("streamsCompleted")
    except asyncio.CancelledError:
        if client_gone(request):
            stats.bump("streamsClientClosed")
        raise
    except ConnectionError:
        ctx.closed = True
        stats.bump("streamsClientClosed")
    return resp


async def _body(
    sim: "Sim",
    ctx: "Ctx",
    resp: web.StreamResponse,
    plan: StreamPlan,
    fault: "Fault | None",
    delay: float,
) -> bool:
    """Write the content chunks; False if a fault ended the stream early."""
    request = ctx.request
    pieces = plan.pieces
    total = len(pieces)
    stats = sim.stats
    for i in range(total + 1):
        if fault is not None:
            if i == 0 and fault.ttft:
                await asyncio.sleep(fault.ttft)
            if fault.malformed == "sse" and _at(fault.malformed_after, i, total):
                await resp.write(sim.api.garbage_sse)
            ib = fault.inband
            if ib is not None and _at(ib.after_chunks, i, total):
                await resp.write((plan.inband or sim.api.inband_error)(ib.type, ib.message))
                await resp.write_eof()
                stats.bump("streamsInbandError")
                return False
            if _at(fault.reset_after, i, total):
                stats.bump("streamsReset")
                abort_connection(request)
                return False
            if _at(fault.cut_after, i, total):
                await resp.write_eof()
                stats.bump("streamsCut")
                return False
            if _at(fault.stall_after, i, total):
                stats.bump("streamsStalled")
                await until_client_gone(request)
                ctx.closed = True
                stats.bump("streamsClientClosed")
                return False
        if i == total:
            return True
        if i and delay:
            await asyncio.sleep(delay)
        await resp.write(pieces[i])
    return True
