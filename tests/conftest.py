"""Fixtures shared by the tier-3 tests (real processes)."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from nswarm.testing.local import LocalCluster, alive_pids

#: The example service most tier-3 tests run.
GREETER = Path(__file__).resolve().parent.parent / "examples" / "greeter.py"


@contextmanager
def running_cluster(directory: Path, timeout: float, services: tuple[Path, ...] = ()) -> Iterator[LocalCluster]:
    """
    A master, node 'node-1' and C{services} (scripts) in C{directory}, each
    start bounded by C{timeout} seconds; all stopped afterwards, their output
    printed (pytest shows it when a test fails), and checked gone.
    """
    local = LocalCluster(directory, timeout=timeout)
    try:
        with local:
            local.init()
            local.start_master()
            local.start_node("node-1")
            for service in services:
                local.start_service(service)
            yield local
    finally:
        for process in local.processes:
            print(f"{process}, exit status {process.returncode}:\n{process.tail()}\n")
        left = alive_pids(local.pids())
        assert not left, f"processes still running after stop(): {left}"


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
