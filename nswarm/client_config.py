"""
The C{[api]} section of a client.conf (C{nswarm init} writes one), read
once for every front end: L{nswarm.api.connect_from_config} (Twisted),
L{nswarm.aio.connect_from_config} and L{nswarm.sync.connect_from_config}
all take the same keys with the same meaning.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from nswarm import defaults
from nswarm.config import ConfigError, addresses, boolean, names, read_client_config, read_secret_file, require


def api_settings(
    source: str, *, reconnect: bool | None = None, idempotent: Iterable[str] | None = None
) -> dict[str, Any]:
    """
    The keyword arguments of C{connect} (C{key}, C{ca}, C{cert}, C{cert_key},
    C{name}, C{hosts}, C{reconnect}, C{idempotent}) that client.conf
    C{source} gives; C{reconnect} and C{idempotent}, if given, take the
    place of the file's keys of those names. A L{ConfigError} names the file
    and the key that is wrong.
    """
    config = read_client_config(source, "api")
    key = read_secret_file(require(config, "auth-key-file", source, "api"))
    ca = require(config, "ca", source, "api")
    port = _setting(config, "port", int, defaults.API_PORT, source)
    masters = _setting(config, "host", lambda value: addresses(value, port), [("localhost", port)], source)
    if reconnect is None:
        reconnect = _setting(config, "reconnect", boolean, True, source)
    if idempotent is None:
        idempotent = names(config.get("idempotent", ""))
    return {
        "key": key,
        "ca": ca,
        "cert": config.get("cert"),
        "cert_key": config.get("cert-key"),
        "name": config.get("name"),
        "hosts": masters,
        "reconnect": reconnect,
        "idempotent": idempotent,
    }


def _setting(config: dict[str, str], key: str, parse: Any, default: Any, source: str) -> Any:
    """C{parse(config[key])}, C{default} if it is absent, or a L{ConfigError} naming the file and key."""
    if key not in config:
        return default
    try:
        return parse(config[key])
    except ValueError as error:
        raise ConfigError(f"{source}: {key} = {config[key]} in [api]: {error}")
