"""
An nswarm service written for asyncio: coroutine handlers, run by
C{asyncio.run}, no Twisted reactor. Run it beside a node::

    python examples/aio_service.py --config DIR/client.conf

(or C{--socket PATH --auth-key-file FILE}). It says when it has
registered; with C{--json-log}, as the JSON event C{service_registered}
that Twisted services log, so that a program that starts it (such as
L{nswarm.testing.local.LocalCluster.start_service}) can wait for it.

C{count} and C{ticks} are streaming handlers: async generators whose every
C{yield} is a part the caller receives as it comes
(C{async for part in client.stream("count", 10)}). The service produces a
part only when the caller has room for it, and a caller that closes the
stream (or whose deadline passes) closes the generator: its C{finally}
runs, and C{counts()["streams_closed"]} says how many did.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
from collections.abc import AsyncIterator

from nswarm import aio
from nswarm.config import read_client_config, read_secret_file


class Counter(aio.Service):
    """Greets, echoes, sleeps (cancellably), streams, and counts the events it gets."""

    def __init__(self) -> None:
        super().__init__()
        self.events = 0
        self.cancelled = 0
        self.streams_closed = 0

    @aio.implement
    async def greet(self, name: str) -> str:
        return f"hello, {name}!"

    @aio.implement
    def echo(self, value: object) -> object:
        return value

    @aio.implement
    def whoami(self) -> str:
        """The caller of this call, as the master stamped it."""
        return str(aio.current_caller())

    @aio.implement
    async def fail(self, message: str) -> None:
        raise ValueError(message)

    @aio.implement
    async def sleep(self, seconds: float) -> str:
        """Sleep, unless the call is cancelled (by its caller or its deadline): that is counted."""
        try:
            await asyncio.sleep(seconds)
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        return "slept"

    @aio.implement
    async def slow_echo(self, value: object, seconds: float) -> object:
        await asyncio.sleep(seconds)
        return value

    @aio.implement
    async def count(self, n: int) -> AsyncIterator[int]:
        """Stream 0, 1, ..., n - 1, one part each (a plain call gets the list)."""
        for value in range(n):
            yield value

    @aio.implement
    async def ticks(self, interval: float = 0.01) -> AsyncIterator[int]:
        """Stream 0, 1, 2, ... every C{interval} seconds, until the caller closes the stream or its deadline passes."""
        tick = 0
        try:
            while True:
                yield tick
                tick += 1
                await asyncio.sleep(interval)
        finally:
            self.streams_closed += 1

    @aio.implement
    async def sizes(self, *sizes: int) -> AsyncIterator[str]:
        """Stream one string of each size in C{sizes}: a part over the payload limit ends the stream there."""
        try:
            for size in sizes:
                yield "x" * size
        finally:
            self.streams_closed += 1

    @aio.implement
    def counts(self) -> dict[str, int]:
        return {"events": self.events, "cancelled": self.cancelled, "streams_closed": self.streams_closed}

    @aio.subscribe("orders.>")
    async def order(self, event: str, payload: object) -> None:
        self.events += 1


async def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--config", help="client.conf whose [service] section gives the socket and key file")
    parser.add_argument("--socket", help="the node's service socket")
    parser.add_argument("--auth-key-file", help="the file holding the service auth key")
    parser.add_argument("--json-log", action="store_true", help="say so as a JSON log event (for LocalCluster)")
    options = parser.parse_args(argv)
    settings = read_client_config(options.config, "service") if options.config else {}
    socket = options.socket or settings.get("socket")
    key_file = options.auth_key_file or settings.get("auth-key-file")
    if not socket or not key_file:
        parser.error("give --config DIR/client.conf, or --socket and --auth-key-file")
    service = Counter()
    await service.start(socket, read_secret_file(key_file))
    if options.json_log:  # one line as Twisted's jsonFileLogObserver writes them
        event = {"nswarm_event": "service_registered", "log_format": "service registered"}
        print("\x1e" + json.dumps(event), flush=True)
    else:
        print(f"service {service.service_name!r} registered", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    await service.stop()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1:]))
