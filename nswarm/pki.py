"""
The cluster's small public key infrastructure: its CA, certificates and keys
(C{nswarm init} writes them through L{nswarm.cluster_files}).

One private certificate authority signs everything: the master's server
certificate (which nodes and API clients verify) and the client certificates
of nodes and API users (which the master verifies, mutual TLS). On top of TLS,
every connection authenticates with a shared random key read from a file.

All functions here are pure apart from the file writers: time (C{now}) and the
key curve are arguments, so tests can pin them down. Keys are EC P-256 (fast to
make, small, accepted by every TLS stack); nothing shells out to openssl.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import secrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from nswarm.identity import identity_uri

__all__ = [
    "CLOCK_SKEW",
    "DEFAULT_VALIDITY",
    "CertifiedKey",
    "certificate_pem",
    "issue_client_certificate",
    "issue_server_certificate",
    "make_ca",
    "new_auth_key",
    "new_private_key",
    "private_key_pem",
    "subject_alternative_names",
    "write_private",
    "write_public",
]

DEFAULT_VALIDITY = datetime.timedelta(days=3650)
"""How long certificates are valid by default: ten years."""

CLOCK_SKEW = datetime.timedelta(hours=1)
"""How far back C{not_valid_before} is set, so a peer whose clock is slightly
behind does not reject a certificate made a moment ago."""

CA_COMMON_NAME = "nswarm CA"


@dataclass(frozen=True)
class CertifiedKey:
    """A certificate together with its private key."""

    certificate: x509.Certificate
    key: ec.EllipticCurvePrivateKey

    def certificate_pem(self) -> bytes:
        """The certificate, PEM encoded."""
        return certificate_pem(self.certificate)

    def key_pem(self) -> bytes:
        """The private key, PEM encoded (PKCS#8, unencrypted)."""
        return private_key_pem(self.key)


def new_private_key(curve: ec.EllipticCurve | None = None) -> ec.EllipticCurvePrivateKey:
    """Make a new EC private key, on P-256 unless another C{curve} is given."""
    return ec.generate_private_key(curve if curve is not None else ec.SECP256R1())


def _utcnow(now: datetime.datetime | None) -> datetime.datetime:
    if now is None:
        return datetime.datetime.now(datetime.timezone.utc)
    if now.tzinfo is None:
        raise ValueError("now must be a timezone-aware datetime")
    return now


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "nswarm"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _builder(
    subject: x509.Name,
    issuer: x509.Name,
    public_key: ec.EllipticCurvePublicKey,
    now: datetime.datetime,
    valid_for: datetime.timedelta,
) -> x509.CertificateBuilder:
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - CLOCK_SKEW)
        .not_valid_after(now + valid_for)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
    )


def _end_entity_key_usage() -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=False,
        crl_sign=False,
        encipher_only=False,
        decipher_only=False,
    )


def _authority_key_identifier(ca: CertifiedKey) -> x509.AuthorityKeyIdentifier:
    ski = ca.certificate.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
    return x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski.value)


def make_ca(
    common_name: str = CA_COMMON_NAME,
    *,
    now: datetime.datetime | None = None,
    valid_for: datetime.timedelta = DEFAULT_VALIDITY,
    curve: ec.EllipticCurve | None = None,
) -> CertifiedKey:
    """
    Make a self-signed certificate authority that may sign end-entity
    certificates only (path length 0).
    """
    when = _utcnow(now)
    key = new_private_key(curve)
    name = _name(common_name)
    certificate = (
        _builder(name, name, key.public_key(), when, valid_for)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(key, hashes.SHA256())
    )
    return CertifiedKey(certificate, key)


def subject_alternative_names(hosts: Iterable[str]) -> list[x509.GeneralName]:
    """
    Turn host names and addresses into SAN entries, in order and without
    duplicates: an IP address ("127.0.0.1", "::1") becomes an
    C{x509.IPAddress}, anything else a C{x509.DNSName}.
    """
    names: list[x509.GeneralName] = []
    for host in hosts:
        host = host.strip()
        if not host:
            raise ValueError("a host name must not be empty")
        entry: x509.GeneralName
        try:
            entry = x509.IPAddress(ipaddress.ip_address(host))
        except ValueError:
            entry = x509.DNSName(host)
        if entry not in names:
            names.append(entry)
    return names


def issue_server_certificate(
    ca: CertifiedKey,
    hosts: Sequence[str],
    *,
    common_name: str | None = None,
    now: datetime.datetime | None = None,
    valid_for: datetime.timedelta = DEFAULT_VALIDITY,
    curve: ec.EllipticCurve | None = None,
) -> CertifiedKey:
    """
    Issue a TLS server certificate signed by C{ca}, valid for every name and
    address in C{hosts}. The common name defaults to the first host.
    """
    sans = subject_alternative_names(hosts)
    if not sans:
        raise ValueError("a server certificate needs at least one host")
    when = _utcnow(now)
    key = new_private_key(curve)
    certificate = (
        _builder(
            _name(common_name if common_name is not None else hosts[0].strip()),
            ca.certificate.subject,
            key.public_key(),
            when,
            valid_for,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_end_entity_key_usage(), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(_authority_key_identifier(ca), critical=False)
        .sign(ca.key, hashes.SHA256())
    )
    return CertifiedKey(certificate, key)


def issue_client_certificate(
    ca: CertifiedKey,
    name: str,
    *,
    role: str = "node",
    now: datetime.datetime | None = None,
    valid_for: datetime.timedelta = DEFAULT_VALIDITY,
    curve: ec.EllipticCurve | None = None,
) -> CertifiedKey:
    """
    Issue a TLS client certificate signed by C{ca} for the C{role} (C{"node"}
    or C{"api"}) named C{name}: the common name and a DNS SAN carry C{name},
    and a URI SAN the identity the master checks (C{nswarm://node/NAME}, see
    L{nswarm.identity}).
    """
    if not name:
        raise ValueError("a client certificate needs a name")
    uri = identity_uri(role, name)
    when = _utcnow(now)
    key = new_private_key(curve)
    certificate = (
        _builder(_name(name), ca.certificate.subject, key.public_key(), when, valid_for)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_end_entity_key_usage(), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName(name), x509.UniformResourceIdentifier(uri)]), critical=False
        )
        .add_extension(_authority_key_identifier(ca), critical=False)
        .sign(ca.key, hashes.SHA256())
    )
    return CertifiedKey(certificate, key)


def load_certified_key(certificate_pem: bytes, key_pem: bytes) -> CertifiedKey:
    """A certificate and its private key from PEM (the CA's, to issue more certificates)."""
    certificate = x509.load_pem_x509_certificate(certificate_pem)
    key = serialization.load_pem_private_key(key_pem, password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ValueError("the key is not an EC private key made by nswarm init")
    return CertifiedKey(certificate, key)


def certificate_pem(certificate: x509.Certificate) -> bytes:
    """Encode a certificate as PEM."""
    return certificate.public_bytes(serialization.Encoding.PEM)


def private_key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    """Encode a private key as unencrypted PKCS#8 PEM (the file is 0600)."""
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def new_auth_key() -> bytes:
    """
    Make a new shared authentication key: 64 hex digits (256 random bits).
    Readers strip surrounding whitespace, so the file may end with a newline.
    """
    return secrets.token_hex(32).encode("ascii")


def _write_new(path: str | os.PathLike[str], data: bytes, mode: int) -> None:
    # O_EXCL: never follow a planted symlink or reuse a file with looser
    # permissions; the mode applies from the moment the file exists.
    fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, mode)
    try:
        os.fchmod(fd, mode)  # exact mode, whatever the umask
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
    finally:
        os.close(fd)


def write_private(path: str | os.PathLike[str], data: bytes) -> None:
    """
    Create C{path} with mode 0600 and write C{data}. The file is created with
    that mode, so it is never readable by others; an existing file is an error
    (C{FileExistsError}).
    """
    _write_new(path, data, 0o600)


def write_public(path: str | os.PathLike[str], data: bytes) -> None:
    """
    Create C{path} with mode 0644 and write C{data}; an existing file is an
    error (C{FileExistsError}).
    """
    _write_new(path, data, 0o644)
