"""The attempt engine: runs what `policy` decides, doing the I/O, the sleeping and the relaying.

`gateway` is what is built once per config (targets with adapters and keys, routes with
planners, the router). `_attempts` is the one attempt loop (with the hedged race step);
`_unary` and `_streaming` are its two runners (answer classification; the first-token gate,
relay and continuation); `_replies` the client-facing failure; `_usage` the rate-limit and
token hooks; `codec` the inbound seam (`InboundCodec`: the client's API format <-> the
canonical chat form). The server calls `run_unary` / `run_stream` with a `RequestContext`.
"""

from ._context import Reply, RequestContext, Result, skipped_headers
from ._streaming import run_stream
from ._unary import run_unary
from .codec import OPENAI, InboundCodec, OpenAICodec
from .gateway import Gateway, RouteRuntime, TargetRuntime, build_gateway

__all__ = ["Gateway", "RouteRuntime", "TargetRuntime", "build_gateway", "RequestContext", "Reply", "Result",
           "run_unary", "run_stream", "InboundCodec", "OpenAICodec", "OPENAI", "skipped_headers"]
