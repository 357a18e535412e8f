"""
The cluster of the chaos suite (bench/chaos.py) and the faults done to it.

L{Chaos} runs, with L{LocalCluster}, a master, nodes C{node-1} and
C{node-2}, and on each node an echo service (C{echo-N}) and a subscriber
(C{sub-N}) from bench/chaos_services.py. A L{Fault} stops or kills one of
them: a service fault hits C{echo-1}, a node fault C{node-2}, a master
fault the master. L{Chaos.inject} does one fault and brings the cluster
back, and returns what it measured, from the daemons' own JSON log events
(their C{log_time} is the wall clock, as the harness's C{time.time()}).

LocalCluster's starts and kills block until the process is up (or gone);
here they run in a thread (C{deferToThread}), so that the reactor goes on
serving the load meanwhile. Waits for log events are bounded Deferreds
(L{Process.when}); the only timed pauses are those a fault is made of
(stopped for so long, down for so long).
"""

from __future__ import annotations

import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from chaos_load import Load
from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread

from nswarm.api import APIClient, connect
from nswarm.config import read_client_config, read_secret_file
from nswarm.testing.local import ClusterError, LocalCluster, Process, nswarm_event

SERVICES = Path(__file__).resolve().parent / "chaos_services.py"
NODES = ("node-1", "node-2")
#: The victims: of a service fault, of a node fault.
SERVICE_VICTIM, NODE_VICTIM = "echo-1", "node-2"
#: Bounds, in seconds: each process start, a wait for a log event after a fault, an answer after one.
START_TIMEOUT = 30.0
EVENT_TIMEOUT = 15.0
#: Bound on a status query.
STATUS_TIMEOUT = 5.0


@dataclass(frozen=True)
class Fault:
    """
    One fault: C{action} ("kill" for SIGKILL, "stop" for SIGSTOP, "term" for
    SIGTERM) on C{target} ("service", "node" or "master"). C{pause}: how
    long a stopped process stays stopped, or how long after its SIGKILL a
    killed one is started again.
    """

    name: str
    target: str
    action: str
    pause: float = 0.0


def since(event: dict[str, Any] | None, start: float) -> float | None:
    """Seconds from wall-clock time C{start} to C{event}'s log_time (None without an event)."""
    return None if event is None else round(float(event["log_time"]) - start, 3)


def rss_mb(pid: int) -> float | None:
    """Process C{pid}'s resident set, in MB (10^6 bytes), from /proc (None once it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return round(int(line.split()[1]) * 1024 / 1e6, 1)
    except OSError:
        pass
    return None


class Chaos:
    """The scenario's cluster, in C{directory}: start it, inject faults, stop it."""

    def __init__(self, reactor: Any, directory: Path) -> None:
        self.reactor = reactor
        self.directory = directory
        self.cluster = LocalCluster(directory, timeout=START_TIMEOUT)
        #: Processes stopped with SIGSTOP and not continued yet (continued before the cluster stops).
        self.stopped: set[Process] = set()

    # -- the processes -------------------------------------------------------

    def start(self) -> None:
        """Write the configuration and start every process (blocking: call it in a thread)."""
        self.cluster.init()
        self.cluster.start_master()
        for number, node in enumerate(NODES, 1):
            self.cluster.start_node(node)
            self.start_service("echo", f"echo-{number}", node)
            self.start_service("subscriber", f"sub-{number}", node)

    def start_service(self, role: str, name: str, node: str) -> Process:
        """Start (or start again) the chaos service C{name} on C{node} (blocking)."""
        return self.cluster.start_service(SERVICES, "--chaos", role, name, str(self.log_of(name)), node=node, name=name)

    def log_of(self, name: str) -> Path:
        """The file service C{name} logs its runs (echo) or events (subscriber) to."""
        return self.directory / f"{'runs' if name.startswith('echo') else 'events'}-{name}.log"

    @property
    def subscribers(self) -> list[str]:
        """The subscribers' names."""
        return [f"sub-{number}" for number in range(1, len(NODES) + 1)]

    @property
    def echoes(self) -> list[str]:
        """The echo services' names."""
        return [f"echo-{number}" for number in range(1, len(NODES) + 1)]

    def process(self, name: str) -> Process:
        """The latest process named C{name} (a restart makes a new one)."""
        return [process for process in self.cluster.processes if process.name == name][-1]

    @property
    def master(self) -> Process:
        """The master running now (or the last one)."""
        assert self.cluster.master is not None
        return self.cluster.master

    def daemons(self) -> dict[str, int]:
        """The pids of the master and the nodes now."""
        return {"master": self.master.pid, **{node: self.process(node).pid for node in NODES}}

    def rss(self) -> dict[str, Any]:
        """The RSS in MB, and the pid, of the master and of each node now."""
        return {name: {"pid": pid, "rss_mb": rss_mb(pid)} for name, pid in self.daemons().items()}

    def resume_all(self) -> None:
        """SIGCONT every process still stopped (so that stopping the cluster can end it)."""
        for process in self.stopped:
            if process.alive:
                os.kill(process.pid, signal.SIGCONT)
        self.stopped.clear()

    def stop(self) -> Deferred[None]:
        """Stop every process (in a thread)."""
        self.resume_all()
        return deferToThread(self.cluster.stop)

    def connect(self, idempotent: list[str]) -> Deferred[APIClient]:
        """An API client of the master, reconnecting by itself, that may resend calls to C{idempotent}."""
        config = read_client_config(str(self.cluster.client_config), "api")
        return connect(
            self.reactor,
            config.get("host", "localhost"),
            self.cluster.api_port,
            key=read_secret_file(config["auth-key-file"]),
            ca=config["ca"],
            cert=config.get("cert"),
            cert_key=config.get("cert-key"),
            timeout=10.0,
            idempotent=idempotent,
        )

    async def status(self, client: APIClient) -> dict[str, Any] | None:
        """The master's status document (None if it does not come within STATUS_TIMEOUT seconds)."""
        try:
            return await client.status().addTimeout(STATUS_TIMEOUT, self.reactor)
        except Exception as error:
            return {"error": f"{type(error).__name__}: {error}"}

    # -- waiting -------------------------------------------------------------

    async def event(
        self, process: Process, predicate: Any, timeout: float = EVENT_TIMEOUT, after: int = 0
    ) -> dict[str, Any] | None:
        """C{process}'s first event after the first C{after} satisfying C{predicate}; None if none within C{timeout}."""
        try:
            return await process.when(self.reactor, predicate, timeout, after=after)
        except ClusterError:
            return None

    async def first_ok(self, load: Load, after: float, made_after: float = 0.0) -> float | None:
        """
        Seconds from C{after} to the first call answered with a result after
        it (and made after C{made_after}); None if none is in EVENT_TIMEOUT
        seconds. Call it at C{after} or before: answers are not kept.
        """
        try:
            answered = load.first_ok(after, made_after).addTimeout(EVENT_TIMEOUT + after - time.time(), self.reactor)
            return round(await answered - after, 3)
        except Exception:
            return None

    def pause(self, seconds: float) -> Deferred[None]:
        """A timed pause that is part of a fault (stopped or down for so long)."""
        return deferLater(self.reactor, seconds, lambda: None)

    # -- the faults ----------------------------------------------------------

    def victim(self, target: str) -> Process:
        """The process a fault on C{target} hits."""
        return {"service": self.process(SERVICE_VICTIM), "node": self.process(NODE_VICTIM), "master": self.master}[
            target
        ]

    async def inject(self, fault: Fault, load: Load) -> dict[str, Any]:
        """Do C{fault} and bring the cluster back; return what was measured."""
        if fault.action == "stop":
            return await self._stop(fault, load)
        if fault.action == "kill":
            return await self._kill(fault, load)
        if fault.action == "term" and fault.target == "master":
            return await self._terminate(load)
        raise ValueError(f"no such fault: {fault}")

    def _ejection(self, target: str) -> tuple[Process, str, str] | None:
        """Who logs the ejection of a stopped C{target}, and the role and name it logs it by."""
        if target == "service":
            return self.process("node-1"), "service", SERVICE_VICTIM
        if target == "node":
            return self.master, "node", NODE_VICTIM
        return None

    async def _stop(self, fault: Fault, load: Load) -> dict[str, Any]:
        """SIGSTOP, the pause, SIGCONT: how soon it was ejected, and reinstated once continued."""
        victim = self.victim(fault.target)
        watch = self._ejection(fault.target)
        after = watch[0].mark() if watch else 0
        stopped = time.time()
        os.kill(victim.pid, signal.SIGSTOP)
        self.stopped.add(victim)
        ejected = None
        if watch is not None:
            witness, role, name = watch
            ejected = ensureDeferred(
                self.event(witness, nswarm_event("ejected", role=role, name=name), fault.pause, after)
            )
        await self.pause(fault.pause)
        os.kill(victim.pid, signal.SIGCONT)
        self.stopped.discard(victim)
        continued = time.time()
        ok = ensureDeferred(self.first_ok(load, continued))
        figures: dict[str, Any] = {"stopped_s": round(continued - stopped, 3)}
        if watch is not None and ejected is not None:
            event = await ejected
            figures["ejected_s"] = since(event, stopped)
            figures.update(await self._back(witness, role, name, stopped, continued, after))
        figures["first_ok_s"] = await ok
        return figures

    async def _back(
        self, witness: Process, role: str, name: str, stopped: float, continued: float, after: int
    ) -> dict[str, Any]:
        """
        How a continued peer came back: C{reinstated_s} after its SIGCONT,
        or, if its connection was closed meanwhile (silent past the
        heartbeat bound), C{closed_s} after its SIGSTOP and
        C{registered_again_s} after its SIGCONT.
        """
        closed = witness.events(nswarm_event("disconnected", role=role, name=name), after=after)
        if not closed:
            back = await self.event(witness, nswarm_event("reinstated", role=role, name=name), after=after)
            return {"reinstated_s": since(back, continued)}
        registered = nswarm_event("registration", role=role, name=name, action="implements")
        return {
            "closed_s": since(closed[0], stopped),
            "registered_again_s": since(await self.event(witness, registered, after=after), continued),
        }

    async def _kill(self, fault: Fault, load: Load) -> dict[str, Any]:
        """SIGKILL, the pause, start it again: how soon the cluster has it back."""
        victim = self.victim(fault.target)
        killed = time.time()
        await deferToThread(self.cluster.kill, victim)
        figures: dict[str, Any] = {"exit_s": round(time.time() - killed, 3)}
        await self.pause(max(0.0, fault.pause - (time.time() - killed)))
        if fault.target == "service":
            service = await deferToThread(self.start_service, "echo", SERVICE_VICTIM, "node-1")
            registered = service.events(nswarm_event("service_registered"))[0]
            figures["registered_s"] = since(registered, killed)
        elif fault.target == "node":
            figures.update(await self._restart_node(killed))
        else:
            figures.update(await self._restart_master(killed, load))
        return figures

    async def _restart_node(self, killed: float) -> dict[str, Any]:
        """Start the killed node again; its services (still running) register with it again."""
        services = [self.process(f"{kind}-2") for kind in ("echo", "sub")]
        marks = [service.mark() for service in services]
        node = await deferToThread(self.cluster.start_node, NODE_VICTIM)
        connected = node.events(nswarm_event("upstream_connected"))[0]
        registered = [
            await self.event(service, nswarm_event("service_registered"), after=mark)
            for service, mark in zip(services, marks, strict=True)
        ]
        last = None if None in registered else max(float(event["log_time"]) for event in registered)  # type: ignore[index]
        return {
            "node_up_s": since(connected, killed),
            "services_registered_s": None if last is None else round(last - float(connected["log_time"]), 3),
        }

    async def _restart_master(self, down: float, load: Load) -> dict[str, Any]:
        """
        Start the master again on its ports: its outage (from C{down} to it
        listening), when both nodes have registered with it again, and when
        the API client's first call succeeds, both from it listening.
        """
        cluster = self.cluster
        answered = load.first_ok(down, made_after=down)
        master = await deferToThread(cluster.start_master, cluster.node_port, cluster.api_port)
        listening = master.events(nswarm_event("listening", server="node server"))[0]
        up = float(listening["log_time"])
        registered = [
            await self.event(master, nswarm_event("registration", role="node", name=node, action="implements"))
            for node in NODES
        ]
        last = None if None in registered else max(float(event["log_time"]) for event in registered)  # type: ignore[index]
        try:
            first_ok: float | None = round(await answered.addTimeout(EVENT_TIMEOUT, self.reactor) - up, 3)
        except Exception:
            first_ok = None
        return {
            "outage_s": round(up - down, 3),
            "reregistered_s": None if last is None else round(last - up, 3),
            "first_ok_s": first_ok,
        }

    async def _terminate(self, load: Load) -> dict[str, Any]:
        """SIGTERM the master: when it says it drains, when it exits; then start it again at once."""
        master = self.master
        after = master.mark()
        termed = time.time()
        master.popen.send_signal(signal.SIGTERM)
        draining = await self.event(master, nswarm_event("draining"), after=after)
        await deferToThread(master.popen.wait, 60.0)
        figures: dict[str, Any] = {
            "draining_s": since(draining, termed),
            "drained_calls": None if draining is None else draining.get("count"),
            "exit_s": round(time.time() - termed, 3),
        }
        figures.update(await self._restart_master(termed, load))
        return figures
