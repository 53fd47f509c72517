"""``python -m rundock.server``: the same as ``rundock server``."""

from rundock.server.cli import main

main()
