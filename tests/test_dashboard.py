"""
Tier 3: the HTTP listeners of a real cluster. The master (with a bearer
token) and node-1 run with C{http = tcp:0} in their conf files; the master's
HTTP port comes from its ports file, the node's from its C{listening} event.
The test calls the example greeter as an API user, then reads C{/metrics}
(checked with Prometheus' parser, and with promtool where it is installed)
and C{/status.json}, and opens the dashboard in a headless Chromium (skipped
where there is none; .ci/run installs it). Every wait is bounded, and every
process is stopped.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThread

from nswarm.amp_commands import HandlerFailed
from nswarm.api import APIClient
from nswarm.testing.local import LocalCluster, alive_pids, nswarm_event

from .browser import Tables, find_chromium, headless

GREETER = Path(__file__).resolve().parent.parent / "examples" / "greeter.py"
#: Bound, in seconds, on each process start and each log wait.
START_TIMEOUT = 20.0
#: Bound, in seconds, on each API call and HTTP request.
CALL_TIMEOUT = 10.0
#: Bound, in seconds, on one headless Chromium run.
BROWSER_TIMEOUT = 90.0
TOKEN = "test-token-0123456789abcdef"
CHROMIUM = find_chromium()


@dataclass
class Listening:
    """A local cluster and where its HTTP listeners are."""

    cluster: LocalCluster
    master_url: str
    node_url: str


def append(conf: Path, *lines: str) -> None:
    """Add option lines to the section of conf file C{conf} (its only one)."""
    conf.write_text(conf.read_text().rstrip("\n") + "\n" + "".join(f"{line}\n" for line in lines))


@pytest.fixture
def listening(directory: Path) -> Iterator[Listening]:
    """A master (HTTP with a token), node-1 (HTTP, open) and the greeter, all stopped afterwards."""
    local = LocalCluster(directory, timeout=START_TIMEOUT)
    token = directory / "http.token"
    token.write_text(TOKEN + "\n")
    token.chmod(0o600)
    try:
        with local:
            local.init()
            append(directory / "master.conf", "http = tcp:0", f"http-token-file = {token}")
            append(directory / "node.conf", "http = tcp:0")
            master = local.start_master()
            event = master.wait_for(nswarm_event("listening", server="http server"))
            ports = dict(line.split() for line in (directory / "master.ports").read_text().splitlines())
            assert int(ports["http"]) == event["port"] and event["host"] == "127.0.0.1"
            node = local.start_node("node-1")
            node_event = node.wait_for(nswarm_event("listening", server="http server"))
            assert node_event["host"] == "127.0.0.1"
            local.start_service(GREETER)
            yield Listening(local, f"http://127.0.0.1:{ports['http']}/", f"http://127.0.0.1:{node_event['port']}/")
    finally:
        for process in local.processes:  # pytest shows this output when a test fails
            print(f"{process}, exit status {process.returncode}:\n{process.tail()}\n")
        left = alive_pids(local.pids())
        assert not left, f"processes still running after stop(): {left}"


def bounded(d: Deferred[Any]) -> Deferred[Any]:
    """C{d}, failing with TimeoutError if it has not fired within CALL_TIMEOUT."""
    from twisted.internet import reactor

    return d.addTimeout(CALL_TIMEOUT, reactor)


async def calls(cluster: LocalCluster, greets: int) -> None:
    """As an API user, greet C{greets} times and make one failing call."""
    from twisted.internet import reactor

    client: APIClient = await bounded(cluster.connect_api(reactor))
    try:
        for number in range(greets):
            assert await bounded(client.call("greet", f"visitor {number}")) == f"hello, visitor {number}!"
        with pytest.raises(HandlerFailed):
            await bounded(client.call("fail", "on purpose"))
    finally:
        await client.close()


def fetch(url: str, token: str | None = None) -> tuple[int, bytes]:
    """GET C{url} (with a bearer C{token}), blocking for at most CALL_TIMEOUT: the status code and the body."""
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(request, timeout=CALL_TIMEOUT) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        with error:
            return error.code, error.read()


async def get(url: str, token: str | None = None) -> tuple[int, bytes]:
    """L{fetch} in a thread, so the reactor (the test's API client) goes on meanwhile."""
    result: tuple[int, bytes] = await deferToThread(fetch, url, token)
    return result


def metrics(text: bytes) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    """The samples of a /metrics answer: by sample name, then by sorted labels."""
    found: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(text.decode()):
        for sample in family.samples:
            found.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return found


def promtool_accepts(text: bytes) -> None:
    """Where promtool is installed, it finds nothing wrong with C{text} (a /metrics answer)."""
    promtool = shutil.which("promtool")
    if promtool is None:
        return
    checked = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, timeout=30)
    assert checked.returncode == 0, checked.stdout + checked.stderr


def node_bytes(answer: tuple[int, bytes]) -> dict[tuple[tuple[str, str], ...], float]:
    """The bytes a node's /metrics says it received, by role."""
    return metrics(answer[1])["nswarm_received_bytes_total"]


@pytest_twisted.ensureDeferred
async def test_metrics_and_status_of_the_master_and_the_node(listening: Listening) -> None:
    """After calls, both daemons' /metrics count them, and /status.json shows them; the master's need the token."""
    await calls(listening.cluster, 3)
    assert (await get(listening.master_url + "metrics"))[0] == 401
    assert (await get(listening.master_url + "status.json", "wrong"))[0] == 401

    code, text = await get(listening.master_url + "metrics", TOKEN)
    assert code == 200
    promtool_accepts(text)
    master = metrics(text)
    assert master["nswarm_calls_total"][(("method", "greet"), ("outcome", "ok"))] == 3
    assert master["nswarm_calls_total"][(("method", "fail"), ("outcome", "HANDLER_FAILED"))] == 1
    assert master["nswarm_call_duration_seconds_count"][(("method", "greet"),)] == 3
    assert master["nswarm_connections"][(("role", "node"),)] == 1
    assert master["nswarm_authentication_failures_total"][(("server", "api"),)] == 0
    # The kernel's byte counts of the TCP connections (TLS included): the calls went both ways on each.
    for role in ("node", "api user"):
        assert master["nswarm_received_bytes_total"][(("role", role),)] > 0
        assert master["nswarm_sent_bytes_total"][(("role", role),)] > 0
    assert node_bytes(await get(listening.node_url + "metrics"))[(("role", "master"),)] > 0

    code, body = await get(listening.master_url + "status.json", TOKEN)
    assert code == 200
    status = json.loads(body)
    assert [node["name"] for node in status["nodes"]] == ["node-1"]
    assert {method["name"]: method["calls"] for method in status["methods"]}["greet"] == 3
    assert "http" in status["master"]["listeners"]

    code, text = await get(listening.node_url + "metrics")
    assert code == 200
    promtool_accepts(text)
    node = metrics(text)
    assert node["nswarm_node_services"][()] == 1 and node["nswarm_node_upstream_connected"][()] == 1
    assert node["nswarm_calls_total"][(("method", "greet"), ("outcome", "ok"))] == 3
    code, body = await get(listening.node_url + "status.json")
    [service] = json.loads(body)["services"]
    assert service["calls_handled"] == 4 and service["errors"] == {"HANDLER_FAILED": 1}


@pytest.mark.skipif(CHROMIUM is None, reason="no chromium binary on the PATH: install it (apt-get install chromium)")
@pytest_twisted.ensureDeferred
async def test_the_dashboard_shows_the_node_the_service_and_the_method_in_a_browser(listening: Listening) -> None:
    """Chromium renders the master's dashboard (opened with #token=) and the node's, from their status documents."""
    assert CHROMIUM is not None
    await calls(listening.cluster, 3)
    options = ("--virtual-time-budget=5000", "--dump-dom")
    url = f"{listening.master_url}#token={TOKEN}"
    tables = Tables(await deferToThread(headless, CHROMIUM, url, *options, timeout=BROWSER_TIMEOUT)).rows
    assert tables["nodes"]["node-1"]["Services"] == "Greeter"
    assert tables["services"]["Greeter"]["Node"] == "node-1"
    assert tables["services"]["Greeter"]["Handled"] == "4"
    assert tables["methods"]["greet"]["Calls"] == "3" and tables["methods"]["greet"]["Implementers"] == "node-1"
    assert tables["methods"]["fail"]["Errors"] == "1"

    refused = await deferToThread(headless, CHROMIUM, listening.master_url, *options, timeout=BROWSER_TIMEOUT)
    assert "#token=TOKEN" in refused and "Greeter" not in refused

    node = Tables(await deferToThread(headless, CHROMIUM, listening.node_url, *options, timeout=BROWSER_TIMEOUT))
    assert node.rows["services"]["Greeter"]["Handled"] == "4"
