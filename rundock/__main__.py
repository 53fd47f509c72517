"""``python -m rundock``: the command line."""

from rundock.submitter.cli import main

main()
