"""Adds ``rundock server`` to the ``rundock`` command line (imported by ``rundock.submitter.cli``)."""

from __future__ import annotations

from rundock.server.cli import server
from rundock.submitter.cli.base import cli

cli.add_command(server)
