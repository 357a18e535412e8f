"""
The hostile workloads of the benchmarks (issue 10): H1 to H4, each an
attack on the same cluster the other workloads use, measured against that
cluster without the attack, in the same run.

For each: a well-behaved API client (the harness's own, connected before
any attack) makes 64-byte echo calls, one outstanding, paced over a
window, first without the attack (the "floor" column), then while it runs
(the "nswarm" column); the master's and the node's RSS are sampled every
0.1 s over both. The attackers run in child processes, so that they do not
share the harness's CPU with the healthy client:

    H1  an API client that sends 30 KB echo calls as fast as its socket
        takes them and never reads its answers
    H2  an API client keeping 20,000 calls in flight to a method that never
        answers (bench/hang_service.py): the master caps it at 10,000
    H3  a service subscribed to 10,000 wildcard patterns
        (bench/pattern_service.py), while a publisher publishes events with
        a new name each at a steady rate
    H4  1000 connections that fail authentication (a wrong api key), 50 at
        a time

This file is both the module bench/run.py imports (L{run_hostile}) and the
script the attackers run:

    python bench/hostile.py H1 --config DIR/client.conf --port PORT --window S --output FILE

An attacker writes JSON lines to its output file: C{ready} once connected
(the attack starts then), C{ended} once its window is over, and C{report}
with what happened to it; or C{error}.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from twisted.internet.defer import Deferred, ensureDeferred, gatherResults
from twisted.internet.interfaces import IPushProducer
from twisted.internet.task import LoopingCall, deferLater, react
from zope.interface import implementer

from nswarm.amp_commands import AuthenticationFailed, Overloaded, UpstreamUnavailable
from nswarm.api import APIClient, connect
from nswarm.config import read_client_config, read_secret_file
from nswarm.testing.local import ClusterError, LocalCluster, Process, nswarm_event
from nswarm.testing.process import child_environment

BENCH = Path(__file__).resolve().parent

HOSTILE = ["H1", "H2", "H3", "H4"]
#: Seconds each attack lasts (H4: until its connections are done), and the floor's window.
WINDOW, QUICK_WINDOW = 10.0, 3.0
#: The healthy client's calls, paced evenly over the window: 200 a second.
HEALTHY_RATE = 200
HEALTHY_PAYLOAD = 64
#: H1: the size of each call's argument, and how long its attacker may take, once it reads again,
#: to get what was sent to it.
H1_PAYLOAD = 30_000
H1_FINISH = 15.0
#: H2: the calls its attacker keeps in flight (the master's --calls-in-flight is 10,000).
H2_OUTSTANDING = 20_000
CALLS_IN_FLIGHT = 10_000
#: H3: the patterns its service subscribes to (the most one connection may have), and the events a second.
H3_PATTERNS = 10_000
H3_RATE = 2000
#: H4: connections failing authentication, and how many at once.
H4_CONNECTIONS, H4_QUICK_CONNECTIONS = 1000, 300
H4_AT_ONCE = 50
#: Bounds, in seconds: on an attacker's start (and its report), on each hostile workload as a whole
#: (--limit overrides it).
READY_TIMEOUT = 30.0
LIMIT = 180.0
#: Seconds an attacker stays connected after its report, unless stopped sooner (it is, at once).
LINGER = 60.0
RSS_TARGET = "< 200 MB"

TARGETS: dict[tuple[str, str], str] = {}
for _name in HOSTILE:
    TARGETS[(_name, "p99 µs")] = "<= 3x"
    TARGETS[(_name, "master RSS MB")] = RSS_TARGET
    TARGETS[(_name, "errors")] = "0"
    TARGETS[(_name, "services lost")] = "0"
TARGETS[("H1", "attacker")] = "slowed or closed"
TARGETS[("H2", "attacker")] = "capped"
TARGETS[("H2", "held")] = f"<= {CALLS_IN_FLIGHT}"
TARGETS[("H3", "lost")] = "0"
TARGETS[("H4", "attacker")] = "throttled"

WHAT = {
    "H1": f"an API client sending {H1_PAYLOAD // 1000} KB echo calls and never reading its answers",
    "H2": f"an API client keeping {H2_OUTSTANDING:,} calls in flight to a method that never answers",
    "H3": f"a service subscribed to {H3_PATTERNS:,} patterns; {H3_RATE} events/s, each with a new name",
    "H4": f"connections failing authentication (wrong api key), {H4_AT_ONCE} at a time",
}


# -- the harness's side --------------------------------------------------------


@dataclass
class Harness:
    """What bench/run.py lends the hostile workloads."""

    cluster: LocalCluster
    #: The healthy client: connected before any attack.
    api: APIClient
    progress: Any  # run.Progress
    #: run.CPUWindow: C{with cpu_window(pids) as window: ...; window.percent}.
    cpu_window: Callable[[dict[str, list[int]]], Any]
    #: The cluster's processes whose CPU% is shown (harness, master, node, echo).
    pids: dict[str, list[int]]
    hardware: Callable[[], dict[str, Any]]
    #: bench/run.py's command line: C{quick}, C{limit}.
    options: argparse.Namespace
    #: Where the attackers' processes are also listed, so that bench/run.py stops them whatever happens.
    spawned: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def quick(self) -> bool:
        return bool(self.options.quick)

    @property
    def limit(self) -> float | None:
        limit: float | None = self.options.limit
        return limit

    @property
    def window(self) -> float:
        return QUICK_WINDOW if self.quick else WINDOW

    @property
    def master(self) -> Process:
        assert self.cluster.master is not None
        return self.cluster.master

    @property
    def node(self) -> Process:
        return self.cluster.nodes["node-1"]


def vm_rss(pid: int) -> float | None:
    """VmRSS of process C{pid} in MB (10^6 bytes), or None once it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024 / 1e6
    except OSError:
        pass
    return None


class RSSPeak:
    """
    The largest VmRSS of named processes, sampled every 0.1 s by a thread
    (VmHWM is the peak of a process's whole life; and the harness's reactor
    may block for a moment, starting a service): C{with RSSPeak(pids) as
    peak: ...; peak.mb}.
    """

    def __init__(self, pids: dict[str, int], interval: float = 0.1) -> None:
        self.pids = pids
        self.interval = interval
        self.mb: dict[str, float] = {name: 0.0 for name in pids}
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def sample(self) -> None:
        for name, pid in self.pids.items():
            rss = vm_rss(pid)
            if rss is not None:
                self.mb[name] = max(self.mb[name], round(rss, 1))
        self.samples += 1

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def __enter__(self) -> RSSPeak:
        self.sample()
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sample()


class Attacker:
    """A child process running C{bench/hostile.py KIND ...}, and the JSON lines it writes."""

    def __init__(self, harness: Harness, kind: str, *arguments: str) -> None:
        directory = harness.cluster.directory
        self.kind = kind
        self.output = directory / f"attack-{kind}.out"
        self.output.unlink(missing_ok=True)
        self.log = directory / f"attack-{kind}.log"
        self.lines: dict[str, Any] = {}
        self._read = 0
        command = [sys.executable, str(Path(__file__).resolve()), kind]
        command += ["--config", str(harness.cluster.client_config), "--port", str(harness.cluster.api_port)]
        command += ["--window", str(harness.window), "--output", str(self.output), *arguments]
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=child_environment(),
                start_new_session=True,
            )
        harness.spawned.append(self.process)

    @property
    def pid(self) -> int:
        return self.process.pid

    def poll(self) -> None:
        """Take the complete lines written since the last poll."""
        try:
            with open(self.output, "rb") as output:
                output.seek(self._read)
                data = output.read()
        except FileNotFoundError:
            return
        end = data.rfind(b"\n") + 1
        for line in data[:end].splitlines():
            if line.strip():
                self.lines.update(json.loads(line))
        self._read += end
        if "error" in self.lines:
            raise ClusterError(f"attacker {self.kind} failed: {self.lines['error']} (see {self.log})")

    def has(self, key: str) -> bool:
        self.poll()
        return key in self.lines

    async def wait(self, reactor: Any, key: str, timeout: float) -> Any:
        """What the attacker wrote as C{key}, once it has (L{ClusterError} if it exits or C{timeout} passes first)."""
        deadline = time.monotonic() + timeout
        while not self.has(key):
            if self.process.poll() is not None:
                self.poll()
                if key in self.lines:
                    break
                raise ClusterError(
                    f"attacker {self.kind} exited with status {self.process.returncode} before '{key}': see {self.log}"
                )
            if time.monotonic() > deadline:
                raise ClusterError(f"attacker {self.kind} did not write '{key}' within {timeout:g}s: see {self.log}")
            await deferLater(reactor, 0.05, lambda: None)
        return self.lines[key]

    def stop(self) -> int | None:
        """SIGTERM, then SIGKILL if it has not exited within 10 s; its exit status."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(5)
        return self.process.returncode


def nearest_rank(ordered: list[float], fraction: float) -> float:
    """The nearest-rank percentile C{fraction} of the sorted C{ordered}."""
    return ordered[max(0, math.ceil(len(ordered) * fraction) - 1)]


@dataclass
class Healthy:
    """What the healthy client saw: the latency of each call answered, and the failures."""

    latencies: list[float] = field(default_factory=list)
    errors: dict[str, int] = field(default_factory=dict)
    first_error: str = ""
    elapsed: float = 0.0

    def figures(self) -> dict[str, Any]:
        if not self.latencies:
            raise ClusterError(f"the healthy client got no answer: {self.first_error or 'no call made'}")
        ordered = sorted(self.latencies)
        return {
            "p50 µs": round(statistics.median(ordered) * 1e6, 1),
            "p99 µs": round(nearest_rank(ordered, 0.99) * 1e6, 1),
            "errors": sum(self.errors.values()),
        }


async def healthy_calls(
    reactor: Any, harness: Harness, label: str, stop: Callable[[], bool] = lambda: False
) -> Healthy:
    """
    The healthy client's echo calls of 64 bytes, one outstanding, paced at
    L{HEALTHY_RATE} a second (a call starts at its time, or once the one
    before is answered if that is later), over the window or until C{stop()}.
    """
    text = "x" * HEALTHY_PAYLOAD
    count = round(harness.window * HEALTHY_RATE)
    interval = 1 / HEALTHY_RATE
    result = Healthy()
    progress = harness.progress
    progress.begin(label, count)
    start = time.perf_counter()
    for index in range(count):
        if stop():
            break
        wait = start + index * interval - time.perf_counter()
        if wait > 0:
            await deferLater(reactor, wait, lambda: None)
        sent = time.perf_counter()
        try:
            await harness.api.call("echo", text)
        except Exception as error:
            name = type(error).__name__
            result.errors[name] = result.errors.get(name, 0) + 1
            result.first_error = result.first_error or f"{name}: {error}"
            if harness.api.transport is None:
                break
        else:
            result.latencies.append(time.perf_counter() - sent)
        progress.done = index + 1
    result.elapsed = time.perf_counter() - start
    progress.end()
    return result


class Attack:
    """One hostile workload: what to set up, what the attacker is told, what to make of its report."""

    kind = ""

    def __init__(self, harness: Harness) -> None:
        self.harness = harness
        #: Processes started for the attack (beside the attacker), to watch and to stop.
        self.extra: dict[str, Process] = {}

    def arguments(self) -> list[str]:
        return []

    async def setup(self, reactor: Any) -> None:
        """Before the attacker starts (and after the floor)."""

    async def reported(self, reactor: Any) -> dict[str, Any]:
        """Once the attacker has reported, while it is still connected: figures to take then."""
        return {}

    def figures(self, report: dict[str, Any], during: dict[str, Any], started: float, mark: int) -> dict[str, Any]:
        """The attack's own figures for the nswarm column, from the attacker's report."""
        return {}

    async def teardown(self, reactor: Any) -> None:
        """Stop what L{setup} started: each a service on node-1, killed, once the node has seen it go."""
        cluster, node = self.harness.cluster, self.harness.node
        for process in self.extra.values():
            mark = node.mark()
            cluster.kill(process)
            name = SERVICE_NAMES.get(process.name, process.name)
            try:
                await node.when(reactor, nswarm_event("disconnected", role="service", name=name), 10, after=mark)
            except ClusterError:
                pass  # the node's log says what went wrong; the next workload checks the cluster


SERVICE_NAMES = {"hang": "bench-hang", "h3-patterns": "bench-h3"}


class NotReading(Attack):
    """H1: sends, never reads. The master must stop reading it, and close it past --send-buffer."""

    kind = "H1"

    def figures(self, report: dict[str, Any], during: dict[str, Any], started: float, mark: int) -> dict[str, Any]:
        full = self.harness.master.events(nswarm_event("send_buffer_full", role="api"), after=mark)
        closed_after = round(full[0]["log_time"] - started, 2) if full else None
        report["master_send_buffer_full"] = [
            {key: event.get(key) for key in ("name", "backlog", "limit", "log_time")} for event in full
        ]
        paused = report["paused_s"] / max(report["window_s"], 1e-9)
        if closed_after is not None:
            attacker = "closed"
        elif report["closed"]:
            attacker = "lost"
        else:
            attacker = f"paused {100 * paused:.0f}%"
        figures: dict[str, Any] = {"attacker": attacker}
        if closed_after is not None:
            figures["closed after s"] = closed_after
        figures["sent MB"] = round(report["sent"] * H1_PAYLOAD / 1e6, 1)
        figures["answered"] = report["answered"]
        return figures


class InFlight(Attack):
    """H2: holds 20,000 calls to bench.hang in flight; past 10,000 the master answers Overloaded."""

    kind = "H2"

    def arguments(self) -> list[str]:
        return ["--count", str(H2_OUTSTANDING)]

    async def setup(self, reactor: Any) -> None:
        self.extra["hang"] = self.harness.cluster.start_service(BENCH / "hang_service.py", name="hang")

    async def reported(self, reactor: Any) -> dict[str, Any]:
        # The calls the hang service holds with the attacker still connected (the healthy client asks).
        return dict(await self.harness.api.call("bench.hang.count"))

    def figures(self, report: dict[str, Any], during: dict[str, Any], started: float, mark: int) -> dict[str, Any]:
        report["service"] = during
        capped = report["overloaded"] > 0 and during["held"] <= CALLS_IN_FLIGHT
        return {
            "attacker": "capped" if capped else "not capped",
            "held": during["held"],
            "overloaded": report["overloaded"],
            "overloaded/s": round(report["overloaded"] / max(report["window_s"], 1e-9)),
        }


class Patterns(Attack):
    """H3: a service at its cap of patterns, events with new names published at a steady rate."""

    kind = "H3"

    def __init__(self, harness: Harness) -> None:
        super().__init__(harness)
        #: The service's counts before the attack, and once its deliveries have stopped.
        self.before: dict[str, Any] = {}
        self.after: dict[str, Any] = {}

    def arguments(self) -> list[str]:
        return ["--count", str(H3_PATTERNS), "--rate", str(H3_RATE)]

    async def setup(self, reactor: Any) -> None:
        cluster = self.harness.cluster
        self.extra["h3-patterns"] = cluster.start_service(
            BENCH / "pattern_service.py", "--patterns", str(H3_PATTERNS), name="h3-patterns"
        )
        # It registers with its first patterns, then subscribes to the rest a chunk at a time.
        deadline = time.monotonic() + READY_TIMEOUT
        while not (await self.counts())["done"]:
            if time.monotonic() > deadline:
                raise ClusterError(f"the H3 service did not subscribe to its patterns within {READY_TIMEOUT:g}s")
            await deferLater(reactor, 0.1, lambda: None)
        self.before = await self.counts()

    def counts(self) -> Deferred[dict[str, Any]]:
        return self.harness.api.call("bench.h3.count")

    async def reported(self, reactor: Any) -> dict[str, Any]:
        """The service's counts once they no longer grow (2 s without a new event)."""
        counts, since = await self.counts(), time.monotonic()
        while time.monotonic() - since < 2.0:
            await deferLater(reactor, 0.2, lambda: None)
            now = await self.counts()
            if now["count"] != counts["count"]:
                since = time.monotonic()
            counts = now
        self.after = counts
        return {}

    def figures(self, report: dict[str, Any], during: dict[str, Any], started: float, mark: int) -> dict[str, Any]:
        counts = self.after
        delivered = counts["count"] - self.before["count"]
        report["service"] = counts
        # What the node could not pass on to the master (its own connection there has the same cap).
        report["node_upstream_refusals"] = [
            event.get("error")
            for event in self.harness.node.events(lambda event: event.get("command") in ("Subscribe", "Unsubscribe"))
            if event.get("error")
        ]
        return {
            "attacker": "not slowed" if report["published"] >= 0.9 * report["asked"] else "slowed",
            "patterns": counts["patterns"],
            "publishes/s": round(report["published"] / max(report["window_s"], 1e-9)),
            "published": report["published"],
            "delivered": delivered,
            "lost": report["published"] - delivered,
        }


class WrongKey(Attack):
    """H4: connections failing authentication; past 10 at once, the master throttles them."""

    kind = "H4"

    def arguments(self) -> list[str]:
        count = H4_QUICK_CONNECTIONS if self.harness.quick else H4_CONNECTIONS
        return ["--count", str(count), "--at-once", str(H4_AT_ONCE)]

    def figures(self, report: dict[str, Any], during: dict[str, Any], started: float, mark: int) -> dict[str, Any]:
        return {
            "attacker": "throttled" if report["throttled"] + report["refused"] else "not throttled",
            "wrong key": report["wrong_key"],
            "throttled": report["throttled"],
            "refused": report["refused"],
            "other": report["other"] + report["accepted"],
            "attempts/s": round(report["attempts"] / max(report["window_s"], 1e-9)),
        }


ATTACKS: dict[str, type[Attack]] = {"H1": NotReading, "H2": InFlight, "H3": Patterns, "H4": WrongKey}


async def run_attack(reactor: Any, harness: Harness, kind: str) -> dict[str, Any]:
    """One hostile workload: the floor, then the attack, within its limit; return its JSON record."""
    attack = ATTACKS[kind](harness)
    record: dict[str, Any] = {
        "workload": kind,
        "what": WHAT[kind],
        "quick": harness.quick,
        "count": round(harness.window * HEALTHY_RATE),
        "outstanding": 1,
        "window_s": harness.window,
    }
    rss_pids = {"master": harness.master.pid, "node": harness.node.pid}
    attacker: Attacker | None = None

    async def measure() -> None:
        nonlocal attacker
        with RSSPeak(rss_pids) as floor_rss, harness.cpu_window(harness.pids) as floor_cpu:
            floor = await healthy_calls(reactor, harness, f"{kind} floor (no attack)")
        with RSSPeak(rss_pids) as rss:
            await attack.setup(reactor)
            mark, node_mark = harness.master.mark(), harness.node.mark()
            attacker = Attacker(harness, kind, *attack.arguments())
            await attacker.wait(reactor, "ready", READY_TIMEOUT)
            started = attacker.lines["wall"]  # time.time() as the attack started
            pids = {
                **harness.pids,
                **{name: [process.pid] for name, process in attack.extra.items()},
                f"attacker {kind}": [attacker.pid],
            }
            with harness.cpu_window(pids) as cpu:
                ours = await healthy_calls(reactor, harness, f"{kind} under attack", lambda: attacker.has("ended"))
            await attacker.wait(reactor, "ended", harness.window + READY_TIMEOUT)
            report = await attacker.wait(reactor, "report", H1_FINISH + READY_TIMEOUT)
            during = await attack.reported(reactor)
            record["attacker_exit_code"] = attacker.stop()
            await attack.teardown(reactor)
        for process in (harness.master, harness.node):
            if not process.alive:
                raise ClusterError(f"{process} exited during {kind}, with status {process.returncode}")
        if harness.api.transport is None:
            raise ClusterError(f"the healthy client's connection was closed during {kind}")
        # Services other than the attack's own that the node saw go during it (they come back: the SDK reconnects).
        own = {SERVICE_NAMES.get(process.name, process.name) for process in attack.extra.values()}
        lost = [
            event.get("name")
            for event in harness.node.events(nswarm_event("disconnected", role="service"), after=node_mark)
            if event.get("name") not in own
        ]
        record["floor"] = {
            **floor.figures(),
            "master RSS MB": floor_rss.mb["master"],
            "node RSS MB": floor_rss.mb["node"],
        }
        record["nswarm"] = {
            **ours.figures(),
            "master RSS MB": rss.mb["master"],
            "node RSS MB": rss.mb["node"],
            **attack.figures(report, during, started, mark),
            "services lost": len(lost),
        }
        record["services_lost"] = lost
        record["send_buffer_full"] = {
            process.name: [
                {key: event.get(key) for key in ("role", "name", "backlog", "log_time")}
                for event in process.events(nswarm_event("send_buffer_full"), after=after)
            ]
            for process, after in ((harness.master, mark), (harness.node, node_mark))
        }
        record["floor_cpu"] = floor_cpu.percent
        record["nswarm_cpu"] = cpu.percent
        record["healthy"] = {
            "floor": {"calls": len(floor.latencies), "errors": floor.errors, "seconds": round(floor.elapsed, 2)},
            "nswarm": {
                "calls": len(ours.latencies),
                "errors": ours.errors,
                "first_error": ours.first_error,
                "seconds": round(ours.elapsed, 2),
            },
        }
        record["attack"] = report
        record["rss_samples"] = {"floor": floor_rss.samples, "nswarm": rss.samples}

    try:
        await ensureDeferred(measure()).addTimeout(harness.limit or LIMIT, reactor)
    except Exception as error:  # reported like any failed workload; the others still run
        harness.progress.end()
        record["error"] = f"{type(error).__name__}: {error}"
        print(f"  {kind} failed: {record['error']}", file=sys.stderr)
    else:
        record["ratio"] = {
            key: round(value / record["floor"][key], 2)
            for key, value in record["nswarm"].items()
            if isinstance(value, (int, float)) and record["floor"].get(key)
        }
    finally:
        if attacker is not None:
            attacker.stop()
        for process in attack.extra.values():
            if process.alive:
                harness.cluster.kill(process)
    record["hardware"] = harness.hardware()
    record["time"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    return record


async def run_hostile(
    reactor: Any, harness: Harness, chosen: list[str], keep: Callable[[dict[str, Any]], None]
) -> None:
    """Run the hostile workloads C{chosen}, in order (H4 last: it spends this address's authentications)."""
    for kind in HOSTILE:
        if kind in chosen:
            keep(await run_attack(reactor, harness, kind))


# -- the attackers' side -------------------------------------------------------


class Output:
    """The attacker's JSON lines."""

    def __init__(self, path: str) -> None:
        self.file = open(path, "a", buffering=1)

    def write(self, **fields: Any) -> None:
        self.file.write(json.dumps(fields) + "\n")
        self.file.flush()


def connect_as_api_user(reactor: Any, options: argparse.Namespace, key: bytes | None = None) -> Deferred[APIClient]:
    """Connect as the cluster's API user (with its certificate), with C{key} or the right one."""
    config = read_client_config(options.config, "api")
    return connect(
        reactor,
        config.get("host", "localhost"),
        options.port,
        key=key or read_secret_file(config["auth-key-file"]),
        ca=config["ca"],
        cert=config.get("cert"),
        cert_key=config.get("cert-key"),
        timeout=READY_TIMEOUT,
    )


def _count(counts: dict[str, int], failure: Any) -> None:
    name = type(failure.value).__name__
    counts[name] = counts.get(name, 0) + 1


async def linger(reactor: Any, client: APIClient) -> None:
    """
    Stay connected (the report is written) until the harness stops this
    process, or for at most L{LINGER} seconds: it takes its last figures
    (such as the calls H2's service holds) with the attack still there.
    """
    await deferLater(reactor, LINGER, lambda: None)
    await abort(reactor, client)


async def abort(reactor: Any, client: APIClient, timeout: float = 5.0) -> None:
    """
    Drop the connection and wait, at most C{timeout} seconds, until it is
    gone. Not C{client.close()}: a clean close while the master still sends
    can hang (the SDK's box parser raises as TLS shuts down, and the
    connection is never reported lost; see docs/benchmarks.md, "Hostile
    workloads").
    """
    if client.transport is not None:
        client.transport.abortConnection()
    deadline = time.monotonic() + timeout
    while client.transport is not None and time.monotonic() < deadline:
        await deferLater(reactor, 0.05, lambda: None)


@implementer(IPushProducer)
class Pump:
    """
    H1's sender: writes calls while its socket takes them (a streaming
    producer on its own connection: paused once 64 KiB wait to be sent),
    for C{window} seconds.
    """

    def __init__(self, reactor: Any, client: APIClient, window: float) -> None:
        self.reactor = reactor
        self.client = client
        self.payload = "x" * H1_PAYLOAD
        self.sent = 0
        self.failed: dict[str, int] = {}
        self.answered = 0
        self.paused = False
        self.paused_s = 0.0
        self._paused_at = 0.0
        self.start = time.monotonic()
        self.deadline = self.start + window
        self.done: Deferred[None] = Deferred()
        self._scheduled = False

    def pump(self) -> None:
        self._scheduled = False
        batch = 0
        while not self.paused and self.client.transport is not None:
            if time.monotonic() >= self.deadline:
                self.finish()
                return
            self.client.call("echo", self.payload).addCallbacks(self._answered, self._failed)
            self.sent += 1
            batch += 1
            if batch == 200:  # let the reactor breathe: it must also notice being paused, or closed
                self._schedule()
                return
        if self.client.transport is None:
            self.finish()
        elif not self.paused:
            self._schedule()

    def _schedule(self, delay: float = 0) -> None:
        if not self._scheduled and not self.done.called:
            self._scheduled = True
            self.reactor.callLater(delay, self.pump)

    def _answered(self, _: object) -> None:
        self.answered += 1

    def _failed(self, failure: Any) -> None:
        _count(self.failed, failure)

    def finish(self) -> None:
        if self.paused:
            self.paused_s += time.monotonic() - self._paused_at
            self.paused = False
        if not self.done.called:
            self.done.callback(None)

    def pauseProducing(self) -> None:
        if not self.paused:
            self.paused, self._paused_at = True, time.monotonic()

    def resumeProducing(self) -> None:
        if self.paused:
            self.paused = False
            self.paused_s += time.monotonic() - self._paused_at
        self._schedule()

    def stopProducing(self) -> None:
        self.finish()

    def tick(self) -> None:
        """While paused, the deadline still ends the window."""
        if time.monotonic() >= self.deadline:
            self.finish()


async def not_reading(reactor: Any, options: argparse.Namespace, output: Output) -> None:
    client = await connect_as_api_user(reactor, options)
    tls = client.transport
    tls.pauseProducing()  # the socket below TLS stops reading: the answers wait at the master
    pump = Pump(reactor, client, options.window)
    tls.registerProducer(pump, True)
    output.write(ready=time.monotonic(), wall=time.time())
    ticker = LoopingCall(pump.tick)
    ticker.clock = reactor
    ticker.start(0.1)
    pump.pump()
    await pump.done
    ticker.stop()
    closed_in_window = client.transport is None
    output.write(ended=time.monotonic(), sent=pump.sent)
    # Read again: take what the master kept for us, or learn that it closed the connection.
    if client.transport is not None:
        tls.unregisterProducer()
        tls.resumeProducing()
    finish = time.monotonic() + H1_FINISH
    last, since = -1, time.monotonic()
    while client.transport is not None and time.monotonic() < finish:
        settled = pump.answered + sum(pump.failed.values())
        if settled >= pump.sent:
            break
        if settled != last:
            last, since = settled, time.monotonic()
        elif time.monotonic() - since > 3.0:
            break
        await deferLater(reactor, 0.1, lambda: None)
    closed = client.transport is None
    output.write(
        report={
            "sent": pump.sent,
            "answered": pump.answered,
            "failed": pump.failed,
            "paused_s": round(pump.paused_s, 2),
            "window_s": round(options.window, 2),
            "closed": closed,
            "closed_in_window": closed_in_window,
        }
    )
    await linger(reactor, client)


async def in_flight(reactor: Any, options: argparse.Namespace, output: Output) -> None:
    client = await connect_as_api_user(reactor, options)
    outstanding = overloaded = answered = 0
    other: dict[str, int] = {}
    running = True
    first_overloaded: float | None = None
    start = time.monotonic()

    def launch() -> None:
        nonlocal outstanding
        outstanding += 1
        client.call("bench.hang").addCallbacks(done, failed)

    def done(_: object) -> None:
        nonlocal outstanding, answered
        outstanding -= 1
        answered += 1
        if running:
            launch()

    def failed(failure: Any) -> None:
        nonlocal outstanding, overloaded, first_overloaded
        outstanding -= 1
        if not running:
            return
        if failure.check(Overloaded):
            overloaded += 1
            if first_overloaded is None:
                first_overloaded = time.monotonic() - start
        else:
            _count(other, failure)
        if client.transport is not None:
            launch()

    output.write(ready=time.monotonic(), wall=time.time())
    for _ in range(options.count):
        launch()
    await deferLater(reactor, max(0.0, start + options.window - time.monotonic()), lambda: None)
    running = False
    report = {
        "outstanding": outstanding,
        "answered": answered,
        "overloaded": overloaded,
        "first_overloaded_s": round(first_overloaded, 3) if first_overloaded is not None else None,
        "other": other,
        "window_s": round(time.monotonic() - start, 2),
        "closed": client.transport is None,
    }
    output.write(ended=time.monotonic())
    output.write(report=report)
    await linger(reactor, client)


async def publishing(reactor: Any, options: argparse.Namespace, output: Output) -> None:
    client = await connect_as_api_user(reactor, options)
    payload = "x" * HEALTHY_PAYLOAD
    published = answered = 0
    failed: dict[str, int] = {}
    waits: list[float] = []
    finished: Deferred[None] = Deferred()

    def answer(_: object, sent: float) -> None:
        nonlocal answered
        answered += 1
        waits.append(time.perf_counter() - sent)

    output.write(ready=time.monotonic(), wall=time.time())
    start = time.monotonic()
    asked = round(options.window * options.rate)

    def tick() -> None:
        nonlocal published
        due = min(asked, round((time.monotonic() - start) * options.rate) + 1)
        while published < due and client.transport is not None:
            event = f"h3.{published * 7919 % options.count}.x{published}"  # spread over every pattern
            client.publish(event, payload).addCallbacks(
                answer, lambda failure: _count(failed, failure), callbackArgs=(time.perf_counter(),)
            )
            published += 1
        if published >= asked or client.transport is None or time.monotonic() > start + options.window + 1:
            pacer.stop()
            finished.callback(None)

    pacer = LoopingCall(tick)
    pacer.clock = reactor
    pacer.start(0.01)
    await finished
    window = time.monotonic() - start
    output.write(ended=time.monotonic())
    deadline = time.monotonic() + 10
    while answered + sum(failed.values()) < published and time.monotonic() < deadline:
        await deferLater(reactor, 0.05, lambda: None)
    waits.sort()
    output.write(
        report={
            "asked": asked,
            "published": published,
            "answered": answered,
            "failed": failed,
            "window_s": round(window, 2),
            "publish p50 µs": round(statistics.median(waits) * 1e6, 1) if waits else None,
            "publish p99 µs": round(nearest_rank(waits, 0.99) * 1e6, 1) if waits else None,
        }
    )
    await linger(reactor, client)


async def wrong_key(reactor: Any, options: argparse.Namespace, output: Output) -> None:
    counts = {"wrong_key": 0, "throttled": 0, "refused": 0, "other": 0, "accepted": 0}
    messages: dict[str, str] = {}
    attempts = 0
    output.write(ready=time.monotonic(), wall=time.time())
    start = time.monotonic()

    async def worker() -> None:
        nonlocal attempts
        while attempts < options.count:
            attempts += 1
            try:
                client = await connect_as_api_user(reactor, options, key=b"not-the-api-key-%d" % attempts)
            except AuthenticationFailed as error:
                kind = "throttled" if "too many failed authentications" in str(error) else "wrong_key"
                counts[kind] += 1
                messages.setdefault(kind, str(error))
            except UpstreamUnavailable as error:
                kind = "refused" if "before this client authenticated" in str(error) else "other"
                counts[kind] += 1
                messages.setdefault(kind, f"{type(error).__name__}: {error}")
            except Exception as error:
                counts["other"] += 1
                messages.setdefault("other", f"{type(error).__name__}: {error}")
            else:
                counts["accepted"] += 1
                await abort(reactor, client)

    await gatherResults([ensureDeferred(worker()) for _ in range(options.at_once)])
    window = time.monotonic() - start
    output.write(ended=time.monotonic())
    output.write(report={**counts, "attempts": attempts, "window_s": round(window, 2), "messages": messages})


ATTACKERS = {"H1": not_reading, "H2": in_flight, "H3": publishing, "H4": wrong_key}


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description="an attacker of bench/run.py's hostile workloads")
    parser.add_argument("kind", choices=HOSTILE)
    parser.add_argument("--config", required=True, help="the cluster's client.conf")
    parser.add_argument("--port", type=int, required=True, help="the master's api port")
    parser.add_argument("--window", type=float, default=WINDOW)
    parser.add_argument("--output", required=True, help="where to write the JSON lines")
    parser.add_argument("--count", type=int, default=0)
    parser.add_argument("--rate", type=int, default=H3_RATE)
    parser.add_argument("--at-once", type=int, default=H4_AT_ONCE)
    options = parser.parse_args(argv)
    output = Output(options.output)

    async def attack(reactor: Any) -> None:
        try:
            await ATTACKERS[options.kind](reactor, options, output)
        except Exception as error:
            output.write(error=f"{type(error).__name__}: {error}")

    react(lambda reactor: ensureDeferred(attack(reactor)))


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main(sys.argv[1:])
