"""
The chaos suite (issue 12): a real cluster under load, faults one at a time.

    python bench/chaos.py            # the full scenario, about 5 minutes (make chaos)
    python bench/chaos.py --quick    # a short one, under a minute (tests/test_chaos_suite.py runs it)

A master, two nodes, on each an echo service and a subscriber
(bench/chaos_services.py, run by LocalCluster: L{chaos_faults}); one API
client (reconnecting, and declaring the idempotent method so) keeping 50
calls in flight with 5 s deadlines and publishing 200 events a second
(L{chaos_load}). After a steady window, each fault of the plan in turn:
the fault, the cluster brought back, then a settling window of load. Then
the accounts (L{chaos_report}): calls per fault window (hung, late, failed
by error), events (lost, duplicated, reordered, dropped), ejection and
re-registration times, RSS of the master and nodes before and after, and
whether a non-idempotent call ran twice. It prints the tables and appends
one JSON line to bench/results.jsonl; docs/benchmarks.md ("Chaos") says
how to read them.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from chaos_faults import START_TIMEOUT, Chaos, Fault
from chaos_load import DEADLINE, RATE, WIDTH, CallStats, Load, Timeline
from chaos_report import (
    dropped_windows,
    event_windows,
    last_handed_to_all,
    print_table,
    received,
    runs,
    status_dropped,
    window_record,
)
from chaos_services import IDEMPOTENT
from installed import check as check_installed
from twisted.internet.defer import ensureDeferred
from twisted.internet.task import deferLater, react
from twisted.internet.threads import deferToThread

from nswarm.api import APIClient

BENCH = Path(__file__).resolve().parent
RESULTS = BENCH / "results.jsonl"

#: The full scenario's faults, in order; a service fault hits echo-1, a node fault node-2.
FULL = [
    Fault("service kill -9", "service", "kill", 1.0),
    Fault("service SIGSTOP 10 s", "service", "stop", 10.0),
    Fault("node kill -9", "node", "kill", 1.0),
    Fault("node SIGSTOP 10 s", "node", "stop", 10.0),
    Fault("node SIGSTOP 40 s", "node", "stop", 40.0),
    Fault("master SIGSTOP 10 s", "master", "stop", 10.0),
    Fault("master kill -9, down 1 s", "master", "kill", 1.0),
    Fault("master SIGTERM, restart", "master", "term"),
    Fault("master kill -9, down 15 s", "master", "kill", 15.0),
    Fault("master kill -9, down 30 s", "master", "kill", 30.0),
]
#: The short one: the faults whose invariants tests/test_chaos_suite.py asserts.
QUICK = [
    Fault("service kill -9", "service", "kill", 1.0),
    Fault("service SIGSTOP 3 s", "service", "stop", 3.0),
    Fault("node SIGSTOP 3 s", "node", "stop", 3.0),
    Fault("master kill -9, down 1 s", "master", "kill", 1.0),
]
#: Seconds of load before the first fault, and after each fault once the cluster is back.
STEADY, SETTLE = 5.0, 10.0
QUICK_STEADY, QUICK_SETTLE = 2.0, 3.0
#: The event published (to nobody) before the load starts.
PROBE = "chaos.probe"
#: Bound on the subscribers' catching up with the last event, once the load has stopped.
CATCH_UP = 15.0


def hardware() -> dict[str, Any]:
    """nproc, CPU model and Python version."""
    model = "unknown"
    try:
        model = next(
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        )
    except (OSError, StopIteration):
        pass
    return {"nproc": os.cpu_count(), "cpu": model, "python": platform.python_version()}


async def caught_up(reactor: Any, chaos: Chaos, load: Load) -> None:
    """Wait (at most CATCH_UP seconds) until every subscriber has the last event handed to all of them."""
    last = last_handed_to_all(load)
    deadline = time.monotonic() + CATCH_UP
    while last is not None and time.monotonic() < deadline:
        if all(last in received(chaos.log_of(name))[-200:] for name in chaos.subscribers):
            return
        await deferLater(reactor, 0.1, lambda: None)


async def run_chaos(reactor: Any, directory: Path, quick: bool = False) -> dict[str, Any]:
    """
    Run the scenario (QUICK or FULL) with a cluster in C{directory}; return
    its JSON record (with C{error} if it could not finish: what was
    measured until then is still in it). Every process is stopped.
    """
    record: dict[str, Any] = {"workload": "chaos", "quick": quick, "width": WIDTH, "deadline": DEADLINE}
    record.update(rate=RATE, hardware=hardware(), time=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
    chaos = Chaos(reactor, directory)
    began = time.monotonic()
    run = Run(reactor, chaos, record)
    try:
        await deferToThread(chaos.start)
        await run.scenario(*((QUICK, QUICK_STEADY, QUICK_SETTLE) if quick else (FULL, STEADY, SETTLE)))
    except Exception as error:
        record["error"] = f"{type(error).__name__}: {error}"
    finally:
        await run.end()
        await chaos.stop()
    record["pids"] = chaos.cluster.pids()
    record["seconds"] = round(time.monotonic() - began, 1)
    record["runs"] = runs([chaos.log_of(name) for name in chaos.echoes])
    record["windows"] = run.windows()
    record.setdefault("rss_before", {})
    record.setdefault("rss_after", record["rss_before"])
    return record


class Run:
    """One run of a plan on a started cluster: the load, the faults, and what each window measured."""

    def __init__(self, reactor: Any, chaos: Chaos, record: dict[str, Any]) -> None:
        self.reactor = reactor
        self.chaos = chaos
        self.record = record
        self.timeline = Timeline()
        self.client: APIClient | None = None
        self.load: Load | None = None
        #: Per window: its fault's figures and what the status document's drop count did.
        self.extras: list[dict[str, Any]] = [{"figures": {}, "status_dropped": None}]
        self.ended = time.time()

    async def scenario(self, plan: list[Fault], steady: float, settle: float) -> None:
        """The load, a steady window, then each fault of C{plan} followed by a settling window."""
        chaos, reactor = self.chaos, self.reactor
        self.client = client = await chaos.connect([IDEMPOTENT])
        # A publish is answered once the master's startup window is over (it holds events till then): the
        # steady window starts with the master in its steady state.
        await client.publish(PROBE).addTimeout(START_TIMEOUT, reactor)
        self.timeline = Timeline()
        self.load = load = Load(reactor, client, self.timeline)
        load.start()
        await deferLater(reactor, steady, lambda: None)
        self.record["rss_before"] = chaos.rss()
        status = await chaos.status(client)
        for fault in plan:
            pids = chaos.daemons()
            print(f"  {fault.name}", file=sys.stderr)
            self.timeline.open(fault.name)
            figures = await chaos.inject(fault, load)
            await deferLater(reactor, settle, lambda: None)
            previous, status = status, await chaos.status(client)
            same = chaos.daemons() == pids
            self.extras.append(
                {"figures": figures, "status_dropped": status_dropped(previous, status) if same else None}
            )
        await load.stop()
        self.ended = time.time()
        self.record["rss_after"] = chaos.rss()
        self.record["status"] = status
        await client.close()
        await caught_up(reactor, chaos, load)

    async def end(self) -> None:
        """After a failure: stop the load and close the client (bounded), so that nothing is left waiting."""
        if self.load is None or not self.load.running:
            return
        self.ended = time.time()
        self.load.running = False
        if self.client is not None:
            try:
                await self.client.close().addTimeout(10.0, self.reactor)
                await ensureDeferred(self.load.stop()).addTimeout(CATCH_UP, self.reactor)
            except Exception:
                pass  # what did not end is reported as it stands

    def windows(self) -> list[dict[str, Any]]:
        """The record's windows: the calls, events, drops and figures of each."""
        load, timeline = self.load, self.timeline
        if load is None:
            return []
        got = {name: received(self.chaos.log_of(name)) for name in self.chaos.subscribers}
        events = event_windows(load, got, timeline)
        dropped = dropped_windows(self.chaos.cluster.processes, timeline)
        self.record["calls"] = load.issued
        self.record["events_published"] = len(load.events)
        while len(load.stats) < len(timeline.names):
            load.stats.append(CallStats())  # a window in which no call ended
        self.extras += [{"figures": {}, "status_dropped": None}] * (len(timeline.names) - len(self.extras))
        return [
            window_record(timeline, index, self.ended, load.stats[index], events[index], dropped[index], extra)
            for index, extra in enumerate(self.extras)
        ]


def tails(directory: Path) -> None:
    """Print the last lines of every log in C{directory}, for a failed run."""
    for log in sorted(directory.glob("*.log")):
        if log.name.startswith(("runs-", "events-")):
            continue
        lines = log.read_text("utf-8", "replace").splitlines()[-15:]
        print(f"--- {log.name} ---\n" + "\n".join(lines), file=sys.stderr)


def main() -> None:
    """Run the suite, print its table, append its JSON line; exit 1 if it could not finish."""
    parser = argparse.ArgumentParser(description="nswarm under faults, one at a time (issue 12)")
    parser.add_argument("--quick", action="store_true", help="the short scenario (under a minute)")
    parser.add_argument("--keep", action="store_true", help="keep the cluster directory (logs) even if all went well")
    options = parser.parse_args()
    check_installed()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    records: list[dict[str, Any]] = []

    async def scenario(reactor: Any, directory: Path) -> None:
        records.append(await run_chaos(reactor, directory, options.quick))

    # A short directory: UNIX socket paths are limited to about 100 bytes.
    directory = Path(tempfile.mkdtemp(prefix="nsc-", dir="/tmp"))
    print(f"chaos suite: a cluster in {directory}", file=sys.stderr)
    try:
        react(lambda reactor: ensureDeferred(scenario(reactor, directory)))
    except SystemExit as exit:
        if exit.code or not records:
            raise
    record = records[0]
    if record.get("error"):
        tails(directory)
        print(f"the cluster's logs are kept in {directory}", file=sys.stderr)
    elif not options.keep:
        shutil.rmtree(directory, ignore_errors=True)
    with open(RESULTS, "a", encoding="utf-8") as out:
        out.write(json.dumps(record) + "\n")
    print_table(record)
    print(f"\none JSON line appended to {RESULTS}")
    if record.get("error"):
        raise SystemExit(1)


if __name__ == "__main__":
    main()
