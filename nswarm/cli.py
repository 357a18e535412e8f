"""
The C{nswarm} command line.

C{nswarm init DIR} writes a ready cluster configuration (see
L{nswarm.cluster_files.init_cluster}): a private CA, certificates, authentication keys
and the C{master.conf}, C{node.conf} and C{client.conf} files that
C{twistd nswarm-master}, C{twistd nswarm-node} and the SDKs read.
"""

from __future__ import annotations

import shlex
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TextIO

from twisted.python import usage

from nswarm import defaults
from nswarm.cli_cluster import COMMANDS, SUBCOMMANDS, run
from nswarm.cli_options import PROGRAM, _Options
from nswarm.cluster_files import InitError, init_cluster, issue_api, issue_node, issue_service
from nswarm.config import port

__all__ = ["InitOptions", "Options", "main"]


def _port(what: str) -> Callable[[str], int]:
    """A coerce callable for a TCP port option, with a sentence on error."""

    def coerce(value: str) -> int:
        try:
            int(value)
        except ValueError:
            raise usage.UsageError(f"The {what} must be a whole number, not {value!r}.") from None
        try:
            number = port(value)
        except ValueError:
            number = 0
        if number == 0:
            raise usage.UsageError(f"The {what} must be between 1 and 65535, not {int(value)}.")
        return number

    coerce.coerceDoc = "A TCP port, 1 to 65535."  # type: ignore[attr-defined]
    return coerce


def _host(value: str) -> str:
    """Check a host name or address: one non-empty ASCII word."""
    host = value.strip()
    if not host or not host.isascii() or any(c.isspace() for c in host):
        raise usage.UsageError(f"A host must be a DNS name or an IP address, not {value!r}.")
    return host


def _node_name(value: str) -> str:
    """Check a node name: it goes in a certificate and a conf file."""
    name = value.strip()
    if not name or len(name) > 64 or not name.isascii() or any(c.isspace() for c in name):
        raise usage.UsageError(f"The node name must be 1 to 64 ASCII characters without spaces, not {value!r}.")
    return name


class InitOptions(_Options):
    """Options of C{nswarm init DIR}."""

    longdesc = (
        "Create DIR (if missing) and write into it a private certificate"
        " authority, TLS certificates and keys for the master, one node and the"
        " API user, three random authentication keys, and master.conf,"
        " node.conf and client.conf. Refuses to touch a directory that already"
        " holds any of these files unless --force is given."
    )

    optFlags = [
        ["force", "f", "Overwrite the files of an existing configuration."],
    ]

    optParameters = [
        [
            "master-host",
            None,
            "localhost",
            "The name or address nodes and API clients use to reach the master (also put in the master certificate).",
            _host,
        ],
        ["node-port", None, defaults.NODE_PORT, "The master's port for nodes.", _port("node port")],
        ["api-port", None, defaults.API_PORT, "The master's port for API clients.", _port("api port")],
        ["node-name", None, "node-1", "The name of the first node.", _node_name],
    ]

    def __init__(self) -> None:
        super().__init__()
        self["hosts"] = []

    def getSynopsis(self) -> str:
        return f"Usage: {PROGRAM} init [options] DIR"

    def opt_host(self, host: str) -> None:
        """An extra DNS name or IP address for the master certificate (repeatable)."""
        self["hosts"].append(_host(host))

    def parseArgs(self, *args: str) -> None:
        if len(args) != 1 or not args[0]:
            raise usage.UsageError(f"Give exactly one directory: {PROGRAM} init [options] DIR.")
        self["directory"] = args[0]

    def postOptions(self) -> None:
        if self["node-port"] == self["api-port"]:
            raise usage.UsageError(f"The node port and the api port must differ (both are {self['node-port']}).")


class IssueOptions(_Options):
    """Options of C{nswarm issue node NAME}."""

    longdesc = (
        "Add an identity to the cluster in DIR (its CA, ca.pem and ca.key, as 'nswarm init' writes"
        " them). 'node NAME': a certificate naming the node, DIR/node-NAME.pem and .key (the master"
        " takes the node's name from it). 'api NAME': an API user's certificate and key,"
        " DIR/api-NAME.pem and .key, and its auth key DIR/api-NAME-auth.key. 'service NAME': a"
        " service's auth key, DIR/service-NAME.key. Each prints what to add to which config."
    )
    optFlags = [["force", "f", "Replace the node's existing certificate and key."]]
    optParameters = [["dir", "d", ".", "The cluster directory holding ca.pem and ca.key.", str]]

    def getSynopsis(self) -> str:
        return f"Usage: {PROGRAM} issue [options] node|api|service NAME"

    def parseArgs(self, *args: str) -> None:
        if len(args) != 2 or args[0] not in ("node", "api", "service"):
            raise usage.UsageError(f"Give what to issue and its name: {PROGRAM} issue node|api|service NAME.")
        self["kind"] = args[0]
        self["name"] = _node_name(args[1])


class Options(_Options):
    """Options of the C{nswarm} command: a subcommand and its options."""

    synopsis = f"Usage: {PROGRAM} [options] COMMAND [command options]"
    longdesc = f"Run '{PROGRAM} COMMAND --help' for the options of a command."

    # The command's options come after its name: no reordering at the top.
    parseOptions = usage.Options.parseOptions

    subCommands = [
        ["init", None, InitOptions, "Create a ready cluster configuration in DIR."],
        ["issue", None, IssueOptions, "Issue a certificate for another node: issue node NAME."],
        *SUBCOMMANDS,
    ]

    def postOptions(self) -> None:
        if self.subCommand is None:
            raise usage.UsageError("Please give a command.")


def _quote(path: Path) -> str:
    """Quote a path for a shell command line the user may copy."""
    return shlex.quote(str(path))


def _run_init(options: InitOptions, out: TextIO) -> None:
    """Write the configuration and tell the user how to start the cluster."""
    paths = init_cluster(
        options["directory"],
        hosts=options["hosts"],
        master_host=options["master-host"],
        node_port=options["node-port"],
        api_port=options["api-port"],
        node_name=options["node-name"],
        force=bool(options["force"]),
    )
    directory = paths[0].parent
    print(f"Wrote a cluster configuration in {directory}:", file=out)
    print(
        f"  master.conf  the master (node port {options['node-port']}, api port {options['api-port']})",
        file=out,
    )
    print(
        f"  node.conf    node {options['node-name']!r}, upstream {options['master-host']}:{options['node-port']}",
        file=out,
    )
    print("  client.conf  for the API and service SDKs", file=out)
    print(
        "  plus the CA, certificates, keys and auth keys (private files are mode 0600; keep ca.key secret).",
        file=out,
    )
    print("Start the cluster (each in its own terminal):", file=out)
    print(
        f"  twistd -n --pidfile {_quote(directory / 'master.pid')} nswarm-master"
        f" --config {_quote(directory / 'master.conf')}",
        file=out,
    )
    print(
        f"  twistd -n --pidfile {_quote(directory / 'node.pid')} nswarm-node"
        f" --config {_quote(directory / 'node.conf')}",
        file=out,
    )


def _run_issue(options: IssueOptions, out: TextIO) -> None:
    """Issue the identity and say what to put in which config."""
    name, force = options["name"], bool(options["force"])
    if options["kind"] == "api":
        cert, key, auth, section = issue_api(options["dir"], name, force=force)
        print(f"Wrote {cert}, {key} and {auth} (keys mode 0600) for API user {name!r}.", file=out)
        print("Add this section to the master's access file (access.conf), narrowing its rights, then", file=out)
        print("reload the master (kill -HUP):", file=out)
        print(section.rstrip(), file=out)
        print("Give the user the three files, and in the [api] section of its client.conf set:", file=out)
        print(f"  cert = {cert}\n  cert-key = {key}\n  auth-key-file = {auth}", file=out)
        return
    if options["kind"] == "service":
        auth, section = issue_service(options["dir"], name, force=force)
        print(f"Wrote {auth} (mode 0600) for service {name!r} (its Service.name, or class name).", file=out)
        print("Add this section to its node's access file (node-access.conf), narrowing its rights,", file=out)
        print("then reload the node (kill -HUP):", file=out)
        print(section.rstrip(), file=out)
        print(f"and in the [service] section of the service's client.conf set:\n  auth-key-file = {auth}", file=out)
        return
    cert, key = issue_node(options["dir"], name, force=force)
    print(f"Wrote {cert} and {key} (mode 0600) for node {options['name']!r}.", file=out)
    print("Copy both to the node's host (keep the key private), and in its node.conf set:", file=out)
    print(f"  name = {options['name']}", file=out)
    print(f"  node-cert = {cert}", file=out)
    print(f"  node-cert-key = {key}", file=out)


def main(argv: list[str] | None = None) -> int:
    """
    Run the C{nswarm} command with C{argv} (default: C{sys.argv[1:]}) and
    return the exit status: 0 on success, 1 when the command fails, 2 for a
    usage error.
    """
    options = Options()
    try:
        options.parseOptions(sys.argv[1:] if argv is None else argv)
    except usage.UsageError as e:
        print(f"{PROGRAM}: {e}", file=sys.stderr)
        print(getattr(options, "subOptions", options), file=sys.stderr)
        return 2
    except SystemExit as e:  # --help and --version exit from inside parseOptions
        return e.code if isinstance(e.code, int) else 0

    if options.subCommand == "init":
        try:
            _run_init(options.subOptions, sys.stdout)
        except InitError as e:
            print(f"{PROGRAM} init: {e}", file=sys.stderr)
            return 1
        except OSError as e:
            print(f"{PROGRAM} init: cannot write the configuration: {e}", file=sys.stderr)
            return 1
        return 0
    if options.subCommand == "issue":
        try:
            _run_issue(options.subOptions, sys.stdout)
        except (InitError, ValueError) as e:
            print(f"{PROGRAM} issue: {e}", file=sys.stderr)
            return 1
        except OSError as e:
            print(f"{PROGRAM} issue: cannot write the certificate: {e}", file=sys.stderr)
            return 1
        return 0
    if options.subCommand in COMMANDS:
        return run(options.subCommand, options.subOptions)
    raise AssertionError(f"unhandled command {options.subCommand!r}")


if __name__ == "__main__":
    raise SystemExit(main())
