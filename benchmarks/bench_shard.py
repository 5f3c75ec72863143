"""The reader's share of ``nwpipe run --workers N``: splitting input between workers.

    python benchmarks/bench_shard.py [--events 50000] [--workers 2]

CPU microseconds per event, best of 5, on vendor-shaped JSON lines in memory:

* the reader: :class:`nwpipe.sources.shard.Sharder` over 128 KiB chunks (find each
  line's alert id without parsing it, build one frame of raw lines per worker);
* the workers' decoding of those frames (:func:`nwpipe.sources.shard.decode_lines`),
  all workers together;
* beside them, one process's decoder (:class:`nwpipe.sources.decode.Decoder`) on the
  same chunks: what the workers' decoding replaces.
"""

from __future__ import annotations

import argparse
import sys
import time
import timeit
from pathlib import Path

import orjson

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from nwpipe.sources.decode import Decoder  # noqa: E402
from nwpipe.sources.shard import HEADER, LINES, Sharder, decode_lines  # noqa: E402

from events import generate  # noqa: E402

CHUNK = 1 << 17


def best(function, rounds: int = 5) -> float:
    """CPU seconds of the quickest of ``rounds`` calls."""
    return min(timeit.repeat(function, timer=time.process_time, number=1, repeat=rounds))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=50_000)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    data = b"".join(orjson.dumps(e) + b"\n" for e in generate(args.events))
    chunks = [data[i:i + CHUNK] for i in range(0, len(data), CHUNK)]
    frames: list[bytes] = []

    def shard() -> None:
        frames.clear()
        sharder = Sharder(args.workers)
        sharder.start(0, "events")
        for chunk in chunks:
            for parts in sharder.feed(chunk):
                frames.append(b"".join(parts))
        for parts in sharder.finish():
            frames.append(b"".join(parts))

    def decode_frames() -> None:
        count = 0
        for frame in frames:
            at = 0
            while at < len(frame):
                kind, _arg, size = HEADER.unpack_from(frame, at)
                if kind == LINES:
                    payload = frame[at + HEADER.size:at + HEADER.size + size]
                    for items in decode_lines(payload, "events", 1 << 20):
                        count += len(items)
                at += HEADER.size + size
        assert count == args.events

    def decode_one_process() -> None:
        decoder = Decoder("events")
        count = sum(len(decoder.feed(chunk)) for chunk in chunks) + len(decoder.finish())
        assert count == args.events

    per_event = 1e6 / args.events
    reader = best(shard) * per_event
    workers = best(decode_frames) * per_event
    one = best(decode_one_process) * per_event
    print(f"{args.events:,} events, {len(data) / args.events:,.0f} bytes each, "
          f"{args.workers} workers; CPU µs per event, best of 5")
    print(f"  reader (Sharder: id found, frames built)   {reader:6.2f}")
    print(f"  workers' decoding of the frames (all)      {workers:6.2f}")
    print(f"  one process's decoder, for comparison      {one:6.2f}")


if __name__ == "__main__":
    main()
