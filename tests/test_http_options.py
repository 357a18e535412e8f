"""
Tier 1: the options of the daemons' HTTP listener (C{--http},
C{--http-token-file}, and their keys in the conf files) and the listeners
the taps make of them, on a memory reactor.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import globalLogPublisher
from twisted.python import usage

from nswarm.cluster_files import init_cluster
from nswarm.config import http_endpoint
from nswarm.master import tap as master_tap
from nswarm.node import tap as node_tap
from nswarm.web.site import HTTPSite, has_port

TOKEN = b"s3cret-token-0123456789"


@pytest.mark.parametrize(
    "given, endpoint",
    [
        ("tcp:9100", "tcp:9100:interface=127.0.0.1"),
        ("9100", "tcp:9100:interface=127.0.0.1"),
        ("tcp:0", "tcp:0:interface=127.0.0.1"),
        ("tcp:9100:interface=0.0.0.0", "tcp:9100:interface=0.0.0.0"),
        ("tcp:port=9100", "tcp:port=9100:interface=127.0.0.1"),
        ("tcp:9100:0.0.0.0", "tcp:9100:0.0.0.0"),  # the interface given as tcp's second argument
        ("tcp6:9100", "tcp6:9100:interface=\\:\\:1"),
        ("unix:/run/nswarm/http.sock", "unix:/run/nswarm/http.sock"),
    ],
)
def test_an_http_endpoint_without_an_interface_is_bound_to_loopback(given: str, endpoint: str) -> None:
    assert http_endpoint(given) == endpoint


@pytest.mark.parametrize("given", ["tcp:http", "nosuch:1", "tcp:1:2:3:4:5"])
def test_a_bad_http_endpoint_is_refused(given: str) -> None:
    with pytest.raises(ValueError, match="is not a server endpoint string such as tcp:9100"):
        http_endpoint(given)


@pytest.fixture(scope="module")
def cluster_dir(tmp_path_factory: Any) -> Path:
    """A cluster's configuration, as nswarm init writes it."""
    directory = Path(tmp_path_factory.mktemp("cluster"))
    init_cluster(directory)
    return directory


@pytest.fixture(autouse=True)
def no_user_config(tmp_path: Path, monkeypatch: Any) -> None:
    """Keep the developer's own ~/.nswarm-*.conf out of these tests."""
    monkeypatch.setenv("HOME", str(tmp_path))


def token_file(directory: Path, mode: int = 0o600) -> Path:
    """A token file holding TOKEN (and a newline), with C{mode}."""
    path = directory / "http.token"
    path.write_bytes(TOKEN + b"\n")
    path.chmod(mode)
    return path


def test_http_options_come_from_the_config_file_and_the_token_is_checked(cluster_dir: Path, tmp_path: Path) -> None:
    config = tmp_path / "master.conf"
    token = token_file(tmp_path)
    config.write_text((cluster_dir / "master.conf").read_text() + f"http = 9100\nhttp-token-file = {token}\n")
    options = master_tap.Options()
    options.parseOptions(["--config", str(config)])
    assert options["http"] == "tcp:9100:interface=127.0.0.1" and options.http_token == TOKEN
    token.chmod(0o644)
    with pytest.raises(usage.UsageError, match="readable by other users"):
        master_tap.Options().parseOptions(["--config", str(config)])
    without = master_tap.Options()
    with pytest.raises(usage.UsageError, match="without --http"):
        without.parseOptions(["--config", str(cluster_dir / "master.conf"), "--http-token-file", str(token)])
    plain = master_tap.Options()
    plain.parseOptions(["--config", str(cluster_dir / "master.conf")])
    assert plain["http"] is None and plain.http_token is None
    with pytest.raises(usage.UsageError, match="not a server endpoint string"):
        master_tap.Options().parseOptions(["--config", str(cluster_dir / "master.conf"), "--http", "tcp:web"])


def test_the_master_listens_for_http_on_loopback_and_writes_its_port(cluster_dir: Path, tmp_path: Path) -> None:
    ports_file = tmp_path / "ports"
    options = master_tap.Options()
    options.parseOptions(["--config", str(cluster_dir / "master.conf"), "--http", "tcp:9100"])
    options["ports-file"] = str(ports_file)
    reactor = MemoryReactorClock()
    service = master_tap.makeService(options, reactor=reactor)
    service.privilegedStartService()
    service.startService()
    [(port, site, _, interface)] = [server for server in reactor.tcpServers if isinstance(server[1], HTTPSite)]
    assert (port, interface) == (9100, "127.0.0.1")
    assert ports_file.read_text() == "node 6666\napi 6667\nhttp 9100\n"
    assert service.getServiceNamed("http server") is not None
    service.stopService()


def test_the_node_listens_for_http_and_records_its_service_server(cluster_dir: Path, tmp_path: Path) -> None:
    options = node_tap.Options()
    socket = tmp_path / "private" / "node.sock"
    options.parseOptions(["--config", str(cluster_dir / "node.conf"), "--service-socket", str(socket), "--http", "0"])
    reactor = MemoryReactorClock()
    service = node_tap.makeService(options, reactor=reactor)
    service.privilegedStartService()
    service.startService()
    [(port, site, _, interface)] = reactor.tcpServers
    assert isinstance(site, HTTPSite) and (port, interface) == (0, "127.0.0.1")
    [(_, admission, _, _, _)] = reactor.unixServers
    assert service.node.listeners == {"service": admission.relay}  # type: ignore[attr-defined]
    service.stopService()


def test_an_http_listener_on_a_unix_socket_is_logged_by_path_and_left_out_of_the_ports_file(
    cluster_dir: Path, tmp_path: Path
) -> None:
    ports_file, socket = tmp_path / "ports", tmp_path / "http.sock"
    options = master_tap.Options()
    options.parseOptions(["--config", str(cluster_dir / "master.conf"), "--http", f"unix:{socket}"])
    options["ports-file"] = str(ports_file)
    events: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(events.append)
    try:
        service = master_tap.makeService(options, reactor=MemoryReactorClock())
        service.privilegedStartService()
        service.startService()
    finally:
        globalLogPublisher.removeObserver(events.append)
    [listening] = [event for event in events if event.get("server") == "http server"]
    assert listening["nswarm_event"] == "listening" and listening["path"] == str(socket)
    assert ports_file.read_text() == "node 6666\napi 6667\n"
    service.stopService()


def test_only_tcp_endpoints_have_a_port_for_the_ports_file() -> None:
    assert has_port("tcp:0:interface=127.0.0.1") and has_port("ssl:9443:privateKey=k.pem") and has_port("tcp6:1")
    assert not has_port("unix:/run/http.sock") and not has_port(None)
