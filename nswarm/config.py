"""
Configuration: twistd options whose defaults come from INI files, secrets read
from files, and the client configuration the SDKs read.
"""

from __future__ import annotations

import configparser
import os
import re
import shlex
import stat
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, ClassVar

from twisted.python import usage

from nswarm import defaults


def port(value: str) -> int:
    """A TCP port number; 0 lets the system choose a free one."""
    number = int(value)
    if not 0 <= number <= 65535:
        raise ValueError(f"{value} is not a port number (0 to 65535)")
    return number


def positive(value: str) -> float:
    """A number of seconds greater than zero."""
    number = float(value)
    if not number > 0:
        raise ValueError(f"{value} is not greater than zero")
    return number


def count(value: str) -> int:
    """A whole number, zero or more."""
    number = int(value)
    if number < 0:
        raise ValueError(f"{value} is not zero or more")
    return number


def non_negative(value: str) -> float:
    """A number of seconds, zero or more."""
    number = float(value)
    if not number >= 0:
        raise ValueError(f"{value} is not zero or more")
    return number


def boolean(value: str) -> bool:
    """yes/no, true/false, on/off or 1/0."""
    lowered = value.strip().lower()
    if lowered in ("yes", "true", "on", "1"):
        return True
    if lowered in ("no", "false", "off", "0"):
        return False
    raise ValueError(f"{value} is not yes or no")


def file_mode(value: str) -> int:
    """A permission mode written in octal, such as 600."""
    mode = int(value, 8)
    if not 0 <= mode <= 0o777:
        raise ValueError(f"{value} is not a permission mode such as 600")
    return mode


def path(value: str) -> str:
    """A file path; a leading ~ is expanded."""
    return os.path.expanduser(value)


#: Endpoint types that listen on an interface: their loopback address, and the interface's place among their arguments.
_LOOPBACK = {"tcp": ("127.0.0.1", 2), "ssl": ("127.0.0.1", 5), "tcp6": ("\\:\\:1", 3)}


def http_endpoint(value: str) -> str:
    """
    A Twisted server endpoint string (such as C{tcp:9100}) for the HTTP
    listener; a bare port number means C{tcp:PORT}. A C{tcp}, C{ssl} or
    C{tcp6} endpoint that names no interface gets this machine's loopback
    address (C{127.0.0.1}, C{::1}): the listener is public only if asked.
    """
    value = value.strip()
    if value.isdigit():
        value = f"tcp:{value}"
    kind, _, rest = value.partition(":")
    parts = [part for part in re.split(r"(?<!\\):", rest) if part] if rest else []
    named = {part.split("=", 1)[0] for part in parts if "=" in part}
    positional = [part for part in parts if "=" not in part]
    loopback, position = _LOOPBACK.get(kind.lower(), (None, 0))
    if loopback is not None and "interface" not in named and len(positional) < position:
        value = f"{value}:interface={loopback}"
    from twisted.internet.endpoints import serverFromString

    try:
        serverFromString(None, value)
    except (ValueError, TypeError, KeyError, OSError) as error:
        raise ValueError(f"{value!r} is not a server endpoint string such as tcp:9100 ({error})")
    return value


class ConfigError(ValueError):
    """A configuration or key file is missing or malformed; the message says which and how to fix it."""


class DaemonOptions(usage.Options):
    """
    Options of a daemon, whose defaults are read from INI files: the
    C{[section]} of C{/etc/nswarm-SECTION.conf}, then of
    C{~/.nswarm-SECTION.conf}, then of the C{--config} file; each later
    source overrides the earlier ones, and the command line overrides them
    all. Keys in the files are the long option names.
    """

    section: ClassVar[str]
    optParameters: ClassVar[list[list[Any]]]

    def __init__(self) -> None:
        super().__init__()
        # usage.Options does not coerce defaults: do it here, so that a
        # default like "~/.nswarm/node.sock" or "600" arrives as the
        # command line's value would.
        for name, _, default, _, coerce in self.optParameters:
            if isinstance(default, str):
                self[name] = coerce(default)

    def system_config_files(self) -> list[str]:
        """The config files read before C{--config}: C{/etc/nswarm-SECTION.conf}, then C{~/.nswarm-SECTION.conf}."""
        return [f"/etc/nswarm-{self.section}.conf", os.path.expanduser(f"~/.nswarm-{self.section}.conf")]

    def parseOptions(self, options: Sequence[str] | None = None) -> None:
        argv = list(sys.argv[1:] if options is None else options)
        # A first parse, with the same parser, finds --config however it
        # was spelt (-cFILE, --conf=FILE, ...) before the files are read.
        probe = type(self)()
        probe.postOptions = lambda: None  # type: ignore[method-assign]
        usage.Options.parseOptions(probe, argv)
        for source in self.system_config_files():
            if os.path.exists(source):
                self.load_config(source)
        explicit = probe["config"]
        if explicit is not None:
            if not os.path.isfile(explicit):
                raise usage.UsageError(f"config file {explicit} does not exist: give the path of an INI file")
            self.load_config(explicit)
        try:
            super().parseOptions(argv)
        except ConfigError as error:
            raise usage.UsageError(str(error))

    def load_config(self, source: str) -> None:
        """Take the values in C{source}'s section as defaults, coerced like the command line's."""
        parser = configparser.ConfigParser(interpolation=None)
        try:
            parser.read(source, encoding="utf-8")
        except (configparser.Error, UnicodeDecodeError) as error:
            raise usage.UsageError(f"cannot read config file {source}: {error}")
        if not parser.has_section(self.section):
            raise usage.UsageError(f"config file {source} has no [{self.section}] section")
        coercers: dict[str, Callable[[str], Any]] = {
            parameter[0]: parameter[4] for parameter in self.optParameters if parameter[0] != "config"
        }
        for key, value in parser.items(self.section):
            if key not in coercers:
                raise usage.UsageError(f"unknown option {key!r} in [{self.section}] of {source}")
            try:
                self[key] = coercers[key](value)
            except ValueError as error:
                raise usage.UsageError(f"bad value for {key} in {source}: {error}")

    def secret(self, name: str) -> bytes:
        """
        The secret given as C{--NAME} or, better (it stays out of process
        listings), as the contents of the file C{--NAME-file}.
        """
        value, source = self[name], self[name + "-file"]
        if value and source:
            raise usage.UsageError(f"give either --{name} or --{name}-file, not both")
        if source:
            value = read_secret_file(source)
        if not value:
            raise usage.UsageError(f"no {name} given: use --{name}-file FILE (nswarm init creates one)")
        return value.encode("utf-8") if isinstance(value, str) else value


def read_secret_file(source: str) -> bytes:
    """
    The key stored in C{source}, without surrounding white space. A file
    that users other than its owner may read or write is refused (see
    L{check_owner_only}).
    """
    try:
        key = Path(source).read_bytes().strip()
    except OSError as error:
        raise ConfigError(f"cannot read key file {source}: {error.strerror}")
    if not key:
        raise ConfigError(f"key file {source} is empty: put the auth key in it")
    check_owner_only(source, "key file")
    return key


def check_owner_only(source: str, what: str) -> None:
    """
    Refuse the secret file C{source} (a C{what}, such as C{"key file"}) if
    its group or other users may read or write it: a L{ConfigError} that
    gives the C{chmod} command fixing it. Symbolic links are followed.
    """
    try:
        mode = stat.S_IMODE(os.stat(source).st_mode)
    except OSError as error:
        raise ConfigError(f"cannot read {what} {source}: {error.strerror}")
    access = [word for word, bits in (("readable", 0o044), ("writable", 0o022)) if mode & bits]
    if access:
        raise ConfigError(
            f"{what} {source} is {' and '.join(access)} by other users (mode {mode:04o}): "
            f"run chmod 600 {shlex.quote(source)}"
        )


def secret_parameters(name: str, doc: str) -> list[list[Any]]:
    """The C{--NAME} and C{--NAME-file} option pair of one secret."""
    return [
        [name, None, None, f"{doc} (visible in process listings: prefer --{name}-file)", str],
        [f"{name}-file", None, None, f"File holding the {doc}", path],
    ]


def limit_parameters(subscriber: str, names: int = defaults.METHODS_PER_CONNECTION) -> list[list[Any]]:
    """
    The limit options of a daemon whose subscribers (and registering peers)
    are C{subscriber}s, each of which may register up to C{names} methods
    and as many patterns by default.
    """
    return [
        [
            "max-payload",
            None,
            str(defaults.MAX_PAYLOAD),
            "Largest call arguments, result or event payload in bytes; larger ones get PayloadTooLarge",
            count,
        ],
        [
            "subscriber-buffer",
            None,
            str(defaults.SUBSCRIBER_BUFFER),
            f"Bytes of events that may wait for {subscriber} that is not reading them; past it they are dropped",
            count,
        ],
        [
            "send-buffer",
            None,
            str(defaults.SEND_BUFFER),
            "Bytes of anything that may wait for a peer that is not reading (it is not read from meanwhile); "
            "past it the connection is closed",
            count,
        ],
        [
            "calls-in-flight",
            None,
            str(defaults.CALLS_IN_FLIGHT),
            "Calls one connection may have in flight at once; more get Overloaded (0: no limit)",
            count,
        ],
        [
            "methods-per-connection",
            None,
            str(names),
            f"Methods {subscriber} may implement; more get LimitExceeded",
            count,
        ],
        [
            "patterns-per-connection",
            None,
            str(names),
            f"Subscription patterns {subscriber} may have; more get LimitExceeded",
            count,
        ],
    ]


def http_parameters() -> list[list[Any]]:
    """The options of a daemon's HTTP listener (metrics, status and dashboard): C{--http}, C{--http-token-file}."""
    return [
        [
            "http",
            None,
            None,
            "Serve /metrics, /status.json and the dashboard on this endpoint (such as tcp:9100; "
            "on 127.0.0.1 unless it names an interface)",
            http_endpoint,
        ],
        [
            "http-token-file",
            None,
            None,
            "File holding the bearer token /metrics and /status.json require (without it they are open)",
            path,
        ],
    ]


def http_token(options: usage.Options) -> bytes | None:
    """The bearer token of the HTTP listener, read from C{--http-token-file} (checked like a key file), or None."""
    source = options["http-token-file"]
    if source is None:
        return None
    if options["http"] is None:
        raise usage.UsageError("--http-token-file is given without --http: give the endpoint to listen on too")
    return read_secret_file(source)


def read_client_config(source: str, section: str) -> dict[str, str]:
    """The C{[section]} (C{api} or C{service}) of a client.conf written by C{nswarm init}."""
    parser = configparser.ConfigParser(interpolation=None)
    try:
        found = parser.read(source, encoding="utf-8")
    except (configparser.Error, UnicodeDecodeError) as error:
        raise ConfigError(f"cannot read client config {source}: {error}")
    if not found:
        raise ConfigError(f"client config {source} does not exist: run 'nswarm init DIR' to create one")
    if not parser.has_section(section):
        raise ConfigError(f"client config {source} has no [{section}] section")
    return {key: os.path.expanduser(value) for key, value in parser.items(section)}


_ADDRESS = re.compile(r"^(?:\[(?P<v6>[^\]]+)\]|(?P<host>[^:\[\]]+))(?::(?P<port>[^:]*))?$")


def addresses(value: str, default_port: int) -> list[tuple[str, int]]:
    """
    The masters a client.conf's C{host} names: one or more of C{HOST},
    C{HOST:PORT} or C{[IPv6]:PORT} (a bare IPv6 address is a host too),
    separated by commas or spaces; those without a port get C{default_port}.
    """
    found: list[tuple[str, int]] = []
    for item in re.split(r"[,\s]+", value.strip()):
        if not item:
            continue
        match = _ADDRESS.match(item)
        if match is None:
            if item.count(":") > 1 and "[" not in item:  # an IPv6 address without a port
                found.append((item, default_port))
                continue
            raise ValueError(f"{item!r} is not HOST, HOST:PORT or [IPv6]:PORT")
        host, text = match.group("v6") or match.group("host"), match.group("port")
        try:
            number = default_port if text is None else port(text)
        except ValueError:
            raise ValueError(f"{item!r} does not end in a port number (HOST:PORT, PORT from 1 to 65535)")
        if number == 0:
            raise ValueError(f"{item!r} has no port to connect to: give one from 1 to 65535")
        found.append((host, number))
    if not found:
        raise ValueError("no host is given: give HOST, HOST:PORT, or several separated by commas")
    return found


def names(value: str) -> list[str]:
    """A list of names (methods) in a config file: separated by commas or spaces."""
    return [name for name in re.split(r"[,\s]+", value.strip()) if name]


def require(settings: dict[str, str], key: str, source: str, section: str) -> str:
    """C{settings[key]}, or a L{ConfigError} naming the missing key."""
    value = settings.get(key)
    if not value:
        raise ConfigError(f"{source} has no {key} in its [{section}] section: add it (nswarm init writes one)")
    return value


def connection_settings(options: usage.Options) -> dict[str, Any]:
    """The keyword arguments of a daemon's listener (a C{RelayFactory}) that its options give."""
    return {
        "auth_timeout": options["auth-timeout"],
        "heartbeat": options["heartbeat"],
        "max_payload": options["max-payload"],
        "subscriber_buffer": options["subscriber-buffer"],
        "send_buffer": options["send-buffer"],
        "calls_in_flight": options["calls-in-flight"],
        "access": getattr(options, "access", None),
        "max_methods": options["methods-per-connection"],
        "max_patterns": options["patterns-per-connection"],
    }


def load_access(source: str | None) -> Any:
    """The access file at C{source} (None if not given), or a usage error with the sentence saying what is wrong."""
    if source is None:
        return None
    from nswarm.access import Access

    try:
        return Access.load(source)
    except ConfigError as error:
        raise usage.UsageError(str(error))
