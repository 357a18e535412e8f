"""
Tier 1: nothing one peer sends can hurt another. Random and malformed boxes
and frames, split at random points, thrown at each server before and after
authentication: the server survives, and a well-behaved client on another
connection keeps getting correct answers.
"""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.internet.protocol import Protocol
from twisted.protocols import amp

from nswarm.master.master import ApiServerProtocol, NodeServerProtocol
from nswarm.node.node import ServiceServerProtocol
from nswarm.service import Service, implement

from .support import API_KEY, NODE_KEY, SERVICE_KEY, Cluster, certified, connect, result_of


class Echo(Service):
    @implement
    def echo(self, value: Any) -> Any:
        return value


commands = st.sampled_from(
    [
        b"Call",
        b"Publish",
        b"Cancel",
        b"CallAll",
        b"Implement",
        b"Subscribe",
        b"Heartbeat",
        b"Authenticate",
        b"Nope",
        b"\xff\xfe",
        b"",
    ]
)
control = st.sampled_from(
    [
        b"_command",
        b"_ask",
        b"_answer",
        b"_error",
        b"_error_code",
        b"method",
        b"event",
        b"args",
        b"args.1",
        b"payload",
        b"timeout",
        b"id",
        b"methods",
        b"key",
        b"exclude",
    ]
)
values = st.one_of(st.binary(max_size=40), st.sampled_from([b"echo", b"-1", b"1e999", b"nan", b"0", b"\x00\x05ab"]))
boxes = st.dictionaries(st.one_of(control, st.binary(min_size=1, max_size=8)), values, max_size=6).map(lambda box: box)
frames = st.one_of(
    boxes.map(lambda box: amp.AmpBox(box).serialize()),
    st.tuples(commands, boxes).map(
        lambda pair: amp.AmpBox({**pair[1], b"_command": pair[0]}).serialize() if pair[0] else b""
    ),
    st.binary(max_size=64),
)


def assert_cluster_works(cluster: Cluster, api: Any) -> None:
    assert result_of(cluster.run(api.call("echo", {"still": "fine"}))) == {"still": "fine"}


#: The inputs: frames to send, where to split them, whether to authenticate first, which server.
INPUTS = (
    st.lists(frames, max_size=8),
    st.lists(st.integers(min_value=0), max_size=6),
    st.booleans(),
    st.sampled_from(["api", "node", "service"]),
)


def check_garbage(chunks: list[bytes], cuts: list[int], authenticate: bool, target: str) -> None:
    """Throw C{chunks} (split at C{cuts}) at one server; the cluster must keep answering."""
    cluster = Cluster()
    node, _, _ = cluster.add_node("a")
    cluster.add_service(node, Echo())
    api, _ = cluster.add_api()
    server: Any
    if target == "api":
        server, key = ApiServerProtocol(cluster.master, cluster.clock, API_KEY), API_KEY
    elif target == "node":
        server, key = certified(NodeServerProtocol(cluster.master, cluster.clock, NODE_KEY), "x"), NODE_KEY
    else:
        server, key = ServiceServerProtocol(node, cluster.clock, SERVICE_KEY), SERVICE_KEY
    attacker = Protocol()  # reads nothing back: only the server's behaviour matters
    cluster.pumps.append(connect(server, attacker))
    if authenticate:
        attacker.transport.write(amp.AmpBox({b"_command": b"Authenticate", b"_ask": b"a1", b"key": key}).serialize())
        cluster.flush()
        assert server.authenticated
    data = b"".join(chunks)
    previous = 0
    for cut in sorted(cut % (len(data) + 1) for cut in cuts) + [len(data)]:
        if attacker.transport is not None and not attacker.transport.disconnecting:
            attacker.transport.write(data[previous:cut])
        previous = cut
        cluster.flush()
    assert_cluster_works(cluster, api)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(*INPUTS)
def test_garbage_never_hurts_other_connections(
    chunks: list[bytes], cuts: list[int], authenticate: bool, target: str
) -> None:
    check_garbage(chunks, cuts, authenticate, target)


def test_the_fuzz_harness_runs() -> None:
    """fuzz/fuzz_servers.py (for long runs by hand) works: CI runs it for a bounded count."""
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parent.parent / "fuzz" / "fuzz_servers.py"
    done = subprocess.run(
        [sys.executable, str(script), "--examples", "25"], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "25 inputs tried" in done.stdout
