"""A minimal, fast OpenAI-shaped upstream for the benchmark (raw asyncio protocol + httptools).

`detour-sim` is the fault-injecting simulator used by the tests; it is built on aiohttp.web
and does request accounting, fault selection and per-request JSON shaping. That is cheap,
but on the benchmark's shared core (upstream + load generator) every microsecond of upstream
work lowers the ceiling all three targets can reach, so the default benchmark upstream is
this one: pre-encoded responses, no logging, no stats, no artificial delay.

  POST .../chat/completions   non-stream: an OpenAI `chat.completion` JSON (Content-Length)
                              `"stream": true`: SSE over chunked encoding: a role chunk,
                              N content chunks, a finish chunk, `data: [DONE]`; each SSE
                              event is one HTTP chunk and one socket write (as a real
                              token stream arrives), unless --single-write.
  POST .../responses          the same answer as an OpenAI Responses object / typed events
  POST .../messages           the same answer as an Anthropic message / Messages events
                              (both encoded once, by Detour's own inbound codecs, so the
                              pass-through and Detour see byte-identical upstream answers)
  anything else               404

Run: `python bench/upstream.py --port P [--chunks N] [--single-write]`; prints
`bench-upstream listening on http://127.0.0.1:P` once bound.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys

import httptools
import orjson

MODEL = "gpt-4o-mini"
CHAT_ID = "chatcmpl-bench0123456789"
CREATED = 1700000000
REPLY = ["The quick", " brown", " fox", " jumps", " over", " the", " lazy", " dog."]


def _pieces(n: int) -> list[str]:
    if n <= len(REPLY):
        # merge the canonical words into n pieces
        out = [""] * n
        for i, w in enumerate(REPLY):
            out[min(i * n // len(REPLY), n - 1)] += w
        return out
    return (REPLY * (n // len(REPLY) + 1))[:n]


def build_bodies(chunks: int) -> tuple[bytes, list[bytes]]:
    """(non-stream JSON body, list of SSE events) — encoded once at start."""
    text = "".join(REPLY)
    unary = orjson.dumps({
        "id": CHAT_ID, "object": "chat.completion", "created": CREATED, "model": MODEL,
        "system_fingerprint": "fp_bench",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text, "refusal": None},
                     "logprobs": None, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 12, "completion_tokens": len(REPLY), "total_tokens": 12 + len(REPLY)},
    })

    def chunk(delta: dict, finish: str | None) -> bytes:
        doc = {"id": CHAT_ID, "object": "chat.completion.chunk", "created": CREATED, "model": MODEL,
               "system_fingerprint": "fp_bench",
               "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]}
        return b"data: " + orjson.dumps(doc) + b"\n\n"

    events = [chunk({"role": "assistant", "content": ""}, None)]
    events += [chunk({"content": p}, None) for p in _pieces(chunks)]
    events += [chunk({}, "stop"), b"data: [DONE]\n\n"]
    return unary, events


def _http_chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


def _sse_response(body: bytes) -> bytes:
    return (b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream; charset=utf-8\r\n"
            b"cache-control: no-cache\r\ncontent-length: %d\r\n\r\n" % len(body)) + body


def _json_response(body: bytes) -> bytes:
    return b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n" % len(body) + body


def other_formats(unary: bytes, events: list[bytes]) -> dict[bytes, tuple[bytes, bytes]]:
    """(non-stream, stream) raw HTTP answers for the Responses and Messages paths."""
    from detour_proxy.inbound import MessagesCodec, ResponsesCodec
    payloads = [e[6:-2] for e in events[:-1]]   # the chunk documents, without [DONE]
    usage = orjson.loads(unary)["usage"]
    payloads.append(orjson.dumps({"id": CHAT_ID, "object": "chat.completion.chunk", "created": CREATED,
                                  "model": MODEL, "choices": [], "usage": usage}))
    out = {}
    for suffix, cls in ((b"/responses", ResponsesCodec), (b"/messages", MessagesCodec)):
        codec = cls()
        codec.parse(orjson.dumps({"model": MODEL, "input": "hi", "max_tokens": 64,
                                  "messages": [{"role": "user", "content": "hi"}]}), "")
        stream = cls()
        stream.parse(orjson.dumps({"model": MODEL, "input": "hi", "max_tokens": 64,
                                   "messages": [{"role": "user", "content": "hi"}]}), "")
        out[suffix] = (_json_response(codec.answer(unary)),
                       _sse_response(stream.chunks(payloads) + stream.done()))
    return out


class Responses:
    def __init__(self, chunks: int, single_write: bool) -> None:
        unary, events = build_bodies(chunks)
        self.formats = other_formats(unary, events)
        self.unary = (b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                      b"content-length: %d\r\n\r\n" % len(unary)) + unary
        head = (b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream; charset=utf-8\r\n"
                b"cache-control: no-cache\r\ntransfer-encoding: chunked\r\n\r\n")
        parts = [_http_chunk(e) for e in events] + [b"0\r\n\r\n"]
        if single_write:
            self.stream = [head + b"".join(parts)]
        else:
            # headers with the role chunk, then one write per event, the terminator with [DONE]
            self.stream = [head + parts[0], *parts[1:-2], parts[-2] + parts[-1]]
        self.not_found = (b"HTTP/1.1 404 Not Found\r\ncontent-type: application/json\r\n"
                          b"content-length: 44\r\n\r\n"
                          b'{"error":{"message":"not found","type":"x"}}')
        self.bad = b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"


class Protocol(asyncio.Protocol):
    __slots__ = ("r", "t", "parser", "url", "body", "method")

    def __init__(self, responses: Responses) -> None:
        self.r = responses
        self.t: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.url = b""
        self.body: list[bytes] = []

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self.t = transport

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self.t.write(self.r.bad)
            self.t.close()

    def on_message_begin(self) -> None:
        self.url = b""
        self.body = []

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        t = self.t
        if t is None or t.is_closing():
            return
        other = self.r.formats.get(self.url[self.url.rfind(b"/"):])
        if other is not None and self.parser.get_method() == b"POST":
            t.write(other[1] if b'"stream":true' in b"".join(self.body).replace(b" ", b"") else other[0])
        elif not self.url.endswith(b"/chat/completions") or self.parser.get_method() != b"POST":
            t.write(self.r.not_found)
        else:
            stream = False
            try:
                doc = orjson.loads(b"".join(self.body))
                stream = isinstance(doc, dict) and doc.get("stream") is True
            except orjson.JSONDecodeError:
                pass
            if stream:
                for part in self.r.stream:
                    t.write(part)
            else:
                t.write(self.r.unary)
        if not self.parser.should_keep_alive():
            t.close()


async def serve(host: str, port: int, chunks: int, single_write: bool) -> None:
    responses = Responses(chunks, single_write)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: Protocol(responses), host, port, backlog=1024)
    bound = server.sockets[0].getsockname()[1]
    print(f"bench-upstream listening on http://{host}:{bound}", flush=True)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    server.close()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--chunks", type=int, default=4, help="content chunks per stream (default 4)")
    p.add_argument("--single-write", action="store_true", help="send a whole stream in one write")
    a = p.parse_args(argv)
    import uvloop
    uvloop.run(serve(a.host, a.port, a.chunks, a.single_write))
    return 0


if __name__ == "__main__":
    sys.exit(main())
