"""
The floors nswarm is measured against: what stock Twisted AMP does on this
machine with no relays in the way.

- echo: one AMP hop over TLS on 127.0.0.1. The server runs in a child
  process (C{python bench/floors.py echo-server ...}); the client is the
  harness itself, with the same closed-loop driver the cluster workloads use.
- fan-out: one process (the harness) sends each event straight to 10
  receiver connections with C{requiresAnswer=False}. Each receiver is a child
  process (C{python bench/floors.py receiver ...}) listening on a UNIX socket,
  like a service beside its node, and counts what it gets.

This file is both the module the harness imports (commands, client helpers)
and the script the children run.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.endpoints import (
    SSL4ClientEndpoint,
    UNIXClientEndpoint,
    connectProtocol,
)
from twisted.internet.protocol import Factory
from twisted.protocols import amp

__all__ = ["Count", "Echo", "Event", "connect_echo", "connect_receiver"]


class Echo(amp.Command):
    """Harness -> echo server: answer with the payload received."""

    arguments = [(b"payload", amp.String())]
    response = [(b"payload", amp.String())]


class Event(amp.Command):
    """Harness -> receiver: one event of the fan-out; never answered."""

    arguments = [(b"payload", amp.String())]
    response = []
    requiresAnswer = False


class Count(amp.Command):
    """Harness -> receiver: how many events it got, and when the last one came (time.monotonic())."""

    arguments = []
    response = [(b"count", amp.Integer()), (b"last", amp.Float())]


class EchoServer(amp.AMP):
    @Echo.responder
    def echo(self, payload: bytes) -> dict[str, bytes]:
        return {"payload": payload}


class ReceiverState:
    """What every connection to one receiver process has counted."""

    def __init__(self) -> None:
        self.count = 0
        self.last = 0.0


class Receiver(amp.AMP):
    def __init__(self, state: ReceiverState) -> None:
        super().__init__()
        self.counter = state  # not "state": AMP uses that name

    @Event.responder
    def event(self, payload: bytes) -> dict[str, Any]:
        self.counter.count += 1
        self.counter.last = time.monotonic()
        return {}

    @Count.responder
    def count(self) -> dict[str, Any]:
        return {"count": self.counter.count, "last": self.counter.last}


class ReceiverFactory(Factory):
    """One count for all the connections to a receiver process."""

    def __init__(self) -> None:
        self.counter = ReceiverState()

    def buildProtocol(self, addr: Any) -> Receiver:
        return Receiver(self.counter)


# -- the harness's side --------------------------------------------------------


def connect_echo(reactor: Any, port: int, ca: str) -> Deferred[amp.AMP]:
    """An AMP client connected over TLS to the echo server on 127.0.0.1:C{port} (certificate for localhost)."""
    from nswarm.tls import client_options

    endpoint = SSL4ClientEndpoint(reactor, "127.0.0.1", port, client_options("localhost", ca))
    return connectProtocol(endpoint, amp.AMP())


def connect_receiver(reactor: Any, socket: str) -> Deferred[amp.AMP]:
    """An AMP client connected to the receiver listening on UNIX socket C{socket}."""
    return connectProtocol(UNIXClientEndpoint(reactor, socket), amp.AMP())


# -- the children --------------------------------------------------------------


def _write_ready(path: str, text: str) -> None:
    """Write C{text} to C{path} atomically: the harness waits for the file to appear."""
    temporary = f"{path}.tmp"
    Path(temporary).write_text(text)
    os.replace(temporary, path)


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    echo = commands.add_parser("echo-server", help="AMP echo server over TLS on 127.0.0.1")
    echo.add_argument("--cert", required=True)
    echo.add_argument("--key", required=True)
    echo.add_argument("--ready-file", required=True, help="written with the port once listening")
    receiver = commands.add_parser("receiver", help="AMP event receiver on a UNIX socket")
    receiver.add_argument("--socket", required=True)
    receiver.add_argument("--ready-file", required=True)
    options = parser.parse_args(argv)

    from twisted.internet import reactor

    if options.command == "echo-server":
        from nswarm.tls import server_options

        port = reactor.listenSSL(  # type: ignore[attr-defined]
            0, Factory.forProtocol(EchoServer), server_options(options.cert, options.key), interface="127.0.0.1"
        )
        _write_ready(options.ready_file, str(port.getHost().port))
    else:
        reactor.listenUNIX(options.socket, ReceiverFactory(), mode=0o600)  # type: ignore[attr-defined]
        _write_ready(options.ready_file, options.socket)
    reactor.run()


if __name__ == "__main__":
    main(sys.argv[1:])
