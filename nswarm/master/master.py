"""
The master's routing: each call goes to one node that implements its method
(the one with the fewest calls in flight), each event once to every node with
a matching subscription.
"""

from __future__ import annotations

from collections import deque

from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.protocols import amp

from nswarm.amp_commands import (
    Cancelled,
    DeadlineExceeded,
    NoSuchMethod,
    NswarmError,
    Overloaded,
)
from nswarm.forwarding import (
    ANSWER,
    ASK,
    CALL,
    CALL_ALL,
    EXCLUDE,
    TIMEOUT,
    Downstream,
    Relay,
    RelayProtocol,
    routed_name,
    time_left,
)
from nswarm.routing import Request


class Parked:
    """A call the master holds back: nobody implements its method yet, or every implementer is busy."""

    __slots__ = ("caller", "box", "deadline", "give_up")

    def __init__(self, caller: RelayProtocol, box: amp.AmpBox, deadline: float, give_up: float) -> None:
        self.caller = caller
        self.box = box
        #: When the call's own deadline passes.
        self.deadline = deadline
        #: When the master stops waiting: the deadline, or the end of the grace period if sooner.
        self.give_up = give_up


class Master(Relay):
    """
    The master relay. Its registry holds what each connected node provides.

    Calls it cannot send at once are parked, up to C{queue_size} of them in
    all: a call to a method nobody implements waits up to C{grace} seconds
    (within its deadline) for an implementer, as during a rolling restart;
    a call whose implementers are all at their concurrency limit waits for a
    free slot until its deadline. A full queue answers L{Overloaded} (or
    L{NoSuchMethod}, for a method nobody implements) at once.
    """

    def __init__(self, clock: IReactorTime, grace: float = 0.0, queue_size: int = 1000) -> None:
        super().__init__(clock)
        self.grace = grace
        self.queue_size = queue_size
        self.nodes: dict[str, RelayProtocol] = {}
        self.parked: dict[str, deque[Parked]] = {}
        self.parked_count = 0
        self._park_timer: IDelayedCall | None = None

    def peer_authenticated(self, peer: RelayProtocol) -> None:
        """A node of the same name as a connected one replaces it: the old connection is stale."""
        if peer.kind != "node" or not peer.name:
            return
        stale = self.nodes.get(peer.name)
        self.nodes[peer.name] = peer
        if stale is not None and stale is not peer:
            self.log.warn("node {name!r} connected again: closing its stale connection", name=peer.name)
            stale.close_connection(abort=True)

    def peer_lost(self, peer: RelayProtocol) -> None:
        if self.nodes.get(peer.name) is peer:
            del self.nodes[peer.name]
        for method, queue in list(self.parked.items()):  # calls parked by a caller now gone
            for parked in [parked for parked in queue if parked.caller is peer]:
                queue.remove(parked)
                self._take(method, parked)
        super().peer_lost(peer)

    def route_call(self, caller: RelayProtocol, box: amp.AmpBox) -> None:
        method = routed_name(box, b"method", "method", self.registry.method_names)
        node = self.choose(method)
        if node is not None:
            self.forward(caller, box, node, method)
            return
        implemented = self.registry.implemented(method)
        if ASK not in box or not (implemented or self.grace > 0):
            raise self._overloaded(method) if implemented else self._no_such_method(method)
        if self.parked_count >= self.queue_size:
            raise self._overloaded(method) if implemented else self._no_such_method(method)
        now = self.clock.seconds()
        deadline = now + time_left(box)
        give_up = deadline if implemented else min(deadline, now + self.grace)
        self.parked.setdefault(method, deque()).append(Parked(caller, box, deadline, give_up))
        self.parked_count += 1
        self._watch_parked()

    def route_call_all(self, caller: RelayProtocol, box: amp.AmpBox) -> None:
        method = routed_name(box, b"method", "method")
        nodes = self.registry.implementers(method)
        if not nodes:
            raise self._no_such_method(method)
        self.gather(caller, box, nodes, CALL_ALL)

    @staticmethod
    def _no_such_method(method: str) -> NoSuchMethod:
        return NoSuchMethod(
            f"no service implements {method!r}: check the method name, or start a service that implements it"
        )

    def _overloaded(self, method: str) -> Overloaded:
        return Overloaded(
            f"every implementer of {method!r} is at its concurrency limit and {self.parked_count} calls "
            "are queued: retry later, or run more services"
        )

    def _unpark(self, method: str) -> None:
        """Send on the calls parked for C{method} while an implementer can take them."""
        queue = self.parked.get(method)
        if queue and self.registry.implemented(method):
            for parked in queue:  # no longer waiting for an implementer: for a slot
                parked.give_up = parked.deadline
        while queue and self.choose(method) is not None:
            parked = self._take(method, queue.popleft())
            left = parked.deadline - self.clock.seconds()
            if left <= 0:
                parked.caller.send_error(parked.box[ASK], DeadlineExceeded(f"{method!r} waited past its deadline"))
            elif parked.caller.transport is not None:
                parked.box[TIMEOUT] = repr(left).encode("ascii")
                self.box_received(parked.caller, CALL, parked.box)

    def _take(self, method: str, parked: Parked) -> Parked:
        """Account for C{parked} leaving the queue of C{method}."""
        self.parked_count -= 1
        if not self.parked.get(method):
            self.parked.pop(method, None)
        return parked

    def cancel_received(self, caller: RelayProtocol, caller_tag: bytes) -> None:
        for method, queue in list(self.parked.items()):
            for parked in queue:
                if parked.caller is caller and parked.box[ASK] == caller_tag:
                    queue.remove(parked)
                    self._take(method, parked)
                    caller.send_error(caller_tag, Cancelled("the caller cancelled the call"))
                    return
        super().cancel_received(caller, caller_tag)

    def implement(
        self, peer: RelayProtocol, methods: list[str], idempotent: list[str] = [], limits: list[int] = []
    ) -> None:
        super().implement(peer, methods, idempotent, limits)
        for method in methods:  # a new implementer, or a raised limit, frees slots
            self._unpark(method)

    def request_done(self, request: Request[RelayProtocol]) -> None:
        if request.method is not None and request.method in self.parked:
            self._unpark(request.method)

    def _watch_parked(self) -> None:
        if self._park_timer is None and self.parked:
            soonest = min(parked.give_up for queue in self.parked.values() for parked in queue)
            self._park_timer = self.clock.callLater(max(0.0, soonest - self.clock.seconds()), self._give_up)

    def _give_up(self) -> None:
        """Answer the parked calls whose wait is over: NoSuchMethod, or DeadlineExceeded."""
        self._park_timer = None
        now = self.clock.seconds()
        for method in list(self.parked):
            queue = self.parked[method]
            for parked in [parked for parked in queue if parked.give_up <= now]:
                queue.remove(parked)
                self._take(method, parked)
                if parked.deadline <= now:
                    error: NswarmError = DeadlineExceeded(f"no implementer of {method!r} was free before the deadline")
                else:
                    error = self._no_such_method(method)
                parked.caller.send_error(parked.box[ASK], error)
        self._watch_parked()

    def stop(self) -> None:
        super().stop()
        if self._park_timer is not None:
            self._park_timer.cancel()
            self._park_timer = None

    def route_publish(self, publisher: RelayProtocol, box: amp.AmpBox) -> None:
        event = routed_name(box, b"event", "event")
        tag = box.get(ASK)
        self.fan_out(box, self.registry.subscribers(event), publisher if EXCLUDE in box else None)
        if tag is not None:
            publisher.send(amp.AmpBox({ANSWER: tag}))


class NodeServerProtocol(Downstream):
    """A node's connection to the master's node server (mutual TLS)."""

    kind = "node"


class ApiServerProtocol(RelayProtocol):
    """An API user's connection to the master's api server: it may call and publish."""

    kind = "api user"
