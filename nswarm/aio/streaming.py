"""
Running a streaming handler in an asyncio service (L{nswarm.aio.Service}):
a handler that returns a generator or an async generator. For a streamed
call, each value it yields goes as a part while the caller's credit allows
(L{nswarm.core.running.RunsCalls.credit}); with none left, the generator is
not advanced until the caller takes more (the back-pressure). A cancelled
call (its caller closed the stream, or its deadline passed) cancels the
task, which closes the generator: its C{finally} blocks run. A plain call
to such a handler gets the list of all its parts.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import AsyncGenerator, Generator
from functools import partial
from typing import Any

from nswarm.aio.protocol import CoreProtocol
from nswarm.core.connection import Connection

#: What L{streamed} returns: the call has had its end (or its error); there is nothing left to answer.
ENDED = object()

Parts = Generator[Any, Any, Any] | AsyncGenerator[Any, Any]


def is_stream(result: Any) -> bool:
    """Whether a handler's C{result} is a stream of parts: a generator or an async generator."""
    return inspect.isgenerator(result) or inspect.isasyncgen(result)


async def _next(parts: Parts) -> tuple[bool, Any]:
    """(True, the next part), or (False, None) once C{parts} has ended."""
    if isinstance(parts, Generator):
        try:
            return True, next(parts)
        except StopIteration:
            return False, None
    try:
        return True, await parts.__anext__()
    except StopAsyncIteration:
        return False, None


async def _close(parts: Parts) -> None:
    if isinstance(parts, Generator):
        parts.close()
    else:
        await parts.aclose()


def _part(core: Connection, *, tag: bytes, value: Any) -> bool:
    return core.part(tag, value)


async def streamed(protocol: CoreProtocol, tag: bytes, parts: Parts, credit: asyncio.Event) -> object:
    """
    Send the parts of streamed call C{tag} on C{protocol} as its caller
    grants them (C{credit} is set on each grant), then its end; return
    L{ENDED}. Stops early, closing C{parts}, once the call is over here
    (cancelled, failed by a part too large, or lost with the connection).
    """
    core = protocol.core
    try:
        while True:
            while core.credit(tag) <= 0:
                if not core.streaming(tag) or protocol.transport is None:
                    return ENDED
                credit.clear()
                await credit.wait()
            more, value = await _next(parts)
            if not more:
                protocol.send(lambda c: c.end(tag))
                return ENDED
            if not protocol.send(partial(_part, tag=tag, value=value)):
                return ENDED
            if isinstance(parts, Generator):
                await asyncio.sleep(0)  # a plain generator yields to the loop between parts: a Cancel can come in
    finally:
        await _close(parts)


async def gathered(parts: Parts) -> list[Any]:
    """All the parts of C{parts}, as the result of a plain (not streamed) call."""
    values: list[Any] = []
    try:
        while True:
            more, value = await _next(parts)
            if not more:
                return values
            values.append(value)
            if isinstance(parts, Generator):
                await asyncio.sleep(0)
    finally:
        await _close(parts)
