"""AWS event-stream framing (`application/vnd.amazon.eventstream`), as ConverseStream sends it.

Each message: a 12-byte prelude (total length, headers length, CRC32 of those 8 bytes; big
endian), the headers, the payload, and a CRC32 of everything before it. Headers are typed
(name length, name, type byte, value); Bedrock uses string headers (`:message-type` event /
exception / error, `:event-type`, `:exception-type`, `:content-type`), but every type of the
format is parsed so a new header cannot break a stream.

`EventStreamParser.feed(bytes)` takes any split of the byte stream and returns the complete
messages so far. A bad CRC, an impossible length or a message over `max_message_bytes` raises
`EventStreamError` (the decoder turns it into that target's malformed stream); memory is
bounded by the largest message allowed plus one network read. `encode_message` is the writer
(the simulator and tests use it).
"""

from __future__ import annotations

import struct
import zlib
from typing import NamedTuple

from .base import MAX_SSE_EVENT_BYTES

__all__ = ["EventMessage", "EventStreamError", "EventStreamParser", "encode_message"]

_PRELUDE = 12
_MIN_MESSAGE = 16   # prelude + message CRC
# Fixed-size header value types: 0 true, 1 false, 2 byte, 3 short, 4 int, 5 long, 8 timestamp, 9 uuid.
_FIXED = {0: 0, 1: 0, 2: 1, 3: 2, 4: 4, 5: 8, 8: 8, 9: 16}


class EventStreamError(ValueError):
    """The byte stream is not a valid event stream (CRC mismatch, bad lengths, too large)."""


class EventMessage(NamedTuple):
    headers: dict[str, object]
    payload: bytes


def _headers(raw: bytes) -> dict[str, object]:
    out: dict[str, object] = {}
    i, n = 0, len(raw)
    while i < n:
        nlen = raw[i]
        name = raw[i + 1:i + 1 + nlen].decode("utf-8", "replace")
        i += 1 + nlen
        if i >= n:
            raise EventStreamError("event stream header without a value")
        vtype = raw[i]
        i += 1
        value: object
        if vtype in (6, 7):   # bytes / string: 2-byte length
            if i + 2 > n:
                raise EventStreamError("event stream header value cut short")
            (vlen,) = struct.unpack_from(">H", raw, i)
            data = raw[i + 2:i + 2 + vlen]
            if len(data) != vlen:
                raise EventStreamError("event stream header value cut short")
            value = data.decode("utf-8", "replace") if vtype == 7 else data
            i += 2 + vlen
        elif vtype in _FIXED:
            size = _FIXED[vtype]
            if i + size > n:
                raise EventStreamError("event stream header value cut short")
            value = vtype == 0 if vtype in (0, 1) else int.from_bytes(raw[i:i + size], "big", signed=vtype != 9)
            i += size
        else:
            raise EventStreamError(f"unknown event stream header type {vtype}")
        out[name] = value
    return out


class EventStreamParser:
    __slots__ = ("_buf", "_max")

    def __init__(self, max_message_bytes: int = MAX_SSE_EVENT_BYTES) -> None:
        self._buf = bytearray()
        self._max = max_message_bytes

    @property
    def pending(self) -> int:
        """Bytes of an incomplete message held (0 at a message boundary)."""
        return len(self._buf)

    def feed(self, data: bytes) -> list[EventMessage]:
        self._buf += data
        out: list[EventMessage] = []
        buf = self._buf
        while len(buf) >= _PRELUDE:
            total, hlen, pcrc = struct.unpack_from(">III", buf, 0)
            if zlib.crc32(bytes(buf[:8])) != pcrc:
                raise EventStreamError("event stream prelude CRC mismatch")
            if total < _MIN_MESSAGE or hlen > total - _MIN_MESSAGE:
                raise EventStreamError("event stream message with impossible lengths")
            if total > self._max:
                raise EventStreamError(f"an event stream message exceeded {self._max} bytes")
            if len(buf) < total:
                break
            msg = bytes(buf[:total])
            del buf[:total]
            (mcrc,) = struct.unpack_from(">I", msg, total - 4)
            if zlib.crc32(msg[:-4]) != mcrc:
                raise EventStreamError("event stream message CRC mismatch")
            out.append(EventMessage(_headers(msg[_PRELUDE:_PRELUDE + hlen]), msg[_PRELUDE + hlen:-4]))
        return out


def _encode_headers(headers: dict[str, str]) -> bytes:
    parts = []
    for name, value in headers.items():
        n, v = name.encode(), value.encode()
        parts.append(bytes([len(n)]) + n + b"\x07" + struct.pack(">H", len(v)) + v)
    return b"".join(parts)


def encode_message(headers: dict[str, str], payload: bytes) -> bytes:
    """One event-stream message with string headers (what Bedrock sends)."""
    h = _encode_headers(headers)
    total = _PRELUDE + len(h) + len(payload) + 4
    prelude = struct.pack(">II", total, len(h))
    prelude += struct.pack(">I", zlib.crc32(prelude))
    body = prelude + h + payload
    return body + struct.pack(">I", zlib.crc32(body))
