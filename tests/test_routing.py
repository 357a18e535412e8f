"""Tier 1: the pure routing core, called directly."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from nswarm.amp_commands import InvalidRequest
from nswarm.relay.names import check_name
from nswarm.relay.state import PendingCalls, Registry, Request


def test_round_robin_over_implementers_in_registration_order() -> None:
    registry: Registry[str] = Registry()
    registry.implement("a", ["echo"])
    registry.implement("b", ["echo"])
    registry.implement("c", ["echo", "other"])
    assert [registry.choose("echo") for _ in range(6)] == ["a", "b", "c", "a", "b", "c"]
    assert registry.choose("other") == "c"
    assert registry.choose("missing") is None


def test_implement_reports_first_and_unimplement_reports_last_implementer() -> None:
    registry: Registry[str] = Registry()
    assert registry.implement("a", ["x", "y"]) == ["x", "y"]
    assert registry.implement("b", ["x", "z"]) == ["z"]
    assert registry.implement("b", ["x"]) == []
    assert registry.unimplement("a", ["x"]) == []
    assert registry.unimplement("b", ["x"]) == ["x"]
    assert registry.unimplement("b", ["never-registered"]) == []
    assert sorted(registry.methods()) == ["y", "z"]


def test_remove_withdraws_everything_a_peer_registered() -> None:
    registry: Registry[str] = Registry()
    registry.implement("a", ["x", "shared"])
    registry.implement("b", ["shared"])
    registry.subscribe("a", ["e1", "e2"])
    registry.subscribe("b", ["e2"])
    methods, events = registry.remove("a")
    assert sorted(methods) == ["x"] and events == ["e1"]
    assert registry.choose("shared") == "b"
    assert registry.subscribers("e2") == ["b"]
    assert registry.subscribers("e1") == []
    assert registry.remove("a") == ([], [])


def test_invalid_names_are_refused_without_registering_anything() -> None:
    registry: Registry[str] = Registry()
    for bad in ["", " x", "x ", "a\nb", "x" * 256]:
        with pytest.raises(InvalidRequest):
            registry.implement("a", ["good", bad])
    assert registry.methods() == []
    assert check_name("method", "orders.create") == "orders.create"


def test_pending_calls_map_answers_back_and_fail_on_loss() -> None:
    pending: PendingCalls[str] = PendingCalls()
    pending.add(Request("node", b"1", "api", b"a", 10.0))
    pending.add(Request("node", b"2", "api", b"b", 10.0))
    pending.add(Request("other", b"1", "api2", b"c", 10.0))
    request = pending.pop("node", b"1")
    assert request is not None and (request.caller, request.caller_tag) == ("api", b"a")
    assert pending.pop("node", b"1") is None
    assert pending.pop("nobody", b"1") is None
    assert len(pending) == 2 and pending.in_flight("node") == 1
    answered_by, asked_by = pending.lost("node")
    assert [(r.caller, r.caller_tag) for r in answered_by] == [("api", b"b")] and asked_by == []
    assert pending.lost("node") == ([], [])
    _, asked_by = pending.lost("api2")
    assert [(r.callee, r.tag) for r in asked_by] == [("other", b"1")]
    assert len(pending) == 0


def test_pending_calls_cancel_by_the_callers_tag_and_expire_by_deadline() -> None:
    pending: PendingCalls[str] = PendingCalls()
    pending.add(Request("node", b"1", "api", b"a", 5.0))
    pending.add(Request("node", b"2", "api", b"b", 9.0))
    cancelled = pending.cancel("api", b"a")
    assert cancelled is not None and (cancelled.callee, cancelled.tag) == ("node", b"1")
    assert pending.cancel("api", b"a") is None and pending.pop("node", b"1") is None
    assert pending.expired(8.9) == []
    [late] = pending.expired(9.0)
    assert late.caller_tag == b"b" and len(pending) == 0


def test_least_loaded_implementer_wins_and_ties_go_round_robin() -> None:
    registry: Registry[str] = Registry()
    registry.implement("a", ["m"])
    registry.implement("b", ["m"])
    registry.implement("c", ["m"])
    load = {"a": 2, "b": 0, "c": 1}
    assert registry.choose("m", load.__getitem__) == "b"
    load["b"] = 3
    assert registry.choose("m", load.__getitem__) == "c"
    load.update(a=0, b=0, c=0)
    assert [registry.choose("m", load.__getitem__) for _ in range(3)] == ["a", "b", "c"]


operations = st.lists(
    st.tuples(
        st.sampled_from(["implement", "unimplement", "remove"]),
        st.sampled_from(["p1", "p2", "p3"]),
        st.lists(st.sampled_from(["m1", "m2", "m3"]), max_size=3),
    ),
    max_size=40,
)


@given(operations)
def test_registry_agrees_with_a_simple_model(ops: list[tuple[str, str, list[str]]]) -> None:
    """After any sequence of registrations, the registry matches a set-based model,
    and the reported first/last changes are exactly the model's changes."""
    registry: Registry[str] = Registry()
    model: dict[str, set[str]] = {}
    for op, peer, names in ops:
        before = {name for names_ in model.values() for name in names_}
        if op == "implement":
            changed = registry.implement(peer, names)
            model.setdefault(peer, set()).update(names)
        elif op == "unimplement":
            changed = registry.unimplement(peer, names)
            model.get(peer, set()).difference_update(names)
        else:
            changed, _ = registry.remove(peer)
            model.pop(peer, None)
        after = {name for names_ in model.values() for name in names_}
        assert set(changed) == before ^ after
        assert sorted(registry.methods()) == sorted(after)
    for method in ["m1", "m2", "m3"]:
        implementers: set[str | None] = {peer for peer, names in model.items() if method in names}
        chosen = {registry.choose(method) for _ in range(max(1, len(implementers)))}
        assert chosen == (implementers or {None})


@pytest.mark.parametrize(
    "pattern, event, expected",
    [
        ("orders.created", "orders.created", True),
        ("orders.*", "orders.created", True),
        ("orders.*", "orders.created.eu", False),
        ("orders.*", "orders", False),
        ("*.created", "orders.created", True),
        ("orders.>", "orders.created", True),
        ("orders.>", "orders.created.eu", True),
        ("orders.>", "orders", False),
        (">", "anything.at.all", True),
        ("orders.created", "orders.cancelled", False),
    ],
)
def test_subscription_patterns(pattern: str, event: str, expected: bool) -> None:
    from nswarm.relay.names import matches

    assert matches(pattern, event) is expected


def test_wildcard_subscribers_receive_each_event_once() -> None:
    registry: Registry[str] = Registry()
    registry.subscribe("a", ["orders.*", "orders.created", "orders.>"])
    registry.subscribe("b", ["orders.>"])
    registry.subscribe("c", ["users.*"])
    assert registry.subscribers("orders.created") == ["a", "b"]
    assert registry.subscribers("orders.created.eu") == ["a", "b"]
    registry.unsubscribe("b", ["orders.>"])
    assert registry.subscribers("orders.created.eu") == ["a"]
    registry.remove("a")
    assert registry.subscribers("orders.created") == []


@pytest.mark.parametrize("bad", ["orders.>.x", "orders..x", ".orders"])
def test_malformed_patterns_are_refused(bad: str) -> None:
    registry: Registry[str] = Registry()
    with pytest.raises(InvalidRequest):
        registry.subscribe("a", [bad])


pending_operations = st.lists(
    st.tuples(
        st.sampled_from(["add", "pop", "cancel", "expire", "lose"]),
        st.integers(min_value=0, max_value=7),
        st.floats(min_value=0, max_value=10, allow_nan=False),
    ),
    max_size=60,
)


@given(pending_operations)
def test_expired_returns_exactly_the_pending_requests_that_are_due(ops: list[tuple[str, int, float]]) -> None:
    """Against a dict model: expired(now) forgets and returns the pending requests due by now,
    soonest first, and never one that was answered, cancelled or lost."""
    pending: PendingCalls[str] = PendingCalls()
    model: dict[bytes, Request[str]] = {}
    callees = ["n1", "n2"]
    for number, (op, key, when) in enumerate(ops):
        if op == "add":
            request = Request(callees[key % 2], b"%d" % number, "api", b"c%d" % number, when)
            pending.add(request)
            model[request.tag] = request
        elif op == "pop" and model:
            request = list(model.values())[key % len(model)]
            assert pending.pop(request.callee, request.tag) is model.pop(request.tag)
        elif op == "cancel" and model:
            request = list(model.values())[key % len(model)]
            assert pending.cancel("api", request.caller_tag) is model.pop(request.tag)
        elif op == "lose":
            answered_by, _ = pending.lost(callees[key % 2])
            assert {r.tag for r in answered_by} == {t for t, r in model.items() if r.callee == callees[key % 2]}
            model = {t: r for t, r in model.items() if r.callee != callees[key % 2]}
        elif op == "expire":
            late = pending.expired(when)
            assert {r.tag for r in late} == {t for t, r in model.items() if r.expires <= when}
            assert [r.expires for r in late] == sorted(r.expires for r in late)
            model = {t: r for t, r in model.items() if r.expires > when}
        assert len(pending) == len(model)
    assert {r.tag for r in pending.expired(10.0)} == set(model)


def test_the_deadline_heap_stays_bounded_when_calls_are_answered_early() -> None:
    from nswarm.relay.pending import COMPACT_SLACK

    pending: PendingCalls[str] = PendingCalls()
    for number in range(100):
        pending.add(Request("slow", b"%d" % number, "api", b"s%d" % number, 1000.0))
    for number in range(20_000):
        pending.add(Request("fast", b"%d" % number, "api", b"f%d" % number, 5.0 + number))
        assert pending.pop("fast", b"%d" % number) is not None
        assert len(pending._deadlines) <= 2 * (len(pending) + 1) + COMPACT_SLACK
    assert pending.expired(999.0) == [] and len(pending) == 100
    assert len(pending.expired(1000.0)) == 100 and pending._deadlines == []


def test_a_caller_reusing_a_tag_does_not_break_the_pending_calls() -> None:
    pending: PendingCalls[str] = PendingCalls()
    pending.add(Request("node", b"1", "api", b"same", 5.0))
    pending.add(Request("node", b"2", "api", b"same", 6.0))
    assert pending.pop("node", b"1") is not None
    [late] = pending.expired(6.0)
    assert late.tag == b"2" and len(pending) == 0 and pending.asked_by("api") == 0
