"""Tier 1: nswarm status, call, publish and watch, run against a cluster in memory."""

from __future__ import annotations

import io
import json
from typing import Any

import pytest
from twisted.internet.defer import ensureDeferred
from twisted.python import usage

from nswarm import amp_commands as errors
from nswarm.cli_cluster import (
    EXIT_CODES,
    CallOptions,
    PublishOptions,
    StatusOptions,
    WatchOptions,
    call,
    config_path,
    default_config,
    exit_code,
    publish,
    status,
    value,
    watch,
)
from nswarm.service import Service, implement, subscribe

from .support import Cluster, failure_of, result_of


class Greeter(Service):
    name = "greeter"

    @implement
    def greet(self, name: str, punctuation: str = "!") -> str:
        return f"hello, {name}{punctuation}"

    @subscribe("orders.*")
    def order(self, event: str, payload: Any) -> None:
        pass


def cluster_with_greeter() -> tuple[Cluster, Any]:
    cluster = Cluster()
    node, _, _ = cluster.add_node("node-1")
    cluster.add_service(node, Greeter())
    client, _ = cluster.add_api()
    return cluster, client


def parsed(options: usage.Options, *argv: str) -> Any:
    options.parseOptions(list(argv))
    return options


def run(cluster: Cluster, command: Any, client: Any, options: Any) -> tuple[Any, str]:
    out = io.StringIO()
    d = ensureDeferred(command(client, options, out))
    cluster.flush()
    return d, out.getvalue()


def test_call_prints_the_result_as_json() -> None:
    cluster, client = cluster_with_greeter()
    d, printed = run(cluster, call, client, parsed(CallOptions(), "greet", "world"))
    assert result_of(d) == 0 and printed == '"hello, world!"\n'
    options = parsed(CallOptions(), "greet", "world", "--kw", "punctuation=?", "--timeout", "5")
    d, printed = run(cluster, call, client, options)
    assert result_of(d) == 0 and json.loads(printed) == "hello, world?"
    d, printed = run(cluster, call, client, parsed(CallOptions(), "--all", "greet", "you"))
    assert result_of(d) == 0 and json.loads(printed) == ["hello, you!"]


def test_a_failed_call_has_its_own_exit_code() -> None:
    cluster, client = cluster_with_greeter()
    d, _ = run(cluster, call, client, parsed(CallOptions(), "nobody"))
    error = failure_of(d).value
    assert isinstance(error, errors.NoSuchMethod) and exit_code(error) == 6
    assert len(set(EXIT_CODES.values())) == len(EXIT_CODES) and min(EXIT_CODES.values()) == 3
    assert exit_code(ValueError()) == 1


def test_arguments_are_json_if_they_parse_else_strings() -> None:
    assert [value(text) for text in ("7", "true", '{"a": 1}', "world", "")] == [7, True, {"a": 1}, "world", ""]
    with pytest.raises(usage.UsageError, match="NAME=VALUE"):
        parsed(CallOptions(), "greet", "--kw", "nope")
    with pytest.raises(usage.UsageError, match="Give the method"):
        parsed(CallOptions())


def test_watch_prints_the_events_another_client_publishes() -> None:
    cluster, client = cluster_with_greeter()
    publisher, _ = cluster.add_api()
    d, _ = run(cluster, watch, client, parsed(WatchOptions(), "orders.*", "--count", "2"))
    out = io.StringIO()
    watching = ensureDeferred(watch(client, parsed(WatchOptions(), "orders.*", "--count", "2"), out))
    cluster.flush()
    published = ensureDeferred(publish(publisher, parsed(PublishOptions(), "orders.created", '{"id": 7}'), out))
    cluster.flush()
    assert result_of(published) == 0
    result_of(cluster.run(publisher.publish("users.created", 1)))
    result_of(cluster.run(publisher.publish("orders.paid", "x")))
    assert result_of(watching) == 0
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert lines == [{"event": "orders.created", "payload": {"id": 7}}, {"event": "orders.paid", "payload": "x"}]
    assert result_of(d) == 0  # the first watcher saw the same two


def test_status_prints_tables_or_json() -> None:
    cluster, client = cluster_with_greeter()
    result_of(cluster.run(client.call("greet", "a")))
    d, printed = run(cluster, status, client, parsed(StatusOptions()))
    assert result_of(d) == 0
    assert "NODES" in printed and "node-1" in printed and "greeter" in printed
    methods = printed[printed.index("\nMETHODS\n") :]
    greet = next(line for line in methods.splitlines() if line.startswith("greet"))
    assert greet.split()[:6] == ["greet", "node-1", "0", "0", "1", "0"]
    d, printed = run(cluster, status, client, parsed(StatusOptions(), "--json"))
    assert result_of(d) == 0 and json.loads(printed)["services"][0]["name"] == "greeter"


def test_the_config_comes_from_the_option_the_environment_or_the_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NSWARM_CONFIG", "/etc/nswarm/client.conf")
    assert config_path("given.conf") == "given.conf"
    assert config_path(None) == "/etc/nswarm/client.conf"
    monkeypatch.delenv("NSWARM_CONFIG")
    monkeypatch.setenv("XDG_CONFIG_HOME", "/home/u/.config")
    assert config_path(None) == str(default_config()) == "/home/u/.config/nswarm/client.conf"
