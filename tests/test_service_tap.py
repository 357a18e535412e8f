"""
twistd nswarm-service (L{nswarm.service_tap}). Tier 1: the plugin, its
options, the import of the service class, and the service it makes, on a
L{MemoryReactorClock} connected to an in-memory cluster. Tier 3: a real
cluster, with the service daemonized by twistd, called through the master,
then drained by SIGTERM.
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.application.service import IServiceMaker
from twisted.internet.defer import Deferred
from twisted.internet.testing import MemoryReactorClock
from twisted.internet.threads import deferToThread
from twisted.plugin import getPlugins
from twisted.python import usage

from nswarm import defaults, service_tap
from nswarm.cluster_files import init_cluster
from nswarm.node.node import ServiceServerProtocol
from nswarm.service import Service, implement
from nswarm.testing.local import LocalCluster, nswarm_event
from nswarm.testing.memory import SERVICE_KEY, MemoryCluster
from nswarm.testing.process import child_environment

from .conftest import running_cluster

ROOT = Path(__file__).resolve().parent.parent
#: The service class of these tests, as the command line names it.
HOLDING = "tests.test_service_tap:Holding"
#: Bound, in seconds, on each process start, wait and call of the tier-3 test.
BOUND = 20.0


class Holding(Service):
    """A service that holds each call to hold() until the test answers it; holding() counts them."""

    def __init__(self) -> None:
        super().__init__()
        self.held: list[Deferred[str]] = []

    @implement
    def greet(self, name: str) -> str:
        return f"hello, {name}!"

    @implement
    def hold(self) -> Deferred[str]:
        d: Deferred[str] = Deferred()
        self.held.append(d)
        return d

    @implement
    def holding(self) -> int:
        return len(self.held)


class Draining(Holding):
    """A L{Holding} that answers the calls it holds once it is told to stop: they finish while it drains."""

    def stop(self, drain_timeout: float = defaults.DRAIN_TIMEOUT) -> Deferred[None]:
        stopping = super().stop(drain_timeout)  # withdraws first, then waits for these calls
        for d in self.held:
            if not d.called:
                d.callback("answered while draining")
        return stopping


def not_a_service() -> None:
    """A function, which a test names instead of a class."""


@pytest.fixture(autouse=True)
def no_user_config(tmp_path: Path, monkeypatch: Any) -> None:
    """Keep the developer's own ~/.nswarm-*.conf out of these tests."""
    monkeypatch.setenv("HOME", str(tmp_path))


@pytest.fixture(scope="module")
def cluster_dir(tmp_path_factory: Any) -> Path:
    directory = tmp_path_factory.mktemp("cluster")
    init_cluster(directory)
    return Path(directory)


def parse(*argv: str) -> service_tap.Options:
    options = service_tap.Options()
    options.parseOptions(list(argv))
    return options


# -- tier 1: the plugin and its options ---------------------------------------


def test_twistd_discovers_the_service_plugin() -> None:
    plugins = {plugin.tapname: plugin for plugin in getPlugins(IServiceMaker)}
    assert plugins["nswarm-service"].options is service_tap.Options


def test_twistd_service_help_documents_the_options() -> None:
    twistd = Path(sys.executable).parent / "twistd"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    done = subprocess.run(
        [str(twistd), "nswarm-service", "--help"], capture_output=True, text=True, timeout=60, env=env
    )
    assert done.returncode == 0, done.stderr
    assert "package.module:ClassName" in done.stdout
    for option in ("--config", "--socket", "--auth-key-file", "--drain-timeout"):
        assert option in done.stdout
    assert "--json-log" not in done.stdout  # logging is twistd's


def test_the_options_come_from_the_client_config_as_for_service_main(cluster_dir: Path) -> None:
    options = parse("--config", str(cluster_dir / "client.conf"), HOLDING)
    assert options.socket == str(cluster_dir / "node.sock")
    assert options.key == (cluster_dir / "service-auth.key").read_bytes().strip()
    assert options["drain-timeout"] == defaults.DRAIN_TIMEOUT
    assert options.service_class is Holding


def test_the_command_line_overrides_the_client_config(cluster_dir: Path, tmp_path: Path) -> None:
    socket = tmp_path / "other.sock"
    config = str(cluster_dir / "client.conf")
    options = parse("--config", config, "--socket", str(socket), "--drain-timeout", "2.5", HOLDING)
    assert options.socket == str(socket) and options["drain-timeout"] == 2.5


@pytest.mark.parametrize(
    "argv, message",
    [
        ([HOLDING], "give --config DIR/client.conf, or --socket and --auth-key-file"),
        (["--config", "{dir}/absent.conf", HOLDING], "client config .*absent.conf does not exist"),
        (["--config", "{dir}/client.conf"], "give the service class, and only it, .*given: none"),
        (["--config", "{dir}/client.conf", HOLDING, HOLDING], "give the service class, and only it"),
        (["--config", "{dir}/client.conf", "--json-log", HOLDING], "json-log"),
        (["--config", "{dir}/client.conf", "--drain-timeout", "soon", HOLDING], "could not convert .*soon"),
    ],
)
def test_bad_command_lines_are_usage_errors(cluster_dir: Path, argv: list[str], message: str) -> None:
    with pytest.raises(usage.UsageError, match=message):
        parse(*[part.format(dir=cluster_dir) for part in argv])


def test_a_key_file_that_others_may_read_is_a_usage_error(cluster_dir: Path, tmp_path: Path) -> None:
    key = tmp_path / "open.key"
    key.write_bytes(SERVICE_KEY)
    key.chmod(0o644)
    with pytest.raises(usage.UsageError, match="chmod 600"):
        parse("--socket", str(tmp_path / "node.sock"), "--auth-key-file", str(key), HOLDING)


# -- tier 1: importing the service class ---------------------------------------


@pytest.mark.parametrize(
    "target, message",
    [
        ("greeter", "'greeter' does not name a service class: give it as package.module:ClassName"),
        (":Greeter", "does not name a service class"),
        ("greeter:", "does not name a service class"),
        (".greeter:Greeter", "does not name a service class"),
        ("greeter:Greeter:x", "does not name a service class"),
        ("nswarm_no_such_module:Greeter", "there is no module 'nswarm_no_such_module' on the Python path: install"),
        ("tests.no_such_module:Greeter", "there is no module 'tests.no_such_module' on the Python path"),
        ("tests.test_service_tap:Missing", r"has no 'Missing' \(its Service subclasses are Draining, Holding\)"),
        ("os:no_such_class", r"has no 'no_such_class' \(it has no Service subclass\): check the class name"),
        ("os:path", "is a module, not a subclass of nswarm.service.Service: name the class of your service"),
        ("tests.test_service_tap:not_a_service", "is a function, not a subclass of nswarm.service.Service"),
        ("tests.test_service_tap:BOUND", "is a float, not a subclass of nswarm.service.Service"),
        ("nswarm.service:Service", "is the base class nswarm.service.Service, which implements nothing"),
    ],
)
def test_a_class_that_cannot_be_imported_is_a_usage_error(target: str, message: str) -> None:
    with pytest.raises(usage.UsageError, match=message):
        service_tap.service_class(target)


@pytest.mark.parametrize(
    "source, message",
    [
        (
            "import nswarm_no_such_dependency\n",
            "it needs the module 'nswarm_no_such_dependency', which is not installed",
        ),
        ("raise RuntimeError('no database')\n", "raised RuntimeError: no database; fix the module"),
        ("def broken(:\n", "raised SyntaxError"),
    ],
)
def test_a_module_that_fails_to_import_is_a_usage_error(
    tmp_path: Path, monkeypatch: Any, source: str, message: str
) -> None:
    name = f"nswarm_test_{uuid.uuid4().hex}"
    (tmp_path / f"{name}.py").write_text(source)
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(usage.UsageError, match=f"importing {name} .*{message}"):
        service_tap.service_class(f"{name}:Anything")


# -- tier 1: the service it makes -----------------------------------------------


def key_file(tmp_path: Path) -> Path:
    """The in-memory cluster's service key, in an owner-only file."""
    key = tmp_path / "service.key"
    key.write_bytes(SERVICE_KEY)
    key.chmod(0o600)
    return key


def daemon(tmp_path: Path, *argv: str) -> tuple[service_tap.ServiceDaemon, MemoryReactorClock]:
    """makeService for a L{Holding} with the in-memory cluster's key, started on a memory reactor."""
    options = parse("--socket", str(tmp_path / "node.sock"), "--auth-key-file", str(key_file(tmp_path)), *argv)
    reactor = MemoryReactorClock()
    made = service_tap.makeService(options, reactor=reactor)
    made.startService()
    return made, reactor


def connect(made: service_tap.ServiceDaemon, reactor: MemoryReactorClock, cluster: MemoryCluster) -> Holding:
    """Connect the service's pending connection attempt to a node of C{cluster}; return it once registered."""
    [(_, factory, _, _)] = reactor.unixClients
    node = cluster.add_node("node-1")
    cluster.connect(ServiceServerProtocol(node, cluster.clock, SERVICE_KEY), factory.buildProtocol(None))
    app = made.app
    assert isinstance(app, Holding)
    cluster.result(app.ready())
    return app


def test_make_service_connects_an_instance_of_the_class_to_the_socket(tmp_path: Path) -> None:
    made, reactor = daemon(tmp_path, HOLDING)
    assert isinstance(made.app, Holding) and made.name == "Holding"
    [(address, _, _, _)] = reactor.unixClients
    assert address == str(tmp_path / "node.sock")
    runner = made.app.runner
    assert runner is not None and runner.client_service is not None and runner.client_service.running
    stopped = made.stopService()
    assert stopped.called and not runner.client_service.running  # not connected: it stops at once


def test_stop_service_withdraws_then_waits_for_the_running_calls(tmp_path: Path) -> None:
    cluster = MemoryCluster()
    made, reactor = daemon(tmp_path, HOLDING)
    app = connect(made, reactor, cluster)
    api = cluster.add_api()
    assert cluster.result(api.call("greet", "you")) == "hello, you!"
    api.call("hold").addErrback(lambda _: None)
    cluster.flush()
    assert len(app.held) == 1
    stopping = made.stopService()
    cluster.flush()
    assert "hold" not in cluster.master.registry.methods() and not stopping.called
    assert app.connection is not None and not made.running
    app.held[0].callback("finished")
    cluster.flush()
    assert stopping.called and app.connection is None


def test_a_call_that_finishes_during_the_drain_is_answered_before_the_disconnect(tmp_path: Path) -> None:
    cluster = MemoryCluster()
    made, reactor = daemon(tmp_path, HOLDING)
    app = connect(made, reactor, cluster)
    api = cluster.add_api()
    running = api.call("hold")
    cluster.flush()
    stopping = made.stopService()
    cluster.flush()
    app.held[0].callback("finished")
    cluster.flush()
    assert stopping.called
    assert cluster.result(running) == "finished"


def test_stop_service_gives_up_waiting_after_the_drain_timeout(tmp_path: Path) -> None:
    cluster = MemoryCluster()
    made, reactor = daemon(tmp_path, "--drain-timeout", "2", HOLDING)
    app = connect(made, reactor, cluster)
    api = cluster.add_api()
    api.call("hold").addErrback(lambda _: None)
    cluster.flush()
    stopping = made.stopService()
    reactor.advance(1.9)
    cluster.flush()
    assert not stopping.called
    reactor.advance(0.2)
    cluster.flush()
    assert stopping.called and app.connection is None


# -- tier 3: a daemonized service in a real cluster --------------------------------


def exited(pidfd: int, timeout: float) -> bool:
    """Whether the process of C{pidfd} has exited, waiting for it at most C{timeout} seconds."""
    readable, _, _ = select.select([pidfd], [], [], timeout)
    return bool(readable)


@dataclass(frozen=True)
class Daemon:
    """A process that twistd daemonized: its pid, a pidfd to wait for its exit on, its pidfile and logfile."""

    pid: int
    pidfd: int
    pidfile: Path
    logfile: Path


@pytest.fixture
def cluster(directory: Path) -> Iterator[LocalCluster]:
    """A master and node 'node-1', stopped afterwards."""
    with running_cluster(directory, BOUND) as local:
        yield local


@pytest.fixture
def service_daemon(cluster: LocalCluster) -> Iterator[Daemon]:
    """
    C{Draining} started with C{twistd --pidfile P --logfile L nswarm-service}
    (in the background) on node-1; yields it once the master routes its
    methods. Killed afterwards if it is still running.
    """
    directory = cluster.directory
    pidfile, logfile = directory / "draining.pid", directory / "draining.log"
    environment = child_environment()
    environment["PYTHONPATH"] = os.pathsep.join([str(ROOT), environment["PYTHONPATH"]])  # for tests.*
    assert cluster.master is not None
    mark = cluster.master.mark()
    command = [cluster.twistd, "--pidfile", str(pidfile), "--logfile", str(logfile), "nswarm-service"]
    command += ["--config", str(cluster.client_config), "--socket", str(cluster.nodes["node-1"].files["socket"])]
    command += ["--drain-timeout", str(BOUND), "tests.test_service_tap:Draining"]
    done = subprocess.run(command, cwd=directory, env=environment, capture_output=True, text=True, timeout=BOUND)
    assert done.returncode == 0, f"{done.stdout}{done.stderr}"
    pid = int(pidfile.read_text())
    pidfd = os.pidfd_open(pid)
    try:
        cluster.master.wait_for(nswarm_event("registration", role="node", action="implements"), after=mark)
        yield Daemon(pid, pidfd, pidfile, logfile)
    finally:
        if not exited(pidfd, 0):
            os.kill(pid, signal.SIGKILL)
            assert exited(pidfd, BOUND), f"the service daemon (pid {pid}) survived SIGKILL"
        os.close(pidfd)
        if logfile.exists():
            print(f"--- {logfile} ---\n{logfile.read_text()}")


@pytest.mark.skipif(not hasattr(os, "pidfd_open"), reason="waits for the daemon's exit with os.pidfd_open (Linux)")
@pytest_twisted.ensureDeferred
async def test_a_daemonized_service_answers_then_drains_on_sigterm_and_removes_its_pidfile(
    cluster: LocalCluster, service_daemon: Daemon
) -> None:
    """
    A service that twistd daemonized answers a call through the master; on
    SIGTERM it withdraws, the call it is running still gets its answer, and
    the process exits and removes its pidfile.
    """
    from twisted.internet import reactor

    pid = service_daemon.pid
    node = cluster.nodes["node-1"]
    client = await cluster.connect_api(reactor).addTimeout(BOUND, reactor)
    try:
        assert await client.call("greet", "daemon").addTimeout(BOUND, reactor) == "hello, daemon!"
        running = client.call("hold").addTimeout(BOUND, reactor)
        # The same connections carry both calls in order: hold is running once holding answers.
        assert await client.call("holding").addTimeout(BOUND, reactor) == 1
        mark = node.mark()
        os.kill(pid, signal.SIGTERM)
        assert await running == "answered while draining"
        await node.when(reactor, nswarm_event("registration", role="service", action="withdraws"), after=mark)
        await node.when(reactor, nswarm_event("disconnected", role="service"), after=mark)
    finally:
        await client.close()
    assert await deferToThread(exited, service_daemon.pidfd, BOUND), f"the service daemon (pid {pid}) did not exit"
    assert not service_daemon.pidfile.exists()
    assert service_daemon.logfile.stat().st_size > 0
