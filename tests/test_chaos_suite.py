"""
Tier 3: the chaos suite's short scenario (C{python bench/chaos.py --quick},
issue 12) against real daemons, asserting its invariants: under 50 calls in
flight and 200 events/s, through a service's SIGKILL, a service's and a
node's SIGSTOP and a master's SIGKILL and restart,

- no call hung (unanswered at its deadline + 5 s) or ended more than 0.1 s
  past its deadline;
- no call to the non-idempotent method ran twice (by the services' run logs);
- the stopped service and the stopped node were ejected within 2 s of their
  SIGSTOP (by the node's and the master's C{ejected} log events);
- both nodes registered again within 1 s of the restarted master listening
  (by the master's own log events).

The suite waits on log events and answers, with bounds; its only timed
pauses are the faults' own (stopped for 3 s, down for 1 s) and the load it
runs between faults. Every process is stopped, and checked gone.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted

BENCH = Path(__file__).resolve().parent.parent / "bench"
if str(BENCH) not in sys.path:
    sys.path.insert(0, str(BENCH))

from chaos import run_chaos, tails  # noqa: E402
from chaos_report import print_table  # noqa: E402

from nswarm.testing.local import alive_pids  # noqa: E402

#: The issue's bounds, in seconds.
EJECTION_BOUND = 2.0
REREGISTER_BOUND = 1.0


def violations(record: dict[str, Any]) -> list[str]:
    """What in the suite's C{record} breaks an invariant, in words (nothing if all held)."""
    found = []
    if record.get("error"):
        found.append(f"the scenario did not finish: {record['error']}")
    windows = {window["fault"]: window for window in record["windows"]}
    for name, window in windows.items():
        calls = window["calls"]
        if calls["hung"] or calls["late"]:
            found.append(f"{name}: {calls['hung']} calls hung, {calls['late']} late (slowest {calls['slowest_s']} s)")
        if calls["wrong_answers"]:
            found.append(f"{name}: {calls['wrong_answers']} answers were not [call id, service]")
    if record["runs"]["plain_ran_twice"]:
        found.append(f"non-idempotent calls ran twice: {record['runs']['plain_ran_twice_ids']}")
    for fault in ("service SIGSTOP 3 s", "node SIGSTOP 3 s"):
        ejected = windows.get(fault, {}).get("figures", {}).get("ejected_s")
        if ejected is None or ejected > EJECTION_BOUND:
            found.append(f"{fault}: ejected after {ejected} s (bound {EJECTION_BOUND} s; None: not while stopped)")
    again = windows.get("master kill -9, down 1 s", {}).get("figures", {}).get("reregistered_s")
    if again is None or again > REREGISTER_BOUND:
        found.append(f"nodes registered again {again} s after the master listened (bound {REREGISTER_BOUND} s)")
    return found


@pytest.mark.timeout(150)
@pytest_twisted.ensureDeferred
async def test_chaos_invariants_hold_through_the_short_scenario(directory: Path) -> None:
    """The quick chaos scenario: no call hung or late, none run twice, ejection within 2 s, back within 1 s."""
    from twisted.internet import reactor

    record = await run_chaos(reactor, directory, quick=True)
    print_table(record)  # pytest shows it (and the logs' tails) if the test fails
    found = violations(record)
    if found:
        tails(directory)
    pids = record["pids"]
    assert pids and not alive_pids(pids), f"processes still running: {alive_pids(pids)}"
    assert not found, "\n".join(found)
