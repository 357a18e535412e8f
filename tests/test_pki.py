"""
Tests for L{nswarm.pki}: the cluster CA, certificates, key files and
C{init_cluster}. No network: the mutual-TLS check runs Twisted's TLS protocol
pair in memory (through L{tests.support.connect}).
"""

from __future__ import annotations

import configparser
import datetime
import ipaddress
import os
import stat
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, cast

import pytest
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from hypothesis import given
from hypothesis import strategies as st
from OpenSSL import SSL
from service_identity import VerificationError
from twisted.internet.interfaces import IHandshakeListener
from twisted.internet.protocol import ClientFactory, Protocol, ServerFactory
from twisted.internet.ssl import Certificate, PrivateCertificate, optionsForClientTLS
from twisted.internet.task import Clock
from twisted.protocols.tls import TLSMemoryBIOFactory, TLSMemoryBIOProtocol
from twisted.python.failure import Failure
from zope.interface import implementer

from nswarm import cluster_files, pki
from nswarm.cluster_files import InitError
from nswarm.pki import CertifiedKey

from .support import connect

NOW = datetime.datetime(2030, 1, 2, 3, 4, 5, tzinfo=datetime.timezone.utc)

PRIVATE = {
    "ca.key",
    "master.key",
    "node.key",
    "api.key",
    "node-auth.key",
    "api-auth.key",
    "service-auth.key",
}


# -- helpers ---------------------------------------------------------------


@pytest.fixture(scope="module")
def ca() -> CertifiedKey:
    return pki.make_ca(now=NOW)


@pytest.fixture(scope="module")
def server(ca: CertifiedKey) -> CertifiedKey:
    return pki.issue_server_certificate(ca, ["localhost", "127.0.0.1", "::1", "master.example"], now=NOW)


@pytest.fixture(scope="module")
def client(ca: CertifiedKey) -> CertifiedKey:
    return pki.issue_client_certificate(ca, "node-7", now=NOW)


@pytest.fixture
def umask() -> Iterator[None]:
    """Run with the most permissive umask, restoring the old one after."""
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


def mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def ext(cert: x509.Certificate, kind: type[Any]) -> x509.Extension[Any]:
    return cert.extensions.get_extension_for_class(kind)


def common_name(cert: x509.Certificate) -> str:
    return str(cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value)


def load_cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def sans(cert: x509.Certificate) -> x509.SubjectAlternativeName:
    value: x509.SubjectAlternativeName = ext(cert, x509.SubjectAlternativeName).value
    return value


# -- the CA and certificates -----------------------------------------------


def test_ca_is_a_self_signed_certificate_authority(ca: CertifiedKey) -> None:
    """The CA signs itself, is marked CA (critical) and may sign certificates."""
    cert = ca.certificate
    cert.verify_directly_issued_by(cert)
    constraints = ext(cert, x509.BasicConstraints)
    assert constraints.critical and constraints.value.ca
    usage = ext(cert, x509.KeyUsage).value
    assert usage.key_cert_sign and usage.crl_sign
    ski = ext(cert, x509.SubjectKeyIdentifier).value
    assert ski == x509.SubjectKeyIdentifier.from_public_key(ca.key.public_key())


def test_certificates_use_p256_and_the_injected_clock(
    ca: CertifiedKey, server: CertifiedKey, client: CertifiedKey
) -> None:
    """Keys are P-256; validity runs from (just before) C{now} for ten years."""
    for issued in (ca, server, client):
        assert isinstance(issued.key.curve, pki.ec.SECP256R1)
        cert = issued.certificate
        assert cert.not_valid_before_utc <= NOW
        assert NOW - cert.not_valid_before_utc <= datetime.timedelta(hours=1)
        assert cert.not_valid_after_utc == NOW + datetime.timedelta(days=3650)


def test_validity_period_is_injectable(ca: CertifiedKey) -> None:
    """C{valid_for} sets how long a certificate lasts."""
    short = pki.issue_client_certificate(ca, "brief", now=NOW, valid_for=datetime.timedelta(days=1))
    assert short.certificate.not_valid_after_utc == NOW + datetime.timedelta(days=1)


def test_naive_clock_is_refused() -> None:
    """A timezone-less C{now} is ambiguous, so it is an error."""
    with pytest.raises(ValueError):
        pki.make_ca(now=datetime.datetime(2030, 1, 1))


def test_ca_verifies_the_server_certificate(ca: CertifiedKey, server: CertifiedKey) -> None:
    """The server certificate is signed by the CA and names it as authority."""
    cert = server.certificate
    cert.verify_directly_issued_by(ca.certificate)
    aki = ext(cert, x509.AuthorityKeyIdentifier).value
    ca_ski = ext(ca.certificate, x509.SubjectKeyIdentifier).value
    assert aki.key_identifier == ca_ski.digest


def test_server_certificate_is_a_tls_server_leaf(server: CertifiedKey) -> None:
    """Server auth EKU, not a CA."""
    cert = server.certificate
    assert list(ext(cert, x509.ExtendedKeyUsage).value) == [ExtendedKeyUsageOID.SERVER_AUTH]
    constraints = ext(cert, x509.BasicConstraints)
    assert constraints.critical and not constraints.value.ca


def test_server_certificate_names_dns_names_and_ip_addresses(
    server: CertifiedKey,
) -> None:
    """Addresses become IPAddress SANs, everything else DNSName SANs."""
    names = sans(server.certificate)
    assert names.get_values_for_type(x509.DNSName) == ["localhost", "master.example"]
    assert names.get_values_for_type(x509.IPAddress) == [
        ipaddress.ip_address("127.0.0.1"),
        ipaddress.ip_address("::1"),
    ]


def test_server_certificate_needs_a_host(ca: CertifiedKey) -> None:
    """A server certificate valid for no name is refused."""
    with pytest.raises(ValueError):
        pki.issue_server_certificate(ca, [], now=NOW)


def test_ca_verifies_the_client_certificate(ca: CertifiedKey, client: CertifiedKey) -> None:
    """The client certificate is signed by the CA, CN and DNS SAN are its name."""
    cert = client.certificate
    cert.verify_directly_issued_by(ca.certificate)
    assert common_name(cert) == "node-7"
    assert sans(cert).get_values_for_type(x509.DNSName) == ["node-7"]
    assert list(ext(cert, x509.ExtendedKeyUsage).value) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    assert not ext(cert, x509.BasicConstraints).value.ca
    assert ext(cert, x509.AuthorityKeyIdentifier).value.key_identifier


def test_another_ca_does_not_verify_our_certificates(server: CertifiedKey, client: CertifiedKey) -> None:
    """Verification really checks the signature: a foreign CA fails."""
    other = pki.make_ca("other CA", now=NOW)
    for cert in (server.certificate, client.certificate):
        with pytest.raises((InvalidSignature, ValueError)):
            cert.verify_directly_issued_by(other.certificate)


def test_serial_numbers_are_random(ca: CertifiedKey) -> None:
    """Two certificates never share a serial number."""
    a = pki.issue_client_certificate(ca, "a", now=NOW).certificate
    b = pki.issue_client_certificate(ca, "a", now=NOW).certificate
    assert a.serial_number != b.serial_number


def test_subject_alternative_names_deduplicate_in_order() -> None:
    """Duplicates (also differently spelled IPs) collapse; order is kept."""
    assert pki.subject_alternative_names(["localhost", "127.0.0.1", "example.com", "localhost", "::1", "0:0::1"]) == [
        x509.DNSName("localhost"),
        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
        x509.DNSName("example.com"),
        x509.IPAddress(ipaddress.ip_address("::1")),
    ]


@given(
    st.lists(
        st.one_of(
            st.ip_addresses().map(str),
            st.from_regex(r"[a-z][a-z0-9-]{0,10}(\.[a-z]{2,5}){0,2}", fullmatch=True),
        ),
        max_size=8,
    )
)
def test_subject_alternative_names_type_every_host(hosts: list[str]) -> None:
    """Every IP address becomes an IPAddress, every name a DNSName, once each."""
    names = pki.subject_alternative_names(hosts)
    assert len(names) == len(set(names))
    expected: set[x509.GeneralName] = set()
    for host in hosts:
        try:
            expected.add(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            expected.add(x509.DNSName(host))
    assert set(names) == expected


def test_pem_helpers_round_trip(client: CertifiedKey) -> None:
    """The PEM encodings load back as the same certificate and key."""
    assert x509.load_pem_x509_certificate(client.certificate_pem()) == (client.certificate)
    key = serialization.load_pem_private_key(client.key_pem(), password=None)
    assert key.public_key() == client.key.public_key()
    assert client.key_pem().startswith(b"-----BEGIN PRIVATE KEY-----")


# -- files -----------------------------------------------------------------


def test_write_private_creates_an_owner_only_file(tmp_path: Path, umask: None) -> None:
    """Mode 0600 whatever the umask, and the contents are written whole."""
    path = tmp_path / "secret"
    pki.write_private(path, b"s3cret")
    assert mode(path) == 0o600
    assert path.read_bytes() == b"s3cret"


def test_write_private_never_creates_a_readable_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The file is created exclusively with mode 0600: no readable window."""
    calls: list[tuple[int, int]] = []
    real_open = os.open

    def spy(path: Any, flags: int, mode: int = 0o777) -> int:
        calls.append((flags, mode))
        return real_open(path, flags, mode)

    monkeypatch.setattr(os, "open", spy)
    pki.write_private(tmp_path / "secret", b"x")
    [(flags, created_mode)] = calls
    assert flags & os.O_CREAT and flags & os.O_EXCL
    assert created_mode == 0o600


def test_write_private_refuses_an_existing_file(tmp_path: Path) -> None:
    """An existing file (or symlink) is never reused or followed."""
    path = tmp_path / "secret"
    path.write_bytes(b"old")
    with pytest.raises(FileExistsError):
        pki.write_private(path, b"new")
    assert path.read_bytes() == b"old"
    link = tmp_path / "link"
    link.symlink_to(tmp_path / "elsewhere")
    with pytest.raises(FileExistsError):
        pki.write_private(link, b"new")
    assert not (tmp_path / "elsewhere").exists()


def test_write_public_creates_a_world_readable_file(tmp_path: Path) -> None:
    """Mode 0644 even under a strict umask."""
    old = os.umask(0o077)
    try:
        pki.write_public(tmp_path / "cert.pem", b"pem")
    finally:
        os.umask(old)
    assert mode(tmp_path / "cert.pem") == 0o644


def test_auth_keys_are_256_random_bits_in_hex() -> None:
    """64 lowercase hex digits, different every time."""
    key = pki.new_auth_key()
    assert len(key) == 64 and int(key, 16) >= 0 and key == key.lower()
    assert key != pki.new_auth_key()


# -- init_cluster ----------------------------------------------------------


@pytest.fixture
def cluster(tmp_path: Path) -> Path:
    directory = tmp_path / "cluster"
    cluster_files.init_cluster(
        directory,
        hosts=["example.com", "10.1.2.3", "localhost", "example.com"],
        master_host="master.example",
        node_port=7001,
        api_port=7002,
        node_name="edge-1",
        now=NOW,
    )
    return directory


def read_conf(path: Path) -> configparser.ConfigParser:
    parser = configparser.ConfigParser()
    assert parser.read(path) == [str(path)]
    return parser


def test_init_writes_every_file_and_returns_them(tmp_path: Path) -> None:
    """The returned list is the absolute paths of every file, all present."""
    directory = tmp_path / "c"
    written = cluster_files.init_cluster(directory, now=NOW)
    assert written == [directory / name for name in cluster_files.CLUSTER_FILES]
    assert sorted(p.name for p in directory.iterdir()) == sorted(cluster_files.CLUSTER_FILES)


def test_init_modes_private_0600_public_0644_directory_0700(tmp_path: Path, umask: None) -> None:
    """Secrets are owner-only, the rest world-readable; a new DIR is 0700."""
    directory = tmp_path / "new" / "cluster"
    cluster_files.init_cluster(directory, now=NOW)
    assert mode(directory) == 0o700
    for name in cluster_files.CLUSTER_FILES:
        assert mode(directory / name) == (0o600 if name in PRIVATE else 0o644), name


def test_init_conf_files_hold_absolute_existing_paths(cluster: Path) -> None:
    """Every path in a conf file is absolute and (bar the socket) exists."""
    for name in ("master.conf", "node.conf", "client.conf"):
        conf = read_conf(cluster / name)
        for section in conf.sections():
            for key, value in conf.items(section):
                if key in {"ca", "socket", "service-socket"} or key.endswith(("cert", "key", "-file")):
                    path = Path(value)
                    assert path.is_absolute(), (name, key)
                    assert path.parent == cluster, (name, key)
                    if not key.endswith("socket"):
                        assert path.is_file(), (name, key)


def test_init_master_conf(cluster: Path) -> None:
    """master.conf: ports, CA, one server certificate for both listeners, API users' certificates required."""
    master = read_conf(cluster / "master.conf")["master"]
    assert dict(master) == {
        "interface": "0.0.0.0",  # master.example is not this machine only
        "node-port": "7001",
        "api-port": "7002",
        "ca": f"{cluster}/ca.pem",
        "node-cert": f"{cluster}/master.pem",
        "node-cert-key": f"{cluster}/master.key",
        "api-cert": f"{cluster}/master.pem",
        "api-cert-key": f"{cluster}/master.key",
        "node-auth-key-file": f"{cluster}/node-auth.key",
        "access": f"{cluster}/access.conf",
        "api-client-ca": f"{cluster}/ca.pem",
    }


def test_init_node_conf(cluster: Path) -> None:
    """node.conf: name, upstream master, node certificate, service socket."""
    node = read_conf(cluster / "node.conf")["node"]
    assert dict(node) == {
        "name": "edge-1",
        "upstream-host": "master.example",
        "upstream-port": "7001",
        "ca": f"{cluster}/ca.pem",
        "node-cert": f"{cluster}/node.pem",
        "node-cert-key": f"{cluster}/node.key",
        "upstream-auth-key-file": f"{cluster}/node-auth.key",
        "service-socket": f"{cluster}/node.sock",
        "access": f"{cluster}/node-access.conf",
    }


def test_init_client_conf(cluster: Path) -> None:
    """client.conf: an [api] and a [service] section for the two SDKs."""
    conf = read_conf(cluster / "client.conf")
    assert dict(conf["api"]) == {
        "host": "master.example",
        "port": "7002",
        "ca": f"{cluster}/ca.pem",
        "auth-key-file": f"{cluster}/api-auth.key",
        "cert": f"{cluster}/api.pem",
        "cert-key": f"{cluster}/api.key",
    }
    assert dict(conf["service"]) == {
        "socket": f"{cluster}/node.sock",
        "auth-key-file": f"{cluster}/service-auth.key",
    }


def test_init_certificates_chain_to_the_written_ca(cluster: Path) -> None:
    """master, node and api certificates verify against ca.pem, with right roles."""
    ca = load_cert(cluster / "ca.pem")
    roles = {
        "master.pem": ExtendedKeyUsageOID.SERVER_AUTH,
        "node.pem": ExtendedKeyUsageOID.CLIENT_AUTH,
        "api.pem": ExtendedKeyUsageOID.CLIENT_AUTH,
    }
    for name, role in roles.items():
        cert = load_cert(cluster / name)
        cert.verify_directly_issued_by(ca)
        assert list(ext(cert, x509.ExtendedKeyUsage).value) == [role], name
    assert common_name(load_cert(cluster / "node.pem")) == "edge-1"
    assert common_name(load_cert(cluster / "api.pem")) == "api"


def test_init_keys_match_their_certificates(cluster: Path) -> None:
    """Each .key file is the private key of the .pem beside it."""
    for stem in ("ca", "master", "node", "api"):
        key = serialization.load_pem_private_key((cluster / f"{stem}.key").read_bytes(), password=None)
        assert key.public_key() == load_cert(cluster / f"{stem}.pem").public_key()


def test_init_master_certificate_names(cluster: Path) -> None:
    """localhost, 127.0.0.1, the master host and the extra hosts, deduplicated."""
    names = sans(load_cert(cluster / "master.pem"))
    assert names.get_values_for_type(x509.DNSName) == [
        "localhost",
        "master.example",
        "example.com",
    ]
    assert names.get_values_for_type(x509.IPAddress) == [
        ipaddress.ip_address("127.0.0.1"),
        ipaddress.ip_address("10.1.2.3"),
    ]


def test_init_auth_keys_are_distinct_hex_lines(cluster: Path) -> None:
    """Three different 256-bit keys, each a hex line ending in a newline."""
    keys = [(cluster / name).read_bytes() for name in ("node-auth.key", "api-auth.key", "service-auth.key")]
    for key in keys:
        assert key.endswith(b"\n") and len(key.strip()) == 64
        int(key.strip(), 16)
    assert len(set(keys)) == 3


def test_init_relative_directory_gives_absolute_paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A relative DIR is resolved once, so the conf files work from anywhere."""
    monkeypatch.chdir(tmp_path)
    written = cluster_files.init_cluster("rel", now=NOW)
    assert written[0] == tmp_path / "rel" / "ca.pem"
    node = read_conf(tmp_path / "rel" / "node.conf")["node"]
    assert node["ca"] == f"{tmp_path}/rel/ca.pem"


def test_init_refuses_existing_files_and_writes_nothing(tmp_path: Path) -> None:
    """One existing file: InitError naming it and --force; nothing else written."""
    directory = tmp_path / "c"
    directory.mkdir()
    (directory / "node.conf").write_text("mine")
    with pytest.raises(InitError) as caught:
        cluster_files.init_cluster(directory, now=NOW)
    message = str(caught.value)
    assert str(directory / "node.conf") in message
    assert "empty directory" in message and "--force" in message
    assert [p.name for p in directory.iterdir()] == ["node.conf"]
    assert (directory / "node.conf").read_text() == "mine"


def test_init_refuses_a_second_run(tmp_path: Path) -> None:
    """Running init twice without force names the first file and keeps the CA."""
    cluster_files.init_cluster(tmp_path, now=NOW)
    before = (tmp_path / "ca.pem").read_bytes()
    with pytest.raises(InitError, match="ca.pem"):
        cluster_files.init_cluster(tmp_path, now=NOW)
    assert (tmp_path / "ca.pem").read_bytes() == before


def test_init_force_overwrites_and_keeps_private_modes(tmp_path: Path) -> None:
    """With force everything is rewritten; loosened secrets end up 0600 again."""
    cluster_files.init_cluster(tmp_path, now=NOW)
    before = (tmp_path / "ca.pem").read_bytes()
    os.chmod(tmp_path / "ca.key", 0o644)
    (tmp_path / "node.conf").unlink()  # a partly present configuration
    cluster_files.init_cluster(tmp_path, node_name="node-2", force=True, now=NOW)
    assert (tmp_path / "ca.pem").read_bytes() != before
    assert mode(tmp_path / "ca.key") == 0o600
    assert read_conf(tmp_path / "node.conf")["node"]["name"] == "node-2"
    load_cert(tmp_path / "node.pem").verify_directly_issued_by(load_cert(tmp_path / "ca.pem"))


def test_init_refuses_a_file_as_directory(tmp_path: Path) -> None:
    """DIR naming an existing regular file is an InitError."""
    (tmp_path / "f").write_text("")
    with pytest.raises(InitError, match="not a directory"):
        cluster_files.init_cluster(tmp_path / "f", now=NOW)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"node_port": 0},
        {"api_port": 65536},
        {"node_name": ""},
        {"node_name": "a\nb"},
        {"master_host": " spaced "},
    ],
)
def test_init_rejects_bad_values_before_writing(tmp_path: Path, kwargs: dict[str, Any]) -> None:
    """Out-of-range ports and unusable names raise ValueError; nothing written."""
    with pytest.raises(ValueError):
        cluster_files.init_cluster(tmp_path / "c", now=NOW, **kwargs)
    assert not (tmp_path / "c").exists()


# -- mutual TLS with Twisted, in memory -------------------------------------


@implementer(IHandshakeListener)
class Peer(Protocol):
    """Records the handshake, the peer certificate, data and the close."""

    def __init__(self, greeting: bytes) -> None:
        self.greeting = greeting
        self.handshook = False
        self.peer_common_name: str | None = None
        self.received = b""
        self.lost: Failure | None = None

    def connectionMade(self) -> None:
        self.transport.write(self.greeting)  # type: ignore[union-attr]

    def handshakeCompleted(self) -> None:
        self.handshook = True
        peer = self.transport.getPeerCertificate()  # type: ignore[union-attr]
        self.peer_common_name = common_name(peer.to_cryptography())

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self.lost = reason


class TLSConnection:
    """A node's TLS connection to the master, in memory, and how to run it."""

    def __init__(self, node: Peer, master: Peer, flush: Callable[[], None]) -> None:
        self.node = node
        self.master = master
        self.flush = flush


def tls_pair(directory: Path, hostname: str, node_directory: Path | None = None) -> TLSConnection:
    """
    The master's listener and a node's upstream connection, built the way the
    tap builds them (master requires a client certificate from the CA), paired
    in memory. Both trust C{directory}'s CA; the node's certificate comes from
    C{node_directory} (default: the same).
    """
    node_directory = directory if node_directory is None else node_directory
    ca_pem = (directory / "ca.pem").read_bytes()
    ca_cert = Certificate.loadPEM(ca_pem)
    master_private = PrivateCertificate.loadPEM(
        (directory / "master.pem").read_bytes() + (directory / "master.key").read_bytes()
    )
    node_private = PrivateCertificate.loadPEM(
        (node_directory / "node.pem").read_bytes() + (node_directory / "node.key").read_bytes()
    )
    client_options = optionsForClientTLS(hostname, trustRoot=ca_cert, clientCertificate=node_private)
    server_options = master_private.options(ca_cert)
    clock = Clock()
    node_factory = TLSMemoryBIOFactory(
        client_options,
        isClient=True,
        wrappedFactory=ClientFactory.forProtocol(lambda: Peer(b"hello master")),
        clock=clock,
    )
    master_factory = TLSMemoryBIOFactory(
        server_options,
        isClient=False,
        wrappedFactory=ServerFactory.forProtocol(lambda: Peer(b"hello node")),
        clock=clock,
    )
    node = node_factory.buildProtocol(None)
    master = master_factory.buildProtocol(None)
    assert isinstance(node, TLSMemoryBIOProtocol)
    assert isinstance(master, TLSMemoryBIOProtocol)
    pump = connect(master, node)

    def flush() -> None:
        # TLS batches its writes with clock.callLater(0): run those, then
        # move bytes, until neither has anything left to do.
        for _ in range(1000):
            clock.advance(0)
            if not pump.pump() and not clock.getDelayedCalls():
                return
        raise AssertionError("the TLS connection never went quiet")

    return TLSConnection(cast(Peer, node.wrappedProtocol), cast(Peer, master.wrappedProtocol), flush)


@pytest.fixture(scope="module")
def tls_cluster(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("tls")
    cluster_files.init_cluster(directory, hosts=["master.example"])
    return directory


@pytest.mark.parametrize("hostname", ["localhost", "master.example"])
def test_mutual_tls_handshake_succeeds(tls_cluster: Path, hostname: str) -> None:
    """Node and master authenticate each other through the CA and talk."""
    connection = tls_pair(tls_cluster, hostname)
    connection.flush()
    node, master = connection.node, connection.master
    assert node.handshook and master.handshook
    assert node.peer_common_name == "localhost"
    assert master.peer_common_name == "node-1"
    assert master.received == b"hello master"
    assert node.received == b"hello node"
    assert node.lost is None and master.lost is None


def test_mutual_tls_rejects_a_hostname_not_in_the_certificate(
    tls_cluster: Path,
) -> None:
    """The node checks the master's name: an unlisted host fails."""
    connection = tls_pair(tls_cluster, "elsewhere.example")
    connection.flush()
    node, master = connection.node, connection.master
    assert not node.handshook and not master.handshook
    assert node.received == b"" and master.received == b""
    assert node.lost is not None
    assert node.lost.check(VerificationError)


def test_mutual_tls_rejects_a_client_from_another_ca(tls_cluster: Path, tmp_path: Path) -> None:
    """The master refuses a node certificate its CA did not sign."""
    cluster_files.init_cluster(tmp_path, node_name="intruder")
    connection = tls_pair(tls_cluster, "localhost", node_directory=tmp_path)
    connection.flush()
    master = connection.master
    assert not master.handshook
    assert master.received == b""
    assert master.lost is not None
    assert master.lost.check(SSL.Error)
    assert "certificate verify failed" in str(master.lost.value)
