"""TLS options built from PEM files, for the master's listeners and their clients."""

from __future__ import annotations

from pathlib import Path

from twisted.internet import ssl
from twisted.internet.interfaces import IOpenSSLClientConnectionCreator

from nswarm.config import ConfigError


def _read(source: str, what: str) -> bytes:
    try:
        return Path(source).read_bytes()
    except OSError as error:
        raise ConfigError(f"cannot read the {what} {source}: {error.strerror}")


def certificate(source: str) -> ssl.Certificate:
    """The certificate in PEM file C{source} (a cluster CA)."""
    return ssl.Certificate.loadPEM(_read(source, "certificate"))


def private_certificate(cert: str, key: str) -> ssl.PrivateCertificate:
    """The certificate in PEM file C{cert} with its private key from C{key}."""
    try:
        return ssl.PrivateCertificate.loadPEM(_read(cert, "certificate") + b"\n" + _read(key, "private key"))
    except Exception as error:
        raise ConfigError(f"{cert} and {key} are not a PEM certificate and its key: {error}")


def server_options(cert: str, key: str, client_ca: str | None = None) -> ssl.CertificateOptions:
    """
    Options for a TLS listener presenting C{cert}. With C{client_ca}, every
    client must present a certificate signed by that CA.
    """
    server = private_certificate(cert, key)
    if client_ca is None:
        return server.options()
    return server.options(certificate(client_ca))


def client_options(
    host: str, ca: str, cert: str | None = None, key: str | None = None
) -> IOpenSSLClientConnectionCreator:
    """
    Options for connecting to C{host}: its certificate must be signed by the
    cluster CA C{ca} and name C{host}; present C{cert} if given.
    """
    client = private_certificate(cert, key) if cert and key else None
    return ssl.optionsForClientTLS(host, trustRoot=certificate(ca), clientCertificate=client)
