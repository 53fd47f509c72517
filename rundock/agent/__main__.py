"""``python -m rundock.agent run RUN_DIR`` runs one job; ``serve ROOT VERSION`` is the warm local agent."""

from __future__ import annotations

import sys

USAGE = "usage: python -m rundock.agent run RUN_DIR | serve ROOT VERSION"


def _main(argv: list[str]) -> int:
    if len(argv) == 2 and argv[0] == "run":
        from rundock.agent.lifecycle import main

        return main(argv[1])
    if len(argv) == 3 and argv[0] == "serve":
        from rundock.agent.daemon import preload, serve

        preload()
        return serve(argv[1], argv[2])
    print(USAGE, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
