"""
TLS for the asyncio client, with the standard library's C{ssl}: the same
trust and hostname rules as L{nswarm.tls.client_options} gives Twisted. The
master's certificate must be signed by the cluster CA (that CA only, not
the system's) and name the host connected to; TLS 1.2 or later, AEAD
cipher suites only; a client certificate is presented if given, its key
file refused unless only its owner may read it.
"""

from __future__ import annotations

import ssl

from nswarm import defaults
from nswarm.config import ConfigError, check_owner_only


def client_context(ca: str, cert: str | None = None, key: str | None = None) -> ssl.SSLContext:
    """
    An C{ssl.SSLContext} that trusts only the cluster CA in PEM file C{ca},
    checks the host name, and presents C{cert} (with its key C{key}) if given.
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # verifies the certificate and the host name
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers(defaults.TLS_CIPHERS)
    try:
        context.load_verify_locations(cafile=ca)
    except (OSError, ssl.SSLError) as error:
        raise ConfigError(f"cannot read the certificate {ca}: {getattr(error, 'strerror', None) or error}")
    if cert and key:
        check_owner_only(key, "private key")
        try:
            context.load_cert_chain(cert, key)
        except (OSError, ssl.SSLError) as error:
            raise ConfigError(f"{cert} and {key} are not a PEM certificate and its key: {error}")
    return context


def explain(error: BaseException, host: str, port: int, ca: str) -> str:
    """What a failed TLS connection to C{host}:C{port} means, and what to do, in a sentence."""
    where = f"{host}:{port}"
    if isinstance(error, ssl.SSLCertVerificationError):
        if "hostname" in str(error).lower() or "ip address mismatch" in str(error).lower():
            return (
                f"the certificate of {where} does not name {host!r}: connect with the host name the master's "
                "certificate was issued for (see nswarm issue master), or issue it a certificate naming this one"
            )
        return (
            f"the certificate of {where} is not signed by the cluster CA {ca}: check that this is the cluster's "
            f"master and that ca points at its ca.pem ({error.verify_message})"
        )
    if isinstance(error, ssl.SSLError):
        return f"the TLS handshake with {where} failed ({error.reason or error}): is it the master's api port?"
    if isinstance(error, ConnectionRefusedError):
        return f"nothing listens on {where}: is the master running, and is this its api port?"
    if isinstance(error, TimeoutError):
        return f"{where} did not answer in time: is the master stopped, overloaded or firewalled?"
    return f"cannot connect to {where}: {error}"
