"""
twistd nswarm-service: run any L{nswarm.service.Service} subclass under
twistd, with twistd's own pidfile, logfile, daemonizing and user switching::

    twistd --pidfile DIR/greeter.pid --logfile DIR/greeter.log \\
        nswarm-service --config DIR/client.conf greeter:Greeter

It takes the options of C{Service.main} (the same C{[service]} section of
client.conf, C{--socket}, C{--auth-key-file}, C{--drain-timeout}); logging
is twistd's. When twistd stops (SIGTERM, or Ctrl-C under C{-n}) the service
drains (see L{nswarm.service.Service.stop}) before the process exits.
"""

from __future__ import annotations

import importlib
from typing import Any

from twisted.application import service
from twisted.internet.defer import Deferred
from twisted.python import usage

from nswarm.config import ConfigError
from nswarm.service import Service
from nswarm.service_runner import ServiceOptions

#: How the service class is named on the command line, for error messages.
CLASS_FORM = "package.module:ClassName (such as greeter:Greeter)"


class Options(ServiceOptions):
    """Options of twistd nswarm-service: those of C{Service.main} (but logging, which is twistd's), and the class."""

    synopsis = "[options] package.module:ClassName"
    longdesc = (
        "Run the nswarm service class package.module:ClassName (a subclass of nswarm.service.Service, in a "
        "module on the Python path) beside its node, with twistd's pidfile, logfile and daemonizing. "
        "--config names a client.conf whose [service] section gives the socket and key file; --socket and "
        "--auth-key-file override it. On SIGTERM the service stops taking calls, lets those running finish "
        "(at most --drain-timeout seconds), then disconnects and exits."
    )

    def parseArgs(self, *args: str) -> None:
        """Take the one argument, the service class, after the options."""
        if len(args) != 1:
            given = "none" if not args else " ".join(args)
            raise usage.UsageError(
                f"give the service class, and only it, after the options: {CLASS_FORM}; given: {given}"
            )
        self["class"] = args[0]

    def postOptions(self) -> None:
        """Read the socket and key as C{Service.main} does, then import the service class."""
        try:
            super().postOptions()
        except ConfigError as error:
            raise usage.UsageError(str(error))
        self.service_class = service_class(self["class"])


def service_class(target: str) -> type[Service]:
    """
    The L{Service} subclass that C{target} (C{package.module:ClassName})
    names, imported. A malformed name, a module that cannot be imported, a
    missing attribute or one that is not a Service subclass is a
    C{usage.UsageError} saying what to do.
    """
    module_name, colon, class_name = target.partition(":")
    if not colon or not all(part.isidentifier() for part in [*module_name.split("."), class_name]):
        raise usage.UsageError(f"{target!r} does not name a service class: give it as {CLASS_FORM}")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        missing = error.name or ""
        if module_name == missing or module_name.startswith(missing + "."):
            raise usage.UsageError(
                f"there is no module {module_name!r} on the Python path: install the package that holds it, "
                "or put its directory in PYTHONPATH (twistd does not look in the current directory)"
            )
        raise usage.UsageError(
            f"importing {module_name} failed: it needs the module {missing!r}, which is not installed: install it"
        )
    except Exception as error:
        raise usage.UsageError(
            f"importing {module_name} raised {type(error).__name__}: {error}; fix the module "
            f"(python -c 'import {module_name}' shows the traceback)"
        )
    found = getattr(module, class_name, None)
    if found is None:
        defined = sorted(
            name
            for name, value in vars(module).items()
            if isinstance(value, type) and issubclass(value, Service) and value is not Service
        )
        has = f"its Service subclasses are {', '.join(defined)}" if defined else "it has no Service subclass"
        raise usage.UsageError(f"module {module_name} has no {class_name!r} ({has}): check the class name")
    if not (isinstance(found, type) and issubclass(found, Service)):
        raise usage.UsageError(
            f"{target} is a {type(found).__name__}, not a subclass of nswarm.service.Service: "
            "name the class of your service"
        )
    if found is Service:
        raise usage.UsageError(
            f"{target} is the base class nswarm.service.Service, which implements nothing: name your subclass of it"
        )
    return found


class ServiceDaemon(service.Service):
    """
    A service app as a twistd service: L{Service.start} on start;
    L{Service.stop} on stop, which twistd waits for, so the app drains
    before the process exits.
    """

    def __init__(self, app: Service, reactor: Any, socket: str, key: bytes, drain_timeout: float) -> None:
        self.app = app
        self.reactor = reactor
        self.socket = socket
        self.key = key
        self.drain_timeout = drain_timeout
        self.setName(app.service_name)

    def startService(self) -> None:
        super().startService()
        self.app.start(self.reactor, self.socket, self.key)

    def stopService(self) -> Deferred[None]:
        super().stopService()
        return self.app.stop(self.drain_timeout)


def makeService(options: Options, reactor: Any = None) -> ServiceDaemon:
    """An instance of the options' service class, connected to its node while the service runs."""
    if reactor is None:
        from twisted.internet import reactor
    return ServiceDaemon(options.service_class(), reactor, options.socket, options.key, options["drain-timeout"])
