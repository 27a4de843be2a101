"""OpenAI flavour, Responses API: POST /v1/responses, non-streamed and as typed SSE events.

The answer is the chat endpoint's (canonical reply, or one call to the first function tool
when the last input item is a user message and tools are offered; a `function_call_output`
gets text), shaped as a `response` object the `openai` SDK parses, or as the event sequence
`response.created`, `response.in_progress`, `response.output_item.added`,
(`response.content_part.added`, N x `response.output_text.delta` | N x
`response.function_call_arguments.delta`), the `.done` events, `response.completed`. Stream
faults apply between the deltas like on every other stream; an in-band error is a
`response.failed` event.

Stateful like OpenAI: responses are stored unless `store: false` (bounded), and a
`previous_response_id` this simulator did not store is refused like OpenAI does: 400
`invalid_request_error`, code `previous_response_not_found`. A `web_search` tool (server-side) adds a completed
`web_search_call` output item before the message.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import orjson
from aiohttp import web

from .stream import StreamPlan, send_stream
from .text import content_text, split_text, text_tokens

if TYPE_CHECKING:
    from .openai_api import OpenAIAPI
    from .server import Ctx


def _event(doc: dict[str, Any]) -> bytes:
    return b"event: " + doc["type"].encode() + b"\ndata: " + orjson.dumps(doc) + b"\n\n"


def _usage(inp: int, out: int) -> dict[str, Any]:
    return {"input_tokens": inp, "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
            "output_tokens": out, "output_tokens_details": {"reasoning_tokens": 0}, "total_tokens": inp + out}


def _text_of(item: Any) -> str:
    if isinstance(item, str):
        return item
    if isinstance(item, dict):
        content = item.get("content")
        if isinstance(content, list):
            return "".join(p.get("text", "") for p in content if isinstance(p, dict))
        return content_text(content)
    return ""


_STORED_MAX = 1000


class ResponsesAPI:
    def __init__(self, api: OpenAIAPI) -> None:
        self.api = api
        self.sim = api.sim
        self.stored: dict[str, dict[str, Any]] = {}

    def _not_found(self, prev: str, ctx: Ctx) -> web.Response:
        body = {"error": {"message": f"Previous response with id '{prev}' not found.",
                          "type": "invalid_request_error", "param": "previous_response_id",
                          "code": "previous_response_not_found"}}
        return web.Response(body=orjson.dumps(body), status=400, headers=ctx.headers,
                            content_type="application/json")

    def _missing(self, rid: str, ctx: Ctx) -> web.Response:
        body = {"error": {"message": f"Response with id '{rid}' not found.", "type": "invalid_request_error",
                          "param": None, "code": None}}
        return web.Response(body=orjson.dumps(body), status=404, headers=ctx.headers, content_type="application/json")

    async def retrieve(self, ctx: Ctx) -> web.StreamResponse:
        rid = ctx.request.match_info["rid"]
        doc = self.stored.get(rid)
        if doc is None:
            return self._missing(rid, ctx)
        return web.Response(body=orjson.dumps(doc), headers=ctx.headers, content_type="application/json")

    async def delete(self, ctx: Ctx) -> web.StreamResponse:
        rid = ctx.request.match_info["rid"]
        if self.stored.pop(rid, None) is None:
            return self._missing(rid, ctx)
        return web.Response(body=orjson.dumps({"id": rid, "object": "response.deleted", "deleted": True}),
                            headers=ctx.headers, content_type="application/json")

    def _store(self, body: dict[str, Any], final: dict[str, Any]) -> None:
        if body.get("store") is not False:
            if len(self.stored) >= _STORED_MAX:
                self.stored.pop(next(iter(self.stored)))
            self.stored[final["id"]] = final

    async def create(self, ctx: Ctx) -> web.StreamResponse:
        api, sim, body = self.api, self.sim, ctx.body
        if not isinstance(body, dict) or not isinstance(body.get("model"), str) or not body["model"]:
            return api.error(400, "invalid_request_error", "you must provide a model parameter", ctx.headers,
                             param="model")
        items = body.get("input")
        if isinstance(items, str):
            items = [{"role": "user", "content": items}]
        if not isinstance(items, list) or not items:
            return api.error(400, "invalid_request_error", "'input' must be a string or a non-empty array",
                             ctx.headers, param="input")
        prev = body.get("previous_response_id")
        if prev is not None and prev not in self.stored:
            return self._not_found(str(prev), ctx)
        n = next(sim.seq)
        last = items[-1] if isinstance(items[-1], dict) else {}
        search = any(isinstance(t, dict) and str(t.get("type", "")).startswith("web_search")
                     for t in body.get("tools") or ())
        tools = [t for t in body.get("tools") or () if isinstance(t, dict) and t.get("type") == "function"]
        call = None
        if last.get("type", "message") == "message" and last.get("role") == "user" and tools \
                and body.get("tool_choice") != "none":
            call = (f"call_{sim.name}_{n}", tools[0].get("name") or "tool",
                    orjson.dumps({"query": _text_of(last)}).decode())
        pieces = list(sim.canon.chunks)
        status, incomplete = "completed", None
        limit = body.get("max_output_tokens")
        if call is None and isinstance(limit, int) and 0 < limit < len(pieces):
            pieces, status, incomplete = pieces[:limit], "incomplete", {"reason": "max_output_tokens"}
        rid, item_id = f"resp_{sim.name}_{n}", f"{'fc' if call else 'msg'}_{sim.name}_{n}"
        inp = sum(text_tokens(_text_of(i)) for i in items) + 1
        out_tokens = text_tokens(call[2]) if call else len(pieces)
        base = {"id": rid, "object": "response", "created_at": int(time.time()), "model": body["model"],
                "status": "in_progress", "output": [], "error": None, "incomplete_details": None,
                "parallel_tool_calls": True, "tool_choice": body.get("tool_choice") or "auto",
                "tools": body.get("tools") or [], "usage": None, "metadata": {},
                "previous_response_id": prev, "store": body.get("store") is not False}
        if call:
            done_item = {"type": "function_call", "id": item_id, "call_id": call[0], "name": call[1],
                         "arguments": call[2], "status": "completed"}
        else:
            done_item = {"type": "message", "id": item_id, "status": "completed", "role": "assistant",
                         "content": [{"type": "output_text", "text": "".join(pieces), "annotations": [],
                                      "logprobs": []}]}
        ws = {"type": "web_search_call", "id": f"ws_{sim.name}_{n}", "status": "completed",
              "action": {"type": "search", "query": _text_of(last)}} if search else None
        final = {**base, "status": status, "incomplete_details": incomplete,
                 "output": [ws, done_item] if ws else [done_item], "usage": _usage(inp, out_tokens)}
        self._store(body, final)
        if body.get("stream") is not True:
            return web.Response(body=orjson.dumps(final), headers=ctx.headers, content_type="application/json")
        return await send_stream(sim, ctx, self._plan(base, final, done_item, pieces, call, ws))

    def _plan(self, base: dict[str, Any], final: dict[str, Any], item: dict[str, Any], pieces: list[str],
              call: tuple[str, str, str] | None, ws: dict[str, Any] | None = None) -> StreamPlan:
        seq = iter(range(10**6))
        at = 1 if ws else 0   # the message (or call) item's output_index

        def ev(type_: str, **fields: Any) -> bytes:
            if fields.get("output_index") == 0:
                fields["output_index"] = at
            return _event({"type": type_, "sequence_number": next(seq), **fields})

        iid = item["id"]
        head = [ev("response.created", response=base), ev("response.in_progress", response=base)]
        if ws:
            head.append(_event({"type": "response.output_item.added", "sequence_number": next(seq),
                                "output_index": 0, "item": {**ws, "status": "in_progress"}}))
            head.append(_event({"type": "response.output_item.done", "sequence_number": next(seq),
                                "output_index": 0, "item": ws}))
        if call:
            head.append(ev("response.output_item.added", output_index=0, item={**item, "arguments": "",
                                                                                "status": "in_progress"}))
            deltas = [ev("response.function_call_arguments.delta", item_id=iid, output_index=0, delta=p)
                      for p in split_text(call[2], len(self.sim.canon.chunks))]
            tail = [ev("response.function_call_arguments.done", item_id=iid, output_index=0, name=call[1],
                       arguments=call[2])]
        else:
            part = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
            head.append(ev("response.output_item.added", output_index=0,
                           item={**item, "status": "in_progress", "content": []}))
            head.append(ev("response.content_part.added", item_id=iid, output_index=0, content_index=0, part=part))
            deltas = [ev("response.output_text.delta", item_id=iid, output_index=0, content_index=0, delta=p,
                         logprobs=[]) for p in pieces]
            text = "".join(pieces)
            tail = [ev("response.output_text.done", item_id=iid, output_index=0, content_index=0, text=text,
                       logprobs=[]),
                    ev("response.content_part.done", item_id=iid, output_index=0, content_index=0,
                       part={**part, "text": text})]
        tail.append(ev("response.output_item.done", output_index=0, item=item))
        tail.append(ev("response.incomplete" if final["status"] == "incomplete" else "response.completed",
                       response=final))

        def failed(etype: str | None, message: str | None) -> bytes:
            err = {"code": etype or "server_error", "message": message or f"simulated in-band {etype or 'server_error'}"}
            return ev("response.failed", response={**base, "status": "failed", "error": err})

        return StreamPlan(b"".join(head), deltas, b"".join(tail), failed)
