"""
An example nswarm service: it implements a few methods and logs the
events it subscribes to. Run it beside a node:

    python examples/greeter.py --config DIR/client.conf

It logs with its C{twisted.logger.Logger}, C{self.log}, each event with a
field C{greeter} saying what happened ("event", "hanging"), so that a
program reading its JSON log (C{--json-log}) can wait for one.
"""

from twisted.internet.defer import Deferred

from nswarm.service import Service, implement, subscribe


class Greeter(Service):
    @implement
    def greet(self, name: str) -> str:
        return f"hello, {name}!"

    @implement
    def add(self, a: float, b: float) -> float:
        return a + b

    @implement
    def fail(self, message: str) -> None:
        """Raise: the caller gets HandlerFailed("ValueError: <message>")."""
        raise ValueError(message)

    @implement
    def hang(self) -> "Deferred[None]":
        """Never answer (the tests kill the service while a call waits here)."""
        self.log.info("greeter is hanging", greeter="hanging")
        return Deferred()

    @subscribe("orders.created")
    def order_created(self, event: str, order: object) -> None:
        self.log.info("greeter got event {event}: {order}", event=event, order=order, greeter="event")


if __name__ == "__main__":
    Greeter.main()
