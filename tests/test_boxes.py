"""Tier 1: the fast box parser reads exactly what Twisted's parser reads, however the bytes are split."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.testing import StringTransport
from twisted.protocols import amp

from nswarm.boxes import serialize
from nswarm.framing import FastBoxes

keys = st.binary(min_size=1, max_size=255)
values = st.binary(max_size=70_000).map(lambda v: v[:65535])
boxes = st.lists(st.dictionaries(keys, values, min_size=1, max_size=5), min_size=1, max_size=6)


class Recorder(amp.BinaryBoxProtocol):
    def __init__(self) -> None:
        self.boxes: list[dict[bytes, bytes]] = []
        super().__init__(self)

    def startReceivingBoxes(self, sender: Any) -> None:
        pass

    def ampBoxReceived(self, box: amp.AmpBox) -> None:
        self.boxes.append(dict(box))

    def stopReceivingBoxes(self, reason: Any) -> None:
        pass


class FastRecorder(FastBoxes, Recorder):
    pass


def feed(protocol: Recorder, data: bytes, cuts: list[int]) -> list[dict[bytes, bytes]]:
    protocol.makeConnection(StringTransport())
    previous = 0
    for cut in sorted(cut % (len(data) + 1) for cut in cuts) + [len(data)]:
        protocol.dataReceived(data[previous:cut])
        previous = cut
    return protocol.boxes


@settings(max_examples=150)
@given(boxes, st.lists(st.integers(min_value=0), max_size=20))
def test_fast_parser_agrees_with_twisted(sent: list[dict[bytes, bytes]], cuts: list[int]) -> None:
    data = b"".join(amp.AmpBox(box).serialize() for box in sent)
    assert feed(FastRecorder(), data, cuts) == feed(Recorder(), data, []) == sent


def test_overlong_key_closes_the_connection_like_twisted() -> None:
    protocol = FastRecorder()
    transport = StringTransport()
    protocol.makeConnection(transport)
    protocol.dataReceived(b"\x01\x00" + b"k" * 256)
    assert transport.disconnecting


def test_parsing_stops_once_the_receiver_closes_the_connection() -> None:
    class Closing(FastRecorder):
        def ampBoxReceived(self, box: amp.AmpBox) -> None:
            super().ampBoxReceived(box)
            self.transport.loseConnection()

    protocol = Closing()
    protocol.makeConnection(StringTransport())
    protocol.dataReceived(amp.AmpBox(a=b"1").serialize() + amp.AmpBox(b=b"2").serialize())
    assert protocol.boxes == [{b"a": b"1"}]


class LimitedRecorder(FastRecorder):
    max_box_size = 10_000
    max_keys = 50

    def __init__(self) -> None:
        super().__init__()
        self.too_large: list[dict[bytes, bytes]] = []

    def box_too_large(self, box: amp.AmpBox) -> None:
        self.too_large.append(dict(box))


@settings(max_examples=100)
@given(
    st.one_of(
        st.builds(lambda n: {b"v%d" % i: b"x" * 1000 for i in range(n)}, st.integers(11, 40)),  # too many bytes
        st.builds(lambda n: {b"k%d" % i: b"" for i in range(n)}, st.integers(51, 400)),  # too many keys
    ),
    st.integers(min_value=1, max_value=2000),
)
def test_an_oversized_box_arriving_in_chunks_is_not_kept(big: dict[bytes, bytes], chunk: int) -> None:
    protocol = LimitedRecorder()
    protocol.makeConnection(StringTransport())
    data = amp.AmpBox({b"_command": b"Call", b"_ask": b"7", **big}).serialize()
    after = amp.AmpBox(next=b"1").serialize()
    most_keys = most_bytes = 0
    for at in range(0, len(data), chunk):
        protocol.dataReceived(data[at : at + chunk])
        if protocol._box is not None:
            most_keys = max(most_keys, len(protocol._box))
            most_bytes = max(most_bytes, sum(len(k) + len(v) for k, v in protocol._box.items()))
    protocol.dataReceived(after)
    # Once a chunk ends past a limit, only what answering the box needs is
    # kept: a box outgrows the limits by one chunk at most (an entry takes at
    # least 6 bytes).
    assert most_bytes <= protocol.max_box_size + chunk
    assert most_keys <= protocol.max_keys + chunk // 6 + 1
    assert protocol.too_large == [{b"_command": b"Call", b"_ask": b"7"}]
    assert protocol.boxes == [{b"next": b"1"}]


@settings(max_examples=100)
@given(st.dictionaries(keys, values, max_size=6))
def test_serialize_reads_back_as_the_same_box(box: dict[bytes, bytes]) -> None:
    [parsed] = amp.parseString(serialize(box)) if box else [{}]
    assert dict(parsed) == box


def test_serialize_refuses_what_amp_cannot_carry() -> None:
    import pytest

    with pytest.raises(amp.TooLong):
        serialize({b"k" * 256: b""})
    with pytest.raises(amp.TooLong):
        serialize({b"k": b"v" * 65536})


def test_nothing_more_is_parsed_once_the_connection_is_closing() -> None:
    """A box handled while closing stops the parse; later data is dropped, not read from a stale state."""
    protocol = FastRecorder()
    transport = StringTransport()
    protocol.makeConnection(transport)
    first = amp.AmpBox({b"a": b"1"}).serialize()
    second = amp.AmpBox({b"b": b"2"}).serialize()
    original = protocol.ampBoxReceived

    def close_on_first(box: amp.AmpBox) -> None:
        original(box)
        transport.loseConnection()

    protocol.ampBoxReceived = close_on_first  # type: ignore[method-assign]
    protocol.dataReceived(first + second[:5])
    protocol.dataReceived(second[5:])
    assert protocol.boxes == [{b"a": b"1"}]
