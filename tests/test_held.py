"""Tier 1: the master's queue of held-back calls, as a pure class."""

from __future__ import annotations

from twisted.protocols import amp

from nswarm.master.held import Held, HeldCalls


def held(caller: str, tag: bytes, deadline: float = 10.0, give_up: float = 10.0) -> Held:
    return Held(caller, amp.AmpBox({b"_ask": tag}), deadline, give_up)


def test_calls_leave_in_arrival_order_per_method_and_count_against_the_size() -> None:
    calls = HeldCalls(size=3)
    first, second, other = held("a", b"1"), held("b", b"2"), held("a", b"3")
    calls.hold("m", first)
    calls.hold("m", second)
    calls.hold("n", other)
    assert calls.full and calls.count == 3 and "m" in calls
    assert calls.next("m") is first and calls.next("m") is second and calls.next("m") is None
    assert "m" not in calls and calls.count == 1 and not calls.full


def test_cancel_and_a_lost_caller_take_their_calls_out() -> None:
    calls = HeldCalls(size=10)
    mine, theirs, also_mine = held("a", b"1"), held("b", b"1"), held("a", b"2")
    for call in (mine, theirs, also_mine):
        calls.hold("m", call)
    assert calls.cancel("b", b"1") is theirs and calls.cancel("b", b"1") is None
    assert calls.drop_caller("a") == [mine, also_mine] and calls.count == 0


def test_expired_calls_are_taken_with_their_method_and_the_next_wait_is_known() -> None:
    calls = HeldCalls(size=10)
    soon, later = held("a", b"1", give_up=1.0), held("a", b"2", give_up=5.0)
    calls.hold("m", soon)
    calls.hold("n", later)
    assert calls.next_give_up() == 1.0
    assert calls.expired(now=1.0) == [("m", soon)]
    assert calls.next_give_up() == 5.0 and calls.count == 1


def test_an_implementer_arriving_extends_the_wait_to_the_deadline() -> None:
    calls = HeldCalls(size=10)
    waiting = held("a", b"1", deadline=30.0, give_up=2.0)
    calls.hold("m", waiting)
    calls.implemented("m")
    assert waiting.give_up == 30.0 and calls.expired(now=5.0) == []
