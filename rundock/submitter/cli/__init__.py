"""The ``rundock`` command line (click); ``main`` is the console entry point."""

from __future__ import annotations

from rundock.submitter.cli import admin, runs, secrets, targets  # noqa: F401  (each registers its commands)
from rundock.submitter.cli.base import cli, main

__all__ = ["cli", "main"]
