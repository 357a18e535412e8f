"""
A whole nswarm cluster on this machine, in child processes: the master and
nodes under C{twistd -n}, service apps under Python. For the demo, the
end-to-end tests and the benchmarks::

    with LocalCluster(directory) as cluster:
        cluster.init()
        cluster.start_master()
        cluster.start_node("node-1")
        greeter = cluster.start_service("examples/greeter.py")
        ...   # API clients connect with cluster.connect_api(reactor)
        greeter.wait_for(event_matching(greeter="event"))

Every child logs JSON events to its standard output (the daemons through
C{--logger nswarm.logs.json_observer}, services with C{--json-log}). A
thread per child reads them, keeps them, and writes them as text to
C{DIRECTORY/NAME.log} for people; standard error goes to C{NAME.out}. What
the cluster learns of a process (its ports, that it is ready) comes from
those events: every start waits for the event that shows the process is
ready (see L{nswarm.logs}), within a bound, and fails with L{ClusterError}
quoting the end of the process's log. L{LocalCluster.stop} (also run on
leaving the C{with} block and, as a last resort, at interpreter exit) stops
every process it started.

Waits block the calling thread (L{Process.wait_for}: call it outside a
running reactor) or return a Deferred (L{Process.when}, inside one).
"""

from __future__ import annotations

import atexit
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from twisted.internet.defer import Deferred

from nswarm.cluster_files import issue_node, node_files
from nswarm.logs import event_matching, nswarm_event
from nswarm.testing.process import STOP_TIMEOUT, ClusterError, Process, alive_pids, child_environment

if TYPE_CHECKING:
    from nswarm.api import APIClient

__all__ = ["ClusterError", "LocalCluster", "Process", "alive_pids", "event_matching", "nswarm_event"]

#: The node C{nswarm init} issues a certificate for.
INIT_NODE = "node-1"
#: Default bound, in seconds, on every wait.
DEFAULT_TIMEOUT = 30.0
#: Longest UNIX socket path accepted (the system limit is 104 to 108 bytes).
MAX_SOCKET_PATH = 100


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

    def running_client_config(self) -> Path:
        """
        A copy of L{client_config} with the api port the master really
        listens on (C{running-client.conf}), for the C{nswarm} commands.
        """
        import configparser

        parser = configparser.ConfigParser(interpolation=None)
        parser.read(self.client_config, encoding="utf-8")
        parser["api"]["port"] = str(self.api_port)
        path = self.directory / "running-client.conf"
        with open(path, "w", encoding="utf-8") as out:
            parser.write(out)
        return path

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
                command, env=child_environment(), capture_output=True, text=True, timeout=self.timeout
            )
        except subprocess.TimeoutExpired:
            raise ClusterError(f"nswarm init {self.directory} took more than {self.timeout:g}s")
        if result.returncode != 0:
            raise ClusterError(
                f"nswarm init {self.directory} failed with status {result.returncode}:\n{result.stdout}{result.stderr}"
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
        arguments = ["--interface", "127.0.0.1", "--node-port", str(node_port), "--api-port", str(api_port)]
        master = self._start_daemon(
            "master", "master", "nswarm-master", ["--config", str(config), *arguments, "--ports-file", str(ports_file)]
        )
        master.files["ports"] = ports_file
        self.master = master
        deadline = time.monotonic() + self.timeout
        ports = {}
        for server in ("node", "api"):
            listening = master.wait_for(
                nswarm_event("listening", server=f"{server} server"), max(0.0, deadline - time.monotonic())
            )
            ports[server] = int(listening["port"])
        self._ports = ports
        return master

    def start_node(self, name: str = "node-1") -> Process:
        """
        Start C{twistd -n nswarm-node} named C{name} (its service socket is
        C{DIRECTORY/NAME.sock}); return once it is connected to the master.
        A node other than the one C{init} made (C{node-1}) gets a certificate
        of its own first, as C{nswarm issue node NAME} makes it.
        """
        self._check_name(name)
        certificate: list[str] = []
        if name != INIT_NODE:
            cert, key = node_files(self.directory, name)
            if not cert.exists():
                issue_node(self.directory, name)
            certificate = ["--node-cert", str(cert), "--node-cert-key", str(key)]
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
            ["--config", str(self.directory / "node.conf"), "--upstream-port", str(self.node_port)]
            + ["--name", name, "--service-socket", str(socket), *certificate],
        )
        node.files["socket"] = socket
        self.nodes[name] = node
        node.wait_for(nswarm_event("upstream_connected", name=name))
        return node

    def start_service(
        self, script: str | os.PathLike[str], *args: str, node: str = "node-1", name: str | None = None
    ) -> Process:
        """
        Run the service app C{script} (with C{--config client.conf --socket}
        of C{node} C{--json-log}, then C{args}); return once it has
        registered, which is once the master routes its methods and events
        to that node. C{name} (by default the script's stem) names its log.
        """
        if node not in self.nodes:
            raise ClusterError(f"no node named {node!r}: start it with start_node({node!r}) first")
        name = name or self._unique_name(Path(script).stem)
        command = [self.python, str(Path(script).absolute()), "--config", str(self.client_config)]
        command += ["--socket", str(self.nodes[node].files["socket"]), "--json-log", *args]
        service = self._spawn(name, "service", command)
        service.wait_for(nswarm_event("service_registered"))
        return service

    def _start_daemon(self, name: str, kind: str, plugin: str, arguments: list[str]) -> Process:
        pidfile = self.directory / f"{name}.pid"
        command = [self.twistd, "-n", "--pidfile", str(pidfile), "--logger", "nswarm.logs.json_observer"]
        process = self._spawn(name, kind, [*command, plugin, *arguments])
        process.files["pidfile"] = pidfile
        return process

    def _spawn(self, name: str, kind: str, command: list[str]) -> Process:
        self._check_name(name)
        if not self.directory.is_dir():
            raise ClusterError(f"{self.directory} does not exist: call init() first")
        output = self.directory / f"{name}.out"
        with open(output, "ab") as errors:
            try:
                popen = subprocess.Popen(
                    command,
                    cwd=self.directory,
                    env=child_environment(),
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.PIPE,
                    stderr=errors,
                    # Its own session: a Ctrl-C meant for us does not hit it
                    # half-way; stop() ends it in order.
                    start_new_session=True,
                )
            except OSError as error:
                raise ClusterError(
                    f"cannot run {command[0]}: {error.strerror} "
                    f"(are Twisted and nswarm installed in the environment of {self.python}?)"
                )
        process = Process(name, kind, popen, self.directory / f"{name}.log", output, self.timeout)
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
        then SIGKILL if it has not exited within L{STOP_TIMEOUT} seconds;
        then let the readers take what they logged last. Safe to call more
        than once.
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
        for process in self.processes:
            process.reader.join(STOP_TIMEOUT)
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
