"""
nswarm's logs for machines: one JSON event per line, as
C{twisted.logger.jsonFileLogObserver} writes them (RFC 7464: a record
separator C{"\\x1e"}, the JSON text, a newline).

The daemons log with C{twisted.logger}, and the events a program may want to
act on carry a field C{nswarm_event} naming what happened ("listening",
"connected", "events_dropped", ...; docs/operations.md lists them with their
fields). Two uses:

  - B{Log shippers}: run a daemon with this module's observer,
    C{twistd --logger nswarm.logs.json_observer nswarm-master ...}, and it
    logs JSON events to the file named by the environment variable
    C{NSWARM_JSON_LOG} (appended to), or to standard output if it is unset.
    A service logs the same way with C{--json-log}.
  - B{The local cluster} (L{nswarm.testing.local}) runs its daemons like
    that with C{NSWARM_JSON_LOG} unset, reads their standard output with
    L{parse_line}, and waits for events with predicates such as
    C{nswarm_event("listening", server="api server")}: it learns ports and
    readiness from these events, never from the wording of a log message.
    L{EventReader} does that reading: a thread per pipe that keeps the
    events and wakes whoever waits for one, blocked or in a reactor.
"""

from __future__ import annotations

import io
import os
import sys
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from twisted.internet.defer import Deferred, fail, succeed
from twisted.logger import (
    FileLogObserver,
    LogEvent,
    eventFromJSON,
    formatEventAsClassicLogText,
    jsonFileLogObserver,
)
from twisted.python.failure import Failure

__all__ = [
    "ENVIRONMENT",
    "EventMatch",
    "EventReader",
    "NotLogged",
    "Predicate",
    "event_matching",
    "json_observer",
    "nswarm_event",
    "parse_line",
]

#: The environment variable naming the file L{json_observer} appends to.
ENVIRONMENT = "NSWARM_JSON_LOG"
#: What starts each JSON record (RFC 7464).
RECORD_SEPARATOR = "\x1e"
#: Lines of its log an L{EventReader} keeps in memory, for error messages.
KEPT_LINES = 500

#: A test of one log event.
Predicate = Callable[[LogEvent], bool]


def json_observer() -> FileLogObserver:
    """
    A log observer for twistd's C{--logger} option: JSON events, one per
    line, appended to the file C{$NSWARM_JSON_LOG} if it is set, else
    written to standard output. Either is line buffered, so that every event
    is out as soon as it is logged.
    """
    path = os.environ.get(ENVIRONMENT)
    if path:
        return jsonFileLogObserver(open(path, "a", buffering=1, encoding="utf-8"))
    # Taken now: twistd then replaces sys.stdout with a file that logs.
    out = sys.stdout
    if isinstance(out, io.TextIOWrapper):
        out.reconfigure(line_buffering=True)
    return jsonFileLogObserver(out)


def parse_line(line: str) -> LogEvent | None:
    """
    The event in C{line}, one line of C{jsonFileLogObserver} output; None if
    the line is not one (text a program printed, say).
    """
    if not line.startswith(RECORD_SEPARATOR):
        return None
    try:
        event = eventFromJSON(line.strip(RECORD_SEPARATOR + " \t\r\n"))
    except ValueError:
        return None
    return event if isinstance(event, dict) else None


@dataclass(frozen=True)
class EventMatch:
    """A L{Predicate}: true of an event that has every one of C{fields}, with those values."""

    fields: dict[str, Any] = field(default_factory=dict)

    def __call__(self, event: LogEvent) -> bool:
        return all(key in event and event[key] == value for key, value in self.fields.items())

    def __str__(self) -> str:
        return "an event with " + (", ".join(f"{key}={value!r}" for key, value in self.fields.items()) or "any fields")


def event_matching(**fields: Any) -> EventMatch:
    """A predicate true of the events that have all of C{fields}: C{event_matching(greeter="event")}."""
    return EventMatch(fields)


def nswarm_event(name: str, /, **fields: Any) -> EventMatch:
    """
    A predicate true of the events nswarm logs as C{name}, with C{fields}:
    C{nswarm_event("connected", role="node", name="node-1")}.
    """
    return EventMatch({"nswarm_event": name, **fields})


class NotLogged(Exception):
    """The event waited for did not come: the log ended, or the bound passed, first."""


class _Search:
    """The search for the C{count}-th event satisfying C{predicate}, from index C{index} of a log's events."""

    def __init__(self, predicate: Predicate, count: int, index: int, what: str) -> None:
        self.predicate = predicate
        self.count = count
        self.index = index
        self.what = what
        self.found = 0
        self.result: LogEvent | None = None
        #: For a search from a reactor: where to deliver its outcome.
        self.reactor: Any = None
        self.deferred: Deferred[LogEvent] | None = None

    def scan(self, events: list[LogEvent]) -> LogEvent | None:
        """Look at the events not seen yet; the event searched for, once found."""
        while self.result is None and self.index < len(events):
            event = events[self.index]
            self.index += 1
            if self.predicate(event):
                self.found += 1
                if self.found >= self.count:
                    self.result = event
        return self.result


def _deliver(d: Deferred[LogEvent], outcome: LogEvent | Failure) -> None:
    """Fire C{d} with C{outcome}, in the reactor thread, unless it timed out or was cancelled meanwhile."""
    if not d.called:
        if isinstance(outcome, Failure):
            d.errback(outcome)
        else:
            d.callback(outcome)


class EventReader:
    """
    The log a running program writes to a pipe, read as it comes by a
    thread of its own: each line of C{source} is appended to the text file
    C{copy} (JSON events formatted as text, so that people can read it), the
    events are kept in order, and waiters are woken through a condition.
    The thread calls C{ended} once C{source} ends, then marks the log ended.
    """

    def __init__(self, source: IO[bytes], copy: Path, name: str, ended: Callable[[], object] = lambda: None) -> None:
        self.source = source
        self.copy = copy
        self.ended = ended
        self._condition = threading.Condition()
        self._events: list[LogEvent] = []
        self._lines: deque[str] = deque(maxlen=KEPT_LINES)
        self._searches: list[_Search] = []
        self._closed = False
        self._thread = threading.Thread(target=self._read, name=f"log reader of {name}", daemon=True)
        self._thread.start()

    def _read(self) -> None:
        try:
            with self.source, open(self.copy, "a", encoding="utf-8") as copy:
                for raw in self.source:
                    self._add(raw.decode("utf-8", "replace"), copy)
            self.ended()
        except Exception as error:  # noqa: BLE001 - nothing may keep the waiters from hearing the end
            with self._condition:
                self._lines.append(f"(reading this log failed: {error!r})")
        finally:
            with self._condition:
                self._closed = True
                self._wake()

    def _add(self, line: str, copy: IO[str]) -> None:
        """Keep C{line} (and its event, if it is one), copy it as text, wake the waiters."""
        event = parse_line(line)
        text = formatEventAsClassicLogText(event) if event is not None else None
        if text is None:
            text = line.strip(RECORD_SEPARATOR + "\r\n") + "\n"
        copy.write(text)
        copy.flush()
        with self._condition:
            self._lines.extend(text.rstrip("\n").split("\n"))
            if event is not None:
                self._events.append(event)
                self._wake()

    def _wake(self) -> None:
        """Under the condition: wake blocked waiters; deliver the outcome of reactor searches now decided."""
        self._condition.notify_all()
        for search in list(self._searches):
            try:
                found = search.scan(self._events)
            except Exception:
                outcome: LogEvent | Failure = Failure()
            else:
                if found is None and not self._closed:
                    continue
                outcome = found if found is not None else Failure(NotLogged(f"its log ended before {search.what}"))
            self._searches.remove(search)
            search.reactor.callFromThread(_deliver, search.deferred, outcome)

    @property
    def closed(self) -> bool:
        """Whether the log has ended (and C{ended} has returned)."""
        with self._condition:
            return self._closed

    def mark(self) -> int:
        """How many events were logged so far: give it as C{after} to look only at those still to come."""
        with self._condition:
            return len(self._events)

    def events(self, predicate: Predicate | None = None, after: int = 0) -> list[LogEvent]:
        """The events logged (after the first C{after}) that satisfy C{predicate}, oldest first."""
        with self._condition:
            logged = self._events[after:]
        return [event for event in logged if predicate is None or predicate(event)]

    def lines(self, count: int) -> list[str]:
        """The last C{count} lines of the log as text (at most L{KEPT_LINES})."""
        with self._condition:
            return list(self._lines)[-count:]

    def wait_for(self, predicate: Predicate, timeout: float, what: str, after: int = 0, count: int = 1) -> LogEvent:
        """
        Block until C{count} events (after the first C{after}) satisfy
        C{predicate}, and return the last of them; raise L{NotLogged} at
        once if the log ends first, or once C{timeout} seconds pass.
        """
        search = _Search(predicate, count, after, what)
        with self._condition:
            self._condition.wait_for(lambda: search.scan(self._events) is not None or self._closed, timeout)
            if search.result is not None:
                return search.result
            if self._closed:
                raise NotLogged(f"its log ended before {what}")
            raise NotLogged(f"timed out after {timeout:g}s waiting for {what}")

    def when(
        self, reactor: Any, predicate: Predicate, timeout: float, what: str, after: int = 0, count: int = 1
    ) -> Deferred[LogEvent]:
        """
        L{wait_for} for code running in C{reactor}: a Deferred that the
        reading thread fires (with C{reactor.callFromThread}) as the event
        comes; it fails with L{NotLogged} when L{wait_for} would raise it.
        """
        search = _Search(predicate, count, after, what)
        with self._condition:
            try:
                found = search.scan(self._events)
            except Exception:
                return fail()
            if found is not None:
                return succeed(found)
            if self._closed:
                return fail(NotLogged(f"its log ended before {what}"))
            d: Deferred[LogEvent] = Deferred(lambda _: self._forget(search))
            search.reactor, search.deferred = reactor, d
            self._searches.append(search)

        def timed_out(result: object, timeout: float) -> LogEvent:
            raise NotLogged(f"timed out after {timeout:g}s waiting for {what}")

        return d.addTimeout(timeout, reactor, onTimeoutCancel=timed_out)

    def _forget(self, search: _Search) -> None:
        with self._condition:
            if search in self._searches:
                self._searches.remove(search)

    def join(self, timeout: float) -> None:
        """Wait, at most C{timeout} seconds, for the reading thread to end (once the writer has exited)."""
        self._thread.join(timeout)
