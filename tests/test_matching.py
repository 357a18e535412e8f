"""Tier 1: the token index of subscription patterns, against the plain L{matches}."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from nswarm.defaults import MATCH_CACHE_SIZE
from nswarm.relay.names import Matches, _Node, matches
from nswarm.relay.state import Registry

literal = st.sampled_from(["a", "b", "c"])
patterns = st.builds(
    lambda tokens, tail: ".".join(tokens + tail),
    st.lists(st.one_of(literal, st.just("*")), min_size=0, max_size=5),
    st.sampled_from([[], [">"]]),
).filter(bool)
events = st.lists(literal, min_size=1, max_size=6).map(".".join)
#: Any dotted string at all, wildcards and empty tokens included: the index agrees with matches() on them too.
anything = st.lists(st.sampled_from(["a", "b", "", "*", ">"]), min_size=1, max_size=4).map(".".join)


def nodes(node: _Node) -> int:
    """How many nodes are under C{node} (itself excluded), checking that each holds a
    pattern or branches (the index is compressed: no node just leads to one other)."""
    total = 0
    for child in (node.children or {}).values():
        assert not child.empty() or len(child.children or ()) >= 2
        total += 1 + nodes(child)
    return total


def naive(table: dict[str, list[str]], event: str) -> list[str]:
    """What Matches computed before the index: every pattern tried, in the table's order."""
    return list(
        dict.fromkeys(value for pattern, values in table.items() if matches(pattern, event) for value in values)
    )


@given(st.dictionaries(patterns, st.lists(st.sampled_from("vwxyz"), min_size=1, max_size=3)), st.lists(events))
def test_the_index_finds_what_trying_every_pattern_finds_in_the_same_order(
    table: dict[str, list[str]], names: list[str]
) -> None:
    found = Matches(table)
    for event in names:
        assert found(event) == naive(table, event)
        assert found(event) == found.find(event)


@given(st.lists(anything, unique=True), st.lists(anything))
def test_the_index_agrees_with_matches_on_any_dotted_strings(table: list[str], names: list[str]) -> None:
    found = Matches({pattern: [pattern] for pattern in table})
    for event in names:
        assert found(event) == [pattern for pattern in table if matches(pattern, event)]


#: Patterns that share prefixes, for subscriptions to come and go under one another.
few = ["a", "a.b", "a.c", "a.*", "a.>", "*.b", "a.b.c", "a.b.>", "*.*", ">", "b.c.a.a", "b.c.*.a", "b.c.a.>"]
operations = st.lists(
    st.tuples(
        st.sampled_from(["subscribe", "unsubscribe", "remove", "publish"]),
        st.sampled_from(["p1", "p2", "p3"]),
        st.lists(st.one_of(st.sampled_from(few), patterns), max_size=3),
        events,
    ),
    max_size=40,
)


@given(operations)
def test_subscribers_follow_any_sequence_of_subscriptions(ops: list[tuple[str, str, list[str], str]]) -> None:
    """After each change, subscribers() equals trying every pattern in registration order,
    and a registry left with no subscription has an empty index."""
    registry: Registry[str] = Registry()
    model: dict[str, set[str]] = {}
    for op, peer, names, event in ops:
        if op == "subscribe":
            registry.subscribe(peer, names)
            model.setdefault(peer, set()).update(names)
        elif op == "unsubscribe":
            registry.unsubscribe(peer, names)
            model.get(peer, set()).difference_update(names)
        elif op == "remove":
            registry.remove(peer)
            model.pop(peer, None)
        got = registry.subscribers(event)
        assert got == naive(registry._events.peers, event)
        assert nodes(registry._deliveries._root) <= 2 * len(registry._events.peers)
        assert set(got) == {peer for peer, subscribed in model.items() if any(matches(p, event) for p in subscribed)}
    for peer in ["p1", "p2", "p3"]:
        registry.remove(peer)
    root = registry._deliveries._root
    assert root.children is None and root.rest is None and root.exact is None


def test_results_come_in_pattern_registration_order_and_follow_resubscription() -> None:
    registry: Registry[str] = Registry()
    registry.subscribe("a", ["orders.>"])
    registry.subscribe("b", ["orders.*"])
    registry.subscribe("c", ["*.created"])
    registry.subscribe("a", ["orders.created"])
    assert registry.subscribers("orders.created") == ["a", "b", "c"]
    registry.unsubscribe("a", ["orders.>"])
    assert registry.subscribers("orders.created") == ["b", "c", "a"]
    registry.subscribe("d", ["orders.>"])
    assert registry.subscribers("orders.created") == ["b", "c", "a", "d"]
    assert registry.subscribers("orders.created.eu") == ["d"]


def test_the_cache_of_matches_stays_bounded() -> None:
    found = Matches({"orders.*": ["a"], "users.>": ["b"]})
    for number in range(MATCH_CACHE_SIZE + 50):
        assert found(f"orders.{number}") == ["a"]
    assert len(found._cache) <= MATCH_CACHE_SIZE + 1
    found.patterns["orders.7"] = ["c"]
    found.add("orders.7")
    assert not found._cache and found("orders.7") == ["a", "c"]


def test_fifty_thousand_wildcard_patterns() -> None:
    """The index holds many patterns sharing a prefix and a wildcard (bench/matching.py measures the cost)."""
    table = {f"svc{number}.*.done": [f"s{number}"] for number in range(50_000)}
    table["svc7.>"] = ["all"]
    found = Matches(table)
    assert found("svc7.job.done") == ["s7", "all"]
    assert found("svc7.job") == ["all"]
    assert found("other.job.done") == []


def test_a_long_pattern_costs_one_node_not_one_per_token() -> None:
    tokens = [f"t{number}" for number in range(80)]
    long, wild = ".".join(tokens), ".".join(["*", *tokens[1:-1], "*"])
    found = Matches({long: ["a"], long + ".x.>": ["b"], wild: ["c"]})
    assert nodes(found._root) <= 4
    assert (
        found(long) == ["a", "c"]
        and found(long + ".x.y") == ["b"]
        and found(".".join(["q", *tokens[1:-1], "q"])) == ["c"]
    )
    found.patterns.pop(long + ".x.>")
    found.discard(long + ".x.>")
    found.patterns.pop(long)
    found.discard(long)
    assert nodes(found._root) == 1 and found(long) == ["c"]
