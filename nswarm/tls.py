"""
TLS options built from PEM files, for the master's listeners and their
clients: TLS 1.2 or later, and AEAD cipher suites only, everywhere.
"""

from __future__ import annotations

from pathlib import Path

from twisted.internet import ssl
from twisted.internet.interfaces import IOpenSSLClientConnectionCreator

from nswarm import defaults
from nswarm.config import ConfigError, check_owner_only

AEAD_CIPHERS = defaults.TLS_CIPHERS
"""
The TLS 1.2 cipher suites every listener and client accepts (OpenSSL
syntax): forward-secret key exchange and authenticated encryption only. TLS
1.3's own suites are all AEAD and are always allowed.
"""

MINIMUM_VERSION = ssl.TLSVersion.TLSv1_2
"""The oldest TLS version every listener and client accepts."""

_ciphers = ssl.AcceptableCiphers.fromOpenSSLCipherString(AEAD_CIPHERS)


def _read(source: str, what: str) -> bytes:
    try:
        return Path(source).read_bytes()
    except OSError as error:
        raise ConfigError(f"cannot read the {what} {source}: {error.strerror}")


def certificate(source: str) -> ssl.Certificate:
    """The certificate in PEM file C{source} (a cluster CA)."""
    return ssl.Certificate.loadPEM(_read(source, "certificate"))


def private_certificate(cert: str, key: str) -> ssl.PrivateCertificate:
    """
    The certificate in PEM file C{cert} with its private key from C{key}. A
    key file that users other than its owner may read or write is refused.
    """
    pem = _read(cert, "certificate") + b"\n" + _read(key, "private key")
    check_owner_only(key, "private key")
    try:
        return ssl.PrivateCertificate.loadPEM(pem)
    except Exception as error:
        raise ConfigError(f"{cert} and {key} are not a PEM certificate and its key: {error}")


def server_options(cert: str, key: str, client_ca: str | None = None) -> ssl.CertificateOptions:
    """
    Options for a TLS listener presenting C{cert} (TLS 1.2 or later, AEAD
    suites only). With C{client_ca}, every client must present a certificate
    signed by that CA.
    """
    server = private_certificate(cert, key)
    trust = None if client_ca is None else ssl.trustRootFromCertificates([certificate(client_ca)])
    return ssl.CertificateOptions(
        privateKey=server.privateKey.original,
        certificate=server.original,
        trustRoot=trust,
        raiseMinimumTo=MINIMUM_VERSION,
        acceptableCiphers=_ciphers,
    )


def client_options(
    host: str, ca: str, cert: str | None = None, key: str | None = None
) -> IOpenSSLClientConnectionCreator:
    """
    Options for connecting to C{host}: its certificate must be signed by the
    cluster CA C{ca} and name C{host}; present C{cert} if given. TLS 1.2 or
    later, AEAD suites only.
    """
    client = private_certificate(cert, key) if cert and key else None
    return ssl.optionsForClientTLS(
        host,
        trustRoot=certificate(ca),
        clientCertificate=client,
        extraCertificateOptions={"raiseMinimumTo": MINIMUM_VERSION, "acceptableCiphers": _ciphers},
    )
