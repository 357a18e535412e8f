"""
The front-end rows of make bench (issue 13): W1-W3 through the asyncio
SDK (L{nswarm.aio}) and the blocking one (L{nswarm.sync}), each run by
bench/frontend_load.py in its own process against the same cluster, in the
same run, right after the Twisted SDK's row of the same workload; their
ratios are to that row's floor. CPU is the client process's own.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from twisted.internet.utils import getProcessOutputAndValue

from nswarm.testing.local import LocalCluster

#: The front ends measured beside the Twisted SDK, in order.
FRONTS = ("aio", "sync")
#: The workloads they run (the echo ones).
ECHO = ("W1", "W2", "W3")
LOAD = Path(__file__).with_name("frontend_load.py")


async def run_frontends(
    reactor: Any,
    cluster: LocalCluster,
    workload: Any,
    twisted_row: dict[str, Any],
    figures: Callable[[Any, float, list[float]], dict[str, float]],
) -> list[dict[str, Any]]:
    """
    Run C{workload} through each front end; return one record per front end,
    its floor taken from C{twisted_row} (the Twisted SDK's record of the
    same workload) and its figures computed by C{figures(workload, elapsed, latencies)}.
    """
    records = []
    config = str(cluster.running_client_config())
    for front in FRONTS:
        record: dict[str, Any] = {"workload": f"{workload.name} {front}", "what": f"{workload.what}, {front} SDK"}
        arguments = [str(LOAD), front, config, str(workload.payload), str(workload.outstanding)]
        arguments += [str(workload.count), str(workload.warmup)]
        run = getProcessOutputAndValue(sys.executable, arguments, env=dict(os.environ), reactor=reactor)
        out, err, code = await run
        if code != 0:
            last = err.decode("utf-8", "replace").strip().splitlines()[-1:] or [f"exit code {code}"]
            record["error"] = last[0]
            print(f"  {record['workload']} failed: {record['error']}", file=sys.stderr)
        else:
            result = json.loads(out.decode("utf-8").strip().splitlines()[-1])
            ours = figures(workload, result["elapsed"], result["latencies"])
            floor = twisted_row["floor"]
            record.update(
                floor=floor,
                nswarm=ours,
                ratio={key: round(value / floor[key], 2) for key, value in ours.items() if floor.get(key)},
                nswarm_cpu={f"{front} client": result["cpu_percent"]},
            )
        records.append(record)
    return records
