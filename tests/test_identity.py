"""
Tier 1: a node's identity is bound to its certificate. The master takes a
node's name from the certificate it presented (nswarm://node/NAME), refuses
one that names no node or another name than the node claims, and only the
same identity replaces a stale connection.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from twisted.internet.task import Clock
from twisted.protocols import amp
from twisted.python import usage

from nswarm import pki
from nswarm.amp_commands import Authenticate, AuthenticationFailed
from nswarm.cluster_files import init_cluster, issue_node, node_files
from nswarm.identity import certificate_identities, identity_uri
from nswarm.master.master import Master, NodeServerProtocol
from nswarm.node import tap as node_tap

from .support import NODE_KEY, connect, detach, failure_of, result_of


def node_server(master: Master, clock: Clock, presented: str | None) -> NodeServerProtocol:
    """A node server whose peer presented a certificate naming node C{presented} (None: naming no node)."""
    server = NodeServerProtocol(master, clock, NODE_KEY)
    server.certificate_identity = lambda transport, role: presented  # type: ignore[method-assign]
    return server


PUMPS: list[Any] = []


def authenticate(server: NodeServerProtocol, name: str | None) -> Any:
    client = amp.AMP()
    pump = connect(server, client)
    arguments: dict[str, Any] = {"key": NODE_KEY}
    if name is not None:
        arguments["name"] = name
    d = detach(client.callRemote(Authenticate, **arguments))
    pump.flush()
    PUMPS.append(pump)
    return d, client


def test_the_node_is_named_by_its_certificate() -> None:
    clock = Clock()
    master = Master(clock)
    server = node_server(master, clock, "node-1")
    d, _ = authenticate(server, None)
    result_of(d)
    assert server.name == "node-1" and master.nodes == {"node-1": server}


def test_a_name_other_than_the_certificates_is_refused_and_the_connection_closed() -> None:
    clock = Clock()
    master = Master(clock)
    server = node_server(master, clock, "node-1")
    d, client = authenticate(server, "node-2")
    failure = failure_of(d)
    assert failure.check(AuthenticationFailed) and "names node 'node-1', not 'node-2'" in str(failure.value)
    assert master.nodes == {} and client.transport is None


def test_a_certificate_naming_no_node_is_refused() -> None:
    clock = Clock()
    master = Master(clock)
    d, _ = authenticate(node_server(master, clock, None), "node-1")
    failure = failure_of(d)
    assert failure.check(AuthenticationFailed) and "nswarm issue node NAME" in str(failure.value)
    assert master.nodes == {}


def test_a_stale_connection_is_replaced_only_by_the_same_identity() -> None:
    clock = Clock()
    master = Master(clock)
    first = node_server(master, clock, "node-1")
    result_of(authenticate(first, "node-1")[0])
    other = node_server(master, clock, "node-2")
    result_of(authenticate(other, None)[0])
    assert first.transport is not None and set(master.nodes) == {"node-1", "node-2"}
    again = node_server(master, clock, "node-1")
    result_of(authenticate(again, None)[0])
    for pump in PUMPS:
        pump.flush()
    assert master.nodes["node-1"] is again and first.transport is None and other.transport is not None


def test_init_and_issue_write_certificates_that_name_their_role(tmp_path: Path) -> None:
    init_cluster(tmp_path)
    node = pki.x509.load_pem_x509_certificate((tmp_path / "node.pem").read_bytes())
    api = pki.x509.load_pem_x509_certificate((tmp_path / "api.pem").read_bytes())
    assert certificate_identities(node) == [("node", "node-1")]
    assert certificate_identities(api) == [("api", "api")]
    cert, key = issue_node(tmp_path, "node-2")
    assert (cert, key) == node_files(tmp_path, "node-2") and key.stat().st_mode & 0o777 == 0o600
    assert certificate_identities(pki.x509.load_pem_x509_certificate(cert.read_bytes())) == [("node", "node-2")]


@pytest.mark.parametrize("name", ["", "a/b", " x"])
def test_a_name_no_certificate_can_carry_is_refused(name: str) -> None:
    with pytest.raises(ValueError):
        identity_uri("node", name)


def test_the_node_daemon_takes_its_name_from_its_certificate(tmp_path: Path) -> None:
    init_cluster(tmp_path)
    options = node_tap.Options()
    options.parseOptions(["--config", str(tmp_path / "node.conf")])
    assert options["name"] == "node-1"
    wrong = node_tap.Options()
    with pytest.raises(usage.UsageError, match="names node 'node-1'"):
        wrong.parseOptions(["--config", str(tmp_path / "node.conf"), "--name", "node-2"])


def test_issue_api_and_service_write_keys_and_print_their_access_sections(tmp_path: Path) -> None:
    from nswarm.access import Access
    from nswarm.cli import main
    from nswarm.cluster_files import issue_api, issue_service
    from nswarm.config import read_secret_file

    init_cluster(tmp_path)
    cert, key, auth, section = issue_api(tmp_path, "alice")
    access = Access.parse(section, "access.conf")
    alice = access.get("api", "alice")
    assert alice is not None and alice.key_matches(read_secret_file(str(auth))) and not alice.rights.admin
    user = pki.x509.load_pem_x509_certificate(cert.read_bytes())
    assert certificate_identities(user) == [("api", "alice")] and key.stat().st_mode & 0o777 == 0o600
    path, section = issue_service(tmp_path, "Greeter")
    greeter = Access.parse(section, "node-access.conf").get("service", "Greeter")
    assert greeter is not None and greeter.key_matches(read_secret_file(str(path)))
    assert main(["issue", "api", "alice", "--dir", str(tmp_path)]) == 1  # exists: --force to replace
    assert main(["issue", "api", "alice", "--dir", str(tmp_path), "--force"]) == 0
