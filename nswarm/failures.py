"""
What went wrong, in one sentence: the failure a client's connection
attempt, TLS handshake or authentication ended with, and where it was
connecting (a L{Target}), turned into a sentence that names the target, the
cause and the fix (L{diagnose}). The node's upstream and the service runner
log it on every failed attempt; the API SDK's C{connect} fails with it.
docs/operations.md lists the sentences.

The servers name themselves in their refusals (L{this_is}), so that a
client pointed at the wrong port can say which server it reached. And
L{address_text} writes an address as logs show it: C{HOST:PORT}, never an
object's repr.
"""

from __future__ import annotations

import errno
from dataclasses import dataclass
from typing import Any

from OpenSSL.SSL import Error as TLSError
from service_identity import VerificationError
from twisted.internet import error
from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.internet.defer import CancelledError
from twisted.internet.defer import TimeoutError as DeferredTimeoutError
from twisted.python.failure import Failure

from nswarm import defaults
from nswarm.amp_commands import AuthenticationFailed, NswarmError, UpstreamUnavailable
from nswarm.config import ConfigError

__all__ = [
    "SERVERS",
    "TLS_FAILURES",
    "Diagnosis",
    "Target",
    "address_text",
    "api_server",
    "cancelled",
    "closed_before_authenticating",
    "diagnose",
    "explain",
    "host_port",
    "node_server",
    "service_socket",
    "this_is",
]

#: The server each role connects to, by the role it serves (a relay protocol's C{role}): (whose, which).
SERVERS = {
    "node": ("master", "node server"),
    "api user": ("master", "api server"),
    "service": ("node", "service server"),
}

#: The exceptions that say the TLS handshake (or the certificate check that follows it) failed.
TLS_FAILURES: tuple[type[Exception], ...] = (TLSError, VerificationError)


def this_is(role: str) -> str:
    """
    The clause that ends every refusal of the server whose peers have
    C{role}: C{"(this is the master's api server)"}. A client that reaches
    the wrong server finds it in the refusal (see L{diagnose}).
    """
    whose, which = SERVERS.get(role, ("relay", f"{role} server"))
    return f"(this is the {whose}'s {which})"


@dataclass(frozen=True)
class Target:
    """
    Where a client connects, as its failures name it: C{address} (C{HOST:PORT}
    or a socket path), the role whose server should answer there
    (C{server}, a key of L{SERVERS}), who connects (C{client}), and the
    settings a user would fix, by what they set: host, port, ca, certificate,
    key, socket.
    """

    address: str
    server: str
    client: str
    settings: dict[str, str]
    host: str | None = None
    ca: str | None = None
    timeout: float | None = None
    #: How the client issues itself a certificate, for the messages that need one.
    issue: str = ""

    def __str__(self) -> str:
        return self.address

    def setting(self, *names: str) -> str:
        """The settings called C{names} here, as a sentence lists them ("upstream-host and upstream-port")."""
        found = [each for name in names if name in self.settings for each in self.settings[name].split(" and ")]
        return " and ".join(found) if len(found) <= 2 else ", ".join(found[:-1]) + " and " + found[-1]


def host_port(host: str, port: int) -> str:
    """C{HOST:PORT}, with an IPv6 host in brackets."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def node_server(host: str, port: int, ca: str, timeout: float = defaults.CONNECT_TIMEOUT) -> Target:
    """The master's node server, as a node's upstream reaches it (the settings are node.conf's)."""
    return Target(
        host_port(host, port),
        "node",
        "node",
        {
            "host": "upstream-host",
            "port": "upstream-port",
            "ca": "ca",
            "cert": "node-cert and node-cert-key",
            "key": "upstream-auth-key-file",
        },
        host=host,
        ca=ca,
        timeout=timeout,
        issue="nswarm issue node NAME",
    )


def api_server(host: str, port: int, ca: str, timeout: float = defaults.CONNECT_TIMEOUT) -> Target:
    """The master's api server, as the API SDK reaches it (the settings are C{connect}'s and client.conf's)."""
    return Target(
        host_port(host, port),
        "api user",
        "client",
        {"host": "host", "port": "port", "ca": "ca", "cert": "cert and cert-key", "key": "key"},
        host=host,
        ca=ca,
        timeout=timeout,
        issue="nswarm issue api NAME",
    )


def service_socket(path: str) -> Target:
    """A node's service server at UNIX socket C{path}, as a service reaches it."""
    return Target(path, "service", "service", {"socket": "socket", "key": "auth-key-file"})


@dataclass(frozen=True)
class Diagnosis:
    """What went wrong: a short C{cause} for programs (a log field), and the C{message} for people."""

    cause: str
    message: str

    def __str__(self) -> str:
        return self.message


def explain(failure: Failure | BaseException, target: Target) -> str:
    """The sentence that says why connecting to C{target} failed with C{failure}, and what to do."""
    return diagnose(failure, target).message


def diagnose(failure: Failure | BaseException, target: Target) -> Diagnosis:
    """
    Why connecting to C{target} failed with C{failure} (from the endpoint,
    the TLS handshake, or the client's authentication and registration),
    and what to do about it.
    """
    value = failure.value if isinstance(failure, Failure) else failure
    if value is None:
        value = Exception("an unknown failure")
    if isinstance(value, TLS_FAILURES):
        return _tls(value, target)
    if isinstance(value, AuthenticationFailed):
        return _refused(str(value), target)
    if isinstance(value, (UpstreamUnavailable, error.ConnectionClosed)):
        return Diagnosis("closed", closed_before_authenticating(target))
    if isinstance(value, (NswarmError, ConfigError)):
        # Refused after authenticating (a registration), or a check of the client's own: the message says it all.
        return Diagnosis("refused", str(value))
    if target.host is None:
        return _unix(value, target)
    return _tcp(value, target)


def _tcp(value: BaseException, target: Target) -> Diagnosis:
    where, whose, which = target.address, *SERVERS[target.server]
    if isinstance(value, error.ConnectionRefusedError):
        return Diagnosis(
            "refused",
            f"connection refused by {where}: is the {whose} running, and is this its {which.split()[0]} port? "
            f"Check {target.setting('host', 'port')}",
        )
    if isinstance(value, (error.TimeoutError, error.TCPTimedOutError, DeferredTimeoutError)):
        within = f" within {target.timeout:g} s" if target.timeout is not None else ""
        return Diagnosis(
            "timeout",
            f"{where} did not answer{within}: check {target.setting('host', 'port')}, "
            "and that no firewall drops the connection",
        )
    if isinstance(value, (error.DNSLookupError, error.UnknownHostError)):
        return Diagnosis("dns", f"cannot resolve the host name {target.host!r}: check {target.setting('host')}")
    if isinstance(value, error.NoRouteError):
        return Diagnosis("unreachable", f"no route to {where}: check {target.setting('host')} and the network")
    return Diagnosis("other", f"cannot connect to {where}: {_detail(value)}: check {target.setting('host', 'port')}")


def _unix(value: BaseException, target: Target) -> Diagnosis:
    path, number = target.address, getattr(value, "osError", None)
    if number == errno.ENOENT or isinstance(value, FileNotFoundError):
        return Diagnosis("no_socket", f"{path} does not exist: is the node running, and is this its service-socket?")
    if number in (errno.EACCES, errno.EPERM) or isinstance(value, PermissionError):
        return Diagnosis(
            "permission",
            f"permission denied on {path}: the node's socket is for its own user only: run the service as the "
            f"node's user, or check {target.setting('socket')}",
        )
    if isinstance(value, error.ConnectionRefusedError):
        return Diagnosis(
            "refused",
            f"{path} refuses connections: no node is listening on it (a node that stopped left it behind, or it "
            f"is not a socket): start the node, or check {target.setting('socket')}",
        )
    return Diagnosis("other", f"cannot connect to {path}: {_detail(value)}: check {target.setting('socket')}")


def _tls(value: BaseException, target: Target) -> Diagnosis:
    where, whose = target.address, SERVERS[target.server][0]
    if isinstance(value, VerificationError):
        return Diagnosis(
            "tls_hostname",
            f"the {whose}'s certificate at {where} does not name {target.host!r}: set {target.setting('host')} to "
            f"a name in that certificate (nswarm init's --master-host), or issue the {whose} a certificate for it",
        )
    detail = _tls_reasons(value)
    reason = detail.lower()
    cert, ca = target.setting("cert"), target.setting("ca")
    if "certificate verify failed" in reason:
        return Diagnosis(
            "tls_untrusted",
            f"the {whose}'s certificate at {where} is not signed by the CA in {target.ca} (or it has expired): "
            f"give as {ca} the cluster's ca.pem, the one that signed the {whose}'s certificate",
        )
    if "unknown ca" in reason:
        return Diagnosis(
            "tls_certificate_refused",
            f"{where} did not accept this {target.client}'s certificate: it is not signed by the cluster's CA: "
            f"issue one from the cluster's directory ({target.issue}) and give it as {cert}",
        )
    if "certificate required" in reason:
        also = ", or, if this is the master's node port, connect to its api port" if target.server == "api user" else ""
        return Diagnosis(
            "tls_certificate_required",
            f"{where} requires a certificate signed by the cluster's CA from this {target.client}: "
            f"give {cert} ({target.issue} issues one){also}",
        )
    if any(word in reason for word in ("bad certificate", "certificate expired", "revoked", "unsupported certificate")):
        return Diagnosis(
            "tls_certificate_refused",
            f"{where} refused this {target.client}'s certificate ({detail}): issue a new one ({target.issue}) "
            f"and give it as {cert}",
        )
    if "unexpected eof" in reason:
        return Diagnosis("closed", closed_before_authenticating(target))
    if any(
        word in reason for word in ("wrong version number", "packet length too long", "http request", "record layer")
    ):
        return Diagnosis(
            "not_tls",
            f"{where} does not speak TLS: it is not an nswarm master's port: check {target.setting('host', 'port')}",
        )
    if any(word in reason for word in ("protocol", "cipher", "handshake failure")):
        return Diagnosis(
            "tls_incompatible",
            f"{where} and this {target.client} have no TLS version or cipher suite in common ({detail}): nswarm "
            "needs TLS 1.2 or later with AEAD suites at both ends",
        )
    return Diagnosis("tls", f"TLS with {where} failed ({detail}): check {target.setting('ca', 'cert')}")


def _refused(message: str, target: Target) -> Diagnosis:
    """An authentication refused: by the server expected, or by another one (the wrong port)."""
    for role, (whose, which) in SERVERS.items():
        if role != target.server and this_is(role) in message:
            expected_whose, expected = SERVERS[target.server]
            its = "its" if whose == expected_whose else f"the {expected_whose}'s"
            return Diagnosis(
                "wrong_server",
                f"{target.address} is the {whose}'s {which}, not {its} {expected}: check {target.setting('port')}",
            )
    whose, which = SERVERS[target.server]
    return Diagnosis(
        "authentication", f"the {whose}'s {which} at {target.address} refused this {target.client}: {message}"
    )


def closed_before_authenticating(target: Target) -> str:
    """What it means when C{target} closed the connection before the client was in (authenticated, registered)."""
    where, whose = target.address, SERVERS[target.server][0]
    key = target.setting("key")
    if target.host is None:
        return (
            f"{where} closed the connection before this service authenticated: a node refuses services that "
            f"failed to authenticate too often for a while (wait a few seconds, and check {key}), or it is stopping"
        )
    return (
        f"{where} closed the connection before this {target.client} authenticated: a {whose} refuses an address "
        f"that failed to authenticate too often for a while (its log says authentication_failed; wait a few "
        f"seconds, and check the {key}), or it did not accept this {target.client}'s TLS (check "
        f"{target.setting('ca', 'cert')})"
    )


def _tls_reasons(value: BaseException) -> str:
    """The reasons in an OpenSSL error ("certificate verify failed"), or its text."""
    reasons = [
        entry[2]
        for entry in (value.args[0] if value.args and isinstance(value.args[0], list) else [])
        if isinstance(entry, tuple) and len(entry) == 3 and entry[2]
    ]
    return "; ".join(reasons) or _detail(value)


def _detail(value: BaseException) -> str:
    """What an exception says, for the middle of a sentence: its OS error text if it has one."""
    if isinstance(value, error.ConnectError) and value.args and value.args[0]:
        text = value.args[0]  # its OS error's text, without Twisted's "An error occurred while connecting"
    else:
        text = getattr(value, "strerror", None) or str(value) or type(value).__name__
    return str(text).rstrip(".")


def cancelled(failure: Failure) -> bool:
    """Whether C{failure} is only a cancelled attempt (the client is stopping), which is not worth a sentence."""
    return failure.check(CancelledError, error.ConnectingCancelledError) is not None


def address_text(address: Any) -> str:
    """
    An address as logs show it: C{HOST:PORT} (an IPv6 host in brackets), a
    UNIX socket's path, a string as it is; never an object's repr.
    """
    if isinstance(address, str):
        return address
    if isinstance(address, (IPv4Address, IPv6Address)):
        return host_port(address.host, address.port)
    if isinstance(address, UNIXAddress):
        name = address.name
        text = name.decode("utf-8", "replace") if isinstance(name, bytes) else name
        return text or "an unnamed UNIX socket"
    if address is None:
        return "(disconnected)"
    return f"an address of type {type(address).__name__}"
