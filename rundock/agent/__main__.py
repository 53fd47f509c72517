"""``python -m rundock.agent run RUN_DIR``: run one job through its lifecycle."""

from __future__ import annotations

import sys

USAGE = "usage: python -m rundock.agent run RUN_DIR"


def _main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[0] != "run":
        print(USAGE, file=sys.stderr)
        return 2
    from rundock.agent.lifecycle import main

    return main(argv[1])


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
