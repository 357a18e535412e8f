"""
Tier 1: how L{nswarm.testing.local} reads the JSON events of its children and
waits for them, with no daemon: a tiny C{python -c} child logs through
L{twisted.logger.jsonFileLogObserver} (and prints a line of text), and waits
on its standard input where a test needs it to hold on. Waits from a reactor
run on a fake one: a L{Clock} whose C{callFromThread} queues the call for the
test to run. No sleeps: every wait is on the thing itself, with a bound.
"""

from __future__ import annotations

import io
import queue
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from twisted.internet.task import Clock
from twisted.logger import Logger, jsonFileLogObserver

from nswarm.logs import ENVIRONMENT, event_matching, json_observer, nswarm_event, parse_line
from nswarm.testing.local import ClusterError, Process

#: Bound, in seconds, on anything a test waits for that should come at once.
BOUND = 20.0

CHILD = """
import sys
from twisted.logger import Logger, jsonFileLogObserver
log = Logger(observer=jsonFileLogObserver(sys.stdout))
print("plain text from print()", flush=True)
log.info("listening on {port}", port=1234, nswarm_event="listening", server="api server")
log.info("a plain event", other=1)
if sys.argv[1:] == ["hold"]:
    sys.stdin.readline()
    log.info("second", nswarm_event="listening", server="node server", port=5678)
    sys.stdin.read()
"""


class FakeReactor(Clock):
    """A Clock whose callFromThread queues the call, for the test's thread to run."""

    def __init__(self) -> None:
        super().__init__()
        self.from_threads: queue.Queue[tuple[Callable[..., Any], tuple[Any, ...]]] = queue.Queue()

    def callFromThread(self, f: Callable[..., Any], *args: Any) -> None:
        self.from_threads.put((f, args))

    def run_next(self) -> None:
        """Run the next call from another thread, waiting at most BOUND seconds for one."""
        f, args = self.from_threads.get(timeout=BOUND)
        f(*args)


@pytest.fixture
def spawn(tmp_path: Path) -> Iterator[Callable[..., Process]]:
    """Start CHILD (with C{args}) as a L{Process}; kill what is left afterwards."""
    started: list[Process] = []

    def start(*args: str) -> Process:
        popen = subprocess.Popen([sys.executable, "-c", CHILD, *args], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        process = Process("child", "service", popen, tmp_path / "child.log", tmp_path / "child.out", BOUND)
        started.append(process)
        return process

    yield start
    for process in started:
        if process.popen.stdin is not None:
            process.popen.stdin.close()
        process.popen.kill()
        process.popen.wait(BOUND)
        process.reader.join(BOUND)


def release(process: Process, data: bytes = b"") -> None:
    """Write C{data} to the child's standard input (which it waits on); with nothing, close it."""
    stdin = process.popen.stdin
    assert stdin is not None
    if data:
        stdin.write(data)
        stdin.flush()
    else:
        stdin.close()


def test_wait_for_returns_the_matching_event(spawn: Callable[..., Process]) -> None:
    """wait_for returns the first event that matches, with its fields as logged."""
    process = spawn()
    event = process.wait_for(nswarm_event("listening", server="api server"))
    assert (event["port"], event["log_format"]) == (1234, "listening on {port}")
    assert process.wait_for(event_matching(other=1))["log_namespace"]


def test_text_lines_are_kept_for_the_tail_and_the_log_file(spawn: Callable[..., Process]) -> None:
    """A line that is not JSON is no event but shows in the tail; the log file reads as text."""
    process = spawn()
    process.wait_for(event_matching(other=1))
    process.popen.wait(BOUND)
    process.reader.join(BOUND)
    assert "plain text from print()" in process.tail()
    assert len(process.events()) == 2
    text = process.log.read_text()
    assert "plain text from print()\n" in text and "listening on 1234" in text and "\x1e" not in text


def test_wait_for_fails_at_once_when_the_process_ends_first(spawn: Callable[..., Process]) -> None:
    """Waiting for an event the child never logs fails as soon as it exits, not when the bound passes."""
    process = spawn()
    started = time.monotonic()
    with pytest.raises(ClusterError) as raised:
        process.wait_for(nswarm_event("never"), timeout=BOUND, what="the event that never comes")
    assert time.monotonic() - started < BOUND / 2
    message = str(raised.value)
    assert "ended before the event that never comes" in message and "exited with status 0" in message
    assert "plain text from print()" in message


def test_wait_for_times_out_while_the_process_runs(spawn: Callable[..., Process]) -> None:
    """With the child alive and silent, wait_for fails once its bound passes, naming what it waited for."""
    process = spawn("hold")
    with pytest.raises(ClusterError, match=r"timed out after 0.2s waiting for an event with nswarm_event='never'"):
        process.wait_for(nswarm_event("never"), timeout=0.2)
    assert process.alive


def test_count_and_after_select_later_events(spawn: Callable[..., Process]) -> None:
    """count asks for the n-th match; after skips the events already logged."""
    process = spawn("hold")
    process.wait_for(event_matching(other=1))
    mark = process.mark()
    assert mark == 2
    release(process, b"go\n")
    second = process.wait_for(nswarm_event("listening"), count=2)
    assert second["server"] == "node server"
    assert process.wait_for(nswarm_event("listening"), after=mark) is second
    assert [event["port"] for event in process.events(nswarm_event("listening"))] == [1234, 5678]


def test_when_fires_from_the_reader_thread_as_the_event_comes(spawn: Callable[..., Process]) -> None:
    """when() returns a Deferred that the reader fires through callFromThread; one already logged fires at once."""
    reactor = FakeReactor()
    process = spawn("hold")
    process.wait_for(event_matching(other=1))
    assert process.when(reactor, event_matching(other=1)).result["other"] == 1

    results: list[Any] = []
    d = process.when(reactor, nswarm_event("listening", server="node server"))
    d.addCallback(results.append)
    assert results == []
    release(process, b"go\n")
    reactor.run_next()
    assert [event["port"] for event in results] == [5678]
    assert reactor.getDelayedCalls() == []  # the timeout was cancelled


def test_when_times_out_on_the_reactor_clock(spawn: Callable[..., Process]) -> None:
    """A when() with nothing coming fails with ClusterError once the reactor's clock passes its bound."""
    reactor = FakeReactor()
    process = spawn("hold")
    failures: list[Any] = []
    process.when(reactor, nswarm_event("never"), timeout=5).addErrback(failures.append)
    reactor.advance(4.9)
    assert failures == []
    reactor.advance(0.1)
    (failure,) = failures
    assert failure.check(ClusterError) and "timed out after 5s" in str(failure.value)


def test_when_fails_when_the_process_ends_first(spawn: Callable[..., Process]) -> None:
    """A when() still waiting as the child exits fails with ClusterError, delivered through callFromThread."""
    reactor = FakeReactor()
    process = spawn("hold")
    failures: list[Any] = []
    process.when(reactor, nswarm_event("never")).addErrback(failures.append)
    release(process)
    reactor.run_next()
    (failure,) = failures
    assert failure.check(ClusterError) and "ended before" in str(failure.value)


def test_parse_line_takes_json_records_only() -> None:
    """A record separator and a JSON object make an event; anything else is text."""
    out = io.StringIO()
    Logger(observer=jsonFileLogObserver(out)).info("hello {who}", who="you", nswarm_event="greeting")
    event = parse_line(out.getvalue())
    assert event is not None and event["who"] == "you" and nswarm_event("greeting")(event)
    assert parse_line('{"who": "you"}\n') is None
    assert parse_line("\x1enot json\n") is None
    assert parse_line("\x1e[1, 2]\n") is None


def test_event_matching_needs_every_field() -> None:
    """The predicate is true only of events holding every given field with its value."""
    match = event_matching(role="node", name="node-1")
    assert match({"role": "node", "name": "node-1", "other": 2})
    assert not match({"role": "node"})
    assert not match({"role": "service", "name": "node-1"})
    assert str(match) == "an event with role='node', name='node-1'"


def test_json_observer_appends_to_the_file_named_in_the_environment(tmp_path: Path, monkeypatch: Any) -> None:
    """With NSWARM_JSON_LOG set, the observer appends JSON records to that file, one per line."""
    target = tmp_path / "master.json"
    target.write_text("")
    monkeypatch.setenv(ENVIRONMENT, str(target))
    log = Logger(observer=json_observer())
    log.info("one", nswarm_event="listening", port=1)
    log.info("two", nswarm_event="listening", port=2)
    events = [parse_line(line) for line in target.read_text().split("\n") if line]
    assert [event and event["port"] for event in events] == [1, 2]
