"""
Tier 1: safe files and defaults. Daemons and SDKs refuse secrets other users
may read, the node refuses a service socket directory others may write to, a
service checks who serves its node socket before it sends its key, TLS is
1.2 or later with AEAD suites only, and nswarm init writes narrow defaults.
No sockets: TLS contexts are only built, and the socket credentials are faked.
"""

from __future__ import annotations

import configparser
import os
import socket
import struct
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from OpenSSL import SSL
from twisted.internet.address import UNIXAddress
from twisted.internet.defer import Deferred
from twisted.internet.protocol import Factory
from twisted.internet.task import Clock
from twisted.python import usage

from nswarm.api import connect_from_config
from nswarm.cluster_files import CLUSTER_FILES, InitError, init_cluster
from nswarm.config import ConfigError, read_secret_file
from nswarm.master import tap as master_tap
from nswarm.node import tap as node_tap
from nswarm.service import Service, implement
from nswarm.service_runner import RunOptions, ServiceRunner, check_node_peer
from nswarm.tls import client_options, private_certificate, server_options

from .support import failure_of


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: Any) -> Path:
    directory = Path(tmp_path_factory.mktemp("safe"))
    init_cluster(directory / "cluster", node_name="node-1")
    return directory / "cluster"


@pytest.fixture
def cluster(pristine: Path, tmp_path: Path, monkeypatch: Any) -> Path:
    """A fresh copy of an nswarm init directory (modes kept), and no ~/.nswarm-*.conf."""
    monkeypatch.setenv("HOME", str(tmp_path))
    directory = tmp_path / "cluster"
    directory.mkdir(mode=0o700)
    for name in CLUSTER_FILES:
        text = (pristine / name).read_text().replace(str(pristine), str(directory))
        (directory / name).write_text(text)
        os.chmod(directory / name, (pristine / name).stat().st_mode & 0o777)
    return directory


def mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


def master_conf(directory: Path) -> configparser.SectionProxy:
    parser = configparser.ConfigParser(interpolation=None)
    parser.read(directory / "master.conf")
    return parser["master"]


# -- secret files --------------------------------------------------------------


@pytest.mark.parametrize(
    "loose, access",
    [
        (0o644, "readable"),
        (0o640, "readable"),
        (0o604, "readable"),
        (0o620, "writable"),
        (0o666, "readable and writable"),
    ],
)
def test_a_key_file_others_may_read_or_write_is_refused_with_the_fix(tmp_path: Path, loose: int, access: str) -> None:
    key = tmp_path / "node-auth.key"
    key.write_text("0123abcd\n")
    os.chmod(key, loose)
    with pytest.raises(ConfigError) as raised:
        read_secret_file(str(key))
    assert str(raised.value) == (f"key file {key} is {access} by other users (mode {loose:04o}): run chmod 600 {key}")


@pytest.mark.parametrize("private", [0o600, 0o400, 0o700])
def test_an_owner_only_key_file_is_read(tmp_path: Path, private: int) -> None:
    key = tmp_path / "node-auth.key"
    key.write_text("0123abcd\n")
    os.chmod(key, private)
    assert read_secret_file(str(key)) == b"0123abcd"


def test_the_chmod_command_quotes_an_awkward_path(tmp_path: Path) -> None:
    key = tmp_path / "my keys" / "a.key"
    key.parent.mkdir()
    key.write_text("k")
    os.chmod(key, 0o644)
    with pytest.raises(ConfigError, match=f"run chmod 600 '{key}'$"):
        read_secret_file(str(key))


def test_a_tls_private_key_others_may_read_is_refused(cluster: Path) -> None:
    os.chmod(cluster / "master.key", 0o644)
    expected = (
        f"private key {cluster}/master.key is readable by other users (mode 0644): run chmod 600 {cluster}/master.key"
    )
    with pytest.raises(ConfigError) as raised:
        private_certificate(str(cluster / "master.pem"), str(cluster / "master.key"))
    assert str(raised.value) == expected


@pytest.mark.parametrize("loose", ["node-auth.key", "master.key"])
def test_the_master_does_not_start_with_a_secret_others_may_read(cluster: Path, loose: str) -> None:
    os.chmod(cluster / loose, 0o644)
    with pytest.raises(usage.UsageError) as raised:
        master_tap.Options().parseOptions(["--config", str(cluster / "master.conf")])
    assert f"{cluster}/{loose} is readable by other users (mode 0644): run chmod 600 {cluster}/{loose}" in str(
        raised.value
    )


@pytest.mark.parametrize("loose", ["node-auth.key", "node.key"])
def test_the_node_does_not_start_with_a_secret_others_may_read(cluster: Path, loose: str) -> None:
    os.chmod(cluster / loose, 0o640)
    with pytest.raises(
        usage.UsageError, match=f"is readable by other users \\(mode 0640\\): run chmod 600 {cluster}/{loose}"
    ):
        node_tap.Options().parseOptions(["--config", str(cluster / "node.conf")])


def test_the_sdks_refuse_a_key_file_others_may_read(cluster: Path) -> None:
    os.chmod(cluster / "service-auth.key", 0o644)
    with pytest.raises(ConfigError, match="run chmod 600"):
        RunOptions().parseOptions(["--config", str(cluster / "client.conf")])
    os.chmod(cluster / "api-auth.key", 0o644)
    failure = failure_of(connect_from_config(Clock(), str(cluster / "client.conf")))
    assert failure.check(ConfigError) and "run chmod 600" in failure.getErrorMessage()
    os.chmod(cluster / "api-auth.key", 0o600)
    os.chmod(cluster / "api.key", 0o644)
    failure = failure_of(connect_from_config(Clock(), str(cluster / "client.conf")))
    assert failure.check(ConfigError) and f"chmod 600 {cluster}/api.key" in failure.getErrorMessage()


# -- the node's service socket directory ---------------------------------------


def node_options(cluster: Path, socket_path: Path) -> node_tap.Options:
    options = node_tap.Options()
    options.parseOptions(["--config", str(cluster / "node.conf"), "--service-socket", str(socket_path)])
    return options


def test_the_node_creates_a_missing_socket_directory_owner_only_when_parsing(cluster: Path, tmp_path: Path) -> None:
    socket_path = tmp_path / "run" / "nswarm" / "node.sock"
    node_options(cluster, socket_path)
    assert mode(socket_path.parent) == 0o700


@pytest.mark.parametrize("loose", [0o777, 0o770, 0o1777, 0o702])
def test_the_node_refuses_a_socket_directory_others_may_write_to(cluster: Path, tmp_path: Path, loose: int) -> None:
    directory = tmp_path / "shared"
    directory.mkdir()
    os.chmod(directory, loose)
    with pytest.raises(usage.UsageError) as raised:
        node_options(cluster, directory / "node.sock")
    assert str(raised.value) == (
        f"the service socket's directory {directory} is writable by other users (mode {loose:04o}): "
        f"make it owner-only with chmod 700 {directory}, or choose another service-socket"
    )


def test_a_socket_directory_others_may_only_read_is_accepted(cluster: Path, tmp_path: Path) -> None:
    directory = tmp_path / "readable"
    directory.mkdir()
    os.chmod(directory, 0o755)
    node_options(cluster, directory / "node.sock")


def test_the_node_refuses_a_socket_directory_of_another_user(cluster: Path, tmp_path: Path, monkeypatch: Any) -> None:
    directory = tmp_path / "theirs"
    directory.mkdir(mode=0o700)
    owner = directory.stat().st_uid
    monkeypatch.setattr(os, "geteuid", lambda: owner + 1)  # this daemon runs as somebody else
    with pytest.raises(usage.UsageError) as raised:
        node_options(cluster, directory / "node.sock")
    assert str(raised.value).startswith(
        f"the service socket's directory {directory} is owned by uid {owner}, not by this daemon's user {owner + 1}: "
    )


# -- who serves the node socket -------------------------------------------------


class FakeHandle:
    family = socket.AF_UNIX

    def __init__(self, pid: int, uid: int, gid: int) -> None:
        self.credentials = struct.pack("3i", pid, uid, gid)
        self.asked: list[tuple[int, int, int]] = []

    def getsockopt(self, level: int, option: int, size: int) -> bytes:
        self.asked.append((level, option, size))
        return self.credentials


class FakeTransport:
    def __init__(self, handle: Any) -> None:
        self.handle = handle

    def getHandle(self) -> Any:
        return self.handle

    def getPeer(self) -> UNIXAddress:
        return UNIXAddress(b"/run/x/node.sock")


class FakeProtocol:
    """What ServiceRunner.register talks to: records whether a key was sent."""

    def __init__(self, transport: Any) -> None:
        self.transport = transport
        self.keys: list[bytes] = []

    def authenticate(self, key: bytes, name: str) -> Deferred[Any]:
        self.keys.append(key)
        return Deferred()  # the node's answer never comes: enough to see the key was sent


class Greeter(Service):
    @implement
    def greet(self, name: str) -> str:
        return f"hello, {name}"


needs_peercred = pytest.mark.skipif(not hasattr(socket, "SO_PEERCRED"), reason="SO_PEERCRED is Linux's")


@needs_peercred
def test_a_service_refuses_to_send_its_key_to_a_socket_another_user_serves() -> None:
    me = os.geteuid()
    proto = FakeProtocol(FakeTransport(FakeHandle(pid=4242, uid=me + 1, gid=0)))
    failure = failure_of(ServiceRunner(Greeter(), Clock(), b"service-key").register(proto))
    assert failure.check(ConfigError)
    assert failure.getErrorMessage().startswith(
        f"the node socket /run/x/node.sock is served by uid {me + 1} (pid 4242), not by this service's user {me}: "
        "another user may have taken the socket; refusing to send the service key"
    )
    assert proto.keys == []


@needs_peercred
@pytest.mark.parametrize("uid", [0, 65534])
def test_root_or_anyone_else_is_refused_unless_it_is_us(uid: int, monkeypatch: Any) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    with pytest.raises(ConfigError, match=f"served by uid {uid} "):
        check_node_peer(FakeTransport(FakeHandle(pid=1, uid=uid, gid=0)))


@needs_peercred
def test_a_service_sends_its_key_to_a_socket_its_own_user_serves() -> None:
    handle = FakeHandle(pid=4242, uid=os.geteuid(), gid=0)
    proto = FakeProtocol(FakeTransport(handle))
    ServiceRunner(Greeter(), Clock(), b"service-key").register(proto)
    assert proto.keys == [b"service-key"]
    assert handle.asked == [(socket.SOL_SOCKET, socket.SO_PEERCRED, 12)]


def test_a_transport_without_a_socket_is_not_checked() -> None:
    """In memory (iosim) there is no socket and nobody to check."""
    proto = FakeProtocol(object())
    ServiceRunner(Greeter(), Clock(), b"service-key").register(proto)
    assert proto.keys == [b"service-key"]


# -- TLS versions and suites ----------------------------------------------------


def offered_ciphers(context: SSL.Context) -> list[str]:
    return list(SSL.Connection(context, None).get_cipher_list())


def assert_aead_only(ciphers: list[str]) -> None:
    assert ciphers
    for name in ciphers:
        assert name.startswith("TLS_") or (
            name.startswith(("ECDHE-", "DHE-")) and ("-GCM-" in name or "CHACHA20-POLY1305" in name)
        ), name


@pytest.mark.parametrize("client_ca", [False, True])
def test_listeners_offer_tls_1_2_and_later_with_aead_suites_only(cluster: Path, client_ca: bool) -> None:
    options = server_options(
        str(cluster / "master.pem"), str(cluster / "master.key"), str(cluster / "ca.pem") if client_ca else None
    )
    assert options.verify is client_ca  # with a client CA, a client certificate is required, as before
    assert options.requireCertificate
    context = options.getContext()
    disabled = context.set_options(0)  # adds nothing, returns what is set
    assert disabled & SSL.OP_NO_TLSv1 and disabled & SSL.OP_NO_TLSv1_1
    assert_aead_only(offered_ciphers(context))


def test_clients_offer_tls_1_2_and_later_with_aead_suites_only(cluster: Path) -> None:
    creator: Any = client_options(
        "localhost", str(cluster / "ca.pem"), str(cluster / "node.pem"), str(cluster / "node.key")
    )
    # What TLSMemoryBIOProtocol gives it: its factory, wrapping the application's.
    tls_protocol = SimpleNamespace(factory=SimpleNamespace(wrappedFactory=Factory()))
    connection = creator.clientConnectionForTLS(tls_protocol)
    ciphers = connection.get_cipher_list()
    assert_aead_only(ciphers)
    assert "ECDHE-ECDSA-AES128-SHA" not in ciphers


# -- nswarm init ----------------------------------------------------------------


@pytest.mark.parametrize(
    "master_host, interface",
    [("localhost", "127.0.0.1"), ("127.0.0.1", "127.0.0.1"), ("::1", "::1"), ("master.example", "0.0.0.0")],
)
def test_init_listens_on_loopback_only_for_a_local_master(tmp_path: Path, master_host: str, interface: str) -> None:
    init_cluster(tmp_path / "c", master_host=master_host)
    assert master_conf(tmp_path / "c")["interface"] == interface
    text = (tmp_path / "c" / "master.conf").read_text()
    comment = text.split("interface =")[0].splitlines()[-2:]
    assert all(line.startswith("# ") for line in comment)  # why, and how to change it
    if interface == "0.0.0.0":
        assert "To narrow it, set interface" in text


def test_init_requires_api_users_certificates(tmp_path: Path) -> None:
    init_cluster(tmp_path / "c")
    assert master_conf(tmp_path / "c")["api-client-ca"] == str(tmp_path / "c" / "ca.pem")
    options = master_tap.Options()
    options.parseOptions(["--config", str(tmp_path / "c" / "master.conf")])
    assert options.api_tls.verify and options.api_tls.requireCertificate


def test_init_makes_an_existing_directory_of_ours_owner_only(tmp_path: Path) -> None:
    directory = tmp_path / "open"
    directory.mkdir()
    os.chmod(directory, 0o755)
    init_cluster(directory)
    assert mode(directory) == 0o700


def test_init_refuses_a_directory_of_another_user(tmp_path: Path, monkeypatch: Any) -> None:
    directory = tmp_path / "theirs"
    directory.mkdir()
    os.chmod(directory, 0o755)
    monkeypatch.setattr(os, "geteuid", lambda: directory.stat().st_uid + 1)
    with pytest.raises(InitError, match=f"^{directory} is owned by another user: choose a directory of your own"):
        init_cluster(directory)
    assert list(directory.iterdir()) == [] and mode(directory) == 0o755
