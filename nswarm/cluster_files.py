"""
C{nswarm init}: the files of a ready cluster configuration (a CA,
certificates, keys, auth keys and the master, node and client config files),
written with private files at mode 0600 in a 0700 directory.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import stat
from collections.abc import Iterable
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric import ec

from nswarm import defaults
from nswarm.access import ALL, Identity, Rights, key_digest, render
from nswarm.config import port
from nswarm.identity import identity_uri
from nswarm.pki import (
    CertifiedKey,
    issue_client_certificate,
    issue_server_certificate,
    load_certified_key,
    make_ca,
    new_auth_key,
    write_private,
    write_public,
)

__all__ = ["CLUSTER_FILES", "InitError", "init_cluster", "issue_api", "issue_node", "issue_service", "node_files"]

CLUSTER_FILES = (
    "ca.pem",
    "ca.key",
    "master.pem",
    "master.key",
    "node.pem",
    "node.key",
    "api.pem",
    "api.key",
    "node-auth.key",
    "api-auth.key",
    "service-auth.key",
    "access.conf",
    "node-access.conf",
    "master.conf",
    "node.conf",
    "client.conf",
)
"""The files C{init_cluster} writes, in the order it writes them."""


class InitError(Exception):
    """
    C{init_cluster} refused to write a cluster configuration (for example
    because a file it would write already exists).
    """


#: Master hosts that only this machine reaches, and the interface the master then listens on.
_LOOPBACK = {"localhost": "127.0.0.1", "127.0.0.1": "127.0.0.1", "::1": "::1"}


def _interface_lines(master_host: str) -> str:
    """The C{interface} line of master.conf, after a comment saying why it is that one."""
    if master_host in _LOOPBACK:
        return (
            f"# Only this machine can reach the master (master host {master_host}). For nodes or API\n"
            "# users on other machines, run nswarm init again with --master-host NAME.\n"
            f"interface = {_LOOPBACK[master_host]}\n"
        )
    try:
        everywhere = "::" if ipaddress.ip_address(master_host).version == 6 else "0.0.0.0"
    except ValueError:
        everywhere = "0.0.0.0"
    return (
        f"# Every address of this machine, so that other machines reach the master as {master_host}.\n"
        "# To narrow it, set interface to the one address they connect to.\n"
        f"interface = {everywhere}\n"
    )


def _master_conf(d: Path, master_host: str, node_port: int, api_port: int) -> str:
    return (
        "[master]\n"
        f"{_interface_lines(master_host)}"
        f"node-port = {node_port}\n"
        f"api-port = {api_port}\n"
        f"ca = {d / 'ca.pem'}\n"
        f"node-cert = {d / 'master.pem'}\n"
        f"node-cert-key = {d / 'master.key'}\n"
        f"api-cert = {d / 'master.pem'}\n"
        f"api-cert-key = {d / 'master.key'}\n"
        f"node-auth-key-file = {d / 'node-auth.key'}\n"
        "# Who may connect (API users with their keys, nodes by their certificates) and what each\n"
        "# may do; reloaded on SIGHUP. See the file's own comment, and docs/access.md.\n"
        f"access = {d / 'access.conf'}\n"
        "# API users must present a certificate of the cluster CA (api.pem) as well as the api\n"
        "# auth key. Remove this line to let them in with the auth key alone.\n"
        f"api-client-ca = {d / 'ca.pem'}\n"
    )


def _master_access(api_key: bytes) -> str:
    """The master's first access file: the API user 'api' (the key of api-auth.key) and any node, every right."""
    return render(
        [
            Identity("api", "api", ALL, key_digest(api_key)),
            Identity("node", "*", ALL, None),
        ]
    )


def _node_access(service_key: bytes) -> str:
    """The node's first access file: any service with the key of service-auth.key, every right."""
    return render([Identity("service", "*", ALL, key_digest(service_key))])


def _node_conf(d: Path, node_name: str, master_host: str, node_port: int) -> str:
    return (
        "[node]\n"
        f"name = {node_name}\n"
        f"upstream-host = {master_host}\n"
        f"upstream-port = {node_port}\n"
        f"ca = {d / 'ca.pem'}\n"
        f"node-cert = {d / 'node.pem'}\n"
        f"node-cert-key = {d / 'node.key'}\n"
        f"upstream-auth-key-file = {d / 'node-auth.key'}\n"
        f"service-socket = {d / 'node.sock'}\n"
        "# The services that may connect, with their keys and rights; reloaded on SIGHUP.\n"
        f"access = {d / 'node-access.conf'}\n"
    )


def _client_conf(d: Path, master_host: str, api_port: int) -> str:
    return (
        "[api]\n"
        f"host = {master_host}\n"
        f"port = {api_port}\n"
        f"ca = {d / 'ca.pem'}\n"
        f"auth-key-file = {d / 'api-auth.key'}\n"
        f"cert = {d / 'api.pem'}\n"
        f"cert-key = {d / 'api.key'}\n"
        "\n"
        "[service]\n"
        f"socket = {d / 'node.sock'}\n"
        f"auth-key-file = {d / 'service-auth.key'}\n"
    )


def _check_port(what: str, number: int) -> None:
    """A port the config files can name: L{nswarm.config.port}, but not 0."""
    try:
        valid = number != 0 and port(str(number)) == number
    except ValueError:
        valid = False
    if not valid:
        raise ValueError(f"the {what} must be between 1 and 65535, not {number}")


def _check_conf_value(what: str, value: str) -> None:
    if not value or value != value.strip() or any(c in value for c in "\r\n"):
        raise ValueError(f"the {what} must be non-empty, without surrounding spaces or line breaks, not {value!r}")


def init_cluster(
    directory: str | os.PathLike[str],
    hosts: Iterable[str] = (),
    master_host: str = "localhost",
    node_port: int = defaults.NODE_PORT,
    api_port: int = defaults.API_PORT,
    node_name: str = "node-1",
    force: bool = False,
    *,
    now: datetime.datetime | None = None,
    curve: ec.EllipticCurve | None = None,
) -> list[Path]:
    """
    Write a ready cluster configuration into C{directory}: a CA, certificates
    and keys for the master, one node and the API user, three shared
    authentication keys, and C{master.conf}, C{node.conf} and C{client.conf}
    whose paths are absolute.

    The master certificate is valid for C{localhost}, C{127.0.0.1},
    C{master_host} and every entry of C{hosts}. The master listens on
    loopback only if C{master_host} is C{localhost}, C{127.0.0.1} or C{::1},
    else on every address, and requires API users to present a certificate
    of the cluster CA (as C{client.conf} gives them). C{directory} is
    created (mode 0700) if missing, and made 0700 if it is open to others.

    @raise InitError: if a file it would write exists and C{force} is false,
        or C{directory} belongs to another user; then nothing is written.
    @raise ValueError: for a port out of range or an unusable name.
    @return: the paths written, in order.
    """
    _check_port("node port", node_port)
    _check_port("api port", api_port)
    _check_conf_value("node name", node_name)
    _check_conf_value("master host", master_host)
    hosts = list(hosts)

    d = Path(os.path.abspath(directory))
    paths = [d / name for name in CLUSTER_FILES]
    for path in paths:
        if os.path.lexists(path):
            if not force:
                raise InitError(f"{path} already exists: choose an empty directory or pass --force to overwrite it.")
            if path.is_dir() and not path.is_symlink():
                raise InitError(f"{path} is a directory: choose another directory.")
    if d.exists() and not d.is_dir():
        raise InitError(f"{d} exists and is not a directory.")
    if d.is_dir() and d.stat().st_uid != os.geteuid():
        raise InitError(f"{d} is owned by another user: choose a directory of your own.")

    # Make every secret before touching the disk, so a bad host name (a
    # ValueError from the SAN) leaves nothing behind.
    ca = make_ca(now=now, curve=curve)
    master = issue_server_certificate(ca, ["localhost", "127.0.0.1", master_host, *hosts], now=now, curve=curve)
    node = issue_client_certificate(ca, node_name, now=now, curve=curve)
    api = issue_client_certificate(ca, "api", role="api", now=now, curve=curve)
    api_key, service_key = new_auth_key(), new_auth_key()
    contents: dict[str, tuple[bytes, bool]] = {
        "ca.pem": (ca.certificate_pem(), False),
        "ca.key": (ca.key_pem(), True),
        "master.pem": (master.certificate_pem(), False),
        "master.key": (master.key_pem(), True),
        "node.pem": (node.certificate_pem(), False),
        "node.key": (node.key_pem(), True),
        "api.pem": (api.certificate_pem(), False),
        "api.key": (api.key_pem(), True),
        "node-auth.key": (new_auth_key() + b"\n", True),
        "api-auth.key": (api_key + b"\n", True),
        "service-auth.key": (service_key + b"\n", True),
        "access.conf": (_master_access(api_key).encode("utf-8"), False),
        "node-access.conf": (_node_access(service_key).encode("utf-8"), False),
        "master.conf": (_master_conf(d, master_host, node_port, api_port).encode("utf-8"), False),
        "node.conf": (
            _node_conf(d, node_name, master_host, node_port).encode("utf-8"),
            False,
        ),
        "client.conf": (_client_conf(d, master_host, api_port).encode("utf-8"), False),
    }
    assert tuple(contents) == CLUSTER_FILES

    if not d.exists():
        d.mkdir(mode=0o700, parents=True)
        os.chmod(d, 0o700)
    elif stat.S_IMODE(d.stat().st_mode) & 0o077:
        os.chmod(d, 0o700)  # ours (checked above): make it owner-only
    for path in paths:
        data, private = contents[path.name]
        if force and os.path.lexists(path):
            os.unlink(path)
        try:
            (write_private if private else write_public)(path, data)
        except FileExistsError as e:
            raise InitError(
                f"{path} appeared while writing: choose an empty directory or pass --force to overwrite it."
            ) from e
    return paths


def node_files(directory: str | os.PathLike[str], name: str) -> tuple[Path, Path]:
    """Where L{issue_node} writes node C{name}'s certificate and key: C{DIR/node-NAME.pem} and C{.key}."""
    d = Path(os.path.abspath(directory))
    return d / f"node-{name}.pem", d / f"node-{name}.key"


def issue_node(
    directory: str | os.PathLike[str],
    name: str,
    force: bool = False,
    *,
    now: datetime.datetime | None = None,
) -> tuple[Path, Path]:
    """
    Issue a certificate for node C{name} with the cluster CA in C{directory}
    (C{ca.pem} and C{ca.key}, as C{nswarm init} wrote them) and write it and
    its key (mode 0600) to L{node_files}. The master takes the node's name
    from this certificate.

    @raise InitError: if the CA cannot be read, or a file exists and
        C{force} is false.
    @raise ValueError: for a name no certificate can carry.
    """
    _check_conf_value("node name", name)
    identity_uri("node", name)
    d = Path(os.path.abspath(directory))
    try:
        ca = load_certified_key((d / "ca.pem").read_bytes(), (d / "ca.key").read_bytes())
    except (OSError, ValueError) as error:
        raise InitError(f"cannot read the cluster CA in {d} (ca.pem and ca.key, as 'nswarm init' writes them): {error}")
    paths = node_files(d, name)
    for path in paths:
        if os.path.lexists(path):
            if not force:
                raise InitError(f"{path} already exists: pass --force to replace it.")
            os.unlink(path)
    node = issue_client_certificate(ca, name, now=now)
    write_public(paths[0], node.certificate_pem())
    write_private(paths[1], node.key_pem())
    return paths


def issue_api(
    directory: str | os.PathLike[str], name: str, force: bool = False, *, now: datetime.datetime | None = None
) -> tuple[Path, Path, Path, str]:
    """
    Issue an API user C{name}: a certificate naming it (C{nswarm://api/NAME})
    with the cluster CA in C{directory}, its key, and an auth key of its own,
    written to C{DIR/api-NAME.pem}, C{.key} and C{DIR/api-NAME-auth.key}
    (both keys 0600). Returns the three paths and the section to add to the
    master's access file (every right but admin: narrow it there).
    """
    _check_conf_value("API user name", name)
    identity_uri("api", name)
    d = Path(os.path.abspath(directory))
    paths = (d / f"api-{name}.pem", d / f"api-{name}.key", d / f"api-{name}-auth.key")
    _make_room(paths, force)
    user = issue_client_certificate(_load_ca(d), name, role="api", now=now)
    key = new_auth_key()
    write_public(paths[0], user.certificate_pem())
    write_private(paths[1], user.key_pem())
    write_private(paths[2], key + b"\n")
    rights = Rights(call=(">",), publish=(">",), subscribe=(">",))
    section = render([Identity("api", name, rights, key_digest(key))]).split("\n\n", 1)[1]
    return paths[0], paths[1], paths[2], section


def issue_service(directory: str | os.PathLike[str], name: str, force: bool = False) -> tuple[Path, str]:
    """
    Issue a service C{name} its own auth key, written to
    C{DIR/service-NAME.key} (0600). Returns the path and the section to add
    to its node's access file (every right but admin: narrow it there).
    """
    _check_conf_value("service name", name)
    d = Path(os.path.abspath(directory))
    path = d / f"service-{name}.key"
    _make_room((path,), force)
    key = new_auth_key()
    write_private(path, key + b"\n")
    rights = Rights(call=(">",), publish=(">",), subscribe=(">",), implement=(">",))
    section = render([Identity("service", name, rights, key_digest(key))]).split("\n\n", 1)[1]
    return path, section


def _load_ca(d: Path) -> CertifiedKey:
    try:
        return load_certified_key((d / "ca.pem").read_bytes(), (d / "ca.key").read_bytes())
    except (OSError, ValueError) as error:
        raise InitError(f"cannot read the cluster CA in {d} (ca.pem and ca.key, as 'nswarm init' writes them): {error}")


def _make_room(paths: Iterable[Path], force: bool) -> None:
    for path in paths:
        if os.path.lexists(path):
            if not force:
                raise InitError(f"{path} already exists: pass --force to replace it.")
            os.unlink(path)
