"""
Running an asyncio service as a program (L{nswarm.aio.Service.main}):
C{python my_service.py --config DIR/client.conf}, or C{--socket} and
C{--auth-key-file}; it registers, says so, and serves until SIGTERM or
Ctrl-C, then drains (L{nswarm.aio.Service.stop}) and exits, all inside
one C{asyncio.run}.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
from typing import TYPE_CHECKING

from nswarm.config import read_client_config, read_secret_file

if TYPE_CHECKING:
    from nswarm.aio.service import Service


def options_of(argv: list[str], description: str) -> tuple[str, str, bool]:
    """The socket, the key file and whether to log JSON, from C{argv} (exits with a usage error if they lack)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--config", help="client.conf whose [service] section gives the socket and key file")
    parser.add_argument("--socket", help="the node's service socket")
    parser.add_argument("--auth-key-file", help="the file holding the service auth key")
    parser.add_argument("--json-log", action="store_true", help="say it registered as a JSON log event line")
    options = parser.parse_args(argv)
    settings = read_client_config(options.config, "service") if options.config else {}
    socket = options.socket or settings.get("socket")
    key_file = options.auth_key_file or settings.get("auth-key-file")
    if not socket or not key_file:
        parser.error("give --config DIR/client.conf, or --socket and --auth-key-file")
    return socket, key_file, options.json_log


async def serve(service: Service, argv: list[str]) -> None:
    """Start C{service} as C{argv} says, serve until SIGTERM or SIGINT, then stop it (draining)."""
    socket, key_file, json_log = options_of(argv, f"the nswarm service {service.service_name!r}")
    await service.start(socket, read_secret_file(key_file))
    if json_log:  # one line as Twisted's jsonFileLogObserver writes them
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
