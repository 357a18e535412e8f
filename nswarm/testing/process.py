"""
One child process of a L{nswarm.testing.local.LocalCluster}: its JSON log
events (read by a thread as they come), bounded waits on them, its tail for
error messages; and checks that nothing is left running.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from twisted.internet.defer import Deferred
from twisted.logger import LogEvent
from twisted.python.failure import Failure

import nswarm
from nswarm.logs import ENVIRONMENT, EventReader, NotLogged, Predicate

__all__ = ["ClusterError", "Process", "alive_pids", "child_environment"]

#: Lines of a log quoted in an error.
TAIL_LINES = 25
#: How long a process may take to exit after SIGTERM before it gets SIGKILL.
STOP_TIMEOUT = 10.0


class ClusterError(Exception):
    """A process of the local cluster failed to start, died, or did not do something in time."""


class Process:
    """
    One child process of a L{LocalCluster}, and the events it has logged to
    its standard output, which an L{EventReader} takes as they come (every
    event from its start, in order) and copies as text to C{log}.
    """

    def __init__(
        self, name: str, kind: str, popen: subprocess.Popen[bytes], log: Path, output: Path, timeout: float
    ) -> None:
        #: Unique within its cluster: "master", the node's name, or the service's.
        self.name = name
        #: "master", "node" or "service".
        self.kind = kind
        self.popen = popen
        #: Its log, as text (a restarted process appends to its predecessor's).
        self.log = log
        #: Its standard error.
        self.output = output
        #: The default bound on its waits, in seconds.
        self.timeout = timeout
        #: Further files it owns (pidfile, ports file, socket), for reference.
        self.files: dict[str, Path] = {}
        assert popen.stdout is not None
        self.reader = EventReader(popen.stdout, log, str(self), self._exited)

    def _exited(self) -> None:
        """In the reader's thread, once the output ended: wait for the exit, so that errors give its status."""
        try:
            self.popen.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            pass

    @property
    def pid(self) -> int:
        """Its process id."""
        return self.popen.pid

    @property
    def alive(self) -> bool:
        """Whether it is still running."""
        return self.popen.poll() is None

    @property
    def returncode(self) -> int | None:
        """Its exit status (minus the signal that ended it), or None while it runs."""
        return self.popen.poll()

    def mark(self) -> int:
        """How many events it has logged so far: give it as C{after} to look only at those still to come."""
        return self.reader.mark()

    def events(self, predicate: Predicate | None = None, after: int = 0) -> list[LogEvent]:
        """The events it has logged (after the first C{after}) that satisfy C{predicate}, oldest first."""
        return self.reader.events(predicate, after)

    def wait_for(
        self,
        predicate: Predicate,
        timeout: float | None = None,
        what: str | None = None,
        after: int = 0,
        count: int = 1,
    ) -> LogEvent:
        """
        Block until it has logged C{count} events (after the first C{after})
        that satisfy C{predicate}, such as C{nswarm_event("listening")}, and
        return the last of them. Raises L{ClusterError} at once if it ends
        first, or once C{timeout} seconds (by default its cluster's bound)
        pass; C{what} names the event there. Not for use inside a running
        reactor: see L{when}.
        """
        bound = self.timeout if timeout is None else timeout
        try:
            return self.reader.wait_for(predicate, bound, what or str(predicate), after, count)
        except NotLogged as error:
            raise self._error(error)

    def when(
        self,
        reactor: Any,
        predicate: Predicate,
        timeout: float | None = None,
        what: str | None = None,
        after: int = 0,
        count: int = 1,
    ) -> Deferred[LogEvent]:
        """
        L{wait_for} for code running in C{reactor}: a Deferred that fires
        with the event as it comes, or fails with L{ClusterError}.
        """
        bound = self.timeout if timeout is None else timeout
        d = self.reader.when(reactor, predicate, bound, what or str(predicate), after, count)
        return d.addErrback(self._failed)

    def _error(self, error: object) -> ClusterError:
        status = "" if self.alive else f", which exited with status {self.returncode}"
        return ClusterError(f"{self}{status}: {error}\n{self.tail()}")

    def _failed(self, failure: Failure) -> LogEvent:
        failure.trap(NotLogged)
        raise self._error(failure.value)

    def tail(self, lines: int = TAIL_LINES) -> str:
        """The last C{lines} lines it logged, and of its standard error, for error messages."""
        logged = self.reader.lines(lines)
        parts = [f"--- last lines logged by {self} (in {self.log}) ---\n" + "\n".join(logged)] if logged else []
        try:
            errors = self.output.read_text("utf-8", "replace")
        except FileNotFoundError:
            errors = ""
        if errors.strip():
            last = "\n".join(errors.rstrip("\n").splitlines()[-lines:])
            parts.append(f"--- last lines of {self.output} ---\n{last}")
        return "\n".join(parts) or f"(nothing logged by {self} yet)"

    def __str__(self) -> str:
        return f"{self.kind} {self.name!r} (pid {self.pid})"


def child_environment() -> dict[str, str]:
    """
    Our environment, unbuffered, with PYTHONPATH made absolute (children run
    in the cluster directory) and no NSWARM_JSON_LOG (their JSON events must
    come on their standard output).
    """
    environment = dict(os.environ, PYTHONUNBUFFERED="1")
    environment.pop(ENVIRONMENT, None)
    # The children import this same nswarm (and find its twistd plugins),
    # whether it is installed or run from a source tree.
    entries = [str(Path(nswarm.__file__).resolve().parent.parent)]
    entries += environment.get("PYTHONPATH", "").split(os.pathsep)
    environment["PYTHONPATH"] = os.pathsep.join(os.path.abspath(entry) for entry in entries if entry)
    return environment


def alive_pids(pids: Iterable[int]) -> list[int]:
    """Which of C{pids} still name a process (of any owner), for checks that nothing is left behind."""
    alive = []
    for pid in pids:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            continue
        except PermissionError:
            pass
        alive.append(pid)
    return alive
