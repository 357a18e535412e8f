"""
The pure routing state shared by the master and the node: the peer
interface, who implements and who subscribes to what, which implementer gets
the next call, and (from L{nswarm.relay.pending}) which forwarded requests
wait for an answer. No sockets and no clock here: a peer is anything that
provides L{IPeer} (the relays' AMP connections, a call_all's gatherer, a
test's fake).
"""

from __future__ import annotations

from collections.abc import Callable, Container, Hashable, Iterable
from typing import Any, Generic, Protocol, TypeVar

from zope.interface import Attribute, Interface

from nswarm.amp_commands import NswarmError
from nswarm.relay.names import Matches, check_method, check_pattern
from nswarm.relay.pending import PendingCalls as PendingCalls
from nswarm.relay.pending import Request as Request

P = TypeVar("P", bound=Hashable)


class IPeer(Interface):
    """
    One connection of a relay as the relay core sees it: a node at the
    master, a service at its node, an API user, the node's upstream, or the
    gatherer of a call_all. The core sends it boxes and never looks at its
    transport.
    """

    role = Attribute("Its role: 'node', 'service', 'api user', or 'master' (the node's upstream).")
    name = Attribute("The name it authenticated with, '' if none.")
    description = Attribute("How logs and error messages name it, such as \"node 'node-1'\".")
    alive = Attribute("Whether its connection is still open (it can be sent anything).")
    calls_in_flight = Attribute("The most requests it may have pending at once (0: no limit).")
    rights = Attribute("What it may do (a L{nswarm.access.Rights}; L{nswarm.access.ALL} for every right).")
    paused = Attribute(
        "Whether events for it wait (its transport's buffer is full, or it is ejected): they may be dropped for it."
    )
    calls_handled = Attribute("Calls it answered as an implementer (counted by the relay).")
    boxes_received = Attribute("How many boxes have come from it (outlier ejection watches it move).")
    call_errors = Attribute("Of those, the failed ones by error code (a dict, or None for none yet).")

    def next_tag() -> bytes:
        """A new C{_ask} tag for a request sent to this peer, unique on its connection."""

    def send(box: Any) -> None:
        """Send C{box} (a request, an answer or an error) unless the connection is gone."""

    def send_request(box: Any) -> None:
        """Send a request forwarded to it (not counted against its send buffer)."""

    def write(data: bytes) -> None:
        """Write an already serialised box (a fanned-out event) unless the connection is gone."""

    def send_error(tag: bytes | None, error: NswarmError) -> None:
        """Answer its request C{tag} with C{error}; a request sent without a tag gets nothing."""

    def send_cancel(tag: bytes) -> None:
        """Cancel the request the relay sent it as C{tag}."""

    def may(action: str, name: str) -> bool:
        """Whether its rights allow C{action} (call, publish, subscribe, implement) on C{name}."""

    def refuse(action: str, name: str) -> NswarmError:
        """The L{nswarm.amp_commands.PermissionDenied} that answers its request to C{action} C{name}."""

    capped = Attribute("Whether it is at its calls-in-flight cap, and not read from until one of its calls is done.")

    def cap() -> None:
        """It has as many requests pending as it may: read nothing more from it until L{uncap}."""

    def uncap() -> None:
        """One of its requests is done: read from it again."""

    def close_connection(abort: bool = False) -> None:
        """Close the connection (at once, dropping what is buffered, if C{abort})."""

    def may_buffer(size: int) -> bool:
        """Its buffer is full: may an event of C{size} bytes wait for it too (else it is dropped and counted)?"""

    def hold() -> None:
        """It is ejected: keep its events (within its subscriber buffer) instead of writing them."""

    def release() -> None:
        """It answers again: write the events held for it, in order."""


class IClock(Protocol):
    """
    What the relay core needs of time: the reactor, or a
    C{twisted.internet.task.Clock} in tests (both provide C{IReactorTime},
    which this mirrors so that the core imports nothing of
    C{twisted.internet}).
    """

    def seconds(self) -> float:
        """The current time, in seconds."""
        ...

    def callLater(self, delay: float, callable: Callable[..., Any], *args: Any, **kw: Any) -> Any: ...


class _Index(Generic[P]):
    """Names -> the peers that registered them, in registration order."""

    def __init__(self, check: Callable[[str], str]) -> None:
        self.check = check
        self.peers: dict[str, list[P]] = {}
        self.names: dict[P, set[str]] = {}

    def add(self, peer: P, names: Iterable[str]) -> list[str]:
        """Register C{names} for C{peer}; return the names nobody had before."""
        names = [self.check(name) for name in names]
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
        names = [self.check(name) for name in names]
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
        self._methods: _Index[P] = _Index(check_method)
        self._events: _Index[P] = _Index(check_pattern)
        self._turn: dict[str, int] = {}
        #: (peer, method) pairs registered as idempotent: safe to run again elsewhere.
        self.idempotent: set[tuple[P, str]] = set()
        #: (peer, method) -> the most calls the peer runs at once (absent: no limit).
        self.limits: dict[tuple[P, str], int] = {}
        #: The methods somebody implements (a live view, for fast membership tests).
        self.method_names: Container[str] = self._methods.peers.keys()
        #: Event name -> its subscribers: the patterns indexed by token, kept in
        #: step with C{_events}, and a cache cleared when subscriptions change.
        self._deliveries: Matches[P] = Matches(self._events.peers)

    def implement(
        self,
        peer: P,
        methods: Iterable[str],
        idempotent: Iterable[str] = (),
        limits: dict[str, int] | None = None,
    ) -> list[str]:
        """
        C{peer} implements C{methods}, of which C{idempotent} may safely run
        twice, each at most C{limits[method]} calls at once (0 or absent: no
        limit); return the methods that had no implementer. Implementing a
        method again updates both.
        """
        methods = list(methods)
        new = self._methods.add(peer, methods)
        marked = set(idempotent)
        for method in methods:
            if method in marked:
                self.idempotent.add((peer, method))
            else:
                self.idempotent.discard((peer, method))
            limit = (limits or {}).get(method, 0)
            if limit > 0:
                self.limits[(peer, method)] = limit
            else:
                self.limits.pop((peer, method), None)
        return new

    def unimplement(self, peer: P, methods: Iterable[str]) -> list[str]:
        """C{peer} withdraws C{methods}; return those left with no implementer."""
        methods = list(methods)
        gone = self._methods.discard(peer, methods)
        for method in methods:
            self.idempotent.discard((peer, method))
            self.limits.pop((peer, method), None)
        for method in gone:
            self._turn.pop(method, None)
        return gone

    def new_names(self, peer: P, methods: Iterable[str], patterns: Iterable[str]) -> tuple[int, int]:
        """How many of C{methods} and C{patterns} C{peer} has not registered yet, and would add."""
        mine, subscribed = self._methods.names.get(peer, set()), self._events.names.get(peer, set())
        return len(set(methods) - mine), len(set(patterns) - subscribed)

    def counts(self, peer: P) -> tuple[int, int]:
        """How many methods C{peer} implements and patterns it subscribes to."""
        return len(self._methods.names.get(peer, ())), len(self._events.names.get(peer, ()))

    def methods_of(self, peer: P) -> list[str]:
        """The methods C{peer} implements."""
        return list(self._methods.names.get(peer, ()))

    def patterns_of(self, peer: P) -> list[str]:
        """The event patterns C{peer} subscribes to."""
        return list(self._events.names.get(peer, ()))

    def subscriber_counts(self) -> dict[str, int]:
        """Each pattern somebody subscribes to, with how many peers do."""
        return {pattern: len(peers) for pattern, peers in self._events.peers.items() if peers}

    def implementers(self, method: str) -> list[P]:
        """Every peer that implements C{method}."""
        return list(self._methods.peers.get(method, ()))

    def implemented(self, method: str) -> bool:
        """Whether anybody implements C{method}."""
        return method in self._methods.peers

    def limit(self, peer: P, method: str) -> int:
        """The most calls to C{method} C{peer} runs at once; 0: no limit."""
        return self.limits.get((peer, method), 0)

    def total_limit(self, method: str) -> int:
        """The sum of C{method}'s implementers' limits; 0 (no limit) if one has none."""
        limits = [self.limits.get((peer, method), 0) for peer in self._methods.peers.get(method, [])]
        return 0 if not limits or 0 in limits else sum(limits)

    def is_idempotent(self, peer: P, method: str) -> bool:
        """Whether C{peer} registered C{method} as idempotent."""
        return bool(self.idempotent) and (peer, method) in self.idempotent

    def idempotent_everywhere(self, method: str) -> bool:
        """Whether every implementer of C{method} registered it as idempotent."""
        peers = self._methods.peers.get(method, [])
        return bool(peers) and all((peer, method) in self.idempotent for peer in peers)

    def subscribe(self, peer: P, events: Iterable[str]) -> list[str]:
        """C{peer} subscribes to C{events}; return those that had no subscriber."""
        new = self._events.add(peer, events)
        self._deliveries.clear()
        for pattern in new:
            self._deliveries.add(pattern)
        return new

    def unsubscribe(self, peer: P, events: Iterable[str]) -> list[str]:
        """C{peer} unsubscribes; return the events left with no subscriber."""
        return self._unindex(self._events.discard(peer, events))

    def _unindex(self, gone: list[str]) -> list[str]:
        """Take the patterns nobody subscribes to any more out of the index; return them."""
        self._deliveries.clear()
        for pattern in gone:
            self._deliveries.discard(pattern)
        return gone

    def remove(self, peer: P) -> tuple[list[str], list[str]]:
        """
        Forget everything C{peer} registered; return the methods and events
        that no peer has any more.
        """
        methods = self.unimplement(peer, list(self._methods.names.get(peer, ())))
        return methods, self._unindex(self._events.remove(peer))

    def choose(
        self,
        method: str,
        load: Callable[[P], int] = lambda peer: 0,
        exclude: P | None = None,
        busy: Callable[[P, int], bool] | None = None,
        avoid: Container[P] = (),
    ) -> P | None:
        """
        The implementer of C{method} (other than C{exclude}, not in C{avoid},
        and not C{busy(peer, limit)} for one with a limit) with the least
        C{load} (calls in flight), ties broken round robin; None if there is none.
        """
        peers = self._methods.peers.get(method)
        if peers and len(peers) == 1 and exclude is None and busy is None and not avoid:
            return peers[0]  # the common case, kept short
        if peers and exclude is not None:
            peers = [peer for peer in peers if peer != exclude]
        if peers and avoid:
            peers = [peer for peer in peers if peer not in avoid]
        if peers and busy is not None:
            limits = self.limits
            peers = [peer for peer in peers if not ((peer, method) in limits and busy(peer, limits[(peer, method)]))]
        if not peers:
            return None
        count = len(peers)
        start = self._turn.get(method, 0) % count
        best, best_load = start, load(peers[start])
        for step in range(1, count):
            if not best_load:
                break
            index = (start + step) % count
            current = load(peers[index])
            if current < best_load:
                best, best_load = index, current
        self._turn[method] = best + 1
        return peers[best]

    def subscribers(self, event: str) -> list[P]:
        """The peers with a subscription matching C{event}, each once."""
        return self._deliveries(event)

    def methods(self) -> list[str]:
        """Every method some peer implements."""
        return list(self._methods.peers)

    def events(self) -> list[str]:
        """Every event some peer subscribes to."""
        return list(self._events.peers)
