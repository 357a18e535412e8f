"""
The chaos suite's accounts (bench/chaos.py): what the services ran (from
their run logs), what the subscribers got (from their event logs) set
against what was published, the drops the daemons logged, and the table.

Events, per fault window (an event counts in the window in which its
publish was answered, each window opening L{EVENT_LEAD} seconds before its
fault): C{published} were answered with the number of nodes the master
handed them to; C{not handed} are the deliveries that number says were not
made (a node was down or had not registered again); C{lost} are
deliveries missing beyond those (handed on, never received);
C{duplicated} and C{reordered} are per subscriber (an event received
again; one received after a later one). C{dropped} is what the daemons
logged dropping (their C{events_dropped} events, in the window in which
they were logged), and what the status document's C{events.dropped} grew
by over the window where no daemon restarted in it.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

from chaos_load import EVENT_LEAD, CallStats, Load, Timeline

from nswarm.testing.local import Process, nswarm_event

#: Subscribers per event (one per node).
SUBSCRIBERS = 2


def read_lines(path: Path) -> list[str]:
    """The complete lines of C{path} (none if it does not exist)."""
    try:
        text = path.read_text("ascii")
    except FileNotFoundError:
        return []
    return text.split("\n")[:-1]


def runs(paths: list[Path]) -> dict[str, Any]:
    """What the echo services ran: the calls to the non-idempotent method that ran more than once, and the rest."""
    counts: dict[str, Counter[int]] = {"i": Counter(), "p": Counter()}
    for path in paths:
        for line in read_lines(path):
            kind, _, call_id = line.partition(" ")
            counts[kind][int(call_id)] += 1
    twice = sorted(call_id for call_id, count in counts["p"].items() if count > 1)
    return {
        "plain_runs": sum(counts["p"].values()),
        "plain_ran_twice": len(twice),
        "plain_ran_twice_ids": twice[:20],
        "idempotent_runs": sum(counts["i"].values()),
        "idempotent_ran_again": sum(count - 1 for count in counts["i"].values()),
    }


def received(path: Path) -> list[int]:
    """The sequence numbers a subscriber logged, in the order it got them."""
    return [int(line) for line in read_lines(path)]


def last_handed_to_all(load: Load) -> int | None:
    """The sequence number of the last event handed to every subscriber's node (None if none was)."""
    for seq in range(len(load.events) - 1, -1, -1):
        result = load.events[seq][1]
        if isinstance(result, int) and (result < 0 or result >= SUBSCRIBERS):
            return seq
    return None


def event_windows(load: Load, got: dict[str, list[int]], timeline: Timeline) -> list[dict[str, Any]]:
    """Per window: published, publish failures, deliveries not handed on, lost, duplicated and reordered."""
    windows = [
        {"published": 0, "publish_failed": Counter(), "not_handed": 0, "lost": 0, "duplicated": 0, "reordered": 0}
        for _ in timeline.names
    ]
    holders: Counter[int] = Counter()
    for deliveries in got.values():
        seen: set[int] = set()
        highest = -1
        for seq in deliveries:
            window = windows[_window(load, seq, timeline)]
            if seq in seen:
                window["duplicated"] += 1
                continue
            seen.add(seq)
            holders[seq] += 1
            if seq < highest:
                window["reordered"] += 1
            highest = max(highest, seq)
    for seq, (_, result) in enumerate(load.events):
        window = windows[_window(load, seq, timeline)]
        if not isinstance(result, int):
            window["publish_failed"][str(result) if result is not None else "unanswered"] += 1
            continue
        window["published"] += 1
        handed = SUBSCRIBERS if result < 0 else min(result, SUBSCRIBERS)
        window["not_handed"] += SUBSCRIBERS - handed
        window["lost"] += max(0, SUBSCRIBERS - holders[seq] - (SUBSCRIBERS - handed))
    for window in windows:
        window["publish_failed"] = dict(window["publish_failed"])
    return windows


def _window(load: Load, seq: int, timeline: Timeline) -> int:
    when = load.events[seq][0] if seq < len(load.events) else None
    return timeline.window_of(when, EVENT_LEAD) if when is not None else timeline.current


def dropped_windows(processes: list[Process], timeline: Timeline) -> list[dict[str, int]]:
    """Per window, the events each daemon logged dropping (the C{count} of its C{events_dropped} events)."""
    windows: list[Counter[str]] = [Counter() for _ in timeline.names]
    for process in processes:
        if process.kind == "service":
            continue
        for event in process.events(nswarm_event("events_dropped")):
            windows[timeline.window_of(float(event["log_time"]))][process.name] += int(event.get("count", 0))
    return [dict(window) for window in windows]


def status_dropped(before: dict[str, Any] | None, after: dict[str, Any] | None) -> int | None:
    """How much the status document's events.dropped grew from C{before} to C{after} (None if unknown)."""
    try:
        return int(after["events"]["dropped"]) - int(before["events"]["dropped"])  # type: ignore[index]
    except (KeyError, TypeError, ValueError):
        return None


# -- the table -----------------------------------------------------------------


def _errors(stats: dict[str, Any]) -> str:
    hung = ", ".join(f"{name} {count}" for name, count in stats["hung_outcomes"].items())
    shown = ", ".join(f"{name} {count}" for name, count in sorted(stats["errors"].items(), key=lambda kv: -kv[1]))
    if shown and stats["idempotent_failed"]:
        shown += f" (idempotent {stats['idempotent_failed']})"
    if hung:
        shown += f"{'; ' if shown else ''}hung ones got: {hung}"
    return shown or "-"


def _figure(value: Any) -> str:
    return "-" if value is None else f"{value:.3f}" if isinstance(value, float) else str(value)


def print_table(record: dict[str, Any]) -> None:
    """The chaos suite's tables, from its JSON record."""
    info = record["hardware"]
    total = sum(window["calls"]["calls"] for window in record["windows"])
    print(
        f"\nnswarm chaos suite ({'quick' if record['quick'] else 'full'} run; {info['nproc']} CPUs, {info['cpu']}, "
        f"Python {info['python']}): {total:,} calls in {record['seconds']:.0f} s, "
        f"{record['width']} in flight, {record['deadline']:g} s deadlines, {record['rate']} events/s"
    )
    print(
        f"\n{'fault':28} {'seconds':>7} {'calls':>7} {'calls/s':>7} {'hung':>5} {'late':>5} {'slowest':>7} "
        f"{'stall':>5}  failed"
    )
    for window in record["windows"]:
        calls = window["calls"]
        rate = calls["calls"] / window["seconds"] if window["seconds"] else 0
        print(
            f"{window['fault']:28} {window['seconds']:>7.1f} {calls['calls']:>7} {rate:>7.0f} {calls['hung']:>5} "
            f"{calls['late']:>5} {calls['slowest_s']:>7.3f} {calls.get('harness_stall_s', 0):>5.2f}  {_errors(calls)}"
        )
    print(
        f"\n{'fault':28} {'published':>9} {'not handed':>10} {'lost':>5} {'dup':>4} {'reord':>5} "
        f"{'dropped logs':>12} {'status':>6}  publish failures"
    )
    for window in record["windows"]:
        events = window["events"]
        failed = ", ".join(f"{name} {count}" for name, count in events["publish_failed"].items()) or "-"
        print(
            f"{window['fault']:28} {events['published']:>9} {events['not_handed']:>10} {events['lost']:>5} "
            f"{events['duplicated']:>4} {events['reordered']:>5} {sum(window['dropped'].values()):>12} "
            f"{_figure(window['status_dropped']):>6}  {failed}"
        )
    print("\ntimes, in seconds")
    for window in record["windows"][1:]:
        shown = ", ".join(f"{key} {_figure(value)}" for key, value in window["figures"].items())
        print(f"  {window['fault']:28} {shown}")
    print(f"\n{'RSS MB':10} {'before':>8} {'after':>8}")
    for name, before in record["rss_before"].items():
        after = record["rss_after"][name]
        again = "  (restarted)" if after["pid"] != before["pid"] else ""
        print(f"{name:10} {before['rss_mb'] or '-':>8} {after['rss_mb'] or '-':>8}{again}")
    ran = record["runs"]
    print(
        f"\nnon-idempotent calls run twice: {ran['plain_ran_twice']} (of {ran['plain_runs']:,} runs); "
        f"idempotent calls run again: {ran['idempotent_ran_again']} (of {ran['idempotent_runs']:,} runs)"
    )
    if record.get("error"):
        print(f"\nFAILED: {record['error']}")


def window_record(
    timeline: Timeline,
    index: int,
    ended: float,
    stats: CallStats,
    events: dict[str, Any],
    dropped: dict[str, int],
    extra: dict[str, Any],
) -> dict[str, Any]:
    """Window C{index}'s part of the JSON record (the last window lasted until C{ended}, wall clock)."""
    start = timeline.starts[index]
    end = timeline.starts[index + 1] if index + 1 < len(timeline.starts) else ended
    return {
        "fault": timeline.names[index],
        "seconds": round(end - start, 1),
        "calls": stats.as_json(start),
        "events": events,
        "dropped": dropped,
        **extra,
    }
