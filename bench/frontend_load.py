"""
One echo workload (W1-W3) through the asyncio or the blocking SDK, run in
its own process by bench/run.py against the cluster it started, so that a
user sees what each front end costs beside the Twisted SDK's rows.

    python bench/frontend_load.py aio|sync CONFIG PAYLOAD OUTSTANDING COUNT WARMUP

prints one JSON line: the elapsed seconds of the measured calls, this
process's CPU over them (100 = one core) and, with 1 outstanding, each
call's latency (seconds). The blocking client keeps
OUTSTANDING calls in flight with as many threads, as a threaded program
would; the asyncio one with as many tasks.
"""

from __future__ import annotations

import asyncio
import json
import sys
import threading
import time
from typing import Any

from nswarm import aio, sync


def measured(start: float, cpu: float, latencies: list[float] | None) -> dict[str, Any]:
    """The JSON figures of a run that began at C{start} (perf_counter) and C{cpu} (this process's CPU time)."""
    elapsed = time.perf_counter() - start
    return {
        "elapsed": elapsed,
        "cpu_percent": round(100 * (time.process_time() - cpu) / elapsed, 1),
        "latencies": latencies or [],
    }


async def aio_loop(client: Any, text: str, outstanding: int, total: int, latencies: list[float] | None) -> None:
    """Keep C{outstanding} calls in flight on the asyncio client until C{total} have been answered."""
    left = total

    async def worker() -> None:
        nonlocal left
        while left > 0:
            left -= 1
            sent = time.perf_counter()
            await client.call("echo", text)
            if latencies is not None:
                latencies.append(time.perf_counter() - sent)

    await asyncio.gather(*[worker() for _ in range(min(outstanding, total))])


async def run_aio(config: str, text: str, outstanding: int, count: int, warmup: int) -> dict[str, Any]:
    """The workload through L{nswarm.aio}."""
    async with await aio.connect_from_config(config) as client:
        if warmup:
            await aio_loop(client, text, outstanding, warmup, None)
        latencies: list[float] | None = [] if outstanding == 1 else None
        start, cpu = time.perf_counter(), time.process_time()
        await aio_loop(client, text, outstanding, count, latencies)
        return measured(start, cpu, latencies)


def sync_loop(client: Any, text: str, outstanding: int, total: int, latencies: list[float] | None) -> None:
    """Keep C{outstanding} calls in flight on the blocking client, one thread each, until C{total} are answered."""
    lock = threading.Lock()
    left = [total]
    errors: list[BaseException] = []

    def worker() -> None:
        while True:
            with lock:
                if left[0] <= 0 or errors:
                    return
                left[0] -= 1
            sent = time.perf_counter()
            try:
                client.call("echo", text)
            except BaseException as error:  # reported by the parent as the workload's failure
                errors.append(error)
                return
            if latencies is not None:
                latencies.append(time.perf_counter() - sent)  # list.append is atomic

    threads = [threading.Thread(target=worker) for _ in range(min(outstanding, total))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]


def run_sync(config: str, text: str, outstanding: int, count: int, warmup: int) -> dict[str, Any]:
    """The workload through L{nswarm.sync}."""
    with sync.connect_from_config(config) as client:
        if warmup:
            sync_loop(client, text, outstanding, warmup, None)
        latencies: list[float] | None = [] if outstanding == 1 else None
        start, cpu = time.perf_counter(), time.process_time()
        sync_loop(client, text, outstanding, count, latencies)
        return measured(start, cpu, latencies)


def main() -> None:
    """Run the workload the arguments give; print its JSON line."""
    front, config, payload, outstanding, count, warmup = sys.argv[1:7]
    text = "x" * int(payload)
    if front == "aio":
        result = asyncio.run(run_aio(config, text, int(outstanding), int(count), int(warmup)))
    elif front == "sync":
        result = run_sync(config, text, int(outstanding), int(count), int(warmup))
    else:
        raise SystemExit(f"unknown front end {front!r}: aio or sync")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
