"""Reading a daemon's access file again on SIGHUP, without a restart."""

from __future__ import annotations

import signal
from typing import Any

from twisted.application.service import Service
from twisted.logger import Logger

from nswarm.access import Access
from nswarm.config import ConfigError
from nswarm.relay.protocol import RelayFactory


class AccessReloader(Service):
    """
    Reads the access file at C{source} again on SIGHUP and hands it to the
    listeners' C{factories}: new rights hold at once, and connections of
    identities no longer listed are closed. A file with a mistake is logged
    and the old rights stay.
    """

    log = Logger()

    def __init__(self, source: str, factories: list[RelayFactory], reactor: Any) -> None:
        self.source = source
        self.factories = factories
        self.reactor = reactor
        self._previous: Any = None

    def startService(self) -> None:
        super().startService()
        self._previous = signal.signal(signal.SIGHUP, self._signalled)

    def stopService(self) -> Any:
        super().stopService()
        if self._previous is not None:
            signal.signal(signal.SIGHUP, self._previous)
            self._previous = None

    def _signalled(self, number: int, frame: Any) -> None:
        self.reactor.callFromThread(self.reload)

    def reload(self) -> None:
        """Read the access file again and apply it (see the class)."""
        try:
            access = Access.load(self.source)
        except ConfigError as error:
            self.log.error("not reloading the access file, the old one still holds: {error}", error=str(error))
            return
        for factory in self.factories:
            factory.reload(access)
        self.log.info("reloaded the access file {source}", source=self.source, nswarm_event="access_reloaded")
