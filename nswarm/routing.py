"""
The pure routing core shared by the master and the node: who implements and
who subscribes to what, which implementer gets the next call, and which
forwarded calls are waiting for an answer. No sockets here: a peer is any
hashable object (the relays use their connections).
"""

from __future__ import annotations

from typing import Generic, Hashable, Iterable, TypeVar

from nswarm.amp_commands import InvalidRequest

P = TypeVar("P", bound=Hashable)

MAX_NAME_LENGTH = 255


def check_name(kind: str, name: str) -> str:
    """
    Return C{name} if it is a valid method or event name, else raise
    L{InvalidRequest} saying why.
    """
    if not name or len(name) > MAX_NAME_LENGTH or not name.isprintable() or name != name.strip():
        raise InvalidRequest(
            f"invalid {kind} name {name[:40]!r}: use 1 to {MAX_NAME_LENGTH} printable "
            "characters without leading or trailing spaces"
        )
    return name


class _Index(Generic[P]):
    """Names -> the peers that registered them, in registration order."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.peers: dict[str, list[P]] = {}
        self.names: dict[P, set[str]] = {}

    def add(self, peer: P, names: Iterable[str]) -> list[str]:
        """Register C{names} for C{peer}; return the names nobody had before."""
        names = [check_name(self.kind, name) for name in names]
        mine = self.names.setdefault(peer, set())
        new = []
        for name in names:
            if name in mine:
                continue
            mine.add(name)
            peers = self.peers.setdefault(name, [])
            if not peers:
                new.append(name)
            peers.append(peer)
        return new

    def discard(self, peer: P, names: Iterable[str]) -> list[str]:
        """Withdraw C{names} for C{peer}; return the names nobody has any more."""
        names = [check_name(self.kind, name) for name in names]
        mine = self.names.get(peer, set())
        gone = []
        for name in names:
            if name not in mine:
                continue
            mine.remove(name)
            peers = self.peers[name]
            peers.remove(peer)
            if not peers:
                del self.peers[name]
                gone.append(name)
        if not mine:
            self.names.pop(peer, None)
        return gone

    def remove(self, peer: P) -> list[str]:
        """Forget C{peer}; return the names nobody has any more."""
        return self.discard(peer, list(self.names.get(peer, ())))


class Registry(Generic[P]):
    """
    Which peers implement which methods and subscribe to which events, and
    round-robin choice among a method's implementers.
    """

    def __init__(self) -> None:
        self._methods: _Index[P] = _Index("method")
        self._events: _Index[P] = _Index("event")
        self._turn: dict[str, int] = {}

    def implement(self, peer: P, methods: Iterable[str]) -> list[str]:
        """C{peer} implements C{methods}; return those that had no implementer."""
        return self._methods.add(peer, methods)

    def unimplement(self, peer: P, methods: Iterable[str]) -> list[str]:
        """C{peer} withdraws C{methods}; return those left with no implementer."""
        gone = self._methods.discard(peer, methods)
        for method in gone:
            self._turn.pop(method, None)
        return gone

    def subscribe(self, peer: P, events: Iterable[str]) -> list[str]:
        """C{peer} subscribes to C{events}; return those that had no subscriber."""
        return self._events.add(peer, events)

    def unsubscribe(self, peer: P, events: Iterable[str]) -> list[str]:
        """C{peer} unsubscribes; return the events left with no subscriber."""
        return self._events.discard(peer, events)

    def remove(self, peer: P) -> tuple[list[str], list[str]]:
        """
        Forget everything C{peer} registered; return the methods and events
        that no peer has any more.
        """
        methods = self.unimplement(peer, list(self._methods.names.get(peer, ())))
        return methods, self._events.remove(peer)

    def choose(self, method: str) -> P | None:
        """The implementer of C{method} whose turn it is, or None if there is none."""
        peers = self._methods.peers.get(method)
        if not peers:
            return None
        turn = self._turn.get(method, 0) % len(peers)
        self._turn[method] = turn + 1
        return peers[turn]

    def subscribers(self, event: str) -> list[P]:
        """The peers subscribed to C{event}."""
        return self._events.peers.get(event, [])

    def methods(self) -> list[str]:
        """Every method some peer implements."""
        return list(self._methods.peers)

    def events(self) -> list[str]:
        """Every event some peer subscribes to."""
        return list(self._events.peers)


class PendingCalls(Generic[P]):
    """
    Requests a relay forwarded and that are not answered yet: for each callee
    connection and the tag the relay gave the request there, the caller and
    the caller's own tag, so that the answer can be mapped back.
    """

    def __init__(self) -> None:
        self._by_callee: dict[P, dict[bytes, tuple[P, bytes]]] = {}

    def add(self, callee: P, tag: bytes, caller: P, caller_tag: bytes) -> None:
        self._by_callee.setdefault(callee, {})[tag] = (caller, caller_tag)

    def pop(self, callee: P, tag: bytes) -> tuple[P, bytes] | None:
        """The caller and caller tag that C{callee}'s answer C{tag} is for, if any."""
        pending = self._by_callee.get(callee)
        if pending is None:
            return None
        return pending.pop(tag, None)

    def lost(self, callee: P) -> list[tuple[P, bytes]]:
        """Forget C{callee}; return the callers (and tags) left without an answer."""
        return list(self._by_callee.pop(callee, {}).values())

    def __len__(self) -> int:
        return sum(len(pending) for pending in self._by_callee.values())
