"""
The master's routing: each call goes to one node that implements its method
(the one with the fewest calls in flight), each event once to every node with
a matching subscription. Calls that cannot go at once are held back.
"""

from __future__ import annotations

import json
from typing import Any

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.protocols import amp
from zope.interface import implementer

from nswarm import defaults
from nswarm.access import ALL
from nswarm.amp_commands import (
    ANSWER,
    ASK,
    CALL,
    CALL_ALL,
    CALLER,
    EVENT,
    EXCLUDE,
    HANDED_TO,
    METHOD,
    PUBLISH,
    TIMEOUT,
    AuthenticationFailed,
    Cancelled,
    DeadlineExceeded,
    Implement,
    NoSuchMethod,
    NswarmError,
    Overloaded,
    PermissionDenied,
)
from nswarm.identity import tls_identity
from nswarm.master.held import Held, HeldCalls
from nswarm.master.phases import Drain, EarlyEvents, draining_error
from nswarm.master.status import cluster_report
from nswarm.relay.checks import check_rights, log_registration, routed_name, time_left
from nswarm.relay.downstream import Downstream
from nswarm.relay.relay import Relay
from nswarm.relay.router import IRouter, dispatch
from nswarm.relay.state import IClock, IPeer, Registry, Request
from nswarm.status_commands import Status


@implementer(IRouter)
class Master:
    """
    The master's router. Its registry holds what each connected node
    provides; its L{Relay} forwards.

    Calls it cannot send at once are held, up to C{queue_size} of them in
    all: a call to a method nobody implements waits up to C{grace} seconds
    (within its deadline) for an implementer, as during a rolling restart;
    a call whose implementers are all at their concurrency limit waits for a
    free slot until its deadline. A full queue answers L{Overloaded} (or
    L{NoSuchMethod}, for a method nobody implements) at once.
    """

    log = Logger()

    def __init__(
        self,
        clock: IClock,
        grace: float = defaults.GRACE,
        queue_size: int = defaults.QUEUE_SIZE,
        startup_window: float = 0.0,
    ) -> None:
        self.clock = clock
        self.grace = grace
        self.registry: Registry[IPeer] = Registry()
        self.relay = Relay(clock, self.registry, done=self._slot_freed, latencies=True)
        self.held = HeldCalls(queue_size)
        #: The connected nodes, by name.
        self.nodes: dict[str, IPeer] = {}
        #: Every authenticated connection (nodes and API users).
        self.peers: set[IPeer] = set()
        self.started = clock.seconds()
        #: Until when calls to unregistered methods wait, and events are held (see L{nswarm.master.phases}).
        self.opens_at = self.started + startup_window
        self._opening = startup_window > 0
        self.early = EarlyEvents()
        self.drain = Drain(clock)
        self._open_timer: Any = None
        #: The factories of its servers ("node", "api"), and where each listens ("HOST:PORT").
        self.listeners: dict[str, Any] = {}
        self.addresses: dict[str, str] = {}
        self._hold_timer: Any = None

    @property
    def pending(self) -> Any:
        """The requests forwarded and not answered yet."""
        return self.relay.pending

    @property
    def parked_count(self) -> int:
        """How many calls are held back."""
        return self.held.count

    # -- connections ---------------------------------------------------------

    def authenticated(self, peer: IPeer) -> None:
        """A node of the same name as a connected one replaces it: the old connection is stale."""
        self.peers.add(peer)
        if peer.role != "node" or not peer.name:
            return
        stale = self.nodes.get(peer.name)
        self.nodes[peer.name] = peer
        if stale is not None and stale is not peer:
            self.log.warn("node {name!r} connected again: closing its stale connection", name=peer.name)
            stale.close_connection(abort=True)

    def lost(self, peer: IPeer) -> None:
        """Forget C{peer}: its node entry, the calls it had held, its registrations; fail what is pending on it."""
        self.peers.discard(peer)
        if self.nodes.get(peer.name) is peer:
            del self.nodes[peer.name]
        self.held.drop_caller(peer)
        self.registry.remove(peer)
        self.log.info(
            "{peer} disconnected", peer=peer.description, nswarm_event="disconnected", role=peer.role, name=peer.name
        )
        self.relay.lost(peer)

    def stop(self) -> None:
        """Stop the timers (the daemon is stopping)."""
        self.relay.stop()
        if self._open_timer is not None:
            self._open_timer.cancel()
            self._open_timer = None
        if self._hold_timer is not None:
            self._hold_timer.cancel()
            self._hold_timer = None

    # -- registrations -------------------------------------------------------

    def implement(self, peer: IPeer, methods: list[str], idempotent: list[str], limits: list[int]) -> None:
        """C{peer} implements C{methods}: a new implementer, or a raised limit, frees slots for held calls."""
        check_rights(peer, "implement", methods)
        self.registry.implement(peer, methods, idempotent, dict(zip(methods, limits, strict=False)))
        log_registration(peer, "implements", methods)
        for method in methods:
            self._release(method)

    def unimplement(self, peer: IPeer, methods: list[str]) -> None:
        """C{peer} withdraws C{methods}."""
        self.registry.unimplement(peer, methods)
        log_registration(peer, "withdraws", methods)

    def subscribe(self, peer: IPeer, patterns: list[str]) -> None:
        """C{peer} subscribes to C{patterns}."""
        check_rights(peer, "subscribe", patterns)
        self.registry.subscribe(peer, patterns)
        log_registration(peer, "subscribes to", patterns)

    def unsubscribe(self, peer: IPeer, patterns: list[str]) -> None:
        """C{peer} unsubscribes from C{patterns}."""
        self.registry.unsubscribe(peer, patterns)
        log_registration(peer, "unsubscribes from", patterns)

    # -- routing -------------------------------------------------------------

    def call(self, caller: IPeer, box: amp.AmpBox) -> None:
        """Send C{caller}'s call to the least busy node implementing its method, or hold it back."""
        method = routed_name(box, METHOD, "method", self.registry.method_names)
        if caller.rights is not ALL and not caller.may("call", method):
            raise caller.refuse("call", method)
        if self.drain.active:
            raise draining_error()
        node = self.relay.choose(method)
        if node is not None:
            self.relay.forward(caller, box, node, method)
            return
        implemented = self.registry.implemented(method)
        now = self.clock.seconds()
        starting = now < self.opens_at
        if ASK not in box or not (implemented or self.grace > 0 or starting) or self.held.full:
            raise self._overloaded(method) if implemented else self._no_such_method(method)
        deadline = now + time_left(box)
        give_up = deadline if implemented else min(deadline, max(now + self.grace, self.opens_at))
        self.held.hold(method, Held(caller, box, deadline, give_up))
        self._watch_held()

    def call_all(self, caller: IPeer, box: amp.AmpBox) -> None:
        """Send C{caller}'s call_all to every node implementing its method."""
        method = routed_name(box, METHOD, "method")
        if caller.rights is not ALL and not caller.may("call", method):
            raise caller.refuse("call", method)
        if self.drain.active:
            raise draining_error()
        nodes = self.registry.implementers(method)
        if not nodes:
            raise self._no_such_method(method)
        self.relay.gather(caller, box, nodes, CALL_ALL)

    def publish(self, publisher: IPeer, box: amp.AmpBox) -> None:
        """Send the event once to every node with a matching subscription, then answer the publisher."""
        event = routed_name(box, EVENT, "event")
        if publisher.rights is not ALL and not publisher.may("publish", event):
            raise publisher.refuse("publish", event)
        if self._opening:  # the startup window, or the held events not handed on yet: none may pass those held
            if (self.clock.seconds() < self.opens_at or self.early.held) and not self.drain.active:
                if self.early.hold(publisher, box):
                    self._watch_opening()
                    return
            elif not self.early.held:
                self._opening = False
        tag = box.get(ASK)
        handed_to = self.relay.fan_out(box, self.registry.subscribers(event), publisher if EXCLUDE in box else None)
        if tag is not None:
            publisher.send(amp.AmpBox({ANSWER: tag, HANDED_TO: b"%d" % handed_to}))

    def cancel(self, caller: IPeer, caller_tag: bytes) -> None:
        """Cancel a held call here, or a forwarded one downstream."""
        held = self.held.cancel(caller, caller_tag)
        if held is not None:
            caller.send_error(caller_tag, Cancelled("the caller cancelled the call"))
            self.relay.count_refused(held.box, Cancelled.code)
            return
        self.relay.cancel(caller, caller_tag)

    @staticmethod
    def _no_such_method(method: str) -> NoSuchMethod:
        return NoSuchMethod(
            f"no service implements {method!r}: check the method name, or start a service that implements it"
        )

    def _overloaded(self, method: str) -> Overloaded:
        return Overloaded(
            f"every implementer of {method!r} is at its concurrency limit and {self.held.count} calls "
            "are queued: retry later, or run more services"
        )

    # -- held calls ----------------------------------------------------------

    def _slot_freed(self, request: Request[IPeer]) -> None:
        if request.method is not None and request.method in self.held:
            self._release(request.method)
        if self.drain.active:
            self.drain.settled(len(self.relay.pending))

    # -- starting and stopping -----------------------------------------------

    def _watch_opening(self) -> None:
        if self._open_timer is None:
            self._open_timer = self.clock.callLater(max(0.0, self.opens_at - self.clock.seconds()), self._opened)

    def _opened(self) -> None:
        """The startup window is over: hand on the events held meanwhile, in order (their publishers' are still up)."""
        self._open_timer = None
        self.opens_at = min(self.opens_at, self.clock.seconds())
        for publisher, box in self.early.release():
            if publisher.alive:  # else it had no answer: it may publish again, so this one is not sent
                dispatch(self, publisher, PUBLISH, box)
            else:
                self.relay.stats.dropped += 1

    def start_draining(self, timeout: float) -> Deferred[None]:
        """
        Stop taking calls (they are answered L{Draining}, held ones too) and
        fire once those in flight are done, or after C{timeout} seconds.
        """
        self._opened()
        for _, held in self.held.take_all():
            held.caller.send_error(held.box[ASK], draining_error())
        self.log.info(
            "draining: no new calls; waiting up to {timeout}s for {count} in flight",
            timeout=timeout,
            count=len(self.relay.pending),
            nswarm_event="draining",
        )
        return self.drain.start(timeout, lambda: len(self.relay.pending))

    def _release(self, method: str) -> None:
        """Send on the calls held for C{method} while an implementer can take them."""
        if method not in self.held:
            return
        if self.registry.implemented(method):
            self.held.implemented(method)
        while method in self.held and self.relay.choose(method) is not None:
            held = self.held.next(method)
            assert held is not None
            left = held.deadline - self.clock.seconds()
            if left <= 0:
                held.caller.send_error(held.box[ASK], DeadlineExceeded(f"{method!r} waited past its deadline"))
                self.relay.stats.failed(method, DeadlineExceeded.code)
            elif held.caller.alive:
                held.box[TIMEOUT] = repr(left).encode("ascii")
                dispatch(self, held.caller, CALL, held.box)

    def _watch_held(self) -> None:
        """Have L{_give_up} run when the soonest held call's wait is over (sooner, if one came that waits less)."""
        soonest = self.held.next_give_up()
        if soonest is None:
            return
        if self._hold_timer is not None:
            if self._hold_timer.getTime() <= soonest:
                return
            self._hold_timer.cancel()
        self._hold_timer = self.clock.callLater(max(0.0, soonest - self.clock.seconds()), self._give_up)

    def _give_up(self) -> None:
        """Answer the held calls whose wait is over: NoSuchMethod, or DeadlineExceeded."""
        self._hold_timer = None
        now = self.clock.seconds()
        for method, held in self.held.expired(now):
            if held.deadline <= now:
                error: NswarmError = DeadlineExceeded(f"no implementer of {method!r} was free before the deadline")
            else:
                error = self._no_such_method(method)
            held.caller.send_error(held.box[ASK], error)
            self.relay.count_refused(held.box, error.code)
        self._watch_held()


class NodeServerProtocol(Downstream):
    """
    A node's connection to the master's node server (mutual TLS). The node's
    name is the one its certificate gives (C{nswarm://node/NAME}); a
    certificate naming no node, or another name than the node claims, is
    refused.
    """

    role = "node"
    caller_role = "node"
    access_role = "node"
    #: Reads the name the peer's certificate gives a role (replaced in in-memory tests).
    certificate_identity = staticmethod(tls_identity)

    def stamp(self, box: amp.AmpBox) -> None:
        """A node's call comes from one of its services: C{service:NAME} as the node stamped it, C{@NODE} added."""
        stamp = box.get(CALLER, b"")
        if stamp.startswith(b"service:") and b"@" not in stamp:
            box[CALLER] = stamp + b"@" + self.name.encode()
        else:
            box[CALLER] = b"node:" + self.name.encode()

    def identify(self, claimed: str | None) -> str:
        """The node's name, from its certificate."""
        name = self.certificate_identity(self.transport, "node")
        if name is None:
            raise AuthenticationFailed(
                "the certificate this node presented names no node (nswarm://node/NAME): "
                "issue it one with 'nswarm issue node NAME' and give it as node-cert (this is the master's node server)"
            )
        if claimed and claimed != name:
            raise AuthenticationFailed(
                f"this node's certificate names node {name!r}, not {claimed!r}: set the node's name to the one in "
                "its certificate, or issue it one ('nswarm issue node NAME') (this is the master's node server)"
            )
        return name


class ApiServerProtocol(Downstream):
    """
    An API user's connection to the master's api server: it may call,
    publish and subscribe (events come to it as to a node, within its
    subscriber buffer), but not implement.
    """

    role = "api user"
    caller_role = "api"
    access_role = "api"
    #: Reads the name the peer's certificate gives a role (replaced in in-memory tests).
    certificate_identity = staticmethod(tls_identity)

    @Implement.responder
    def _implement(
        self, methods: list[str], idempotent: list[str] | None = None, limits: list[int] | None = None
    ) -> Any:
        raise PermissionDenied(
            f"{self.description} may not implement methods: an API user calls, publishes and subscribes; "
            "to implement methods, run a service beside a node"
        )

    @Status.responder
    def status(self) -> Deferred[dict[str, bytes]]:
        """The cluster's status document, for an API user with the admin right."""
        if not self.rights.admin:
            where = self.access.source if self.access is not None else "the access file"
            raise PermissionDenied(
                f"{self.description} may not query the cluster's status: set 'admin = yes' in "
                f"[api {self.name or '*'}] of {where}, and reload the master"
            )
        return cluster_report(self.router).addCallback(lambda document: {"document": json.dumps(document).encode()})

    def identify(self, claimed: str | None) -> str:
        """The API user's name: the one its certificate gives, if it presented one naming an API user."""
        named = self.certificate_identity(self.transport, "api")
        if named is not None and claimed and claimed != named:
            raise AuthenticationFailed(
                f"this API user's certificate names {named!r}, not {claimed!r}: connect with the name in the "
                "certificate, or use that user's certificate (this is the master's api server)"
            )
        return named or claimed or ""
