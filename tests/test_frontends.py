"""
The conformance suite of the SDK front ends: the same cases against the
Twisted client, the asyncio client (on asyncio's loop and on uvloop) and
the blocking client, over real TLS to a real master, whose node serves
the asyncio example service (examples/aio_service.py, an L{nswarm.aio.Service})
over its UNIX socket. A cluster in processes (L{LocalCluster}), stopped
afterwards; every wait is bounded.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from nswarm import aio, sync
from nswarm.errors import (
    AuthenticationFailed,
    DeadlineExceeded,
    HandlerFailed,
    NoSuchMethod,
    PayloadTooLarge,
    UpstreamUnavailable,
)
from nswarm.testing.local import LocalCluster, nswarm_event

from .conftest import GREETER, running_cluster
from .frontends import BOUND, FRONTS, Front, conformance, make_front, uvloop_factory

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
SERVICE = EXAMPLES / "aio_service.py"

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalCluster]:
    """A master, node 'node-1', the asyncio example service and the (Twisted) greeter, for the whole module."""
    directory = Path(tempfile.mkdtemp(prefix="nswarm-fe-"))
    try:
        with running_cluster(directory, BOUND, (SERVICE, GREETER)) as local:
            yield local
    finally:
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture(params=FRONTS)
def front(request: Any, cluster: LocalCluster) -> Iterator[Front]:
    """A client of C{cluster} through each front end in turn."""
    if request.param == "aio-uvloop" and uvloop_factory() is None:
        pytest.skip("uvloop is not installed")
    client = make_front(request.param, cluster.running_client_config())
    try:
        yield client
    finally:
        client.close()


def moved(front: Any, name: str, before: int) -> None:
    """Wait (at most L{BOUND} seconds) for the example service's count C{name} to pass C{before}."""
    front.call_with_timeout(BOUND, "wait_count", name, before)


@conformance
def test_calls_return_results_of_any_size(front: Front) -> None:
    assert front.call("greet", "world") == "hello, world!"
    assert front.call("echo", {"nested": [1, "two", None]}) == {"nested": [1, "two", None]}
    big = "x" * 300_000
    assert front.call("echo", big) == big
    assert front.call_all("echo", 5) == [5]


@conformance
def test_errors_arrive_typed(front: Front) -> None:
    with pytest.raises(NoSuchMethod):
        front.call("nobody.implements.this")
    with pytest.raises(HandlerFailed) as raised:
        front.call("fail", "no luck")
    assert raised.value.remote_type == "ValueError" and raised.value.remote_message == "no luck"
    with pytest.raises(PayloadTooLarge, match="send less"):
        front.call("echo", "x" * (16 * 1024 * 1024 + 1))


@conformance
def test_a_deadline_fails_the_call_and_cancels_its_handler(front: Front) -> None:
    before = front.call("counts")["cancelled"]
    started = time.monotonic()
    with pytest.raises(DeadlineExceeded):
        front.call_with_timeout(0.5, "sleep", 30)
    assert time.monotonic() - started < 5
    moved(front, "cancelled", before)


@conformance
def test_cancelling_a_call_cancels_its_handler(front: Front) -> None:
    before = front.call("counts")["cancelled"]
    assert front.call_then_cancel("sleep", 30, after=0.5) == "cancelled"
    moved(front, "cancelled", before)


@conformance
def test_the_handler_knows_its_caller(front: Front) -> None:
    assert front.call("whoami").startswith("API user ")


@conformance
def test_publish_reaches_the_service_and_the_subscriber(front: Front) -> None:
    before = front.call("counts")["events"]
    events = front.subscribe("orders.*")
    try:
        handed_to = front.publish("orders.created", {"id": 7})
        assert handed_to is not None and handed_to >= 2  # the service's node, and this subscriber
        assert events.next(BOUND) == ("orders.created", {"id": 7})
    finally:
        events.close()
    moved(front, "events", before)


@conformance
def test_the_status_document_names_the_node_and_its_services(front: Front) -> None:
    document = front.status()
    [node] = [node for node in document["nodes"] if node["name"] == "node-1"]
    assert len(node["services"]) == 2  # the asyncio example service and the Twisted greeter
    assert {service["node"] for service in document["services"]} == {"node-1"}
    assert {"greet", "count"} <= {method["name"] for method in document["methods"]}


@conformance
def test_a_stream_delivers_its_parts_in_order(front: Front) -> None:
    """count(100) with a window of 4: the caller grants More about fifty times; a plain call gets the list."""
    assert front.stream("count", 100, window=4) == list(range(100))
    assert front.stream("count", 40) == list(range(40))
    assert front.stream("count", 0, window=1) == []
    assert front.call("count", 5) == [0, 1, 2, 3, 4]


@conformance
def test_a_part_over_the_payload_cap_fails_the_stream_after_the_parts_before_it(front: Front) -> None:
    before = front.call("counts")["streams_closed"]
    got: list[Any] = []
    with pytest.raises(PayloadTooLarge):
        front.stream("sizes", 3, 5, 16 * 1024 * 1024 + 1, 7, into=got)
    assert got == ["xxx", "xxxxx"]
    moved(front, "streams_closed", before)


@conformance
def test_closing_a_stream_early_stops_its_generator_at_the_service(front: Front) -> None:
    before = front.call("counts")["streams_closed"]
    assert front.stream_and_close("ticks", take=5) == [0, 1, 2, 3, 4]
    moved(front, "streams_closed", before)


@conformance
def test_a_deadline_ends_a_stream_that_runs_forever(front: Front) -> None:
    before = front.call("counts")["streams_closed"]
    got: list[Any] = []
    started = time.monotonic()
    with pytest.raises(DeadlineExceeded):
        front.stream("ticks", 0.01, timeout=0.5, into=got)
    assert time.monotonic() - started < 5 and got[:3] == [0, 1, 2]
    moved(front, "streams_closed", before)


def test_a_stream_left_by_break_is_cancelled_without_a_close(cluster: LocalCluster) -> None:
    """A blocking or asyncio stream dropped unfinished (a bare break) is cancelled once it is collected."""
    config = str(cluster.running_client_config())
    with sync.connect_from_config(config) as client:
        before = client.call("counts")["streams_closed"]
        for part in client.stream("ticks"):
            if part == 3:
                break
        moved(client, "streams_closed", before)

        async def main() -> None:
            async with await aio.connect_from_config(config) as inner:
                async for part in inner.stream("ticks"):
                    if part == 3:
                        break
                await asyncio.sleep(0)  # the Cancel goes out on the loop

        before = client.call("counts")["streams_closed"]
        asyncio.run(main())
        moved(client, "streams_closed", before)


def test_a_wrong_key_is_refused(cluster: LocalCluster, tmp_path: Path) -> None:
    """Every front end reads the same client.conf; a wrong key fails AuthenticationFailed."""
    config = cluster.running_client_config()
    bad = tmp_path / "bad.key"
    bad.write_bytes(b"not-the-key")
    bad.chmod(0o600)
    text = config.read_text().replace(_auth_key_file(config), str(bad))
    wrong = tmp_path / "client.conf"
    wrong.write_text(text)
    with pytest.raises(AuthenticationFailed):
        sync.connect_from_config(str(wrong), reconnect=False)
    with pytest.raises(AuthenticationFailed):
        asyncio.run(aio.connect_from_config(str(wrong), reconnect=False))


def _auth_key_file(config: Path) -> str:
    import configparser

    parser = configparser.ConfigParser(interpolation=None)
    parser.read(config)
    return parser["api"]["auth-key-file"]


def test_the_masters_certificate_must_be_signed_by_the_cluster_ca(cluster: LocalCluster, tmp_path: Path) -> None:
    """Another cluster's CA does not vouch for this master: the asyncio client refuses it, as Twisted does."""
    from nswarm.config import read_client_config, read_secret_file

    other = LocalCluster(tmp_path / "other", timeout=BOUND)
    other.init()
    settings = read_client_config(str(cluster.client_config), "api")
    with pytest.raises(UpstreamUnavailable, match="not signed by the cluster CA"):
        asyncio.run(
            aio.connect(
                "localhost",
                cluster.api_port,
                key=read_secret_file(settings["auth-key-file"]),
                ca=str(other.directory / "ca.pem"),
                cert=settings.get("cert"),
                cert_key=settings.get("cert-key"),
                reconnect=False,
            )
        )


def test_several_masters_are_tried_in_turn(cluster: LocalCluster) -> None:
    """The first address has nothing listening: the client goes on to the next, as the Twisted one does."""
    import socket

    from nswarm.client_config import api_settings

    with socket.socket() as probe:  # a port nothing listens on once it is closed
        probe.bind(("127.0.0.1", 0))
        dead = probe.getsockname()[1]
    settings = api_settings(str(cluster.client_config))
    settings["hosts"] = [("localhost", dead), ("localhost", cluster.api_port)]

    async def main() -> Any:
        async with await aio.connect(**settings) as client:
            return await client.call("greet", "second")

    assert asyncio.run(main()) == "hello, second!"
    settings["hosts"] = [("localhost", dead)]
    with pytest.raises(UpstreamUnavailable, match="nothing listens"):
        sync.connect(**settings)


def test_the_blocking_client_serves_many_threads_at_once(cluster: LocalCluster) -> None:
    with sync.connect_from_config(str(cluster.running_client_config())) as client:
        results: dict[int, list[Any]] = {}

        def work(number: int) -> None:
            results[number] = [client.call("echo", [number, index]) for index in range(25)]

        threads = [threading.Thread(target=work, args=(number,)) for number in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(BOUND)
        assert results == {number: [[number, index] for index in range(25)] for number in range(8)}


def test_a_blocking_call_from_its_own_loop_raises_instead_of_deadlocking(cluster: LocalCluster) -> None:
    with sync.connect_from_config(str(cluster.running_client_config())) as client:

        async def inside() -> str:
            try:
                client.call("greet", "me")
            except RuntimeError as error:
                return str(error)
            return "no error"

        loop = client._loop.loop
        assert "its own event loop" in asyncio.run_coroutine_threadsafe(inside(), loop).result(BOUND)
    assert not client._loop.thread.is_alive()


@conformance
def test_a_twisted_an_asyncio_and_a_blocking_client_call_one_service_and_get_one_event(cluster: LocalCluster) -> None:
    config = cluster.running_client_config()
    fronts = {name: make_front(name, config) for name in ("twisted", "aio", "sync")}
    try:
        events = {name: front.subscribe("audit.*") for name, front in fronts.items()}
        handed_to = fronts["sync"].publish("audit.seen", {"n": 1})
        assert handed_to is not None and handed_to >= 3  # the three clients (and any node subscribed)
        for name, subscription in events.items():
            assert subscription.next(BOUND) == ("audit.seen", {"n": 1}), name
            subscription.close()
        assert {name: front.call("greet", name) for name, front in fronts.items()} == {
            name: f"hello, {name}!" for name in fronts
        }
    finally:
        for front in fronts.values():
            front.close()


def test_an_asyncio_program_runs_with_no_reactor(cluster: LocalCluster) -> None:
    """asyncio.run, the client as a context manager, and a subscription closed by its async with."""
    config = str(cluster.running_client_config())

    async def main() -> Any:
        async with await aio.connect_from_config(config) as client:
            async with client.subscribe("orders.>") as events:
                await client.publish("orders.paid.eu", 1)
                async for event in events:
                    assert (event.event, event.payload) == ("orders.paid.eu", 1)
                    break
            assert client.subscriptions == {}
            return await client.call("greet", "asyncio")

    assert asyncio.run(main()) == "hello, asyncio!"


@pytest.mark.parametrize("name", ["aio", "sync"])
def test_a_client_outlives_a_master_restart(name: str) -> None:
    """SIGKILL the master, start it again on its ports: the client calls and gets events again."""
    directory = Path(tempfile.mkdtemp(prefix="nswarm-re-"))
    try:
        with running_cluster(directory, BOUND, (SERVICE,)) as local:
            client = make_front(name, local.running_client_config(), idempotent=["echo"])
            try:
                events = client.subscribe("orders.*")
                assert client.call("greet", "before") == "hello, before!"
                assert local.master is not None
                local.kill(local.master)
                local.start_master(node_port=local.node_port, api_port=local.api_port)
                assert client.call_with_timeout(BOUND, "echo", "after") == "after"
                local.master.wait_for(nswarm_event("registration", role="node", action="subscribes to"))
                handed_to = client.publish("orders.created", {"id": 1})
                assert handed_to is not None and handed_to >= 2  # the node's subscription and this client's
                assert events.next(BOUND)[0] == "orders.created"
            finally:
                client.close()
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def test_the_blocking_example_script_runs(cluster: LocalCluster) -> None:
    """examples/sync_client.py against the asyncio service and the Twisted greeter: one script, no reactor."""
    script = EXAMPLES / "sync_client.py"
    result = subprocess.run(
        [sys.executable, str(script), str(cluster.running_client_config())],
        capture_output=True,
        text=True,
        timeout=BOUND * 3,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "hello, world!" in result.stdout and "[0, 2, 4, 6, 8, 10, 12, 14]" in result.stdout
    assert "no such method" in result.stdout and "deadline" in result.stdout
    assert "got EventReceived(event='orders.created', payload={'id': 7})" in result.stdout


def test_the_asyncio_client_resends_idempotent_calls_lost_with_the_master_and_fails_the_others() -> None:
    """A call in flight when the master dies: sent again if its method is idempotent, else UpstreamUnavailable."""
    directory = Path(tempfile.mkdtemp(prefix="nswarm-id-"))
    try:
        with running_cluster(directory, BOUND, (SERVICE,)) as local:
            config = str(local.running_client_config())

            async def scenario() -> tuple[Any, Any, Any]:
                loop = asyncio.get_running_loop()
                client = await aio.connect_from_config(config, idempotent=["slow_echo"])
                once = await aio.connect_from_config(config, reconnect=False)
                try:
                    kept = asyncio.ensure_future(client.call("slow_echo", "kept", 1.0))
                    lost = asyncio.ensure_future(client.call("sleep", 1.0))
                    await once.call("wait_count", "busy", 1)  # both are running in the service now
                    assert local.master is not None
                    await loop.run_in_executor(None, local.kill, local.master)
                    failed: Any = await asyncio.gather(lost, return_exceptions=True)
                    try:
                        await once.call("greet", "again")
                    except UpstreamUnavailable as error:
                        refused: Any = error
                    else:
                        refused = None
                    await loop.run_in_executor(
                        None, lambda: local.start_master(node_port=local.node_port, api_port=local.api_port)
                    )
                    return await kept, failed[0], refused
                finally:
                    await client.close()
                    await once.close()

            kept, lost, refused = asyncio.run(asyncio.wait_for(scenario(), BOUND * 3))
            assert isinstance(lost, UpstreamUnavailable)
            assert isinstance(refused, UpstreamUnavailable) and "reconnect=False" in str(refused)
            assert kept == "kept"
    finally:
        shutil.rmtree(directory, ignore_errors=True)
