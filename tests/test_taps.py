"""Tier 1: twistd plugin discovery, option parsing and makeService with a memory reactor."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from twisted.application.service import IServiceMaker
from twisted.internet.testing import MemoryReactorClock
from twisted.plugin import getPlugins
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python import usage

from nswarm import defaults
from nswarm.cluster_files import init_cluster
from nswarm.master import tap as master_tap
from nswarm.master.master import ApiServerProtocol, NodeServerProtocol
from nswarm.node import tap as node_tap
from nswarm.node.node import ServiceServerProtocol
from nswarm.node.upstream import UpstreamProtocol
from nswarm.relay.listener import Admission


@pytest.fixture(scope="module")
def cluster_dir(tmp_path_factory: Any) -> Path:
    directory = tmp_path_factory.mktemp("cluster")
    init_cluster(directory)
    return Path(directory)


@pytest.fixture(autouse=True)
def no_user_config(tmp_path: Path, monkeypatch: Any) -> None:
    """Keep the developer's own ~/.nswarm-*.conf out of these tests."""
    monkeypatch.setenv("HOME", str(tmp_path))


def test_twistd_discovers_both_plugins() -> None:
    names = {plugin.tapname for plugin in getPlugins(IServiceMaker)}
    assert {"nswarm-master", "nswarm-node"} <= names


@pytest.mark.parametrize(
    "plugin, option", [("nswarm-master", "--node-auth-key-file"), ("nswarm-node", "--upstream-host")]
)
def test_twistd_plugin_help_documents_the_options(plugin: str, option: str) -> None:
    twistd = Path(sys.executable).parent / "twistd"
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).parent.parent))
    done = subprocess.run([str(twistd), plugin, "--help"], capture_output=True, text=True, timeout=60, env=env)
    assert done.returncode == 0, done.stderr
    assert option in done.stdout and "--config" in done.stdout


def parse(options: usage.Options, *argv: str) -> usage.Options:
    options.parseOptions(list(argv))
    return options


def test_master_options_come_from_the_config_file(cluster_dir: Path) -> None:
    options = parse(master_tap.Options(), "--config", str(cluster_dir / "master.conf"))
    assert options["node-port"] == 6666 and options["api-port"] == 6667
    assert options["ca"] == str(cluster_dir / "ca.pem")
    assert options.node_auth_key == (cluster_dir / "node-auth.key").read_bytes().strip()


def test_command_line_overrides_config_file(cluster_dir: Path) -> None:
    options = parse(master_tap.Options(), "--node-port", "7001", f"--config={cluster_dir / 'master.conf'}")
    assert options["node-port"] == 7001
    assert isinstance(options["api-port"], int)


def test_user_config_file_gives_defaults_and_config_file_overrides_it(cluster_dir: Path, tmp_path: Path) -> None:
    (tmp_path / ".nswarm-master.conf").write_text("[master]\napi-port = 7100\nnode-port = 7101\n")
    explicit = tmp_path / "explicit.conf"
    explicit.write_text((cluster_dir / "master.conf").read_text().replace("node-port = 6666", "node-port = 7200"))
    explicit.write_text(explicit.read_text().replace("api-port = 6667\n", ""))
    options = parse(master_tap.Options(), "--config", str(explicit))
    assert options["api-port"] == 7100
    assert options["node-port"] == 7200


@pytest.mark.parametrize(
    "content, message",
    [
        ("[master]\nnode-prot = 1\n", "unknown option 'node-prot'"),
        ("[master]\nnode-port = many\n", "bad value for node-port"),
        ("[master]\nnode-port = 70000\n", "bad value for node-port"),
        ("[node]\nname = x\n", "has no [master] section"),
    ],
)
def test_bad_config_files_are_usage_errors(tmp_path: Path, content: str, message: str) -> None:
    config = tmp_path / "bad.conf"
    config.write_text(content)
    with pytest.raises(usage.UsageError, match=message.replace("[", r"\[").replace("]", r"\]")):
        parse(master_tap.Options(), "--config", str(config))


def test_missing_config_file_is_a_usage_error(tmp_path: Path) -> None:
    with pytest.raises(usage.UsageError, match="does not exist"):
        parse(master_tap.Options(), "--config", str(tmp_path / "absent.conf"))


def test_required_certificates_and_keys(cluster_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(usage.UsageError, match="--ca is required"):
        parse(master_tap.Options())
    config = str(cluster_dir / "master.conf")
    with pytest.raises(usage.UsageError, match="either --node-auth-key or --node-auth-key-file"):
        parse(master_tap.Options(), "--config", config, "--node-auth-key", "k")
    empty = tmp_path / "empty.key"
    empty.write_text("\n")
    with pytest.raises(usage.UsageError, match="is empty"):
        parse(master_tap.Options(), "--config", config, "--api-auth-key-file", str(empty))
    with pytest.raises(usage.UsageError, match="cannot read key file"):
        parse(master_tap.Options(), "--config", config, "--api-auth-key-file", str(tmp_path / "absent"))
    with pytest.raises(usage.UsageError, match="not a port number"):
        parse(master_tap.Options(), "--config", config, "--api-port", "-1")


def test_master_makes_a_node_server_and_an_api_server(cluster_dir: Path, tmp_path: Path) -> None:
    ports_file = tmp_path / "ports"
    options = parse(
        master_tap.Options(),
        "--config",
        str(cluster_dir / "master.conf"),
        "--interface",
        "127.0.0.1",
        "--ports-file",
        str(ports_file),
    )
    reactor = MemoryReactorClock()
    service = master_tap.makeService(options, reactor=reactor)
    service.privilegedStartService()
    service.startService()
    assert not reactor.sslServers  # TLS is under the listener's Admission, which refuses throttled sources
    listening = {(port, interface): factory.relay for port, factory, _, interface in reactor.tcpServers}
    assert set(listening) == {(6666, "127.0.0.1"), (6667, "127.0.0.1")}
    for _, factory, backlog, _ in reactor.tcpServers:
        assert backlog == defaults.LISTEN_BACKLOG  # a thousand nodes reconnecting at once are all queued
        assert isinstance(factory, Admission) and isinstance(factory.wrappedFactory, TLSMemoryBIOFactory)
        assert factory.wrappedFactory.wrappedFactory is factory.relay
    assert listening[(6666, "127.0.0.1")].relay_protocol is NodeServerProtocol
    assert listening[(6667, "127.0.0.1")].relay_protocol is ApiServerProtocol
    assert listening[(6666, "127.0.0.1")].router is listening[(6667, "127.0.0.1")].router
    assert ports_file.read_text() == "node 6666\napi 6667\n"
    service.stopService()


def test_node_makes_an_upstream_client_and_a_private_service_socket(cluster_dir: Path, tmp_path: Path) -> None:
    socket_path = tmp_path / "private" / "node.sock"
    options = parse(
        node_tap.Options(),
        "--config",
        str(cluster_dir / "node.conf"),
        "--service-socket",
        str(socket_path),
        "--upstream-port",
        "7000",
        "--subscriber-buffer",
        "4096",
    )
    assert options["service-socket-mode"] == 0o600
    reactor = MemoryReactorClock()
    service = node_tap.makeService(options, reactor=reactor)
    service.privilegedStartService()
    service.startService()
    [(host, port, factory, _, _, _)] = reactor.sslClients
    assert (host, port) == ("localhost", 7000)
    # Through the endpoint's and ClientService's wrappers, the upstream is an UpstreamProtocol.
    wrapped = factory.buildProtocol(None)._wrappedProtocol
    assert isinstance(getattr(wrapped, "_protocol", wrapped), UpstreamProtocol)
    [(address, server_factory, _, mode, want_pid)] = reactor.unixServers
    assert address == str(socket_path) and mode == 0o600 and want_pid
    assert isinstance(server_factory, Admission) and server_factory.wrappedFactory is server_factory.relay
    assert server_factory.relay.relay_protocol is ServiceServerProtocol
    assert server_factory.relay.subscriber_buffer == 4096
    assert (socket_path.parent.stat().st_mode & 0o777) == 0o700
    service.stopService()


def test_node_socket_mode_is_octal(cluster_dir: Path) -> None:
    options = parse(node_tap.Options(), "--config", str(cluster_dir / "node.conf"), "--service-socket-mode", "660")
    assert options["service-socket-mode"] == 0o660
    with pytest.raises(usage.UsageError):
        parse(node_tap.Options(), "--config", str(cluster_dir / "node.conf"), "--service-socket-mode", "999")


@pytest.mark.parametrize("spelling", [["-c{}"], ["--conf={}"], ["--conf", "{}"]])
def test_config_file_is_found_however_the_option_is_spelt(cluster_dir: Path, spelling: list[str]) -> None:
    argv = [part.format(cluster_dir / "master.conf") for part in spelling]
    assert parse(master_tap.Options(), *argv)["ca"] == str(cluster_dir / "ca.pem")


def test_defaults_arrive_coerced_like_command_line_values(tmp_path: Path) -> None:
    options = node_tap.Options()
    assert options["service-socket"] == str(tmp_path / ".nswarm" / "node.sock")
    assert options["service-socket-mode"] == 0o600 and options["upstream-port"] == 6666
    assert "[default: 600]" in str(options)


def test_payload_and_subscriber_limits_reach_the_listeners(cluster_dir: Path) -> None:
    options = parse(
        master_tap.Options(),
        "--config",
        str(cluster_dir / "master.conf"),
        "--max-payload",
        "1048576",
        "--subscriber-buffer",
        "65536",
    )
    reactor = MemoryReactorClock()
    service = master_tap.makeService(options, reactor=reactor)
    service.privilegedStartService()
    service.startService()
    factories = [factory.relay for _, factory, _, _ in reactor.tcpServers]
    assert len(factories) == 2 and {(f.max_payload, f.subscriber_buffer) for f in factories} == {(1048576, 65536)}
    service.stopService()


def test_the_master_has_a_startup_window_and_drains_when_stopped(cluster_dir: Path) -> None:
    options = parse(master_tap.Options(), "--config", str(cluster_dir / "master.conf"), "--drain-timeout", "7")
    reactor = MemoryReactorClock()
    service = master_tap.makeService(options, reactor=reactor)
    assert isinstance(service, master_tap.MasterService) and service.drain_timeout == 7.0
    master = service.master
    assert master.opens_at - master.started == defaults.STARTUP_WINDOW
    service.privilegedStartService()
    service.startService()
    stopped = service.stopService()  # nothing in flight: the drain is over after its quiet period
    assert master.drain.active and not stopped.called
    reactor.advance(defaults.DRAIN_QUIET)
    assert stopped.called
