"""Fixtures of the fault suite: a lab per test (workspace, canaries, probe folder) that kills, at the
end, whatever this test's runs left behind and unmounts what it mounted."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.faults.scenario import Lab


@pytest.fixture
def lab(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Lab]:
    world = Lab(tmp_path, monkeypatch)
    try:
        yield world
    finally:
        world.cleanup()
