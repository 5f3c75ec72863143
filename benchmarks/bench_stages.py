"""CPU microseconds per event for each stage of the batched webhook path.

Run: python benchmarks/bench_stages.py [--events N]

Each stage runs in this process over the same N events (benchmarks/events.py), with the
config of bench_webhook.py (a mapping with drop, rename, two jsonpath fields and a Jinja
title; batches of 100): decode (nwpipe's decoder over 64 KiB chunks; orjson.loads alone
for scale), route (event check + output filters), map, delivery id (where ids are
worked out lazily: the seeds a batch id hashes instead), the Delivery objects, serialising
the bodies, engine (queue, lanes and batches to an output that does nothing, a chunk at a
time), and then `nwpipe run` itself against a receiver in another process: its CPU per
event minus the stages above is what HTTP, the reading loop and start-up cost (start-up
alone is 0.2-0.3 s of CPU: 10-15 us per event at 20,000 events). The plain orjson load/pick/dump loop of
bench_run.py is timed too, as the yardstick.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT))

import orjson  # noqa: E402
from bench_webhook import CONFIG, Receiver, run_nwpipe  # noqa: E402

from events import generate  # noqa: E402


def cpu_us(label: str, count: int, func, results: dict) -> None:
    gc.collect()
    gc.freeze()  # what earlier stages left alive is not scanned again
    started = time.process_time()
    func()
    results[label] = (time.process_time() - started) / count * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=20_000)
    args = parser.parse_args()
    count = args.events

    from nwpipe import Delivered, Output
    from nwpipe.config import build_config, read_toml
    from nwpipe.engine.deadletter import DeadLetterFile
    from nwpipe.engine.delivery import DeliveryEngine
    from nwpipe.engine.pipeline import tune_gc
    from nwpipe.outputs import Delivery, delivery_id
    from nwpipe.plugins import Plugins
    from nwpipe.sources.decode import Decoder, Event
    from nwpipe.transform.route_map import check_event
    from nwpipe.transform.routing import Router

    raw = b"".join(orjson.dumps(e) + b"\n" for e in generate(count))
    results: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        config_path = work / "bench.toml"
        config_path.write_text(CONFIG.format(url="http://127.0.0.1:9", concurrency=64,
                                             extra="batch = { max_events = 100 }"))
        plugins = Plugins(load_entry_points=False)
        config = build_config(read_toml(str(config_path)), plugins.output_types,
                              file=str(config_path), source_types=plugins.source_types)
        router = Router(config, plugins.jinja_filters)
        [route] = router.routes
        tune_gc()  # the collector settings `nwpipe run` uses

        def loop() -> None:  # bench_run.py's yardstick: load, pick, dump
            out = []
            for line in raw.splitlines():
                e = orjson.loads(line)
                out.append(orjson.dumps({"id": e["id"], "state": e["alerttype"],
                                         "tenant": e["customer"]}))
        cpu_us("orjson load/pick/dump loop (yardstick)", count, loop, results)
        cpu_us("  orjson.loads alone", count,
               lambda: [orjson.loads(line) for line in raw.splitlines()], results)

        items: list = []

        def decode() -> None:
            decoder = Decoder("bench")
            for start in range(0, len(raw), 65536):
                items.extend(decoder.feed(raw[start:start + 65536]))
            items.extend(decoder.finish())
        cpu_us("decode", count, decode, results)
        events = [item.data for item in items if isinstance(item, Event)]
        assert len(events) == count, "the decoder lost events"

        cpu_us("route (check + filters)", count,
               lambda: [check_event(e) or route.matches(e) for e in events], results)
        bodies: list = []
        cpu_us("map", count,
               lambda: bodies.extend(route.mapper(e["customer"])(e) for e in events), results)
        deliveries: list = []
        lazy = hasattr(Delivery, "seed")  # the delivery id is worked out only when needed
        if lazy:
            # what a batch needs instead of one id per member: the members' seeds
            cpu_us("delivery id (batch id seeds)", count,
                   lambda: [Delivery(None, None, e, "", "", 0).seed for e in events], results)
            ids: list = [None] * count
        else:
            ids = []
            cpu_us("delivery id", count, lambda: ids.extend(delivery_id(e) for e in events),
                   results)
        cpu_us("Delivery objects", count,
               lambda: deliveries.extend(Delivery(ids[i], body, e, route.name, "bench", i)
                                         for i, (e, body) in enumerate(zip(events, bodies))),
               results)
        cpu_us("serialise (the body as JSON)", count,
               lambda: [d.body_json() for d in deliveries], results)

        class Nothing(Output):
            async def send(self, batch):
                return Delivered()

        async def engine_run() -> None:
            dead = DeadLetterFile(work / "dead.jsonl")
            engine = DeliveryEngine(Nothing("bench", {}), config.outputs["bench"].engine, dead)
            await engine.start()
            # as `nwpipe run` hands them over: a chunk at a time (offer_many), else
            # without a coroutine per event while there is room (offer)
            offer = getattr(engine, "offer", None)
            offer_many = getattr(engine, "offer_many", None)
            for start in range(0, len(deliveries), 40):  # ~40 events per 64 KiB read
                chunk = deliveries[start:start + 40]
                taken = offer_many(chunk) if offer_many is not None else 0
                for d in chunk[taken:]:
                    if offer is None or not offer(d):
                        await engine.submit(d)
                await asyncio.sleep(0)  # the reader yields between chunks
            await engine.drain()
            await engine.close()
            dead.close()
            assert engine.stats.delivered == count
        cpu_us("engine (queue, lanes, batches)", count, lambda: asyncio.run(engine_run()),
               results)

        events_path = work / "events.jsonl"
        events_path.write_bytes(raw)
        receiver = Receiver()
        try:
            run_nwpipe(work, receiver, events_path, 64, "batch = { max_events = 100 }", count)
            best = min((run_nwpipe(work, receiver, events_path, 64,
                                   "batch = { max_events = 100 }", count) for _ in range(3)),
                       key=lambda r: r["cpu"])
        finally:
            receiver.stop()
        whole = best["cpu"] / count * 1e6

    stages = sum(v for k, v in results.items() if not k.startswith(("orjson", " ")))
    print(f"{count:,} events, CPU microseconds per event (this process; `nwpipe run` in its "
          f"own process, start-up included)")
    for label, value in results.items():
        print(f"  {label:<42} {value:7.1f}")
    print(f"  {'sum of the stages above':<42} {stages:7.1f}")
    print(f"  {'nwpipe run, batches of 100, whole process':<42} {whole:7.1f}")
    print(f"  {'  of which HTTP, reading loop, start-up':<42} {whole - stages:7.1f}")


if __name__ == "__main__":
    main()
