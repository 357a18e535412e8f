"""
The gatherer of one call_all: the caller, as the relay sees it, of the
requests a call_all sends to every implementer.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.protocols import amp
from zope.interface import implementer

from nswarm.access import ALL
from nswarm.amp_commands import ANSWER, ERROR_CODE, ERROR_DESCRIPTION, RESULT, RESULTS, NswarmError
from nswarm.boxes import error_frame, get_payload, put_payload, result_frame
from nswarm.relay.state import IPeer


@implementer(IPeer)
class Gather:
    """
    Collects the answers to one call_all as frames, without decoding them,
    and answers the real caller once all C{count} are in. C{finished} is
    called then and must return this gatherer if it is still wanted (not
    cancelled, its caller not gone).
    """

    role = "call_all"
    name = ""
    alive = True
    calls_in_flight = 0
    rights = ALL
    paused = False
    calls_handled = 0
    call_errors = None
    boxes_received = 0

    def __init__(self, tag: bytes, caller: IPeer, count: int, finished: Callable[[], Any]) -> None:
        self.tag = tag
        self.caller = caller
        self.remaining = count
        self.parts: list[bytes] = []
        self.finished = finished
        self.description = f"call_all of {caller.description}"

    def next_tag(self) -> bytes:
        """Never asked to run anything itself."""
        raise NotImplementedError("a call_all gatherer is only ever a caller")

    def send(self, box: Any) -> None:
        """One implementer's answer (a node's gathered results, or a service's result) or error."""
        if ANSWER in box:
            self.parts.append(get_payload(box, RESULTS) if RESULTS in box else result_frame(get_payload(box, RESULT)))
        else:
            self.parts.append(error_frame(box.get(ERROR_CODE, b""), box.get(ERROR_DESCRIPTION, b"")))
        self._counted()

    def send_request(self, box: Any) -> None:
        """Never asked to run anything itself."""
        raise NotImplementedError("a call_all gatherer is only ever a caller")

    def write(self, data: bytes) -> None:
        """Never sent events."""

    def send_error(self, tag: bytes | None, error: NswarmError) -> None:
        """One implementer failed (lost, out of time): its frame is that error."""
        self.parts.append(error_frame(error.code, str(error).encode("utf-8", "replace")))
        self._counted()

    def send_cancel(self, tag: bytes) -> None:
        """Never asked to run anything itself."""

    def may(self, action: str, name: str) -> bool:
        """Its requests were checked as its caller's."""
        return True

    def refuse(self, action: str, name: str) -> NswarmError:
        """Never refused (see L{may})."""
        raise NotImplementedError

    capped = False

    def cap(self) -> None:
        """Never capped (its calls_in_flight is 0)."""

    def uncap(self) -> None:
        """Never capped."""

    def close_connection(self, abort: bool = False) -> None:
        """Has no connection of its own."""

    def may_buffer(self, size: int) -> bool:
        """Never paused."""
        return True

    def hold(self) -> None:
        """Never ejected: it is a caller, never a callee, so never silent with calls pending on it."""

    def release(self) -> None:
        """Never ejected (see L{hold})."""

    def _counted(self) -> None:
        self.remaining -= 1
        if self.remaining == 0 and self.finished() is self:
            answer = amp.AmpBox({ANSWER: self.tag})
            put_payload(answer, RESULTS, b"".join(self.parts))
            self.caller.send(answer)
