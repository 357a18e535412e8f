"""
What each kind of answer means, sans IO: the C{parse} a request of
L{nswarm.core.connection.Connection} is answered through (a call's result,
a call_all's outcomes, a publish's C{handed_to}, the status document).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from nswarm.codec import decode
from nswarm.core import wire
from nswarm.core.boxes import Box, get_payload, parse_frames
from nswarm.errors import NswarmError

#: Turns an answer box into the value its request gets.
Parse = Callable[[Box], Any]


def nothing(box: Box) -> None:
    """An answer that carries nothing (an authentication, a registration)."""
    return None


def result(box: Box) -> Any:
    """A call's result (JSON)."""
    return decode(get_payload(box, wire.RESULT))


def gathered(box: Box) -> list[Any]:
    """A call_all's outcomes: each implementer's result, or the L{NswarmError} it failed with."""
    return [o if isinstance(o, NswarmError) else decode(o) for o in parse_frames(get_payload(box, wire.RESULTS))]


def document(box: Box) -> Any:
    """The status document (JSON)."""
    return json.loads(get_payload(box, wire.DOCUMENT))


def handed_to(box: Box) -> int | None:
    """How many connections the master handed a published event to (None if the answer does not say)."""
    value = box.get(wire.HANDED_TO)
    return None if value is None else int(value)
