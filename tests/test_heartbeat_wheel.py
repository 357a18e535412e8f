"""One timer beats every connection once an interval (nswarm.heartbeat_wheel)."""

from __future__ import annotations

import pytest
from twisted.internet.task import Clock
from twisted.logger import capturedLogs

from nswarm.heartbeat_wheel import SLOTS, Wheel, wheel


def run(clock: Clock, until: float, step: float = 0.001) -> None:
    """Advance C{clock} in small steps (a beat notes the time it runs at, within a step of its own)."""
    while clock.seconds() < until - 1e-9:
        clock.advance(step)


def test_the_first_connection_beats_exactly_each_interval_and_a_later_one_within_a_tick() -> None:
    clock, times = Clock(), {"a": [], "b": []}
    beating = Wheel(clock, 10.0)
    beating.join("a", lambda: times["a"].append(clock.seconds()))
    clock.advance(3.05)
    beating.join("b", lambda: times["b"].append(clock.seconds()))
    run(clock, 31.0)
    assert times["a"] == pytest.approx([10.0, 20.0, 30.0], abs=0.0011)
    assert times["b"] == pytest.approx([13.1, 23.1], abs=0.0011)  # 3.05 + 10, rounded up to the tick at 13.1
    assert len(clock.getDelayedCalls()) == 1  # one timer for both
    assert len(clock.getDelayedCalls()) == 1  # one timer for both


def test_leaving_stops_the_beats_and_an_empty_wheel_leaves_no_timer() -> None:
    clock, log = Clock(), []
    beating = Wheel(clock, 10.0)
    beating.join("a", lambda: log.append("a"))
    beating.join("b", lambda: log.append("b"))
    clock.advance(10.0)
    assert log == ["a", "b"]
    beating.leave("a")
    clock.advance(10.0)
    assert log == ["a", "b", "b"]
    beating.leave("b")
    assert clock.getDelayedCalls() == []
    beating.join("c", lambda: log.append("c"))  # idle again: starts from now
    clock.advance(9.99)
    assert log[-1] == "b"
    clock.advance(0.01)
    assert log[-1] == "c"


def test_a_beat_that_closes_its_own_or_another_connection_and_a_join_during_a_tick() -> None:
    clock, log = Clock(), []
    beating = Wheel(clock, 1.0)

    def first() -> None:
        log.append("first")
        beating.leave("first")
        beating.leave("second")  # closed with it: it does not beat in this tick
        beating.join("third", lambda: log.append("third"))

    beating.join("first", first)
    beating.join("second", lambda: log.append("second"))
    clock.advance(1.0)
    assert log == ["first"]
    clock.advance(1.0)
    assert log == ["first", "third"]
    beating.leave("third")
    assert clock.getDelayedCalls() == []


def test_empty_slots_are_skipped_and_wheels_are_one_per_clock_and_interval() -> None:
    clock = Clock()
    beating = wheel(clock, 10.0)
    assert wheel(clock, 10.0) is beating and wheel(clock, 5.0) is not beating and wheel(Clock(), 10.0) is not beating
    beating.join("a", lambda: None)
    assert [call.getTime() for call in clock.getDelayedCalls()] == [10.0]  # not SLOTS wakeups an interval
    beating.leave("a")
    assert SLOTS * beating.tick == 10.0


def test_a_reactor_held_up_for_minutes_beats_each_connection_once_not_once_a_missed_interval() -> None:
    clock, log = Clock(), []
    beating = Wheel(clock, 10.0)
    beating.join("a", lambda: log.append(("a", clock.seconds())))
    clock.advance(5.0)
    beating.join("b", lambda: log.append(("b", clock.seconds())))
    clock.advance(60.0)  # held up from 5 s to 65 s
    assert sorted(log) == [("a", 65.0), ("b", 65.0)]
    clock.advance(5.0)  # then on time again: a's round is at 70, b's at 75
    clock.advance(5.0)
    assert sorted(log[2:]) == [("a", 70.0), ("b", 75.0)]


def test_a_beat_that_raises_is_logged_and_the_others_still_beat() -> None:
    clock, log = Clock(), []
    beating = Wheel(clock, 1.0)

    def broken() -> None:
        raise RuntimeError("a bug")

    beating.join("broken", broken)
    beating.join("fine", lambda: log.append("fine"))
    beating.join("also", lambda: log.append("also"))  # the same tick as "fine", after "broken"'s
    with capturedLogs() as logged:
        clock.advance(1.01)
    assert log == ["fine", "also"]
    assert [event["log_format"] for event in logged] == ["a heartbeat failed"]
    assert isinstance(logged[0]["log_failure"].value, RuntimeError)
