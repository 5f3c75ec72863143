"""Throughput of the input decoder on JSON lines, against a bare orjson loop.

    python benchmarks/bench_decoder.py [EVENTS]

Writes EVENTS (default 100000) vendor-sized events, one per line, to a temporary file
and decodes it three ways, best of several rounds each:

* bare:    ``for line in f: orjson.loads(line)`` (the floor: no line numbers, no events)
* decoder: ``iter_chunks`` + ``Decoder.feed`` (what ``nwpipe run`` does)
* feed:    ``Decoder.feed`` alone over chunks already in memory

once with Python's default GC thresholds and once with a raised generation-0 threshold.
"""

from __future__ import annotations

import gc
import os
import sys
import tempfile
import time
from pathlib import Path

import orjson

from nwpipe.sources.decode import Decoder, iter_chunks

SAMPLE = Path(__file__).resolve().parent.parent / "examples" / "netography-sample.json"
ROUNDS = 5


def make_lines(count: int) -> bytes:
    event = orjson.loads(SAMPLE.read_bytes())
    lines = []
    for i in range(count):
        event["id"] = f"00edee24-bc66-4b37-803c-{i:012d}"
        event["updatecount"] = i % 7
        lines.append(orjson.dumps(event))
    return b"\n".join(lines) + b"\n"


def best(func) -> float:
    times = []
    for _ in range(ROUNDS):
        start = time.perf_counter()
        func()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 100_000
    data = make_lines(count)
    chunks = [data[i:i + 65536] for i in range(0, len(data), 65536)]
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "events.jsonl")
        with open(path, "wb") as f:
            f.write(data)

        def bare() -> None:
            loads = orjson.loads
            with open(path, "rb") as f:
                for line in f:
                    loads(line)

        def decoder() -> None:
            dec = Decoder(path)
            got = 0
            for chunk in iter_chunks(path):
                got += len(dec.feed(chunk))
            got += len(dec.finish())
            assert got == count, got

        def feed() -> None:
            dec = Decoder(path)
            for chunk in chunks:
                dec.feed(chunk)
            dec.finish()

        print(f"{count} events, {len(data) / count:.0f} bytes each, "
              f"{len(data) / 1e6:.1f} MB, best of {ROUNDS}")
        threshold = gc.get_threshold()
        for label, gen0 in (("default GC", threshold[0]), ("GC gen0 threshold 100000", 100_000)):
            # The decoder hands out ~50 events per 64 KiB chunk, enough young containers
            # to trigger the cyclic GC, while the bare loop frees each dict at once; a
            # long-running pipeline holding events in queues pays that GC cost anyway.
            gc.set_threshold(gen0, *threshold[1:])
            t_bare = best(bare)
            t_decoder = best(decoder)
            t_feed = best(feed)
            gc.set_threshold(*threshold)
            print(f"{label}:")
            print(f"  bare loop      : {count / t_bare:12,.0f} events/s")
            print(f"  decoder (file) : {count / t_decoder:12,.0f} events/s   "
                  f"{t_bare / t_decoder:.2f}x of bare")
            print(f"  feed() only    : {count / t_feed:12,.0f} events/s   "
                  f"{t_bare / t_feed:.2f}x of bare")

        # For reference: the vendor's pretty-printed layout (about 100 lines per event).
        pretty = SAMPLE.read_bytes() * (count // 10)
        pretty_chunks = [pretty[i:i + 65536] for i in range(0, len(pretty), 65536)]

        def feed_pretty() -> None:
            dec = Decoder(path)
            for chunk in pretty_chunks:
                dec.feed(chunk)
            dec.finish()

        t_pretty = best(feed_pretty)
        print(f"pretty-printed vendor sample, feed() only: "
              f"{count // 10 / t_pretty:12,.0f} events/s")


if __name__ == "__main__":
    main()
