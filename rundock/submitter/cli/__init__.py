"""The ``rundock`` command line (click); ``main`` is the console entry point."""

from __future__ import annotations

from rundock.submitter.cli import (  # noqa: F401  (each registers its commands)
    admin,
    control,
    listing,
    manage,
    runs,
    secrets,
    submit,
    targets,
    transfer,
)
from rundock.submitter.cli.base import cli, main

__all__ = ["cli", "main"]
