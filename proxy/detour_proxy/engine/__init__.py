"""The attempt engine: runs what `policy` decides, doing the I/O, the sleeping and the relaying.

`gateway` is what is built once per config (targets with adapters and keys, routes with
planners, the router); `_executor` runs unary requests, `_hedging` hedged races,
`_streaming` the first-token gate and stream relay, `_usage` rate-limit headers and token
reservations. The server calls `run_unary` / `run_stream` with a `RequestContext`.
"""

from ._executor import Reply, RequestContext, run_unary
from ._streaming import run_stream
from .gateway import Gateway, RouteRuntime, TargetRuntime, build_gateway

__all__ = ["Gateway", "RouteRuntime", "TargetRuntime", "build_gateway", "RequestContext", "Reply",
           "run_unary", "run_stream"]
