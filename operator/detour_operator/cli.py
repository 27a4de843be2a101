"""`detour-operator`: `kopf run -m detour_operator.handlers` with Detour's defaults.

Why a wrapper: the Deployment's command stays one stable word while the kopf flags (liveness
endpoint, namespaces, peering) get safe defaults. kopf itself handles SIGTERM/SIGINT: it stops
watching, lets running handlers finish, and exits.

Only one replica acts at a time through kopf peering (`--peering detour`, needs the
KopfPeering CRDs and object that the chart installs); `--standalone` turns coordination off
(single replica, tests). With neither, the operator joins the peering only if the object exists
and otherwise acts standalone (peering_mode.py says why). kopf lets the live peer with the highest priority act and pauses the
others, but when peers share a priority it pauses *all* of them. So each replica gets its own
priority, derived from its pod name (`POD_ID`, else the hostname, which is the pod name in
Kubernetes): stable for the life of the pod, different across pods.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import os
import socket

from . import peering_mode

DEFAULT_LIVENESS = "http://0.0.0.0:8081/healthz"
DEFAULT_READINESS = "http://0.0.0.0:8082/readyz"
#: How the wrapper tells the handlers module (loaded by kopf) what kopf's flags cannot carry.
ENV_READINESS, ENV_PEERING, ENV_NAMESPACES = (
    "DETOUR_OPERATOR_READINESS", "DETOUR_OPERATOR_PEERING", "DETOUR_OPERATOR_NAMESPACES")


def replica_priority(pod_id: str) -> int:
    """A kopf peering priority for this replica: 31 bits of sha256(pod name), so two pods of
    one Deployment get different priorities (equal ones would pause every replica)."""
    return int.from_bytes(hashlib.sha256(pod_id.encode()).digest()[:4], "big") & 0x7FFFFFFF


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="detour-operator", description=__doc__.splitlines()[0])
    scope = parser.add_mutually_exclusive_group()
    scope.add_argument("-n", "--namespace", action="append", default=[], help="watch this namespace (repeatable)")
    scope.add_argument("-A", "--all-namespaces", action="store_true", help="watch all namespaces (the default)")
    peering = parser.add_mutually_exclusive_group()
    peering.add_argument("--peering", default=None,
                         help="kopf peering name for leader election (default: 'detour' if that object exists, "
                              "else standalone)")
    peering.add_argument("--standalone", action="store_true", help="no peering: this replica always acts")
    parser.add_argument("--priority", type=int, default=None,
                        help="kopf peering priority (default: derived from POD_ID or the hostname)")
    parser.add_argument("--liveness", default=DEFAULT_LIVENESS, help=f"liveness endpoint (default: {DEFAULT_LIVENESS})")
    parser.add_argument("--readiness", default=DEFAULT_READINESS,
                        help=f"readiness endpoint: 503 while kopf is paused for want of the peering object "
                             f"(default: {DEFAULT_READINESS}; 'off' to disable)")
    parser.add_argument("--verbose", action="store_true")
    return parser


def kopf_args(argv: list[str] | None = None, lookup: peering_mode.Lookup = peering_mode.peering_object_exists) -> list[str]:
    args = _parser().parse_args(argv)
    out = ["run", "-m", "detour_operator.handlers", f"--liveness={args.liveness}"]
    out += [f"--namespace={ns}" for ns in args.namespace] or ["--all-namespaces"]
    name = peering_mode.choose(args.peering, args.standalone, args.namespace, lookup)
    if name is None:
        out.append("--standalone")
    else:
        prio = args.priority if args.priority is not None else replica_priority(
            os.environ.get("POD_ID") or socket.gethostname())
        out += [f"--peering={name}", f"--priority={prio}"]
    if args.verbose:
        out.append("--verbose")
    return out


def main(argv: list[str] | None = None) -> None:
    from kopf.cli import main as kopf_main

    # Before kopf configures logging (it replaces only its own root handler): the decision line.
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("[%(asctime)s] %(name)-20.20s [%(levelname)-8.8s] %(message)s"))
    peering_mode.log.addHandler(handler)
    peering_mode.log.propagate = False
    args = kopf_args(argv)
    readiness = _parser().parse_args(argv).readiness
    os.environ[ENV_READINESS] = "" if readiness == "off" else readiness
    os.environ[ENV_PEERING] = next((a.split("=", 1)[1] for a in args if a.startswith("--peering=")), "")
    os.environ[ENV_NAMESPACES] = ",".join(a.split("=", 1)[1] for a in args if a.startswith("--namespace="))
    kopf_main.main(args=args, prog_name="detour-operator")


if __name__ == "__main__":
    main()
