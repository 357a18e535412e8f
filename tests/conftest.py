"""Fixtures shared by the tier-3 tests (real processes)."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest


@pytest.fixture
def directory(tmp_path: Path, monkeypatch: Any) -> Iterator[Path]:
    """
    A cluster directory: tmp_path unless it is too long for the nodes' UNIX
    socket paths, then a short one under the system temp dir. HOME points
    into it, so a developer's ~/.nswarm-*.conf does not reach the daemons.
    """
    monkeypatch.setenv("HOME", str(tmp_path))
    if len(str(tmp_path)) <= 70:
        yield tmp_path
        return
    short = Path(tempfile.mkdtemp(prefix="nswarm-"))
    try:
        yield short
    finally:
        shutil.rmtree(short, ignore_errors=True)
