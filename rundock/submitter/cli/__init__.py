"""The ``rundock`` command line (click); ``main`` is the console entry point."""

from __future__ import annotations

from rundock.server import command as _server_command  # noqa: F401  (adds `rundock server`)
from rundock.submitter.cli import (  # noqa: F401  (each registers its commands)
    admin,
    control,
    listing,
    login,
    manage,
    pools,
    report,
    runs,
    secrets,
    submit,
    sweep,
    targets,
    transfer,
    ui,
)
from rundock.submitter.cli.base import cli, main

__all__ = ["cli", "main"]
