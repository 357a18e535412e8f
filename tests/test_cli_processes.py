"""
Tier 3: the nswarm command against a real cluster in processes (the master,
node 'node-1' and the example greeter, through LocalCluster): status, call,
publish and watch, each as its own process, as an operator types them.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from nswarm.testing.local import LocalCluster

from .conftest import GREETER, running_cluster

#: Bound, in seconds, on each process start and each command.
BOUND = 20.0


@pytest.fixture
def cluster(directory: Path) -> Iterator[LocalCluster]:
    with running_cluster(directory, BOUND, (GREETER,)) as local:
        yield local


def nswarm(cluster: LocalCluster, *arguments: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "nswarm.cli", *arguments, "--config", str(cluster.running_client_config())]
    return subprocess.run(command, capture_output=True, text=True, timeout=BOUND)


def test_call_status_publish_and_watch(cluster: LocalCluster) -> None:
    called = nswarm(cluster, "call", "greet", "world")
    assert (called.returncode, called.stdout) == (0, '"hello, world!"\n'), called.stderr
    missing = nswarm(cluster, "call", "missing")
    assert missing.returncode == 6 and "no service implements 'missing'" in missing.stderr

    config = str(cluster.running_client_config())
    command = [sys.executable, "-m", "nswarm.cli", "watch", "orders.*", "--count", "1", "--config", config]
    watcher = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert watcher.stderr is not None
        assert watcher.stderr.readline().startswith("watching orders.*")  # subscribed: events from now on reach it
        published = nswarm(cluster, "publish", "orders.created", '{"id": 7}')
        assert published.returncode == 0, published.stderr
        out, _ = watcher.communicate(timeout=BOUND)
        assert watcher.returncode == 0
        assert json.loads(out) == {"event": "orders.created", "payload": {"id": 7}}
    finally:
        if watcher.poll() is None:
            watcher.kill()
            watcher.wait()

    shown = nswarm(cluster, "status")
    assert shown.returncode == 0, shown.stderr
    assert "node-1" in shown.stdout and "Greeter" in shown.stdout
    greet = next(line for line in shown.stdout.split("\nMETHODS\n")[1].splitlines() if line.startswith("greet "))
    assert greet.split()[4] == "1"  # one call to greet, counted
    document = json.loads(nswarm(cluster, "status", "--json").stdout)
    assert document["events"]["published"] == 1
