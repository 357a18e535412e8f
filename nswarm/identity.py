"""
Identities bound to credentials. A node's (or an API user's) certificate
names its role and name in a URI subject alternative name,
C{nswarm://node/NAME} or C{nswarm://api/NAME}; the master takes a node's name
from the certificate its TLS connection presented, never from what the node
says.
"""

from __future__ import annotations

from typing import Any

from cryptography import x509

#: The URI scheme of identities in certificates.
SCHEME = "nswarm"
#: The roles a certificate can name.
ROLES = ("node", "api")


def identity_uri(role: str, name: str) -> str:
    """The URI naming C{role} C{name} in a certificate: C{nswarm://node/NAME}."""
    if role not in ROLES:
        raise ValueError(f"a certificate names one of the roles {', '.join(ROLES)}, not {role!r}")
    if not name or "/" in name or not name.isprintable() or name != name.strip():
        raise ValueError(f"{name!r} cannot name a {role}: use printable characters, no '/' and no surrounding spaces")
    return f"{SCHEME}://{role}/{name}"


def certificate_identities(certificate: x509.Certificate) -> list[tuple[str, str]]:
    """Every (role, name) that C{certificate} names with an nswarm URI."""
    try:
        names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    found = []
    for uri in names.get_values_for_type(x509.UniformResourceIdentifier):
        scheme, _, rest = uri.partition("://")
        role, _, name = rest.partition("/")
        if scheme == SCHEME and role in ROLES and name:
            found.append((role, name))
    return found


def tls_identity(transport: Any, role: str) -> str | None:
    """
    The name the TLS peer certificate on C{transport} gives its C{role}
    (None if there is no certificate, or it names no C{role}, or more than
    one).
    """
    getter = getattr(transport, "getPeerCertificate", None)
    certificate = getter() if getter is not None else None
    if certificate is None:
        return None
    names = [name for found, name in certificate_identities(certificate.to_cryptography()) if found == role]
    return names[0] if len(names) == 1 else None
