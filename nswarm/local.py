"""
A whole nswarm cluster on this machine, in child processes: the master and
nodes under C{twistd -n}, service apps under Python. For the demo, the
end-to-end tests and the benchmarks.

    with LocalCluster(directory) as cluster:
        cluster.init()
        cluster.start_master()
        cluster.start_node("node-1")
        cluster.start_service("examples/greeter.py")
        ...   # API clients connect with cluster.connect_api(reactor)

Every start waits for the event that shows the process is ready (a ports
file, a log line) within a bound, and fails with L{ClusterError} quoting the
end of the process's log. L{LocalCluster.stop} (also run on leaving the
C{with} block and, as a last resort, at interpreter exit) stops every process
it started.

This module is synchronous: call its waits outside a running reactor, or use
L{LocalCluster.when_line} inside one.
"""

from __future__ import annotations

import ast
import atexit
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, TypeVar

from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.task import deferLater

import nswarm

if TYPE_CHECKING:
    from nswarm.api import APIClient

__all__ = ["ClusterError", "LocalCluster", "Process", "alive_pids"]

T = TypeVar("T")

#: Longest pause between two looks at a file or a log while waiting.
POLL_INTERVAL = 0.02
#: Default bound, in seconds, on every wait.
DEFAULT_TIMEOUT = 30.0
#: How long a process may take to exit after SIGTERM before it gets SIGKILL.
STOP_TIMEOUT = 10.0
#: Longest UNIX socket path accepted (the system limit is 104 to 108 bytes).
MAX_SOCKET_PATH = 100
#: Lines of a log quoted in an error.
TAIL_LINES = 25

# The line Service.main logs once a service has registered with its node.
_REGISTERED = re.compile(r"service (?P<name>.+?) registered (?P<methods>\[.*?\]) and (?P<events>\[.*?\])")


class ClusterError(Exception):
    """A process of the local cluster failed to start, died, or did not do something in time."""


@dataclass(eq=False)
class Process:
    """One child process of a L{LocalCluster}."""

    #: Unique within its cluster: "master", the node's name, or the service's.
    name: str
    #: "master", "node" or "service".
    kind: str
    popen: subprocess.Popen[bytes]
    #: Where the process logs: twistd's --logfile, or a service's output.
    log: Path
    #: Standard output and error (the same file as L{log} for a service).
    output: Path
    #: Length of the log when the process started: waits look only at what it logged itself.
    start_offset: int = 0
    #: Further files it owns (pidfile, ports file, socket), for reference.
    files: dict[str, Path] = field(default_factory=dict)

    @property
    def pid(self) -> int:
        return self.popen.pid

    @property
    def alive(self) -> bool:
        return self.popen.poll() is None

    @property
    def returncode(self) -> int | None:
        return self.popen.poll()

    def read_log(self, after: int = 0) -> str:
        """The log from byte offset C{after} on ("" if it does not exist yet)."""
        try:
            with open(self.log, "rb") as source:
                source.seek(after)
                return source.read().decode("utf-8", "replace")
        except FileNotFoundError:
            return ""

    def log_size(self) -> int:
        """The log's current length: give it as C{after} to wait only for lines still to come."""
        try:
            return self.log.stat().st_size
        except FileNotFoundError:
            return 0

    def tail(self, lines: int = TAIL_LINES) -> str:
        """The last C{lines} lines of the log (and of the output, if separate), for error messages."""
        parts = []
        for source in dict.fromkeys([self.log, self.output]):
            try:
                text = source.read_text("utf-8", "replace")
            except FileNotFoundError:
                continue
            if text.strip():
                last = "\n".join(text.rstrip("\n").splitlines()[-lines:])
                parts.append(f"--- last lines of {source} ---\n{last}")
        return "\n".join(parts) or f"(nothing in {self.log} yet)"

    def __str__(self) -> str:
        return f"{self.kind} {self.name!r} (pid {self.pid})"


def _poll(check: Callable[[], T | None], timeout: float, what: Callable[[], str]) -> T:
    """
    Call C{check} until it returns something other than None, at most
    L{POLL_INTERVAL} apart, for at most C{timeout} seconds; then raise
    L{ClusterError} with C{what()}. The only place this module sleeps.
    """
    deadline = time.monotonic() + timeout
    delay = 0.001
    while True:
        result = check()
        if result is not None:
            return result
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise ClusterError(f"timed out after {timeout:g}s: {what()}")
        time.sleep(min(delay, remaining))
        delay = min(delay * 2, POLL_INTERVAL)


def _find_line(process: Process, text: str, after: int) -> str | None:
    """The first whole line of C{process}'s log after C{after} that contains C{text}; fails if it exited."""
    for line in process.read_log(after).splitlines(keepends=True):
        if text in line and line.endswith("\n"):
            return line.rstrip("\n")
    if not process.alive:
        raise ClusterError(
            f"{process} exited with status {process.returncode} before logging {text!r}\n{process.tail()}"
        )
    return None


def _master_view(master_log: str, node: str) -> tuple[set[str], set[str]]:
    """
    The methods and events the master's log says it routes to C{node} since
    the node last connected (the master logs every change as it happens).
    """
    methods: set[str] = set()
    events: set[str] = set()
    prefix = f"node {node!r} "
    actions: dict[str, tuple[set[str], bool]] = {
        "implements ": (methods, True),
        "withdraws ": (methods, False),
        "subscribes to ": (events, True),
        "unsubscribes from ": (events, False),
    }
    for line in master_log.splitlines():
        _, found, rest = line.partition(prefix)
        if not found:
            continue
        if rest.startswith("connected from"):
            methods.clear()
            events.clear()
        for action, (names, add) in actions.items():
            if rest.startswith(action):
                try:
                    changed = set(ast.literal_eval(rest[len(action) :].strip()))
                except (ValueError, SyntaxError):
                    continue
                if add:
                    names |= changed
                else:
                    names -= changed
    return methods, events


def _child_environment() -> dict[str, str]:
    """Our environment, unbuffered, with PYTHONPATH made absolute (children run in the cluster directory)."""
    environment = dict(os.environ, PYTHONUNBUFFERED="1")
    # The children import this same nswarm (and find its twistd plugins),
    # whether it is installed or run from a source tree.
    entries = [str(Path(nswarm.__file__).resolve().parent.parent)]
    entries += environment.get("PYTHONPATH", "").split(os.pathsep)
    environment["PYTHONPATH"] = os.pathsep.join(os.path.abspath(entry) for entry in entries if entry)
    return environment


_running: set[LocalCluster] = set()


@atexit.register
def _stop_all() -> None:
    """Last resort: stop the processes of every cluster not stopped before the interpreter exits."""
    for cluster in list(_running):
        cluster.stop()


class LocalCluster:
    """
    A master, nodes and services run as child processes, with their
    configuration, pidfiles, logs and sockets all in C{directory} (keep its
    path short: UNIX socket paths are limited to about 100 bytes).
    C{python} runs the services and C{nswarm init}; the C{twistd} next to it
    runs the daemons. C{timeout} bounds every wait, in seconds.
    """

    def __init__(
        self, directory: str | os.PathLike[str], python: str = sys.executable, timeout: float = DEFAULT_TIMEOUT
    ) -> None:
        self.directory = Path(directory).absolute()
        self.python = python
        self.twistd = str(Path(python).parent / "twistd")
        self.timeout = timeout
        self.processes: list[Process] = []
        self.master: Process | None = None
        self.nodes: dict[str, Process] = {}
        self._ports: dict[str, int] = {}

    # -- configuration -------------------------------------------------------

    @property
    def client_config(self) -> Path:
        """The client.conf C{nswarm init} wrote (its api port is not the one the master uses: see L{api_port})."""
        return self.directory / "client.conf"

    @property
    def node_port(self) -> int:
        """The port the master's node server listens on (chosen by the system)."""
        return self._port("node")

    @property
    def api_port(self) -> int:
        """The port the master's api server listens on (chosen by the system)."""
        return self._port("api")

    def _port(self, server: str) -> int:
        if server not in self._ports:
            raise ClusterError("the master is not running: call start_master() first")
        return self._ports[server]

    def init(self) -> None:
        """Write a cluster configuration (CA, certificates, keys, conf files) into the directory."""
        self.directory.mkdir(parents=True, exist_ok=True)
        command = [self.python, "-m", "nswarm.cli", "init", str(self.directory)]
        try:
            result = subprocess.run(
                command, env=_child_environment(), capture_output=True, text=True, timeout=self.timeout
            )
        except subprocess.TimeoutExpired:
            raise ClusterError(f"nswarm init {self.directory} took more than {self.timeout:g}s")
        if result.returncode != 0:
            raise ClusterError(
                f"nswarm init {self.directory} failed with status {result.returncode}:\n"
                f"{result.stdout}{result.stderr}"
            )

    # -- starting ------------------------------------------------------------

    def start_master(self, node_port: int = 0, api_port: int = 0) -> Process:
        """
        Start C{twistd -n nswarm-master} on loopback ports (by default free
        ones the system chooses); return once both servers listen. To restart
        a killed master where its nodes look for it, pass
        C{node_port=cluster.node_port, api_port=cluster.api_port}.
        """
        config = self.directory / "master.conf"
        if not config.exists():
            raise ClusterError(f"{config} does not exist: call init() first")
        ports_file = self.directory / "master.ports"
        ports_file.unlink(missing_ok=True)
        master = self._start_daemon(
            "master",
            "master",
            "nswarm-master",
            ["--config", str(config)],
            [
                "--interface",
                "127.0.0.1",
                "--node-port",
                str(node_port),
                "--api-port",
                str(api_port),
                "--ports-file",
                str(ports_file),
            ],
        )
        master.files["ports"] = ports_file
        self.master = master

        def bound() -> dict[str, int] | None:
            if not master.alive:
                raise ClusterError(f"{master} exited with status {master.returncode}\n{master.tail()}")
            try:
                lines = ports_file.read_text().split("\n")
            except FileNotFoundError:
                return None
            return {server: int(number) for server, number in (line.split() for line in lines if line)}

        self._ports = _poll(bound, self.timeout, lambda: f"{master} wrote no {ports_file}\n{master.tail()}")
        return master

    def start_node(self, name: str = "node-1") -> Process:
        """
        Start C{twistd -n nswarm-node} named C{name} (its service socket is
        C{DIRECTORY/NAME.sock}); return once it is connected to the master.
        """
        self._check_name(name)
        socket = self.directory / f"{name}.sock"
        if len(os.fsencode(socket)) > MAX_SOCKET_PATH:
            raise ClusterError(
                f"the service socket path {socket} is longer than {MAX_SOCKET_PATH} bytes, "
                "too long for a UNIX socket: use a shorter cluster directory"
            )
        node = self._start_daemon(
            name,
            "node",
            "nswarm-node",
            ["--config", str(self.directory / "node.conf")],
            ["--upstream-port", str(self.node_port), "--name", name, "--service-socket", str(socket)],
        )
        node.files["socket"] = socket
        self.nodes[name] = node
        self.wait_for_line(node, f"node {name!r} connected to the master")
        return node

    def start_service(
        self, script: str | os.PathLike[str], *args: str, node: str = "node-1", name: str | None = None
    ) -> Process:
        """
        Run the service app C{script} (with C{--config client.conf --socket}
        of C{node}, then C{args}); return once it has registered with the
        node and the master routes its methods and events to that node.
        C{name} (by default the script's stem) names its log file.
        """
        if node not in self.nodes:
            raise ClusterError(f"no node named {node!r}: start it with start_node({node!r}) first")
        name = name or self._unique_name(Path(script).stem)
        log = self.directory / f"{name}.log"
        command = [
            self.python,
            str(Path(script).absolute()),
            "--config",
            str(self.client_config),
            "--socket",
            str(self.nodes[node].files["socket"]),
            *args,
        ]
        service = self._spawn(name, "service", command, log, log)
        line = self.wait_for_line(service, " registered ")
        self._wait_routed(node, line)
        return service

    def _wait_routed(self, node: str, registered: str) -> None:
        """
        Wait until the master's log shows it routes what the service logged
        in C{registered} to C{node}: the node passes Implement and Subscribe
        on to the master, which may get them a moment after the service's
        own registration succeeded.
        """
        match = _REGISTERED.search(registered)
        if match is None or self.master is None:
            return  # An unknown line format: the registration is all we can wait for.
        methods = set(ast.literal_eval(match["methods"]))
        events = set(ast.literal_eval(match["events"]))
        master = self.master

        def routed() -> bool | None:
            have_methods, have_events = _master_view(master.read_log(master.start_offset), node)
            if methods <= have_methods and events <= have_events:
                return True
            if not master.alive:
                raise ClusterError(f"{master} exited with status {master.returncode}\n{master.tail()}")
            return None

        _poll(
            routed,
            self.timeout,
            lambda: f"{master} did not log that node {node!r} implements {sorted(methods)} "
            f"and subscribes to {sorted(events)}\n{master.tail()}",
        )

    def _start_daemon(self, name: str, kind: str, plugin: str, before: list[str], after: list[str]) -> Process:
        log = self.directory / f"{name}.log"
        output = self.directory / f"{name}.out"
        pidfile = self.directory / f"{name}.pid"
        command = [
            self.twistd,
            "-n",
            "--pidfile",
            str(pidfile),
            "--logfile",
            str(log),
            plugin,
            *before,
            *after,
        ]
        process = self._spawn(name, kind, command, log, output)
        process.files["pidfile"] = pidfile
        return process

    def _spawn(self, name: str, kind: str, command: list[str], log: Path, output: Path) -> Process:
        self._check_name(name)
        if not self.directory.is_dir():
            raise ClusterError(f"{self.directory} does not exist: call init() first")
        start_offset = log.stat().st_size if log.exists() else 0
        with open(output, "ab") as out:
            try:
                popen = subprocess.Popen(
                    command,
                    cwd=self.directory,
                    env=_child_environment(),
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    # Its own session: a Ctrl-C meant for us does not hit it
                    # half-way; stop() ends it in order.
                    start_new_session=True,
                )
            except OSError as error:
                raise ClusterError(
                    f"cannot run {command[0]}: {error.strerror} "
                    f"(are Twisted and nswarm installed in the environment of {self.python}?)"
                )
        process = Process(name, kind, popen, log, output, start_offset)
        self.processes.append(process)
        _running.add(self)
        return process

    def _check_name(self, name: str) -> None:
        if not name or "/" in name or name.startswith("."):
            raise ClusterError(f"{name!r} cannot name a process: its files are named after it")
        if any(process.name == name and process.alive for process in self.processes):
            raise ClusterError(f"a process named {name!r} is already running in this cluster")

    def _unique_name(self, stem: str) -> str:
        names = {process.name for process in self.processes}
        name, number = stem, 1
        while name in names:
            number += 1
            name = f"{stem}-{number}"
        return name

    # -- waiting -------------------------------------------------------------

    def wait_for_line(
        self, process: Process, text: str, timeout: float | None = None, after: int | None = None
    ) -> str:
        """
        Block until a line containing C{text} appears in C{process}'s log
        and return it. Only lines after byte offset C{after} count (by
        default, those the process logged itself: a restarted process appends
        to the log of its predecessor); see L{Process.log_size}.
        Raises L{ClusterError} if the process exits or C{timeout} (default:
        the cluster's) passes first. Not for use inside a running reactor.
        """
        bound = self.timeout if timeout is None else timeout
        start = process.start_offset if after is None else after
        return _poll(
            lambda: _find_line(process, text, start),
            bound,
            lambda: f"{process} did not log {text!r}\n{process.tail()}",
        )

    def when_line(
        self, reactor: Any, process: Process, text: str, timeout: float | None = None, after: int | None = None
    ) -> Deferred[str]:
        """L{wait_for_line} for code running in the reactor: polls with C{reactor}'s timers."""
        bound = self.timeout if timeout is None else timeout
        start = process.start_offset if after is None else after

        async def wait() -> str:
            deadline = reactor.seconds() + bound
            while True:
                line = _find_line(process, text, start)
                if line is not None:
                    return line
                if reactor.seconds() >= deadline:
                    raise ClusterError(
                        f"timed out after {bound:g}s: {process} did not log {text!r}\n{process.tail()}"
                    )
                await deferLater(reactor, POLL_INTERVAL, lambda: None)

        return ensureDeferred(wait())

    # -- API users -----------------------------------------------------------

    def connect_api(self, reactor: Any) -> Deferred[APIClient]:
        """
        Connect an API client to the master: L{nswarm.api.connect_from_config}
        with the cluster's client.conf, but on the port the master really
        listens on.
        """
        from nswarm.api import connect
        from nswarm.config import read_client_config, read_secret_file

        config = read_client_config(str(self.client_config), "api")
        return connect(
            reactor,
            config.get("host", "localhost"),
            self.api_port,
            key=read_secret_file(config["auth-key-file"]),
            ca=config["ca"],
            cert=config.get("cert"),
            cert_key=config.get("cert-key"),
            timeout=self.timeout,
        )

    # -- stopping ------------------------------------------------------------

    def kill(self, process: Process, sig: int = signal.SIGKILL) -> int:
        """Send C{sig} (SIGKILL by default) to C{process}, wait for it to exit, and return its status."""
        if process.alive:
            process.popen.send_signal(sig)
        try:
            return process.popen.wait(self.timeout)
        except subprocess.TimeoutExpired:
            raise ClusterError(f"{process} did not exit within {self.timeout:g}s of signal {sig}")

    def stop(self) -> None:
        """
        Stop every process started here, the last started first: SIGTERM,
        then SIGKILL if it has not exited within L{STOP_TIMEOUT} seconds.
        Safe to call more than once.
        """
        stuck = []
        for process in reversed(self.processes):
            if process.alive:
                process.popen.terminate()
                try:
                    process.popen.wait(STOP_TIMEOUT)
                except subprocess.TimeoutExpired:
                    process.popen.kill()
            try:
                process.popen.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                stuck.append(process)
        _running.discard(self)
        if stuck:
            raise ClusterError(f"still running after SIGKILL: {', '.join(map(str, stuck))}")

    def pids(self) -> list[int]:
        """The process ids of every process started here, running or not."""
        return [process.pid for process in self.processes]

    def __enter__(self) -> LocalCluster:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


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
