"""
nswarm for asyncio programs: an API client and a service base class that
run on any asyncio loop (uvloop too), with no Twisted reactor. They speak
through the same sans-IO core (L{nswarm.core}) as the Twisted SDKs, with
the same client.conf, TLS rules, errors and reconnection::

    from nswarm import aio

    async def main():
        async with await aio.connect_from_config("DIR/client.conf") as client:
            print(await client.call("greet", "world"))

    asyncio.run(main())
"""

from nswarm.aio.client import Client, connect, connect_from_config
from nswarm.aio.service import Service
from nswarm.aio.stream import Stream
from nswarm.aio.subscription import Subscription
from nswarm.caller import Caller, current_caller
from nswarm.core.events import EventReceived as Event  # noqa: F401 (what a subscription yields)
from nswarm.core.handlers import implement, subscribe

__all__ = [
    "Caller",
    "Client",
    "Service",
    "Stream",
    "Subscription",
    "connect",
    "connect_from_config",
    "current_caller",
    "implement",
    "subscribe",
]
