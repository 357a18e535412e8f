"""
Make the dashboard's picture in the docs (docs/images/dashboard.png)::

    .venv/bin/python -m tests.screenshot [PATH]

It runs a local cluster (a master with C{--http}, two nodes, the example
greeter on each) and an API user calling and publishing all the while, and
has a headless Chromium photograph the master's dashboard. Everything it
started is stopped before it returns.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path
from typing import Any

from twisted.internet.defer import ensureDeferred
from twisted.internet.task import LoopingCall, deferLater, react
from twisted.internet.threads import deferToThread

from nswarm.testing.local import LocalCluster, nswarm_event

from .browser import find_chromium, headless

ROOT = Path(__file__).resolve().parent.parent
GREETER = ROOT / "examples" / "greeter.py"
#: Seconds of calls before the picture, and the milliseconds of (virtual) time the page runs before it is taken.
WARM_UP = 3.0
PAGE_MS = 6000


async def photograph(reactor: Any, target: Path) -> None:
    """Run the cluster and its load, and write the dashboard's screenshot to C{target}."""
    chromium = find_chromium()
    if chromium is None:
        raise SystemExit("no chromium binary on the PATH: install it (apt-get install chromium)")
    with tempfile.TemporaryDirectory(prefix="nswarm-") as directory, LocalCluster(directory) as cluster:
        cluster.init()
        conf = Path(directory) / "master.conf"
        conf.write_text(conf.read_text().rstrip("\n") + "\nhttp = tcp:0\n")
        master = cluster.start_master()
        port = master.wait_for(nswarm_event("listening", server="http server"))["port"]
        for name in ("node-1", "node-2"):
            cluster.start_node(name)
            cluster.start_service(GREETER, node=name, name=f"greeter-{name}")
        client = await cluster.connect_api(reactor)
        count = [0]

        def load() -> None:
            count[0] += 1
            for _ in range(4):
                client.call("greet", f"visitor {count[0]}").addErrback(lambda _: None)
            client.call("add", count[0], b=1).addErrback(lambda _: None)
            if count[0] % 10 == 0:
                client.call("fail", "out of coffee").addErrback(lambda _: None)
            if count[0] % 3 == 0:
                client.publish("orders.created", {"id": count[0]}).addErrback(lambda _: None)

        calling = LoopingCall(load)
        calling.clock = reactor
        calling.start(0.02)
        try:
            await deferLater(reactor, WARM_UP, lambda: None)
            options = (
                f"--screenshot={target}",
                "--window-size=1280,900",
                "--hide-scrollbars",
                f"--virtual-time-budget={PAGE_MS}",
            )
            await deferToThread(headless, chromium, f"http://127.0.0.1:{port}/", *options, timeout=60)
        finally:
            calling.stop()
            await client.close()
    print(f"wrote {target}")


def main(argv: list[str]) -> None:
    """Write the screenshot to the path given, or to docs/images/dashboard.png."""
    target = Path(argv[0] if argv else ROOT / "docs" / "images" / "dashboard.png").absolute()
    target.parent.mkdir(parents=True, exist_ok=True)
    react(lambda reactor: ensureDeferred(photograph(reactor, target)))


if __name__ == "__main__":
    main(sys.argv[1:])
