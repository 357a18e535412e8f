"""Tier 1: the access file (nswarm.access): parsing, its error sentences, rights and keys."""

from __future__ import annotations

import hashlib
import itertools
import os
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from nswarm.access import ALL, Access, Identity, Rights, covers, key_digest, render
from nswarm.config import ConfigError
from nswarm.relay.names import matches

ALICE_KEY = b"alice's secret key"
ALICE_SHA = hashlib.sha256(ALICE_KEY).hexdigest()

EXAMPLE = f"""\
# comment lines
[api alice]
key-sha256 = {ALICE_SHA}   # the key's sha256
call = greet, orders.*
publish = orders.>
subscribe =
    orders.>
    audit.*
admin = no

[node node-1]
implement = >
subscribe = >
call = >
publish = >

[service greeter]
key-sha256 = {ALICE_SHA.upper()}
implement = greet, add
subscribe = orders.created
"""


def parse(text: str) -> Access:
    return Access.parse(text, "access.conf")


def error(text: str) -> str:
    with pytest.raises(ConfigError) as raised:
        parse(text)
    return str(raised.value)


def test_parse_the_example() -> None:
    access = parse(EXAMPLE)
    assert access.source == "access.conf"
    alice = access.get("api", "alice")
    assert alice is not None
    assert (alice.role, alice.name, alice.key_sha256) == ("api", "alice", bytes.fromhex(ALICE_SHA))
    assert alice.rights == Rights(
        call=("greet", "orders.*"), publish=("orders.>",), subscribe=("orders.>", "audit.*"), admin=False
    )
    node = access.get("node", "node-1")
    assert node is not None and node.key_sha256 is None
    assert node.rights == Rights(call=(">",), publish=(">",), subscribe=(">",), implement=(">",))
    greeter = access.get("service", "greeter")
    assert greeter is not None and greeter.rights == Rights(implement=("greet", "add"), subscribe=("orders.created",))
    assert access.get("api", "bob") is None and access.get("node", "alice") is None
    assert access.names("api") == ["alice"] and access.names("node") == ["node-1"]


def test_an_empty_file_lets_nobody_in() -> None:
    access = parse("# nobody yet\n")
    assert [access.names(role) for role in ("api", "node", "service")] == [[], [], []]


def test_missing_and_empty_actions_grant_nothing_and_admin_defaults_to_no() -> None:
    access = parse(f"[api a]\nkey-sha256 = {ALICE_SHA}\ncall =\n")
    identity = access.get("api", "a")
    assert identity is not None and identity.rights == Rights()
    assert not any(identity.rights.allows(action, "x") for action in ("call", "publish", "subscribe", "implement"))
    admin = parse(f"[api a]\nkey-sha256 = {ALICE_SHA}\nadmin = yes\n").get("api", "a")
    assert admin is not None and admin.rights.admin


def test_render_round_trips() -> None:
    access = parse(EXAMPLE)
    text = render(access.identities.values())
    assert text.startswith("# nswarm access file")
    assert "call = greet, orders.*" in text
    assert parse(text).identities == access.identities
    everything = Identity("api", "root", ALL, key_digest(b"k"))
    assert parse(render([everything])).get("api", "root") == everything


@pytest.mark.parametrize(
    "identity",
    [
        Identity("api", "a", Rights(), None),
        Identity("node", "n", Rights(), b"x" * 32),
        Identity("api", "a", Rights(call=("a,b",)), b"x" * 32),
        Identity("api", "a b", Rights(), b"x" * 32),
    ],
)
def test_render_refuses_what_does_not_fit(identity: Identity) -> None:
    with pytest.raises(ValueError, match="cannot write"):
        render([identity])


KEY = f"key-sha256 = {ALICE_SHA}\n"


@pytest.mark.parametrize(
    "text, sentence",
    [
        # the section header
        ("[api]\n", "access.conf, [api]: a section header is [ROLE NAME], ROLE one of api, node, service"),
        ("[user alice]\n", "access.conf, [user alice]: a section header is [ROLE NAME]"),
        ("[api a b]\n", "access.conf, [api a b]: a section header is [ROLE NAME]"),
        ("[DEFAULT]\n", "access.conf, [DEFAULT]: a section header is [ROLE NAME]"),
        (f"[api {'x' * 256}]\n", "NAME 1 to 255 printable characters without spaces, such as [api alice]"),
        # the keys
        (
            f"[api alice]\n{KEY}calls = greet\n",
            "access.conf, [api alice]: unknown key 'calls': the keys are key-sha256, key-file, call, publish, "
            "subscribe, implement, admin",
        ),
        (
            "[api alice]\ncall = greet\n",
            "access.conf, [api alice]: no key: give key-sha256 = the sha256 of the API user's key (64 hex digits), "
            "or key-file = the path of a file holding the key",
        ),
        ("[service s]\n", "access.conf, [service s]: no key: give key-sha256 = the sha256 of the service's key"),
        (
            f"[api alice]\n{KEY}key-file = /x\n",
            "access.conf, [api alice]: both key-sha256 and key-file: give only one of them",
        ),
        (
            f"[node n1]\n{KEY}",
            "access.conf, [node n1]: 'key-sha256' is not for nodes, which authenticate with the node auth key "
            "and their certificate: remove it",
        ),
        ("[node n1]\nkey-file = /x\n", "access.conf, [node n1]: 'key-file' is not for nodes"),
        (
            "[api alice]\nkey-sha256 = abc\n",
            "access.conf, [api alice]: 'key-sha256' must be 64 hex digits, the sha256 of the key "
            "(tr -d '[:space:]' < KEYFILE | sha256sum prints it), not 3 characters",
        ),
        (f"[api alice]\nkey-sha256 = {'g' * 64}\n", "'key-sha256' must be 64 hex digits"),
        ("[api alice]\nkey-file =\n", "access.conf, [api alice]: 'key-file' is empty: give the path of the file"),
        # the patterns
        (
            f"[api alice]\n{KEY}call = greet, orders..x\n",
            "access.conf, [api alice]: 'call' has an invalid pattern 'orders..x': tokens are separated by single "
            "dots, and '>' may only be the last token",
        ),
        ("[node n]\nsubscribe = a.>.b\n", "access.conf, [node n]: 'subscribe' has an invalid pattern 'a.>.b'"),
        (f"[node n]\nimplement = {'x' * 300}\n", "'implement' has an invalid pattern 'xxx"),
        ("[node n]\npublish = .a\n", "'publish' has an invalid pattern '.a': tokens are separated by single dots"),
        (
            f"[api alice]\n{KEY}admin = maybe\n",
            "access.conf, [api alice]: 'admin' must be yes or no, not 'maybe'",
        ),
        # configparser's own errors, with their line
        (
            f"[api alice]\n{KEY}\n[api alice]\n{KEY}",
            "access.conf, line 4: [api alice] appears twice: give each identity one section",
        ),
        (
            f"[api alice]\n{KEY}\n[api  alice]\n{KEY}",
            "access.conf, [api  alice]: a second section for it: give each identity one section",
        ),
        (
            f"[api alice]\n{KEY}call = a\ncall = b\n",
            "access.conf, line 4: [api alice] gives 'call' twice: give it once, with all its patterns",
        ),
        (
            "call = greet\n[api alice]\n",
            "access.conf, line 1: 'call = greet' is outside any section: put it under a [ROLE NAME] header, "
            "such as [api alice]",
        ),
        (
            f"[api alice]\n{KEY}greet\n",
            "access.conf, line 3: cannot read 'greet': write KEY = VALUE lines (continuation lines indented) "
            "under a [ROLE NAME] header",
        ),
    ],
)
def test_errors_name_the_file_section_and_key_and_say_what_to_write(text: str, sentence: str) -> None:
    assert sentence in error(text)


def test_a_mistaken_key_is_not_echoed() -> None:
    assert "hunter2" not in error("[api alice]\nkey-sha256 = hunter2\n")


def test_key_matches() -> None:
    alice = parse(EXAMPLE).get("api", "alice")
    assert alice is not None
    assert alice.key_matches(ALICE_KEY)
    assert not alice.key_matches(b"wrong")
    assert not alice.key_matches(b"")
    assert not Identity("node", "n", ALL, None).key_matches(ALICE_KEY)


def test_key_file(tmp_path: Path) -> None:
    key = tmp_path / "alice.key"
    key.write_bytes(b"  " + ALICE_KEY + b"\n")
    os.chmod(key, 0o600)
    alice = parse(f"[api alice]\nkey-file = {key}\ncall = greet\n").get("api", "alice")
    assert alice is not None and alice.key_sha256 == key_digest(ALICE_KEY)
    assert alice.key_matches(ALICE_KEY) and not alice.key_matches(b"other")
    os.chmod(key, 0o644)
    assert error(f"[api alice]\nkey-file = {key}\n") == (
        f"access.conf, [api alice]: 'key-file': key file {key} is readable by other users (mode 0644): "
        f"run chmod 600 {key}"
    )
    assert error(f"[api alice]\nkey-file = {tmp_path}/missing.key\n") == (
        f"access.conf, [api alice]: 'key-file': cannot read key file {tmp_path}/missing.key: No such file or "
        "directory: give the path of a file holding the key"
    )


def test_load(tmp_path: Path) -> None:
    source = tmp_path / "access.conf"
    source.write_text(EXAMPLE)
    access = Access.load(str(source))
    assert access.source == str(source) and access.names("service") == ["greeter"]
    source.write_text("[api]\n")
    with pytest.raises(ConfigError, match=f"^{source}, \\[api\\]: a section header"):
        Access.load(str(source))
    with pytest.raises(ConfigError, match="cannot read access file .*missing.conf: No such file"):
        Access.load(str(tmp_path / "missing.conf"))


def test_allows_call_publish_implement() -> None:
    rights = Rights(call=("greet", "orders.*"), publish=("orders.>",), implement=("billing.*",))
    assert rights.allows("call", "greet") and rights.allows("call", "orders.list")
    assert not rights.allows("call", "greet.x") and not rights.allows("call", "orders.a.b")
    assert not rights.allows("call", "orders") and not rights.allows("call", "other")
    assert rights.allows("publish", "orders.a") and rights.allows("publish", "orders.a.b")
    assert not rights.allows("publish", "orders") and not rights.allows("publish", "greet")
    assert rights.allows("implement", "billing.charge") and not rights.allows("implement", "greet")
    assert not rights.allows("subscribe", "orders.a")
    assert all(ALL.allows(action, "any.thing") for action in ("call", "publish", "subscribe", "implement"))
    with pytest.raises(ValueError, match="unknown action 'delete'"):
        rights.allows("delete", "x")


@pytest.mark.parametrize(
    "allow, requested, expected",
    [
        ("orders.>", "orders.*", True),
        ("orders.>", "orders.a.>", True),
        ("orders.>", "orders.x", True),
        ("orders.>", "orders.>", True),
        ("orders.>", "orders", False),
        ("orders.>", ">", False),
        ("orders.*", "orders.x", True),
        ("orders.*", "orders.*", True),
        ("orders.*", "orders.>", False),
        ("orders.*", "orders.a.b", False),
        ("orders.*", "orders", False),
        (">", ">", True),
        (">", "a.*.>", True),
        ("*.created", "orders.created", True),
        ("*.created", "*.created", True),
        ("*.created", "*.*", False),
        ("*.*", "*.created", True),
        ("orders.created", "orders.created", True),
        ("orders.created", "orders.*", False),
        ("a.*.>", "a.b.c", True),
        ("a.*.>", "a.b", False),
        ("a.*.>", "a.*.*.>", True),
    ],
)
def test_subscribe_covers(allow: str, requested: str, expected: bool) -> None:
    assert covers(allow, requested) is expected
    assert Rights(subscribe=(allow,)).allows("subscribe", requested) is expected


literal = st.sampled_from(["a", "b"])
patterns = st.builds(
    lambda tokens, tail: ".".join(tokens + tail),
    st.lists(st.one_of(literal, st.just("*")), min_size=0, max_size=4),
    st.sampled_from([[], [">"]]),
).filter(bool)
#: Events over the patterns' tokens and one they never name.
events = st.lists(st.sampled_from(["a", "b", "z"]), min_size=1, max_size=6).map(".".join)


@given(st.lists(patterns, max_size=4), patterns, st.lists(events, max_size=30))
def test_an_allowed_subscription_gets_only_allowed_events(
    allowed: list[str], requested: str, sample: list[str]
) -> None:
    if Rights(subscribe=tuple(allowed)).allows("subscribe", requested):
        for event in sample:
            if matches(requested, event):
                assert any(matches(pattern, event) for pattern in allowed)


#: Every event of up to 5 tokens over a, b and z: enough to find what a pattern of up to 4 tokens misses.
EVERY_EVENT = [".".join(tokens) for size in range(1, 6) for tokens in itertools.product("abz", repeat=size)]


@given(patterns, patterns)
def test_covers_is_exact(allow: str, requested: str) -> None:
    """covers() says yes exactly when no event matched by the request escapes the allow pattern."""
    escapes = any(matches(requested, event) and not matches(allow, event) for event in EVERY_EVENT)
    assert covers(allow, requested) is not escapes


@given(st.lists(patterns, max_size=4), st.lists(events, min_size=1, max_size=5))
def test_call_allows_what_matches(allowed: list[str], names: list[str]) -> None:
    rights = Rights(call=tuple(allowed), publish=tuple(allowed), implement=tuple(allowed))
    for name in [*names, *allowed]:
        expected = any(matches(pattern, name) for pattern in allowed)
        assert rights.allows("call", name) is rights.allows("publish", name) is rights.allows("implement", name)
        assert rights.allows("call", name) is expected
