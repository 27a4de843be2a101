"""`detour-operator`: `kopf run -m detour_operator.handlers` with Detour's defaults.

Why a wrapper: the Deployment's command stays one stable word while the kopf flags (liveness
endpoint, namespaces, peering) get safe defaults. kopf itself handles SIGTERM/SIGINT: it stops
watching, lets running handlers finish, and exits.

Only one replica acts at a time through kopf peering (`--peering detour`, needs the
KopfPeering CRDs that the chart installs); `--standalone` turns coordination off (single replica,
tests).
"""

from __future__ import annotations

import argparse

DEFAULT_LIVENESS = "http://0.0.0.0:8081/healthz"


def kopf_args(argv: list[str] | None = None) -> list[str]:
    parser = argparse.ArgumentParser(prog="detour-operator", description=__doc__.splitlines()[0])
    scope = parser.add_mutually_exclusive_group()
    scope.add_argument("-n", "--namespace", action="append", default=[], help="watch this namespace (repeatable)")
    scope.add_argument("-A", "--all-namespaces", action="store_true", help="watch all namespaces (the default)")
    peering = parser.add_mutually_exclusive_group()
    peering.add_argument("--peering", default="detour", help="kopf peering name for leader election (default: detour)")
    peering.add_argument("--standalone", action="store_true", help="no peering: this replica always acts")
    parser.add_argument("--liveness", default=DEFAULT_LIVENESS, help=f"liveness endpoint (default: {DEFAULT_LIVENESS})")
    parser.add_argument("--verbose", action="store_true")
    args = parser.parse_args(argv)
    out = ["run", "-m", "detour_operator.handlers", f"--liveness={args.liveness}"]
    out += [f"--namespace={ns}" for ns in args.namespace] or ["--all-namespaces"]
    out += ["--standalone"] if args.standalone else [f"--peering={args.peering}"]
    if args.verbose:
        out.append("--verbose")
    return out


def main(argv: list[str] | None = None) -> None:
    from kopf.cli import main as kopf_main

    kopf_main.main(args=kopf_args(argv), prog_name="detour-operator")


if __name__ == "__main__":
    main()
