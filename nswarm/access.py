"""
The access file: which identities may connect (API users, nodes, services)
and what each may do (call, publish, subscribe, implement, admin), parsed
from INI text into L{Access}. Pure: no reactor, no sockets. See
C{docs/access.md} for the format.
"""

from __future__ import annotations

import configparser
import hashlib
import hmac
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from nswarm.amp_commands import InvalidRequest
from nswarm.config import ConfigError, boolean, read_secret_file
from nswarm.config import path as expand_path
from nswarm.defaults import MAX_NAME_LENGTH
from nswarm.relay.names import check_pattern, matches

#: What a right allows, each a list of patterns.
ACTIONS = ("call", "publish", "subscribe", "implement")
#: The roles of identities.
ROLES = ("api", "node", "service")
#: The keys a section may have.
KEYS = ("key-sha256", "key-file", *ACTIONS, "admin")

_LABELS = {"api": "API user", "service": "service"}
_HEX_DIGEST = re.compile(r"[0-9a-fA-F]{64}")
#: Where configparser would cut a value: an inline comment, or a separator.
_UNWRITABLE = re.compile(r"(^|\s)#|,")


def covers(allow: str, requested: str) -> bool:
    """
    Whether subscription pattern C{allow} matches every event that the
    subscription pattern C{requested} can match: C{orders.>} covers
    C{orders.*} and C{orders.a.>}; C{orders.*} covers C{orders.x} but not
    C{orders.>}; C{>} covers everything.
    """
    if allow == requested or allow == ">":
        return True
    wanted = requested.split(".")
    for index, token in enumerate(allow.split(".")):
        if token == ">":
            return len(wanted) > index
        if index >= len(wanted) or wanted[index] == ">" or (token != "*" and token != wanted[index]):
            return False
    return len(wanted) == len(allow.split("."))


class _Rule:
    """The allow patterns of one action, sorted for a quick test."""

    __slots__ = ("everything", "exact", "wild")

    def __init__(self, patterns: tuple[str, ...]) -> None:
        self.everything = ">" in patterns
        #: Every pattern: a name (or requested pattern) equal to one is allowed.
        self.exact = frozenset(patterns)
        #: The patterns with wildcards, the only ones that allow anything besides themselves.
        self.wild = tuple(p for p in patterns if "*" in p.split(".") or ">" in p.split("."))


@dataclass(frozen=True)
class Rights:
    """
    What one identity may do: for each action, the patterns (as
    subscriptions: C{greet}, C{orders.*}, C{orders.>}, C{>}) of the names it
    may use; and whether it may ask admin queries.
    """

    call: tuple[str, ...] = ()
    publish: tuple[str, ...] = ()
    subscribe: tuple[str, ...] = ()
    implement: tuple[str, ...] = ()
    admin: bool = False
    _rules: dict[str, _Rule] = field(init=False, repr=False, compare=False, default_factory=dict)

    def __post_init__(self) -> None:
        for action in ACTIONS:
            self._rules[action] = _Rule(tuple(getattr(self, action)))

    def allows(self, action: str, name: str) -> bool:
        """
        Whether C{action} on C{name} is allowed. For C{call}, C{publish} and
        C{implement}, C{name} is a method or event name, allowed if an allow
        pattern L{matches} it; for C{subscribe} it is the requested pattern,
        allowed if an allow pattern L{covers} it.
        """
        try:
            rule = self._rules[action]
        except KeyError:
            raise ValueError(f"unknown action {action!r}: use one of {', '.join(ACTIONS)}")
        if rule.everything or name in rule.exact:
            return True
        test = covers if action == "subscribe" else matches
        return any(test(pattern, name) for pattern in rule.wild)


#: Every right.
ALL = Rights(call=(">",), publish=(">",), subscribe=(">",), implement=(">",), admin=True)


def key_digest(key: bytes) -> bytes:
    """The sha256 digest of C{key}, as the access file holds it (in hex)."""
    return hashlib.sha256(key).digest()


@dataclass(frozen=True)
class Identity:
    """
    One identity that may connect: its role (C{api}, C{node} or
    C{service}), its name, its rights, and the sha256 digest of its key
    (API users and services; None for nodes, which authenticate with the
    node auth key and their certificate).
    """

    role: str
    name: str
    rights: Rights
    key_sha256: bytes | None

    def key_matches(self, key: bytes) -> bool:
        """Whether C{key} is this identity's key (in constant time); False if it has no key."""
        if self.key_sha256 is None:
            return False
        return hmac.compare_digest(key_digest(key), self.key_sha256)


class Access:
    """The identities of an access file, by role and name; C{source} names the file."""

    def __init__(self, identities: Mapping[tuple[str, str], Identity], source: str = "") -> None:
        self.identities = dict(identities)
        self.source = source

    def get(self, role: str, name: str) -> Identity | None:
        """The identity C{name} of C{role}, or None if it may not connect."""
        return self.identities.get((role, name))

    def find(self, role: str, name: str) -> Identity | None:
        """The entry that admits C{role} C{name}: its own, else the role's C{*} entry, else None."""
        return self.get(role, name) or self.get(role, "*")

    def names(self, role: str) -> list[str]:
        """The names of the identities of C{role}, sorted."""
        return sorted(name for known, name in self.identities if known == role)

    @classmethod
    def parse(cls, text: str, source: str) -> Access:
        """The access file C{text}, read from C{source}; a L{ConfigError} says what is wrong and the fix."""
        parser = configparser.ConfigParser(
            interpolation=None,
            comment_prefixes=("#",),
            inline_comment_prefixes=("#",),
            default_section="\n",  # no header can name it: [DEFAULT] is a section like the others
        )
        try:
            parser.read_string(text, source=source)
        except configparser.Error as error:
            raise ConfigError(_syntax_error(error, source, text.split("\n")))
        identities: dict[tuple[str, str], Identity] = {}
        for header in parser.sections():
            identity = _identity(header, dict(parser.items(header)), f"{source}, [{header}]")
            if (identity.role, identity.name) in identities:
                raise ConfigError(f"{source}, [{header}]: a second section for it: give each identity one section")
            identities[identity.role, identity.name] = identity
        return cls(identities, source)

    @classmethod
    def load(cls, path: str) -> Access:
        """The access file at C{path} (a L{ConfigError} if it cannot be read or is malformed)."""
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as error:
            raise ConfigError(f"cannot read access file {path}: {error.strerror}")
        except UnicodeDecodeError:
            raise ConfigError(f"access file {path} is not UTF-8 text: write it as UTF-8")
        return cls.parse(text, path)


def _syntax_error(error: configparser.Error, source: str, lines: list[str]) -> str:
    """The sentence for an error of configparser itself in C{lines}, with its line number."""
    if isinstance(error, configparser.DuplicateSectionError):
        return f"{source}, line {error.lineno}: [{error.section}] appears twice: give each identity one section"
    if isinstance(error, configparser.DuplicateOptionError):
        return (
            f"{source}, line {error.lineno}: [{error.section}] gives {error.option!r} twice: "
            "give it once, with all its patterns separated by commas"
        )
    if isinstance(error, configparser.MissingSectionHeaderError):
        return (
            f"{source}, line {error.lineno}: {lines[error.lineno - 1].strip()[:40]!r} is outside any section: "
            "put it under a [ROLE NAME] header, such as [api alice]"
        )
    if isinstance(error, configparser.ParsingError) and error.errors:
        lineno = error.errors[0][0]
        return (
            f"{source}, line {lineno}: cannot read {lines[lineno - 1].strip()[:40]!r}: write KEY = VALUE lines "
            "(continuation lines indented) under a [ROLE NAME] header"
        )
    return f"{source}: {error}"


def _identity(header: str, values: dict[str, str], where: str) -> Identity:
    """The identity of section C{header} holding C{values}; C{where} starts every error sentence."""
    parts = header.split()
    if len(parts) != 2 or parts[0] not in ROLES or len(parts[1]) > MAX_NAME_LENGTH or not parts[1].isprintable():
        raise ConfigError(
            f"{where}: a section header is [ROLE NAME], ROLE one of {', '.join(ROLES)} and NAME 1 to "
            f"{MAX_NAME_LENGTH} printable characters without spaces, such as [api alice]"
        )
    role, name = parts
    for key in values:
        if key not in KEYS:
            raise ConfigError(f"{where}: unknown key {key!r}: the keys are {', '.join(KEYS)}")
    given = [key for key in ("key-sha256", "key-file") if key in values]
    if role == "node" and given:
        raise ConfigError(
            f"{where}: {given[0]!r} is not for nodes, which authenticate with the node auth key and their "
            "certificate: remove it"
        )
    if role != "node" and len(given) != 1:
        raise ConfigError(
            f"{where}: both key-sha256 and key-file: give only one of them"
            if given
            else f"{where}: no key: give key-sha256 = the sha256 of the {_LABELS[role]}'s key (64 hex digits), "
            "or key-file = the path of a file holding the key"
        )
    digest = None
    if "key-sha256" in values:
        value = values["key-sha256"].strip()
        if not _HEX_DIGEST.fullmatch(value):  # the value is not echoed: it may be the key itself
            raise ConfigError(
                f"{where}: 'key-sha256' must be 64 hex digits, the sha256 of the key "
                f"(tr -d '[:space:]' < KEYFILE | sha256sum prints it), not {len(value)} characters"
            )
        digest = bytes.fromhex(value)
    elif "key-file" in values:
        digest = key_digest(_read_key(values["key-file"].strip(), where))
    rights = {action: _patterns(values.get(action, ""), action, where) for action in ACTIONS}
    try:
        admin = boolean(values.get("admin", "no"))
    except ValueError:
        raise ConfigError(f"{where}: 'admin' must be yes or no, not {values['admin'][:20]!r}")
    return Identity(role, name, Rights(**rights, admin=admin), digest)


def _read_key(source: str, where: str) -> bytes:
    """The key in the file C{source} (owner-only, see L{read_secret_file})."""
    if not source:
        raise ConfigError(f"{where}: 'key-file' is empty: give the path of the file holding the key")
    try:
        return read_secret_file(expand_path(source))
    except ConfigError as error:
        fix = ": give the path of a file holding the key" if str(error).startswith("cannot read") else ""
        raise ConfigError(f"{where}: 'key-file': {error}{fix}")


def _patterns(value: str, action: str, where: str) -> tuple[str, ...]:
    """The comma- or newline-separated patterns of C{value}, checked, each once."""
    patterns = [piece.strip() for piece in re.split(r"[,\n]", value) if piece.strip()]
    for pattern in patterns:
        try:
            check_pattern(pattern)
        except InvalidRequest as error:
            reason = str(error).partition(": ")[2] or str(error)
            raise ConfigError(f"{where}: {action!r} has an invalid pattern {pattern[:40]!r}: {reason}")
    return tuple(dict.fromkeys(patterns))


#: The comment at the top of the access files that L{render} writes.
HEADER = """\
# nswarm access file: who may connect, and what each may do. One section per
# identity, [ROLE NAME]: [api NAME] an API user, with its own key; [node NAME] a
# node, named by its certificate, whose rights bound what its services may do;
# [service NAME] (in a node's own access file) a local service, with its own key.
# NAME may be * for any identity of that role not listed by name (a node still
# needs a certificate of the cluster CA; an API user or service, the key).
#   key-sha256 = the sha256 of the key of an api user or service (64 hex digits:
#                tr -d '[:space:]' < KEYFILE | sha256sum), or key-file = PATH of
#                an owner-only file (chmod 600) holding the key;
#   call, publish, subscribe, implement = allow patterns, separated by commas or
#                lines: a name (greet), '*' for one token (orders.*), '>' last for
#                one or more tokens (orders.>), '>' for everything; none: nothing;
#   admin = yes or no (the default): whether it may query the cluster's state.
# To narrow rights, replace '>' with the names or patterns needed, for example
# "call = greet, orders.*"; remove a section to refuse that identity.
# See docs/access.md.
"""


def render(identities: Iterable[Identity]) -> str:
    """
    The text of an access file holding C{identities}, which L{Access.parse}
    reads back, with a header comment explaining the format. A
    C{ValueError} if an identity cannot be written (an API user or service
    without a key digest, a node with one, or a name with a comma).
    """
    sections = [HEADER]
    for identity in identities:
        title = f"{identity.role} {identity.name}"
        if identity.role not in ROLES or (identity.key_sha256 is None) != (identity.role == "node"):
            raise ValueError(f"cannot write {title}: only api users and services have (and need) a key digest")
        rights = identity.rights
        written = [identity.name, *(p for action in ACTIONS for p in getattr(rights, action))]
        if " " in identity.name or any(not text.isprintable() or _UNWRITABLE.search(text) for text in written):
            raise ValueError(f"cannot write {title}: a name with a comma, ' #' or a space does not fit an access file")
        lines = [f"[{title}]"]
        if identity.key_sha256 is not None:
            lines.append(f"key-sha256 = {identity.key_sha256.hex()}")
        lines += [f"{action} = {', '.join(getattr(rights, action))}".rstrip() for action in ACTIONS]
        lines.append(f"admin = {'yes' if rights.admin else 'no'}")
        sections.append("\n".join(lines) + "\n")
    return "\n".join(sections)
