"""
The nswarm demo: a real cluster on this machine (a master and a node under
twistd, the greeter service from examples/greeter.py) and an API user that
calls methods, gets typed errors, publishes an event and measures the
round-trip latency of a call. Run with `make demo` or

    python examples/demo.py
"""

import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from twisted.internet.defer import TimeoutError, ensureDeferred
from twisted.internet.task import react

from nswarm.amp_commands import HandlerFailed, NoSuchMethod
from nswarm.testing.local import ClusterError, LocalCluster, Process, event_matching

GREETER = Path(__file__).resolve().parent / "greeter.py"
LATENCY_CALLS = 300
TIMEOUT = 30  # seconds the whole API conversation may take


async def talk(reactor, cluster: LocalCluster, greeter: Process) -> None:
    """Everything the API user does, on one connection to the master."""
    client = await cluster.connect_api(reactor)
    try:
        print(f"greet('world')          -> {await client.call('greet', 'world')!r}")
        print(f"add(2, 3)               -> {await client.call('add', 2, 3)!r}")
        try:
            await client.call("missing")
        except NoSuchMethod as error:
            print(f"missing()               -> NoSuchMethod: {error}")
        else:
            raise RuntimeError("missing() should have failed with NoSuchMethod")
        try:
            await client.call("fail", "out of coffee")
        except HandlerFailed as error:
            print(f"fail('out of coffee')   -> HandlerFailed: {error.remote_type}: {error.remote_message}")
        else:
            raise RuntimeError("fail() should have failed with HandlerFailed")

        await client.publish("orders.created", {"id": 7, "item": "tea"})
        got = await greeter.when(reactor, event_matching(greeter="event", event="orders.created"), timeout=10)
        print(
            f"publish(orders.created) -> greeter got event {got['event']}: {json.dumps(got['order'], sort_keys=True)}"
        )

        latencies = []
        for number in range(LATENCY_CALLS):
            start = time.perf_counter()
            await client.call("add", number, 1)
            latencies.append(time.perf_counter() - start)
        median = statistics.median(latencies) * 1000
        print(f"median round trip of {LATENCY_CALLS} sequential calls (API->master->node->greeter): {median:.2f} ms")
    finally:
        await client.close()
    config = cluster.running_client_config()
    print(f"\n$ nswarm status --config {config}", flush=True)
    # The real command, in its own process (this reactor only waits: the cluster runs in other processes).
    shown = subprocess.run([sys.executable, "-m", "nswarm.cli", "status", "--config", str(config)], timeout=TIMEOUT)
    if shown.returncode != 0:
        raise RuntimeError(f"nswarm status exited with status {shown.returncode}")


async def demo(reactor, cluster: LocalCluster, greeter: Process) -> None:
    """L{talk}, within a bound; on failure, say what went wrong and show the cluster's logs."""
    try:
        await ensureDeferred(talk(reactor, cluster, greeter)).addTimeout(TIMEOUT, reactor)
    except Exception as error:
        if isinstance(error, TimeoutError):
            error = RuntimeError(f"the cluster did not answer within {TIMEOUT} s")
        for process in cluster.processes:
            print(f"{process}:\n{process.tail()}\n", file=sys.stderr)
        raise SystemExit(f"demo failed: {type(error).__name__}: {error}")


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="nswarm-demo-") as directory, LocalCluster(directory) as cluster:
        try:
            cluster.init()
            cluster.start_master()
            cluster.start_node("node-1")
            greeter = cluster.start_service(GREETER)
        except ClusterError as error:
            raise SystemExit(f"demo failed: {error}")
        print(f"nswarm demo: a master, node 'node-1' and the greeter service, running in {directory}")
        try:
            react(demo, [cluster, greeter])  # runs the reactor, then exits with demo's status
        finally:
            print("stopping the cluster")


if __name__ == "__main__":
    main()
