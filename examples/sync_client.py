"""
A blocking nswarm client, for scripts and web views: no reactor, no event
loop to know about. With the cluster of the quickstart running::

    python examples/sync_client.py DIR/client.conf

It calls the greeter from several threads at once, shows a typed error,
and publishes an event it also subscribes to.
"""

from __future__ import annotations

import sys
from concurrent.futures import ThreadPoolExecutor

from nswarm import sync
from nswarm.errors import DeadlineExceeded, NoSuchMethod


def main(config: str) -> None:
    with sync.connect_from_config(config) as client:
        print(client.call("greet", "world"))
        with ThreadPoolExecutor(8) as pool:  # the client is thread-safe
            print(list(pool.map(lambda n: client.call("add", n, n), range(8))))
        try:
            client.call("no.such.method")
        except NoSuchMethod as error:
            print("no such method:", error)
        try:
            client.call_with_timeout(0.5, "hang")
        except DeadlineExceeded as error:
            print("deadline:", error)
        with client.subscribe("orders.*") as events:
            print("handed to", client.publish("orders.created", {"id": 7}), "connections")
            print("got", events.next(timeout=5))


if __name__ == "__main__":
    main(sys.argv[1])
