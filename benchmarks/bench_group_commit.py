"""The SQLite queue's group commit, and how long the event loop waits because of it.

    python benchmarks/bench_group_commit.py [--producers 50] [--puts 400] [--size 300]

For each ``sync`` mode, ``--producers`` tasks each put ``--puts`` events of ``--size``
bytes one at a time (every put waits until its event is committed, as ``nwpipe run
--durable`` does per input chunk), while a ticker task sleeps 1 ms over and over and
records how late the loop wakes it. Commits happen on the writer thread, many puts per
commit, so the lateness is the loop's own scheduling, not the disk: printed as p50,
p99 and max, with the puts per second and the commits they took.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from nwpipe.queue import QueueSettings  # noqa: E402
from nwpipe.queue.sqlite import SqliteQueue  # noqa: E402


async def measure(sync: str, producers: int, puts: int, size: int) -> str:
    with tempfile.TemporaryDirectory() as tmp:
        queue = SqliteQueue(QueueSettings(path=os.path.join(tmp, "q.db"), sync=sync))
        await queue.open()
        gaps: list[float] = []
        done = asyncio.Event()
        payload = b'{"id": "a", "x": "' + b"y" * size + b'"}'

        async def ticker() -> None:
            loop = asyncio.get_running_loop()
            while not done.is_set():
                before = loop.time()
                await asyncio.sleep(0.001)
                gaps.append(loop.time() - before - 0.001)

        async def producer(k: int) -> None:
            for _ in range(puts):
                await queue.put([(f"alert-{k}", payload, "bench:1")])

        tick = asyncio.ensure_future(ticker())
        started = time.perf_counter()
        await asyncio.gather(*(producer(k) for k in range(producers)))
        seconds = time.perf_counter() - started
        done.set()
        await tick
        await queue.close()
    gaps.sort()
    total = producers * puts
    return (f"  sync = {sync:<7} {total / seconds:>9,.0f} puts/s   event loop late by: "
            f"p50 {gaps[len(gaps) // 2] * 1000:.2f} ms, p99 {gaps[len(gaps) * 99 // 100] * 1000:.2f}"
            f" ms, max {gaps[-1] * 1000:.2f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--producers", type=int, default=50)
    parser.add_argument("--puts", type=int, default=400)
    parser.add_argument("--size", type=int, default=300)
    args = parser.parse_args()
    print(f"{args.producers} tasks x {args.puts} puts of {args.size} bytes, one event per put, "
          f"{os.cpu_count()} CPUs")
    for sync in ("normal", "full"):
        print(asyncio.run(measure(sync, args.producers, args.puts, args.size)))


if __name__ == "__main__":
    main()
