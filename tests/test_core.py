"""
Tier 1: the SDKs' sans-IO core, driven directly: bytes in, bytes out, the
time passed in. Twisted's own AMP parser and serialiser check the bytes.
"""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from twisted.protocols import amp

from nswarm import amp_commands, reconnect, service
from nswarm.caller import Caller
from nswarm.core import backoff, handlers, names, wire
from nswarm.core.boxes import RemoteError, error_frame, get_payload, put_payload, result_frame, serialize
from nswarm.core.connection import MARGIN, Connection
from nswarm.core.events import (
    Answered,
    CallReceived,
    CancelReceived,
    ConnectionClosed,
    EventReceived,
    Failed,
    TimerWanted,
)
from nswarm.core.parser import BoxParser, Oversized
from nswarm.errors import (
    DeadlineExceeded,
    Draining,
    HandlerFailed,
    InvalidRequest,
    NoSuchMethod,
    PayloadTooLarge,
    UpstreamUnavailable,
)
from nswarm.relay import names as relay_names


def sent(connection: Connection) -> list[amp.AmpBox]:
    """The boxes C{connection} has to send, parsed by Twisted's AMP."""
    return list(amp.parseString(connection.data_to_send()))


def reply(connection: Connection, box: dict[bytes, bytes], now: float = 0.0) -> list[Any]:
    """Feed C{box}, serialised by Twisted's AMP, to C{connection}; return its events but timers."""
    connection.receive_data(amp.AmpBox(box).serialize(), now)
    return [event for event in connection.events() if not isinstance(event, TimerWanted)]


def answered(connection: Connection, tag: bytes, result: Any, now: float = 0.0) -> list[Any]:
    box: dict[bytes, bytes] = {b"_answer": tag}
    put_payload(box, b"result", json.dumps(result).encode())
    return reply(connection, box, now)


def test_the_core_imports_no_reactor_no_amp_and_no_asyncio() -> None:
    code = (
        "import sys, nswarm.core.connection, nswarm.core.handlers, nswarm.core.backoff;"
        "bad = [m for m in sys.modules if m.startswith(('twisted.internet', 'twisted.protocols', 'asyncio'))];"
        "print(bad); sys.exit(1 if bad else 0)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_asyncio_and_blocking_front_ends_import_no_reactor_and_no_amp() -> None:
    code = (
        "import sys, nswarm.aio, nswarm.sync;"
        "bad = [m for m in sys.modules if m.startswith(('twisted.internet', 'twisted.protocols'))];"
        "print(bad); sys.exit(1 if bad else 0)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_asyncio_clients_tls_checks_the_certificate_and_the_host_name(tmp_path: Any) -> None:
    import ssl

    from nswarm.aio.tls import client_context
    from nswarm.cluster_files import init_cluster
    from nswarm.config import ConfigError

    init_cluster(tmp_path)
    context = client_context(str(tmp_path / "ca.pem"), str(tmp_path / "api.pem"), str(tmp_path / "api.key"))
    assert context.check_hostname and context.verify_mode == ssl.CERT_REQUIRED
    assert context.minimum_version == ssl.TLSVersion.TLSv1_2
    assert all(c["aead"] for c in context.get_ciphers() if c["protocol"] == "TLSv1.2")
    with pytest.raises(ConfigError, match="cannot read the certificate"):
        client_context(str(tmp_path / "missing.pem"))
    (tmp_path / "api.key").chmod(0o644)
    with pytest.raises(ConfigError, match="chmod"):
        client_context(str(tmp_path / "ca.pem"), str(tmp_path / "api.pem"), str(tmp_path / "api.key"))


def test_wire_constants_are_amps_and_amp_commands_re_exports_them() -> None:
    assert (wire.ASK, wire.ANSWER, wire.ERROR, wire.COMMAND) == (amp.ASK, amp.ANSWER, amp.ERROR, amp.COMMAND)
    assert (wire.ERROR_CODE, wire.ERROR_DESCRIPTION) == (amp.ERROR_CODE, amp.ERROR_DESCRIPTION)
    assert (wire.UNKNOWN_ERROR_CODE, wire.UNHANDLED_ERROR_CODE) == (amp.UNKNOWN_ERROR_CODE, amp.UNHANDLED_ERROR_CODE)
    assert (wire.MAX_KEY_LENGTH, wire.MAX_VALUE_LENGTH) == (amp.MAX_KEY_LENGTH, amp.MAX_VALUE_LENGTH)
    assert amp_commands.CALL is wire.CALL and amp_commands.ROUTED is wire.ROUTED and amp_commands.CHUNK == wire.CHUNK
    assert wire.list_of_strings(["a", "bé", ""]) == amp.ListOf(amp.Unicode()).toString(["a", "bé", ""])
    assert wire.list_of_integers([0, 12]) == amp.ListOf(amp.Integer()).toString([0, 12])


def test_the_pure_policy_and_decorators_are_shared_not_copied() -> None:
    assert reconnect.lost_delay is backoff.lost_delay
    assert service.implement is handlers.implement and service.subscribe is handlers.subscribe
    assert backoff.lost_delay(1, 1.0, 0.0) == 0.125 and backoff.lost_delay(50, 1.0, 0.999) <= 1.0
    assert backoff.round_delay(3, 2, 0.0) == backoff.lost_delay(2, 1.0, 0.0)
    assert backoff.may_resend(Draining("x"), False, False) and backoff.may_resend(UpstreamUnavailable("x"), True, True)
    assert not backoff.may_resend(UpstreamUnavailable("x"), True, False)
    assert not backoff.may_resend(NoSuchMethod("x"), False, True)


def test_the_relays_name_rules_are_the_cores() -> None:
    for name in ("check_name", "check_method", "check_pattern", "check_event", "matches"):
        assert getattr(relay_names, name) is getattr(names, name)


@given(st.lists(st.dictionaries(st.binary(min_size=1, max_size=5), st.binary(max_size=300), max_size=4), max_size=4))
def test_parser_reads_what_amp_writes_in_any_pieces(boxes: list[dict[bytes, bytes]]) -> None:
    data = b"".join(amp.AmpBox(box).serialize() for box in boxes)
    for size in (1, 3, 1000):
        parser = BoxParser()
        out: list[Any] = []
        for start in range(0, len(data), size):
            out += parser.feed(data[start : start + size])
        assert out == boxes
    assert [dict(box) for box in amp.parseString(b"".join(serialize(box) for box in boxes))] == boxes


def test_parser_hands_an_oversized_box_over_with_its_control_keys_only() -> None:
    parser = BoxParser(max_box_size=1000, max_keys=10)
    data = amp.AmpBox({b"_answer": b"1", b"result": b"x" * 2000}).serialize()
    assert parser.feed(data[:700]) == []
    assert parser.feed(data[700:]) == [Oversized({b"_answer": b"1"})]
    assert parser.feed(amp.AmpBox({b"a": b"b"}).serialize()) == [{b"a": b"b"}]


def test_payloads_split_across_keys_as_amp_commands_payload_does() -> None:
    value = bytes(range(256)) * 600
    box: dict[bytes, bytes] = {}
    put_payload(box, b"args", value)
    strings: dict[bytes, bytes] = {}
    amp_commands.Payload().toBox(b"args", strings, {"args": value}, None)
    assert box == strings and get_payload(box, b"args") == value
    with pytest.raises(InvalidRequest):
        get_payload({}, b"args")


def test_authenticate_then_call_and_answer() -> None:
    connection = Connection(now=0.0)
    tag = connection.authenticate(b"secret", "me")
    [box] = sent(connection)
    assert box == {b"_command": b"Authenticate", b"_ask": tag, b"key": b"secret", b"name": b"me"}
    assert reply(connection, {b"_answer": tag}) == [Answered(tag, None)]
    call = connection.call("greet", ("world",), {"loud": True}, timeout=5)
    [box] = sent(connection)
    arguments = amp_commands.Call.parseArguments(box, None)
    assert arguments == {"method": "greet", "args": box[b"args"], "timeout": 5.0, "caller": None, "stream": None}
    assert json.loads(box[b"args"]) == {"args": ["world"], "kwargs": {"loud": True}}
    assert answered(connection, call, {"hello": "world"}) == [Answered(call, {"hello": "world"})]
    assert connection.in_flight == 0


def test_a_typed_error_answers_the_call_and_unknown_codes_keep_theirs() -> None:
    connection = Connection(now=0.0)
    tag = connection.call("nobody")
    [event] = reply(connection, {b"_error": tag, b"_error_code": b"NO_SUCH_METHOD", b"_error_description": b"no"})
    assert isinstance(event, Failed) and isinstance(event.error, NoSuchMethod) and str(event.error) == "no"
    tag = connection.call("x")
    [event] = reply(connection, {b"_error": tag, b"_error_code": b"UNHANDLED", b"_error_description": b"eh"})
    assert isinstance(event.error, RemoteError) and event.error.unhandled


def test_big_arguments_travel_split_and_too_big_ones_are_refused_before_sending() -> None:
    connection = Connection(now=0.0, max_payload=200_000)
    connection.call("echo", ("x" * 150_000,))
    [box] = sent(connection)
    assert {b"args", b"args.1", b"args.2"} <= set(box)
    with pytest.raises(PayloadTooLarge, match="send less"):
        connection.call("echo", ("x" * 300_000,))
    assert connection.data_to_send() == b""
    with pytest.raises(InvalidRequest, match="JSON"):
        connection.call("echo", (object(),))


def test_an_oversized_answer_fails_its_call_and_an_oversized_request_is_refused() -> None:
    connection = Connection(now=0.0, max_payload=1000)
    tag = connection.call("echo")
    connection.data_to_send()
    [event] = answered(connection, tag, "y" * 200_000)
    assert isinstance(event, Failed) and isinstance(event.error, PayloadTooLarge)
    request: dict[bytes, bytes] = {b"_command": b"Call", b"_ask": b"9", b"method": b"m"}
    put_payload(request, b"args", b"z" * 200_000)
    assert reply(connection, request) == []
    [box] = sent(connection)
    assert box[b"_error"] == b"9" and box[b"_error_code"] == b"PAYLOAD_TOO_LARGE"


def test_the_deadline_fails_the_call_and_cancels_it_upstream() -> None:
    connection = Connection(now=100.0)
    tag = connection.call("slow", timeout=2.0)
    connection.data_to_send()
    assert connection.events() == [TimerWanted(102.0 + MARGIN)]
    connection.tick(101.0)
    assert connection.events() == [] and connection.data_to_send() == b""
    connection.tick(102.0 + MARGIN)
    [event] = connection.events()
    assert isinstance(event, Failed) and isinstance(event.error, DeadlineExceeded)
    assert sent(connection) == [{b"_command": b"Cancel", b"id": tag}]
    assert answered(connection, tag, 1) == []  # the late answer is dropped


def test_cancel_forgets_the_call_and_tells_upstream() -> None:
    connection = Connection(now=0.0)
    tag = connection.call("slow")
    connection.data_to_send()
    assert connection.cancel(tag) and not connection.cancel(tag)
    assert sent(connection) == [{b"_command": b"Cancel", b"id": tag}]


def test_heartbeats_go_out_and_a_silent_peer_closes_the_connection() -> None:
    connection = Connection(now=0.0)
    tag = connection.call("slow", timeout=1000)
    connection.data_to_send()
    connection.start_heartbeats(10.0)
    assert connection.next_tick() == 10.0
    connection.tick(10.0)
    assert sent(connection) == [{b"_command": b"Heartbeat"}]
    reply(connection, {b"_command": b"Heartbeat", b"_ask": b"p1"}, 15.0)
    assert sent(connection) == [{b"_answer": b"p1"}]
    for now in (20.0, 30.0, 40.0):
        connection.tick(now)
    events = connection.events()
    assert not connection.closed
    connection.tick(50.0)
    events = connection.events()
    assert isinstance(events[0], Failed) and events[0].tag == tag
    assert isinstance(events[-1], ConnectionClosed) and isinstance(events[-1].error, UpstreamUnavailable)
    assert connection.closed


def test_a_key_too_long_for_amp_closes_the_connection() -> None:
    connection = Connection(now=0.0)
    connection.receive_data(b"\x01\x00" + b"k" * 256, 0.0)
    [event] = [e for e in connection.events() if not isinstance(e, TimerWanted)]
    assert isinstance(event, ConnectionClosed)


def test_a_lost_connection_fails_what_waits() -> None:
    connection = Connection(now=0.0)
    tag = connection.publish("orders.created", {"id": 1})
    connection.connection_lost()
    [event] = connection.events()
    assert isinstance(event, Failed) and isinstance(event.error, UpstreamUnavailable)
    with pytest.raises(UpstreamUnavailable):
        connection.call("x")
    assert tag


def test_publish_is_answered_with_handed_to_and_call_all_with_every_outcome() -> None:
    connection = Connection(now=0.0)
    tag = connection.publish("orders.created", {"id": 7}, exclude_self=True)
    [box] = sent(connection)
    assert box[b"exclude"] == b"1" and json.loads(box[b"payload"]) == {"id": 7}
    assert reply(connection, {b"_answer": tag, b"handed_to": b"3"}) == [Answered(tag, 3)]
    with pytest.raises(InvalidRequest):
        connection.publish("orders.*")
    tag = connection.call("who", all=True)
    [box] = sent(connection)
    assert box[b"_command"] == b"CallAll"
    frames = result_frame(b'"a"') + error_frame(b"HANDLER_FAILED", b"KeyError: k")
    [event] = reply(connection, {b"_answer": tag, b"results": frames})
    assert event.value[0] == "a" and isinstance(event.value[1], HandlerFailed)


def test_registration_boxes_are_what_amp_commands_parse() -> None:
    connection = Connection(now=0.0, peer="node")
    connection.register(wire.IMPLEMENT, ["a", "b"], idempotent=["b"], limits=[0, 4])
    connection.register(wire.SUBSCRIBE, ["orders.*"])
    implement, subscribe = sent(connection)
    arguments = amp_commands.Implement.parseArguments(implement, None)
    assert arguments == {"methods": ["a", "b"], "idempotent": ["b"], "limits": [0, 4]}
    assert amp_commands.Subscribe.parseArguments(subscribe, None) == {"events": ["orders.*"]}
    many = [f"method-{index:05}-" + "x" * 100 for index in range(1000)]
    assert len(connection.register(wire.UNIMPLEMENT, many)) == 2
    with pytest.raises(InvalidRequest):
        connection.register(wire.SUBSCRIBE, ["a..b"])


def test_a_service_runs_calls_with_their_caller_and_answers_them() -> None:
    connection = Connection(now=0.0, peer="node")
    box: dict[bytes, bytes] = {b"_command": b"Call", b"_ask": b"c1", b"method": b"greet", b"caller": b"api:alice"}
    put_payload(box, b"args", b'{"args":["bob"],"kwargs":{}}')
    [event] = reply(connection, box)
    assert event == CallReceived(b"c1", "greet", ["bob"], {}, Caller("api", "alice"))
    connection.answer(b"c1", "hello bob")
    [answer] = sent(connection)
    assert answer[b"_answer"] == b"c1" and json.loads(answer[b"result"]) == "hello bob"
    connection.answer(b"c1", "again")  # one answer per call
    assert connection.data_to_send() == b""
    reply(connection, {**box, b"_ask": b"c2"})
    connection.fail(b"c2", KeyError("k"))
    [error] = sent(connection)
    assert error[b"_error_code"] == b"HANDLER_FAILED" and error[b"_error_description"] == b"KeyError: 'k'"
    reply(connection, {**box, b"_ask": b"c3"})
    connection.answer(b"c3", object())
    [error] = sent(connection)
    assert error[b"_error_code"] == b"HANDLER_FAILED" and b"InvalidResult" in error[b"_error_description"]


def test_a_cancelled_call_gets_no_answer_and_bad_calls_are_refused() -> None:
    connection = Connection(now=0.0, peer="node")
    box: dict[bytes, bytes] = {b"_command": b"Call", b"_ask": b"c1", b"method": b"slow", b"args": b"{}"}
    assert reply(connection, box) == []  # refused: its arguments are not {"args": [...], "kwargs": {...}}
    [error] = sent(connection)
    assert error[b"_error_code"] == b"INVALID_REQUEST"
    box[b"args"] = b'{"args":[],"kwargs":{}}'
    reply(connection, box)
    assert reply(connection, {b"_command": b"Cancel", b"id": b"c1"}) == [CancelReceived(b"c1")]
    connection.answer(b"c1", 1)
    assert connection.data_to_send() == b""


def test_events_are_delivered_decoded_and_bad_ones_dropped() -> None:
    connection = Connection(now=0.0)
    box: dict[bytes, bytes] = {b"_command": b"Publish", b"event": b"orders.created", b"payload": b'{"id":1}'}
    assert reply(connection, box) == [EventReceived("orders.created", {"id": 1})]
    assert reply(connection, {**box, b"payload": b"{nope", b"_ask": b"e1"}) == []
    assert sent(connection) == [{b"_answer": b"e1"}] and connection.dropped_events == 1
    reply(connection, {b"_command": b"Implement", b"_ask": b"x"})
    [error] = sent(connection)
    assert error[b"_error_code"] == b"UNHANDLED"
