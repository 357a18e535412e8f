"""
nswarm benchmarks (issue 3): the whole path of a real cluster against the
floor of stock Twisted AMP, measured in the same run.

    python bench/run.py            # full counts (make bench)
    python bench/run.py --quick    # 10x smaller counts, a fast check

It starts, in child processes: the floors (an AMP echo server over TLS and 10
AMP event receivers, see bench/floors.py) and a cluster with LocalCluster
(master and node under twistd, the echo service, 10 subscriber services).
Then, for each workload, it runs the floor and the cluster in turn, prints a
table of figures, ratios to the floor and CPU% of each process, and appends
one JSON line per workload to bench/results.jsonl. docs/benchmarks.md says
how to read it. Every process started here is stopped on the way out.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from floors import Count, Echo, Event, connect_echo, connect_receiver
from frontends import ECHO, run_frontends
from hostile import HOSTILE, Harness, run_hostile
from hostile import TARGETS as HOSTILE_TARGETS
from installed import check as check_installed
from twisted.internet.defer import Deferred, ensureDeferred, gatherResults
from twisted.internet.task import LoopingCall, deferLater, react
from twisted.protocols import amp

from nswarm.api import APIClient
from nswarm.testing.local import ClusterError, LocalCluster, Process, nswarm_event

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
RESULTS = BENCH / "results.jsonl"
SUBSCRIBERS = 10
#: W5's extra subscriber, stopped while it runs.
STALLED = "sub-stalled"
#: W5's events a second.
W5_RATE = 2000
EVENT = "bench.event"
#: Publishes the W4 publisher keeps unanswered at once (the master answers once it has handed an event on).
PUBLISH_WINDOW = 100
#: W4 gives up waiting for deliveries after this long without progress: what is missing then is lost.
STALL = 5.0
TICKS = os.sysconf("SC_CLK_TCK")


@dataclass
class Workload:
    name: str
    what: str
    payload: int  # bytes
    outstanding: int
    count: int
    warmup: int
    limit: float  # seconds the floor and the cluster run may take together


def workloads(quick: bool) -> list[Workload]:
    scale = 10 if quick else 1
    return [
        Workload("W1", "echo 64 B, 1 outstanding", 64, 1, 5000 // scale, 500 // scale, 120),
        Workload("W2", "echo 64 B, 100 outstanding", 64, 100, 50_000 // scale, 0, 240),
        Workload("W3", "echo 32 KiB, 16 outstanding", 32 * 1024, 16, 5000 // scale, 0, 240),
        Workload(
            "W4", f"publish 64 B to {SUBSCRIBERS} subscribers", 64, PUBLISH_WINDOW, 20_000 // scale, 200 // scale, 240
        ),
        # Paced at W5_RATE, a load the subscribers keep up with; enough 1 KiB
        # events, even in a quick run, to overflow the stopped one's 8 MiB.
        Workload(
            "W5",
            f"{W5_RATE} events/s of 1 KiB to {SUBSCRIBERS} subscribers and an 11th, stopped in the nswarm run",
            1024,
            0,
            12_000 if quick else 24_000,
            200 // scale,
            240,
        ),
    ]


# -- progress and CPU ----------------------------------------------------------


class Progress:
    """The live progress line, rewritten on stderr twice a second while a run goes on."""

    def __init__(self, reactor: Any) -> None:
        self.reactor = reactor
        self.label = ""
        self.done = 0
        self.total = 0
        self.started = 0.0
        self.loop = LoopingCall(self.show)
        self.loop.clock = reactor

    def begin(self, label: str, total: int) -> None:
        self.label, self.done, self.total, self.started = label, 0, total, time.perf_counter()
        if not self.loop.running:
            self.loop.start(0.5)

    def show(self) -> None:
        if self.label:
            elapsed = time.perf_counter() - self.started
            sys.stderr.write(f"\r\x1b[K  {self.label}: {self.done}/{self.total}  {elapsed:5.1f} s")
            sys.stderr.flush()

    def end(self) -> None:
        self.show()
        sys.stderr.write("\n")
        self.label = ""


def cpu_seconds(pid: int) -> float | None:
    """utime + stime of process C{pid}, in seconds (None once it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / TICKS  # fields 14 and 15 of stat(5)


class CPUWindow:
    """CPU% of named processes over a window: C{with CPUWindow(pids) as window: ...; window.percent}."""

    def __init__(self, pids: dict[str, list[int]]) -> None:
        self.pids = pids
        self.percent: dict[str, float] = {}

    def __enter__(self) -> CPUWindow:
        self.before = {name: [cpu_seconds(pid) or 0.0 for pid in pids] for name, pids in self.pids.items()}
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc_info: object) -> None:
        wall = time.perf_counter() - self.start
        for name, pids in self.pids.items():
            before = self.before[name]
            used = sum((cpu_seconds(pid) or start) - start for pid, start in zip(pids, before, strict=True))
            self.percent[name] = round(100 * used / wall, 1) if wall > 0 else 0.0


# -- drivers -------------------------------------------------------------------


Figures = tuple[dict[str, float], dict[str, float]]  # a workload's figures, and CPU% per process
Measured = tuple[Figures, Figures]  # the floor's, then nswarm's


@dataclass
class Run:
    elapsed: float
    latencies: list[float] = field(default_factory=list)


def closed_loop(
    call: Callable[[], Deferred[Any]],
    total: int,
    outstanding: int,
    progress: Progress | None,
    latencies: bool = False,
    rate: int = 0,
    reactor: Any = None,
) -> Deferred[Run]:
    """
    Keep C{outstanding} calls in flight until C{total} have been answered;
    fires with the elapsed time (and each call's latency if asked), or with
    the first failure. With C{rate}, an open loop instead: C{rate} calls a
    second on C{reactor}'s clock (a batch every 10 ms), answered or not.
    """
    done: Deferred[Run] = Deferred()
    issued = completed = 0
    measured: list[float] = []
    start = time.perf_counter()

    def launch() -> None:
        nonlocal issued
        issued += 1
        call().addCallbacks(finished, failed, callbackArgs=(time.perf_counter(),))

    def finished(_: object, sent: float) -> None:
        nonlocal completed
        now = time.perf_counter()
        if latencies:
            measured.append(now - sent)
        completed += 1
        if progress is not None:
            progress.done = completed
        if completed == total and not done.called:
            done.callback(Run(now - start, measured))
        elif issued < total and not done.called and not rate:
            launch()

    def failed(failure: Any) -> None:
        if not done.called:
            done.errback(failure)

    def tick() -> None:
        due = min(total, round((time.perf_counter() - start) * rate) + 1)
        while issued < due:
            launch()
        if issued == total:
            pacer.stop()

    if rate:
        pacer = LoopingCall(tick)
        pacer.clock = reactor
        pacer.start(0.01)
    else:
        for _ in range(min(outstanding, total)):
            launch()
    return done


def calls_until(call: Callable[[], Deferred[Any]], outstanding: int, stop: Deferred[Any]) -> Deferred[list[float]]:
    """
    Keep C{outstanding} calls in flight until C{stop} fires (its result
    passes through), then wait for those still out; fires with the
    C{time.monotonic} of each answer, or with the first failure.
    """
    done: Deferred[list[float]] = Deferred()
    answered: list[float] = []
    out, stopping = 0, False

    def launch() -> None:
        nonlocal out
        out += 1
        call().addCallbacks(finished, failed)

    def finished(_: object) -> None:
        nonlocal out
        answered.append(time.monotonic())
        out -= 1
        if not stopping:
            launch()
        elif out == 0 and not done.called:
            done.callback(answered)

    def failed(failure: Any) -> None:
        nonlocal out
        out -= 1
        if not done.called:
            done.errback(failure)

    def stopped(result: Any) -> Any:
        nonlocal stopping
        stopping = True
        if out == 0 and not done.called:
            done.callback(answered)
        return result

    for _ in range(outstanding):
        launch()
    stop.addBoth(stopped)
    return done


def frontend_figures(workload: Workload, elapsed: float, latencies: list[float]) -> dict[str, float]:
    """L{echo_figures} of a front end's run (see bench/frontends.py)."""
    return echo_figures(workload, Run(elapsed, latencies))


def echo_figures(workload: Workload, run: Run) -> dict[str, float]:
    calls = workload.count / run.elapsed
    figures: dict[str, float] = {"calls/s": round(calls)}
    if run.latencies:
        ordered = sorted(run.latencies)
        figures["p50 µs"] = round(statistics.median(ordered) * 1e6, 1)
        figures["p99 µs"] = round(ordered[int(len(ordered) * 0.99) - 1] * 1e6, 1)
    if workload.payload > 1024:
        figures["MB/s"] = round(calls * workload.payload / 1e6, 1)
    return figures


async def run_echo(
    workload: Workload, call: Callable[[], Deferred[Any]], label: str, progress: Progress, pids: dict[str, list[int]]
) -> Figures:
    if workload.warmup:
        progress.begin(f"{label} warm-up", workload.warmup)
        await closed_loop(call, workload.warmup, workload.outstanding, progress)
    progress.begin(label, workload.count)
    with CPUWindow(pids) as window:
        run = await closed_loop(
            call, workload.count, workload.outstanding, progress, latencies=workload.outstanding == 1
        )
    progress.end()
    return echo_figures(workload, run), window.percent


async def fan_out(
    reactor: Any,
    workload: Workload,
    publish: Callable[[], Deferred[Any] | None],
    answered: bool,
    counts: Callable[[], Deferred[list[tuple[int, float]]]],
    label: str,
    progress: Progress,
    pids: dict[str, list[int]],
    rate: int | None = None,
) -> Figures:
    """
    W4 on either side. C{publish} sends one event: with C{answered} it
    returns a Deferred that fires once the sender has handed it on, without
    it nothing (C{requiresAnswer=False}). C{counts} asks every receiver how
    many events it got and when the last came. Deliveries/s is the total
    deliveries over the time from the first publish to the last delivery.
    With C{rate}, answered events are published at that rate (W5), and the
    figures include how long the publisher waited for its answers.
    """
    receivers = len(await counts())
    waits: list[float] = []

    async def send(total: int) -> tuple[float, int]:
        """Publish C{total} events; return when the first went out and the receivers' count before it."""
        before = sum(count for count, _ in await counts())
        first = time.monotonic()
        if rate:
            run = await closed_loop(publish, total, 0, progress, True, rate, reactor)  # type: ignore[arg-type]
            waits[:] = run.latencies
        elif answered:
            # The master answers each publish once handed on: a closed loop of PUBLISH_WINDOW outstanding.
            await closed_loop(publish, total, PUBLISH_WINDOW, progress)  # type: ignore[arg-type]
        else:
            # Unanswered (requiresAnswer=False): send in slices so the reactor stays responsive.
            while progress.done < total:
                for _ in range(min(1000, total - progress.done)):
                    publish()
                progress.done += min(1000, total - progress.done)
                await deferLater(reactor, 0, lambda: None)
        return first, before

    async def delivered(before: int, total: int) -> tuple[int, float]:
        """Wait until C{total} more deliveries, or none for L{STALL} seconds; return the count and last time."""
        got, last, stalled_since, previous = 0, 0.0, time.monotonic(), -1
        while True:
            answers = await counts()
            got = sum(count for count, _ in answers) - before
            last = max(when for _, when in answers)
            progress.done = got
            if got >= total:
                return got, last
            if got != previous:
                previous, stalled_since = got, time.monotonic()
            elif time.monotonic() - stalled_since > STALL:
                return got, last
            await deferLater(reactor, 0.05, lambda: None)

    if workload.warmup:
        progress.begin(f"{label} warm-up events published", workload.warmup)
        first, before = await send(workload.warmup)
        progress.begin(f"{label} warm-up deliveries", workload.warmup * receivers)
        await delivered(before, workload.warmup * receivers)
    expected = workload.count * receivers
    with CPUWindow(pids) as window:
        progress.begin(f"{label} events published", workload.count)
        first, before = await send(workload.count)
        progress.begin(f"{label} deliveries", expected)
        published = time.monotonic()
        got, last = await delivered(before, expected)
    progress.end()
    figures = {"deliveries/s": round(got / (last - first)) if last > first else 0, "lost": expected - got}
    if answered:
        figures["publishes/s"] = round(workload.count / (published - first))
    if waits:
        waits.sort()
        figures["publish p50 µs"] = round(statistics.median(waits) * 1e6, 1)
        figures["publish p99 µs"] = round(waits[int(len(waits) * 0.99) - 1] * 1e6, 1)
    return figures, window.percent


# -- the two sides -------------------------------------------------------------


@dataclass
class Children:
    """Floor processes started here (the cluster's own are LocalCluster's)."""

    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def start(self, directory: Path, name: str, *args: str, timeout: float = 30) -> tuple[subprocess.Popen[bytes], str]:
        """Run C{floors.py ARGS --ready-file F}; return the process and the contents of F once written."""
        ready = directory / f"{name}.ready"
        environment = dict(
            os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
        )
        with open(directory / f"{name}.log", "ab") as log:
            process = subprocess.Popen(
                [sys.executable, str(BENCH / "floors.py"), *args, "--ready-file", str(ready)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=environment,
                start_new_session=True,
            )
        self.processes.append(process)
        deadline = time.monotonic() + timeout
        while not ready.exists():
            if process.poll() is not None or time.monotonic() > deadline:
                raise ClusterError(f"floor process {name} did not start: see {directory / f'{name}.log'}")
            time.sleep(0.01)
        return process, ready.read_text()

    def stop(self) -> None:
        for process in reversed(self.processes):
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in self.processes:
            try:
                process.wait(5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(5)


@dataclass
class Setup:
    cluster: LocalCluster
    ca: str
    echo_port: int
    echo_pid: int
    receiver_sockets: list[str]
    receiver_pids: list[int]
    children: Children | None = None  # S1's simulated nodes join these, so that they are always stopped


@dataclass
class Sides:
    """The connections the harness drives, and which processes to watch on each side."""

    echo: amp.AMP  # to the floor echo server
    receivers: list[amp.AMP]  # to the floor receivers
    api: APIClient  # to the cluster's master
    cluster: LocalCluster
    subscribers: list[str]  # names of the cluster's subscriber services
    floor_pids: dict[str, list[int]]
    fan_out_pids: dict[str, list[int]]
    cluster_pids: dict[str, list[int]]
    w4_pids: dict[str, list[int]]

    @classmethod
    async def connect(cls, reactor: Any, setup: Setup) -> Sides:
        echo = await connect_echo(reactor, setup.echo_port, setup.ca)
        receivers = await gatherResults([connect_receiver(reactor, socket) for socket in setup.receiver_sockets])
        api = await setup.cluster.connect_api(reactor)
        pid = {process.name: [process.pid] for process in setup.cluster.processes}
        me = [os.getpid()]
        subscribers = [f"sub-{index}" for index in range(1, SUBSCRIBERS + 1)]
        return cls(
            echo,
            receivers,
            api,
            setup.cluster,
            subscribers,
            floor_pids={"harness": me, "echo-server": [setup.echo_pid]},
            fan_out_pids={"harness": me, f"receivers x{len(receivers)}": setup.receiver_pids},
            cluster_pids={"harness": me, "master": pid["master"], "node": pid["node-1"], "echo": pid["echo"]},
            w4_pids={
                "harness": me,
                "master": pid["master"],
                "node": pid["node-1"],
                f"subscribers x{len(subscribers)}": [pid[name][0] for name in subscribers],
            },
        )

    async def close(self) -> None:
        for connection in [self.echo, *self.receivers]:
            if connection.transport is not None:
                connection.transport.loseConnection()
        await self.api.close()

    # Each returns the figures and the CPU% of the floor and of nswarm.

    async def echo_workload(self, reactor: Any, workload: Workload, progress: Progress) -> Measured:
        payload = b"x" * workload.payload
        text = "x" * workload.payload
        floor = await run_echo(
            workload,
            lambda: self.echo.callRemote(Echo, payload=payload),
            f"{workload.name} floor",
            progress,
            self.floor_pids,
        )
        ours = await run_echo(
            workload, lambda: self.api.call("echo", text), f"{workload.name} nswarm", progress, self.cluster_pids
        )
        return floor, ours

    async def fan_out_workload(self, reactor: Any, workload: Workload, progress: Progress) -> Measured:
        payload = b"x" * workload.payload
        text = "x" * workload.payload

        def send_bare() -> None:
            for receiver in self.receivers:
                receiver.callRemote(Event, payload=payload)

        def bare_counts() -> Deferred[list[tuple[int, float]]]:
            return gatherResults([receiver.callRemote(Count).addCallback(_count) for receiver in self.receivers])

        floor = await fan_out(reactor, workload, send_bare, False, bare_counts, "W4 floor", progress, self.fan_out_pids)
        ours = await fan_out(
            reactor,
            workload,
            lambda: self.api.publish(EVENT, text),
            True,
            self.cluster_counts,
            "W4 nswarm",
            progress,
            self.w4_pids,
        )
        return floor, ours

    def cluster_counts(self) -> Deferred[list[tuple[int, float]]]:
        """What each of the W4 subscribers received, and when the last came."""
        return gatherResults([self.api.call(f"bench.count.{name}").addCallback(_count) for name in self.subscribers])

    async def stalled_workload(self, reactor: Any, workload: Workload, progress: Progress) -> Measured:
        """
        W5: the same cluster publishing to the W4 subscribers and one more,
        which reads in the first run (the "floor") and is stopped with
        SIGSTOP in the second. Deliveries count the W4 subscribers only;
        "dropped" is what the node logged dropping for the stopped one (the
        field total of its last "events_dropped" event for it).
        """
        cluster = self.cluster
        node = next(process for process in cluster.processes if process.name == "node-1")
        # Blocks the harness for a moment, outside any measured window.
        stalled = cluster.start_service(BENCH / "subscriber.py", "--bench-name", STALLED, name=STALLED)
        text = "x" * workload.payload
        pids = {**self.w4_pids, STALLED: [stalled.pid]}
        start = node.mark()
        drops = nswarm_event("events_dropped", role="service", name=STALLED)

        def dropped() -> int:
            # The node's events_dropped (at most one each 10 s, and one as
            # the connection closes) say how many it has dropped in all.
            logged = node.events(drops, after=start)
            return int(logged[-1]["total"]) if logged else 0

        runs: list[Figures] = []
        try:
            for label in ("W5 all reading", "W5 one stopped"):
                if runs:
                    runs[0][0]["dropped"] = dropped()  # so far: later drops are logged later
                    os.kill(stalled.pid, signal.SIGSTOP)
                runs.append(
                    await fan_out(
                        reactor,
                        workload,
                        lambda: self.api.publish(EVENT, text),
                        True,
                        self.cluster_counts,
                        label,
                        progress,
                        pids,
                        W5_RATE,
                    )
                )
        finally:
            cluster.kill(stalled)
        await node.when(reactor, nswarm_event("disconnected", role="service", name=STALLED), after=start)
        runs[1][0]["dropped"] = dropped() - runs[0][0]["dropped"]
        return runs[0], runs[1]


def _count(answer: dict[str, Any]) -> tuple[int, float]:
    return answer["count"], answer["last"]


async def run_workload(
    reactor: Any, sides: Sides, workload: Workload, progress: Progress, quick: bool, limit: float | None = None
) -> dict[str, Any]:
    """Run C{workload} on the floor then on nswarm, within its time limit; return its JSON record."""
    record: dict[str, Any] = {
        "workload": workload.name,
        "what": workload.what,
        "quick": quick,
        "count": workload.count,
        "outstanding": workload.outstanding,
    }
    run = {"W4": sides.fan_out_workload, "W5": sides.stalled_workload}.get(workload.name, sides.echo_workload)
    try:
        measured = await ensureDeferred(run(reactor, workload, progress)).addTimeout(limit or workload.limit, reactor)
    except Exception as error:  # a failed or timed-out workload is reported; the others still run
        progress.end()
        record["error"] = f"{type(error).__name__}: {error}"
        print(f"  {workload.name} failed: {record['error']}", file=sys.stderr)
    else:
        (record["floor"], record["floor_cpu"]), (record["nswarm"], record["nswarm_cpu"]) = measured
        record["ratio"] = {
            key: round(value / record["floor"][key], 2)
            for key, value in record["nswarm"].items()
            if record["floor"].get(key)
        }
    record["hardware"] = hardware()
    record["time"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    return record


async def benchmark(reactor: Any, setup: Setup, options: argparse.Namespace, rows: list[dict[str, Any]]) -> None:
    """Run every workload chosen, appending its record to C{rows} and to L{RESULTS}; print the table."""

    def keep(record: dict[str, Any]) -> None:
        with open(RESULTS, "a") as results:
            results.write(json.dumps(record) + "\n")
        rows.append(record)

    progress = Progress(reactor)
    sides = await Sides.connect(reactor, setup)
    try:
        for workload in workloads(options.quick):
            if not options.only or workload.name in options.only:
                record = await run_workload(reactor, sides, workload, progress, options.quick, options.limit)
                keep(record)
                if workload.name in ECHO and "error" not in record and not options.no_frontends:
                    progress.begin(f"{workload.name} aio, sync", 0)
                    for front in await run_frontends(reactor, setup.cluster, workload, record, frontend_figures):
                        keep(front)
                    progress.end()
        hostile = [name for name in HOSTILE if not options.only or name in options.only]
        if hostile:  # H4 last of them: it spends the authentications this address may fail on the api port
            # The attackers join the floors' processes, so that they are stopped whatever happens.
            spawned = setup.children.processes if setup.children is not None else []
            harness = Harness(
                setup.cluster, sides.api, progress, CPUWindow, sides.cluster_pids, hardware, options, spawned
            )
            await run_hostile(reactor, harness, hostile, keep)
        if not options.only or "S1" in options.only:  # after the hostile ones: its nodes leave the master ~600 MB
            keep(await run_scale(reactor, setup, sides, progress, options))
    finally:
        if progress.loop.running:
            progress.loop.stop()
        await sides.close()
    print_table(rows, options.quick)


# -- S1: a master with 10,000 nodes ------------------------------------------

WORKLOADS = ["W1", "W2", "W3", "W4", "W5", *HOSTILE, "S1"]
#: Nodes S1 simulates, and the processes (bench/scale.py) that share them.
S1_NODES = 10_000
S1_PROCESSES = 4
#: Bound on the time from starting the simulated nodes until all have registered.
S1_REGISTER_LIMIT = 300.0
S1_LIMIT = 900.0  # the whole of S1: three W2 runs, the registration and the reconnection


def raise_fd_limit() -> None:
    """
    Lift our soft limit on open files to the hard one: the master (a child,
    which inherits it) holds one descriptor per node, S1 connects 10,000.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and (hard == resource.RLIM_INFINITY or soft < hard):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def rss_mb(pid: int) -> tuple[float, float]:
    """VmRSS and VmHWM (peak RSS) of process C{pid}, in MB (10^6 bytes), from /proc/PID/status."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            fields[name] = round(int(value.split()[0]) * 1024 / 1e6, 1)
    return fields["VmRSS"], fields["VmHWM"]


async def start_simulated_nodes(
    reactor: Any, setup: Setup, nodes: int, progress: Progress, processes: list[subprocess.Popen[bytes]]
) -> list[dict[str, Any]]:
    """
    Start bench/scale.py in L{S1_PROCESSES} processes sharing C{nodes}
    simulated nodes, appending each to C{processes} (the caller stops them);
    wait (at most L{S1_REGISTER_LIMIT} s) until each has printed that all its
    nodes are registered; return their reports.
    """
    cluster = setup.cluster
    directory = cluster.directory
    environment = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    share, extra = divmod(nodes, S1_PROCESSES)
    first = 0
    for number in range(S1_PROCESSES):
        count = share + (number < extra)
        output = directory / f"sim-{number}.out"
        output.unlink(missing_ok=True)
        with open(output, "wb") as out, open(directory / f"sim-{number}.log", "ab") as log:
            process = subprocess.Popen(
                [
                    sys.executable,
                    str(BENCH / "scale.py"),
                    "--port",
                    str(cluster.node_port),
                    "--ca",
                    str(directory / "ca.pem"),
                    "--ca-key",
                    str(directory / "ca.key"),
                    "--auth-key-file",
                    str(directory / "node-auth.key"),
                    "--count",
                    str(count),
                    "--first",
                    str(first),
                ],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=log,
                env=environment,
                start_new_session=True,
            )
        processes.append(process)
        if setup.children is not None:
            setup.children.processes.append(process)
        first += count
    return await simulator_reports(reactor, directory, processes, 0, "S1 simulated processes registered", progress)


async def simulator_reports(
    reactor: Any, directory: Path, processes: list[subprocess.Popen[bytes]], line: int, what: str, progress: Progress
) -> list[dict[str, Any]]:
    """
    Wait (at most L{S1_REGISTER_LIMIT} s) until each simulator process has
    printed its JSON line number C{line} (0 the first: registered; 1:
    registered again after reconnecting) in its sim-N.out; return them.
    """
    reports: list[dict[str, Any] | None] = [None] * len(processes)
    deadline = time.monotonic() + S1_REGISTER_LIMIT
    progress.begin(what, len(processes))
    while None in reports:
        for number, process in enumerate(processes):
            if reports[number] is None:
                output = directory / f"sim-{number}.out"
                complete = output.read_text().split("\n")[:-1] if output.exists() else []
                if len(complete) > line:
                    reports[number] = json.loads(complete[line])
                    if "error" in reports[number]:  # type: ignore[operator]
                        raise ClusterError(f"simulated nodes (sim-{number}) failed: {reports[number]['error']}")  # type: ignore[index]
                elif process.poll() is not None:
                    raise ClusterError(
                        f"simulated nodes (sim-{number}) exited with status {process.returncode}: "
                        f"see {directory / f'sim-{number}.log'}"
                    )
        progress.done = sum(report is not None for report in reports)
        if time.monotonic() > deadline and None in reports:
            raise ClusterError(f"{what}: not all within {S1_REGISTER_LIMIT:g}s")
        await deferLater(reactor, 0.05, lambda: None)
    progress.end()
    return [report for report in reports if report is not None]


async def reconnect_simulated_nodes(
    reactor: Any, setup: Setup, master: Process, processes: list[subprocess.Popen[bytes]], progress: Progress
) -> tuple[dict[str, Any], dict[str, float]]:
    """
    Abort every simulated node's connection at once (SIGUSR1 to each
    simulator), and wait until all have reconnected and registered again by
    themselves, with a real node's retry policy and jitter. Returns the
    figures, and the CPU% of the master and the simulators over that time.
    """
    log_offset = master.mark()
    pids = {"master": [master.pid], f"sims x{len(processes)}": [process.pid for process in processes]}
    overflows = listen_overflows()
    with CPUWindow(pids) as window:
        started = time.monotonic()
        for process in processes:
            process.send_signal(signal.SIGUSR1)
        directory = setup.cluster.directory
        reports = await simulator_reports(reactor, directory, processes, 1, "S1 simulated nodes back", progress)
        ready = time.monotonic()
    overflowed = listen_overflows()
    nodes = sum(report["nodes"] for report in reports)
    lost = min(report["lost_at"] for report in reports)
    rss, peak = rss_mb(master.pid)
    logged = await master_count(reactor, master, simulated("registration", action="implements"), log_offset, nodes)
    figures = {
        "processes": reports,
        "nodes": nodes,
        "seconds": round(max(report["last_registered"] for report in reports) - lost, 2),
        "first_attempt_after": round(min(report["first_attempt"] for report in reports) - lost, 3),
        "attempts": sum(report["attempts"] for report in reports),
        "failed_attempts": sum(report["failed_attempts"] for report in reports),
        "harness_seconds": round(ready - started, 2),
        "listen_overflows": None if overflows is None or overflowed is None else overflowed - overflows,
        "master_logged_implements": logged,
        "master_rss_mb": rss,
        "master_peak_rss_mb": peak,
    }
    return figures, window.percent


def listen_overflows() -> int | None:
    """
    How many times, on this machine, a listening socket's accept queue was
    full (TCP ListenOverflows, from /proc/net/netstat; None elsewhere): each
    is a handshake the kernel dropped, which the client's TCP retries 1, 3,
    7 ... seconds later. It counts every socket, so read it as a difference.
    """
    try:
        lines = [line.split() for line in Path("/proc/net/netstat").read_text().splitlines()]
    except OSError:
        return None
    for names, values in zip(lines[::2], lines[1::2], strict=False):
        if names and names[0] == "TcpExt:" and "ListenOverflows" in names:
            return int(values[names.index("ListenOverflows")])
    return None


def stop_processes(processes: list[subprocess.Popen[bytes]]) -> list[int]:
    """SIGTERM each, then SIGKILL what has not exited within 10 s; return their exit statuses."""
    for process in processes:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    for process in processes:
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)
    return [process.returncode for process in processes]


def simulated(event: str, **fields: Any) -> Callable[[dict[str, Any]], bool]:
    """A predicate: the master's C{event} (with C{fields}) about one of the simulated nodes, named 'sim-...'."""
    match = nswarm_event(event, role="node", **fields)
    return lambda logged: match(logged) and str(logged.get("name", "")).startswith("sim-")


async def master_count(
    reactor: Any,
    master: Process,
    predicate: Callable[[dict[str, Any]], bool],
    after: int,
    count: int,
    timeout: float = 10.0,
) -> int:
    """
    How many of C{master}'s events after the first C{after} satisfy
    C{predicate}, once C{count} do (or once C{timeout} seconds have passed).
    """
    try:
        await master.when(reactor, predicate, timeout, f"{count} such events", after=after, count=count)
    except ClusterError:
        pass  # reported as a count short of C{count}
    return len(master.events(predicate, after=after))


async def run_scale(
    reactor: Any, setup: Setup, sides: Sides, progress: Progress, options: argparse.Namespace
) -> dict[str, Any]:
    """
    S1: the master's RSS before and after C{--s1-nodes} simulated nodes
    register, the time they take, and W2 through the real node without and
    then with them connected. Returns its JSON record.
    """
    nodes = options.s1_nodes
    w2 = next(workload for workload in workloads(options.quick) if workload.name == "W2")
    record: dict[str, Any] = {
        "workload": "S1",
        "what": f"master with {nodes} nodes x 10 methods; W2 without (floor) and with them (nswarm)",
        "quick": options.quick,
        "count": w2.count,
        "outstanding": w2.outstanding,
        "nodes": nodes,
    }
    master = setup.cluster.master
    assert master is not None
    text = "x" * w2.payload
    processes: list[subprocess.Popen[bytes]] = []

    async def measure() -> None:
        rss_before, _ = rss_mb(master.pid)
        progress.begin("S1 W2 warm-up", w2.count // 10)  # the connections are cold when S1 runs alone
        await closed_loop(lambda: sides.api.call("echo", text), w2.count // 10, w2.outstanding, progress)
        without, without_cpu = await run_echo(
            w2, lambda: sides.api.call("echo", text), "S1 W2 without", progress, sides.cluster_pids
        )
        log_offset = master.mark()
        started = time.monotonic()
        with CPUWindow({"master": [master.pid]}) as window:
            # W2 runs through the real node all along: how much the registration storm slows other nodes' calls.
            registering = ensureDeferred(start_simulated_nodes(reactor, setup, nodes, progress, processes))
            storm = calls_until(lambda: sides.api.call("echo", text), w2.outstanding, registering)
            reports = await registering
            answered = await storm
        ready = time.monotonic()
        # The simulated nodes' CPU% over the same window: they started in it, from zero.
        sims_cpu = sum(cpu_seconds(process.pid) or 0.0 for process in processes)
        registered = sum(report["nodes"] for report in reports)
        if registered != nodes:
            raise ClusterError(f"only {registered} of {nodes} simulated nodes registered")
        first = min(report["first_attempt"] for report in reports)
        last = max(report["last_registered"] for report in reports)
        during = sum(first <= when <= last for when in answered) / (last - first)
        rss_after, _ = rss_mb(master.pid)
        # Cross-check with the master's own account: one "implements" event per simulated node.
        logged = await master_count(reactor, master, simulated("registration", action="implements"), log_offset, nodes)
        sim_cpu = {f"sims x{len(processes)}": [process.pid for process in processes]}
        with_cpu_pids = {**sides.cluster_pids, **sim_cpu}
        with_nodes, with_cpu = await run_echo(
            w2, lambda: sides.api.call("echo", text), f"S1 W2 with {nodes}", progress, with_cpu_pids
        )
        _, rss_peak = rss_mb(master.pid)
        # All of them lose their connection at once, and come back by themselves.
        reconnected, reconnect_cpu = await reconnect_simulated_nodes(reactor, setup, master, processes, progress)
        if reconnected["nodes"] != nodes:
            raise ClusterError(f"only {reconnected['nodes']} of {nodes} simulated nodes registered again")
        # W2 without them once more, once the master has seen them all go: the "without" figure is the
        # mean of the runs before and after, so a drift in the machine's load does not favour one side.
        log_offset = master.mark()
        codes = stop_processes(processes)
        gone = await master_count(reactor, master, simulated("disconnected"), log_offset, nodes, S1_REGISTER_LIMIT)
        after, _ = await run_echo(
            w2, lambda: sides.api.call("echo", text), "S1 W2 without, after", progress, sides.cluster_pids
        )
        w2_without = round((without["calls/s"] + after["calls/s"]) / 2)
        record["floor"] = {
            "RSS MB": rss_before,
            "W2 calls/s": w2_without,
            "W2 calls/s, registering": w2_without,
            "RSS MB, back": rss_after,
        }
        record["nswarm"] = {
            "RSS MB": rss_after,
            "register s": round(last - first, 2),
            "W2 calls/s": with_nodes["calls/s"],
            "W2 calls/s, registering": round(during),
            "reconnect s": reconnected["seconds"],
            "RSS MB, back": reconnected["master_rss_mb"],
        }
        record["reconnect_cpu"] = reconnect_cpu
        record["reconnect"] = reconnected
        record["floor_cpu"] = without_cpu
        record["nswarm_cpu"] = with_cpu
        record["register_cpu"] = {
            "master": window.percent["master"],
            f"sims x{len(processes)}": round(100 * sims_cpu / (ready - started), 1),
        }
        record["register"] = {
            "processes": reports,
            "harness_seconds": round(ready - started, 2),
            "master_logged_implements": logged,
            "master_peak_rss_mb": rss_peak,
            "simulator_exit_codes": codes,
            "master_logged_disconnects": gone,
        }
        record["w2_without"] = {"before": without["calls/s"], "after": after["calls/s"]}

    try:
        await ensureDeferred(measure()).addTimeout(options.limit or S1_LIMIT, reactor)
    except Exception as error:  # reported like any failed workload
        progress.end()
        record["error"] = f"{type(error).__name__}: {error}"
        print(f"  S1 failed: {record['error']}", file=sys.stderr)
    else:
        record["ratio"] = {
            key: round(value / record["floor"][key], 2)
            for key, value in record["nswarm"].items()
            if record["floor"].get(key)
        }
    finally:
        stop_processes(processes)
    record["hardware"] = hardware()
    record["time"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    return record


# -- output --------------------------------------------------------------------

#: The goals each figure is held to (issue 14's for W1-W4 and S1).
TARGETS = {
    ("W1", "p50 µs"): "<= 1.8x",
    ("W2", "calls/s"): ">= 1.3x",
    ("W3", "calls/s"): ">= 0.5x",
    ("W4", "deliveries/s"): ">= 3.5x",
    ("W4", "lost"): "0",
    ("W5", "deliveries/s"): ">= 0.9x",
    ("W5", "lost"): "0",
    ("W5", "publishes/s"): ">= 0.9x",
    ("S1", "RSS MB"): "<= 500 MB",
    ("S1", "register s"): "<= 10 s",
    ("S1", "W2 calls/s"): ">= 0.9x",
    **HOSTILE_TARGETS,
}


_hardware: dict[str, Any] = {}


def hardware() -> dict[str, Any]:
    """nproc, CPU model, Python version and (measured once, before the run) the effective cores."""
    if _hardware:
        return _hardware
    model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    _hardware.update(nproc=os.cpu_count(), cpu=model, python=platform.python_version(), cores=effective_cores())
    return _hardware


SPIN = (
    "import time\n"
    "wall, cpu = time.perf_counter(), time.process_time()\n"
    "while time.perf_counter() - wall < 1: pass\n"
    "print((time.process_time() - cpu) / (time.perf_counter() - wall))\n"
)


def effective_cores() -> float:
    """
    How many cores this run really gets: the CPU time one busy-looping
    process per CPU obtains in parallel for a second, summed. On a shared or
    throttled machine it is less than nproc, and every process of a workload
    competes for it.
    """
    spinners = [
        subprocess.Popen([sys.executable, "-c", SPIN], stdout=subprocess.PIPE, text=True)
        for _ in range(os.cpu_count() or 1)
    ]
    return round(sum(float(spinner.communicate(timeout=30)[0]) for spinner in spinners), 2)


def print_table(rows: list[dict[str, Any]], quick: bool) -> None:
    info = hardware()
    print(
        f"\nnswarm benchmark ({'quick' if quick else 'full'} run; {info['nproc']} CPUs ({info['cores']} "
        f"effective), {info['cpu']}, Python {info['python']})"
    )
    print(f"{'':4} {'figure':14} {'floor':>12} {'nswarm':>12} {'ratio':>7}  target")
    for row in rows:
        if "error" in row:
            print(f"{row['workload']:4} FAILED: {row['error']}")
            continue
        for key, value in row["nswarm"].items():
            floor = row["floor"].get(key, "")
            ratio = row["ratio"].get(key)
            target = TARGETS.get((row["workload"], key), "")
            print(
                f"{row['workload']:4} {key:14} {floor:>12} {value:>12} "
                f"{(f'{ratio:.2f}x' if ratio is not None else ''):>7}  {target}"
            )
    print("\nCPU% over each measured window (100% = one core)")
    for row in rows:
        if "error" in row:
            continue
        for side in ("floor", "nswarm", "register", "reconnect"):
            if f"{side}_cpu" not in row:
                continue
            usage = ", ".join(f"{name} {percent:.0f}%" for name, percent in row[f"{side}_cpu"].items())
            print(f"{row['workload']:4} {side:7} {usage}")
    print(f"\none JSON line per workload appended to {RESULTS}")


# -- main ----------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description="nswarm against one-hop AMP, in one run (issue 3)")
    parser.add_argument("--quick", action="store_true", help="10x smaller counts: a fast check")
    parser.add_argument(
        "--only", nargs="*", metavar="W", choices=WORKLOADS, help=f"run only these workloads ({' '.join(WORKLOADS)})"
    )
    parser.add_argument("--s1-nodes", type=int, default=S1_NODES, help=f"simulated nodes in S1 (default {S1_NODES})")
    parser.add_argument("--limit", type=float, help="seconds each workload may take (default: its own limit)")
    parser.add_argument(
        "--no-frontends", action="store_true", help="skip the asyncio and blocking SDKs' rows after W1-W3"
    )
    options = parser.parse_args()
    check_installed()
    # SIGTERM before the reactor runs (it installs its own handler) unwinds too, stopping every child.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    raise_fd_limit()
    # A short directory: UNIX socket paths are limited to about 100 bytes.
    with tempfile.TemporaryDirectory(prefix="nsb-", dir="/tmp") as name, LocalCluster(name) as cluster:
        directory = Path(name)
        children = Children()
        try:
            print(f"starting the floors and a cluster in {directory}", file=sys.stderr)
            print(f"hardware: {hardware()}", file=sys.stderr)
            cluster.init()
            echo, port = children.start(
                directory,
                "floor-echo",
                "echo-server",
                "--cert",
                str(directory / "master.pem"),
                "--key",
                str(directory / "master.key"),
            )
            receivers = [
                children.start(
                    directory, f"floor-rx-{index}", "receiver", "--socket", str(directory / f"rx{index}.sock")
                )
                for index in range(1, SUBSCRIBERS + 1)
            ]
            cluster.start_master()
            cluster.start_node("node-1")
            cluster.start_service(BENCH / "echo_service.py", name="echo")
            for index in range(1, SUBSCRIBERS + 1):
                cluster.start_service(BENCH / "subscriber.py", "--bench-name", f"sub-{index}", name=f"sub-{index}")
            setup = Setup(
                cluster,
                str(directory / "ca.pem"),
                int(port),
                echo.pid,
                [socket for _, socket in receivers],
                [process.pid for process, _ in receivers],
                children,
            )
            rows: list[dict[str, Any]] = []
            try:
                react(lambda reactor: ensureDeferred(benchmark(reactor, setup, options, rows)))
            except SystemExit as exit:  # react always exits; fail if a workload did
                failed = [row["workload"] for row in rows if "error" in row]
                if exit.code or not failed:
                    raise
                raise SystemExit(f"bench failed: {', '.join(failed)} did not complete")
        except ClusterError as error:
            raise SystemExit(f"bench failed: {error}")
        finally:
            children.stop()


if __name__ == "__main__":
    main()
