"""
The SDKs' sans-IO protocol core: bytes and time in, bytes and events out.

Nothing here opens a socket, reads a clock or imports C{twisted.internet},
C{twisted.protocols} or C{asyncio}: a front end (Twisted, asyncio, a thread)
feeds a L{nswarm.core.connection.Connection} the bytes it read and the time
it is, sends what L{nswarm.core.connection.Connection.data_to_send} returns,
and acts on its events (L{nswarm.core.events}). The pieces:

  - L{nswarm.core.wire}: the command names and box keys of the wire;
  - L{nswarm.core.boxes}: serialising boxes, payloads split across keys, error boxes, call_all frames;
  - L{nswarm.core.parser}: the incremental box parser, with the size limits;
  - L{nswarm.core.connection}: requests and their tags, answers and typed errors, deadlines,
    heartbeats, calls to run and events to deliver;
  - L{nswarm.core.names}, L{nswarm.core.handlers}: valid names, pattern matching, the service decorators;
  - L{nswarm.core.backoff}: the reconnecting policy every front end follows.
"""
