"""
The C{nswarm} commands that drive a running cluster as an API user:
C{status}, C{call}, C{publish} and C{watch}. Each reads the C{[api]}
section of a client.conf: C{--config FILE}, else C{$NSWARM_CONFIG}, else
L{default_config} (C{~/.config/nswarm/client.conf}).

Each command is an C{async} function of a connected L{nswarm.api.APIClient}
(so that tests run it against a cluster in memory); L{run} connects and
runs one on the reactor. A typed error prints its sentence and exits with
the code L{EXIT_CODES} gives its type (docs/operations.md).
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.task import deferLater
from twisted.python import usage

from nswarm import amp_commands as errors
from nswarm.api import APIClient, connect_from_config
from nswarm.cli_options import _Options
from nswarm.config import ConfigError
from nswarm.status_table import render

#: The exit status of a command that failed with each error type (0: success, 1: any other failure, 2: usage).
EXIT_CODES: dict[type[errors.NswarmError], int] = {
    errors.UpstreamUnavailable: 3,
    errors.AuthenticationFailed: 4,
    errors.PermissionDenied: 5,
    errors.NoSuchMethod: 6,
    errors.HandlerFailed: 7,
    errors.DeadlineExceeded: 8,
    errors.Overloaded: 9,
    errors.InvalidRequest: 10,
    errors.PayloadTooLarge: 11,
    errors.ImplementerLost: 12,
    errors.LimitExceeded: 13,
    errors.Cancelled: 14,
    errors.InternalError: 15,
    errors.NotAuthenticated: 16,
}
#: The exit status of a configuration that cannot be read.
CONFIG_ERROR = 17


def default_config() -> Path:
    """Where the commands look for client.conf without C{--config} or C{$NSWARM_CONFIG}."""
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return Path(base) / "nswarm" / "client.conf"


def config_path(given: str | None) -> str:
    """The client.conf to use: C{given}, else C{$NSWARM_CONFIG}, else L{default_config}."""
    return given or os.environ.get("NSWARM_CONFIG") or str(default_config())


def value(text: str) -> Any:
    """A command-line value: JSON if it parses (C{7}, C{true}, C{'{"a": 1}'}), else the text itself."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def _parameters(*parameters: list[Any]) -> Any:
    """Option parameters with typed defaults and coercers (Twisted's stubs allow only strings)."""
    return list(parameters)


class _ClusterOptions(_Options):
    optParameters = [
        ["config", "c", None, f"The client.conf to read (default: $NSWARM_CONFIG, then {default_config()})."]
    ]


class StatusOptions(_ClusterOptions):
    """C{nswarm status [--json] [--watch]}: the cluster's nodes, services and methods."""

    synopsis = "Usage: nswarm status [--json] [--watch] [--every S]"
    optFlags = [["json", None, "Print the status document as JSON."], ["watch", "w", "Refresh until interrupted."]]
    optParameters = _parameters(["every", None, 2.0, "Seconds between refreshes with --watch.", float])


class CallOptions(_ClusterOptions):
    """C{nswarm call METHOD [ARG ...] [--kw NAME=VALUE ...] [--timeout S] [--all]}."""

    synopsis = "Usage: nswarm call METHOD [ARG ...] [--kw NAME=VALUE ...] [--timeout S] [--all]"
    longdesc = "Each ARG and VALUE is JSON if it parses as JSON, else a string. Prints the result as JSON."
    optFlags = [["all", "a", "Call every implementer (call_all): prints the list of their results."]]
    optParameters = _parameters(["timeout", "t", None, "Seconds the call may take.", float])

    def __init__(self) -> None:
        super().__init__()
        self["kw"] = {}

    def opt_kw(self, pair: str) -> None:
        """NAME=VALUE: a keyword argument (repeat it for more)."""
        name, equals, text = pair.partition("=")
        if not equals or not name.isidentifier():
            raise usage.UsageError(f"--kw takes NAME=VALUE, such as --kw punctuation='?', not {pair!r}")
        self["kw"][name] = value(text)

    def parseArgs(self, *arguments: str) -> None:
        if not arguments:
            raise usage.UsageError("Give the method to call: nswarm call METHOD [ARG ...].")
        self["method"] = arguments[0]
        self["args"] = [value(argument) for argument in arguments[1:]]


class PublishOptions(_ClusterOptions):
    """C{nswarm publish EVENT [PAYLOAD]}."""

    synopsis = "Usage: nswarm publish EVENT [PAYLOAD]"
    longdesc = "PAYLOAD is JSON if it parses as JSON, else a string; without it the payload is null."

    def parseArgs(self, *arguments: str) -> None:
        if not 1 <= len(arguments) <= 2:
            raise usage.UsageError("Give the event and at most one payload: nswarm publish EVENT [PAYLOAD].")
        self["event"] = arguments[0]
        self["payload"] = value(arguments[1]) if len(arguments) == 2 else None


class WatchOptions(_ClusterOptions):
    """C{nswarm watch PATTERN [--count N]}: print events as they arrive."""

    synopsis = "Usage: nswarm watch PATTERN [--count N]"
    longdesc = 'Prints one JSON line per event: {"event": NAME, "payload": ...}. PATTERN: orders.*, orders.>'
    optParameters = _parameters(["count", "n", 0, "Stop after this many events (0: until interrupted).", int])

    def parseArgs(self, *arguments: str) -> None:
        if len(arguments) != 1:
            raise usage.UsageError("Give one pattern: nswarm watch PATTERN, such as 'orders.*'.")
        self["pattern"] = arguments[0]


SUBCOMMANDS = [
    ["status", None, StatusOptions, "Show the cluster's nodes, services and methods."],
    ["call", None, CallOptions, "Call a method and print its result as JSON."],
    ["publish", None, PublishOptions, "Publish an event."],
    ["watch", None, WatchOptions, "Print the events matching a pattern as they arrive."],
]


def _print_json(data: Any, out: TextIO) -> None:
    print(json.dumps(data, ensure_ascii=False), file=out, flush=True)


async def status(client: APIClient, options: StatusOptions, out: TextIO, reactor: Any = None) -> int:
    """Print the status (once, or every C{--every} seconds with C{--watch})."""
    while True:
        document = await client.status()
        if options["json"]:
            _print_json(document, out)
        else:
            if options["watch"]:
                out.write("\x1b[H\x1b[2J")  # clear the terminal
            out.write(render(document))
            out.flush()
        if not options["watch"]:
            return 0
        await deferLater(reactor, options["every"], lambda: None)


def _outcome(outcome: Any) -> Any:
    if isinstance(outcome, errors.NswarmError):
        return {"error": outcome.code.decode(), "message": str(outcome)}
    return outcome


async def call(client: APIClient, options: CallOptions, out: TextIO, reactor: Any = None) -> int:
    """Call the method; print its result (or, with C{--all}, every implementer's) as JSON."""
    method, args, kwargs = options["method"], options["args"], options["kw"]
    if options["all"]:
        results = await client.call_all(method, *args, **kwargs)
        _print_json([_outcome(result) for result in results], out)
    elif options["timeout"] is not None:
        _print_json(await client.call_with_timeout(options["timeout"], method, *args, **kwargs), out)
    else:
        _print_json(await client.call(method, *args, **kwargs), out)
    return 0


async def publish(client: APIClient, options: PublishOptions, out: TextIO, reactor: Any = None) -> int:
    """Publish the event; print nothing (the exit status says it was handed on)."""
    await client.publish(options["event"], options["payload"])
    return 0


async def watch(client: APIClient, options: WatchOptions, out: TextIO, reactor: Any = None) -> int:
    """Print each event matching the pattern as a JSON line, until C{--count} of them (or interrupted)."""
    done: Deferred[None] = Deferred()
    seen = [0]

    def show(event: str, payload: Any) -> None:
        _print_json({"event": event, "payload": payload}, out)
        seen[0] += 1
        if options["count"] and seen[0] >= options["count"] and not done.called:
            done.callback(None)

    await client.subscribe(options["pattern"], show)
    print(f"watching {options['pattern']}: one JSON line per event; Ctrl-C to stop", file=sys.stderr, flush=True)

    def lost(_: object) -> None:
        if not done.called:
            done.errback(client.connection_gone())

    client.lost().addCallback(lost)
    await done
    return 0


COMMANDS: dict[str, Callable[..., Any]] = {"status": status, "call": call, "publish": publish, "watch": watch}


def exit_code(error: BaseException) -> int:
    """The exit status of a command that failed with C{error}."""
    for kind in type(error).__mro__:
        if kind in EXIT_CODES:
            return EXIT_CODES[kind]
    return CONFIG_ERROR if isinstance(error, ConfigError) else 1


def run(command: str, options: usage.Options, out: TextIO = sys.stdout, err: TextIO = sys.stderr) -> int:
    """
    Connect with the client.conf the options give, run C{command} on the
    reactor, and return its exit status. Interrupted (Ctrl-C), C{watch}
    and C{status --watch} exit 0, the others 130.
    """
    from twisted.internet import reactor

    outcome: list[int] = []

    async def main() -> None:
        client = None
        try:
            # A command reports a lost connection rather than wait for another (watch ends with it).
            client = await connect_from_config(reactor, config_path(options["config"]), reconnect=False)
            outcome.append(await COMMANDS[command](client, options, out, reactor))
        except (errors.NswarmError, ConfigError) as error:
            print(f"nswarm {command}: {error}", file=err)
            outcome.append(exit_code(error))
        finally:
            if client is not None and client.transport is not None:
                await client.close()
            if reactor.running:
                reactor.stop()

    def interrupted() -> None:
        if not outcome:
            outcome.append(0 if command == "watch" or options.get("watch") else 130)

    reactor.callWhenRunning(lambda: ensureDeferred(main()))
    reactor.addSystemEventTrigger("before", "shutdown", interrupted)
    reactor.run()
    return outcome[0]
