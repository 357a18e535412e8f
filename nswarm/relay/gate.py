"""
The gate of a relay connection: which identities an access file admits, with
what rights, and the guards of a listener against key guessing (a throttle
and quiet logging). Mixed into L{nswarm.relay.protocol.RelayProtocol}, whose
C{Authenticate} responder uses it.
"""

from __future__ import annotations

import hmac
from typing import TYPE_CHECKING, Any

from twisted.logger import Logger

from nswarm import defaults
from nswarm.access import ALL, Access, Rights
from nswarm.amp_commands import AuthenticationFailed, PermissionDenied
from nswarm.failures import this_is
from nswarm.relay.handshakes import Handshakes
from nswarm.relay.throttle import Quieter, Throttle


class Guards:
    """
    What one listener keeps across its connections against attackers and
    crowds: a L{Throttle}, a L{Quieter}, and the bound on connections
    waiting to authenticate. Past C{at_once} of those, its listening ports
    stop accepting (the kernel queues the rest, up to the listen backlog,
    and TCP retries beyond it), and start again once one has authenticated
    or closed: the handshakes under way finish within their deadlines
    instead of all slowing down together.
    """

    def __init__(self, at_once: int = defaults.HANDSHAKES_AT_ONCE) -> None:
        self.throttle = Throttle()
        self.quieter = Quieter()
        #: Connections refused as they were accepted (see L{nswarm.relay.listener.Admission}).
        self.refused = 0
        self.at_once = at_once
        #: Connections accepted that have not authenticated (nor closed) yet.
        self.waiting = 0
        #: Times the listening ports stopped accepting because L{at_once} connections waited.
        self.pauses = 0
        #: The listening ports these guards keep (each an C{IReadDescriptor}, as Twisted's TCP and UNIX ports are).
        self.ports: list[Any] = []
        #: A TLS listener's pacing of its unauthenticated connections' reads (see L{nswarm.relay.handshakes}).
        self.handshakes: Handshakes | None = None

    @property
    def accepting(self) -> bool:
        """Whether the listening ports accept: fewer than L{at_once} connections wait to authenticate."""
        return self.waiting < self.at_once

    def opened(self, source: str) -> None:
        """A connection from C{source} was accepted: it waits to authenticate; at the bound, stop accepting."""
        self.throttle.opened(source)
        self.waiting += 1
        if self.waiting == self.at_once:  # just reached
            self.pauses += 1
            for port in self.ports:
                port.stopReading()

    def settled(self, source: str) -> None:
        """A connection from C{source} that L{opened} authenticated, failed, or closed: below the bound, accept."""
        self.throttle.settled(source)
        self.waiting -= 1
        if self.waiting == self.at_once - 1:  # just below it again
            for port in self.ports:
                if port.connected:  # not if it has stopped listening since
                    port.startReading()


def source_of(address: Any) -> str:
    """The source address authentication failures are counted by: the peer's host (UNIX peers share one)."""
    return str(getattr(address, "host", None) or "local")


def log_refused(log: Logger, guards: Guards, role: str, source: str, now: float, why: str) -> None:
    """Log that C{source} was refused, at most once every interval per source (with how many were not logged)."""
    unlogged = guards.quieter.should_log(source, now)
    if unlogged is not None:
        log.warn(
            "{role} at {source} {why} ({unlogged} more refused since the last warning)",
            role=role,
            source=source,
            why=why,
            unlogged=unlogged,
            nswarm_event="authentication_failed",
        )


class Gate:
    """Admission and rights of one connection (see L{admit} and L{may})."""

    log: Logger
    role: str
    name: str
    authenticated: bool
    access: Access | None
    _auth_key: bytes | None
    _allowed: dict[tuple[str, str], bool]
    _own_guards: Guards | None
    factory: Any
    address: Any
    close_connection: Any

    #: Its role in an access file ("api", "node", "service"); None if no access file applies to it.
    access_role: str | None = None
    #: What it may do (every right unless an access file says otherwise).
    rights: Rights = ALL

    if TYPE_CHECKING:

        @property
        def description(self) -> str:
            """How logs name this connection (provided by the protocol)."""

    def _source(self) -> str:
        """The source address authentication failures are counted by (see L{source_of})."""
        return source_of(self.address)

    def _guards(self) -> Guards:
        """The listener's guards (a connection built without a listener's factory has its own)."""
        guards = getattr(self.factory, "guards", None)
        if isinstance(guards, Guards):
            return guards
        if self._own_guards is None:
            self._own_guards = Guards()
        return self._own_guards

    def _refused(self, source: str, now: float, why: str) -> None:
        """Log a refused authentication, at most once every interval per source."""
        log_refused(self.log, self._guards(), self.role, source, now, why)

    def admit(self, key: bytes, name: str) -> Rights:
        """
        The rights C{key} gives the peer called C{name}, or
        L{AuthenticationFailed}: with an access file that lists this role,
        its entry for the name (or C{*}) and, for API users and services, that
        entry's key; without one, the listener's shared auth key and every
        right.
        """
        access, role = self.access, self.access_role
        if access is None or role is None:
            if self._auth_key is None or not hmac.compare_digest(key, self._auth_key):
                raise AuthenticationFailed(
                    f"wrong {self.role} auth key: check the key file this client uses {this_is(self.role)}"
                )
            return ALL
        identity = access.find(role, name)
        if role == "node":
            if self._auth_key is None or not hmac.compare_digest(key, self._auth_key):
                raise AuthenticationFailed(
                    f"wrong {self.role} auth key: check the key file this client uses {this_is(self.role)}"
                )
            if identity is None:
                raise AuthenticationFailed(
                    f"node {name!r} is not in the access file {access.source}: add a section [node {name}] "
                    f"(see docs/access.md) and reload the master {this_is(self.role)}"
                )
            return identity.rights
        if identity is None or not identity.key_matches(key):
            raise AuthenticationFailed(
                f"no {self.role} {name!r} with this key in the access file: check the name and the key file "
                f"this client uses {this_is(self.role)}"
            )
        return identity.rights

    def may(self, action: str, name: str) -> bool:
        """Whether this peer's rights allow C{action} (call, publish, subscribe, implement) on C{name}."""
        if self.rights is ALL:
            return True
        allowed = self._allowed.get((action, name))
        if allowed is None:
            if len(self._allowed) > defaults.MATCH_CACHE_SIZE:
                self._allowed.clear()
            allowed = self._allowed[(action, name)] = self.rights.allows(action, name)
        return allowed

    def refuse(self, action: str, name: str) -> PermissionDenied:
        """The error for this peer's request to C{action} C{name}, which its rights do not allow."""
        where = self.access.source if self.access is not None else "the access file"
        return PermissionDenied(
            f"{self.description} may not {action} {name!r}: to allow it, add a pattern matching it to "
            f"'{action}' in [{self.access_role} {self.name or '*'}] of {where}, and reload"
        )

    def reload(self, access: Access | None) -> None:
        """The access file changed: take the new rights, or close the connection if this identity is gone."""
        self.access = access
        self._allowed = {}
        if access is None:
            self.rights = ALL
            return
        if not self.authenticated or self.access_role is None:
            return
        identity = access.find(self.access_role, self.name)
        if identity is None:
            self.log.warn(
                "closing {peer}: it is no longer in the access file {source}",
                peer=self.description,
                source=access.source,
            )
            self.close_connection()
            return
        self.rights = identity.rights
