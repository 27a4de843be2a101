"""``python -m detour_sim`` — same as the ``detour-sim`` console script."""

from .cli import main

if __name__ == "__main__":
    raise SystemExit(main())
