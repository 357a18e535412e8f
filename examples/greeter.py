"""
An example nswarm service: it implements a few methods and prints the
events it subscribes to. Run it beside a node:

    python examples/greeter.py --config DIR/client.conf
"""

import json

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
        print("greeter is hanging", flush=True)
        return Deferred()

    @subscribe("orders.created")
    def order_created(self, event: str, order: object) -> None:
        print(f"greeter got event {event}: {json.dumps(order, sort_keys=True)}", flush=True)


if __name__ == "__main__":
    Greeter.main()
