"""End-to-end webhook throughput: ``nwpipe run`` against a bare aiohttp client.

    python benchmarks/bench_webhook.py [--events 20000] [--concurrency 64] [--rounds 3]

Generates vendor-shaped events (benchmarks/events.py), starts a receiver in its own
process (a minimal aiohttp server that answers 200 and counts bodies and events), then,
each in its own process against that one receiver:

1. ``bare``:   an aiohttp client posting the pre-mapped bodies (the exact bytes nwpipe
               sends), one request per event, at the same concurrency;
2. ``nwpipe``: the real CLI, ``nwpipe run -c bench.toml events.jsonl``: read, map with a
               small SIEM mapping (drop, rename, jsonpath and Jinja fields), deliver one
               request per event with ``concurrency = 64``;
3. ``nwpipe batch``: the same with ``batch = { max_events = 100 }``; and that again with
               ``--workers 2`` (two processes, each with its own connections);
4. ``--durable``: both again with every event committed to the queue file (SQLite)
               before it is delivered;
5. ``receiver down 5 s``: one request per event, but the receiver starts 5 seconds after
               nwpipe (connections refused until then): the memory queue fills, the rest
               waits in the queue file and is delivered when the receiver is up
               (``retry.max_backoff = 1`` so that it is noticed within a second; the
               time includes the 5 s outage).

Each is run ``--rounds`` times; the best round is shown. Rates are timed inside each
process (the bare client from its first request to its last response; nwpipe by its own
summary line: from opening the outputs, through reading every event, to the last
response), so interpreter start-up is not counted for either; wall-clock times including
start-up are printed too. The receiver's counts show that every event arrived. Peak RSS
is the nwpipe process's own maximum resident set size.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


def loop_mapping() -> str:
    """bench_run.py's mapping (its orjson loop's ten picks and title) as ``[mappings.loop]``,
    written for ``str.format`` like CONFIG (one copy of it, in bench_run.py)."""
    text = (HERE / "bench_run.py").read_text()
    start, end = text.index("[mappings.bench]"), text.index("[outputs.out]")
    return text[start:end].replace("[mappings.bench", "[mappings.loop")


CONFIG = """\
[mappings.siem]
drop   = ["beta", "bypassdisplay", "bypassrule", "metrics.clockahead", "metrics.clockbehind"]
rename = {{ alerttype = "state", id = "event_id" }}

[mappings.siem.fields]
src_ip   = "$.srcip[0]"
bits_max = {{ path = "$.metrics.bits.max", default = 0 }}
title    = "{{{{ algorithm | upper }}}} {{{{ alerttype }}}} for {{{{ customer }}}}"

LOOP_MAPPING
[outputs.bench]
type        = "webhook"
url         = "{url}/ingest"
mapping     = "siem"
concurrency = {concurrency}
{extra}
""".replace("LOOP_MAPPING\n", loop_mapping())


# --- the receiver (its own process) ---------------------------------------------------------


def receiver_main(port: int = 0) -> None:
    """Answer 200 to every POST; GET returns the counts as JSON."""
    import orjson
    from aiohttp import web

    counts = {"bodies": 0, "events": 0}

    async def handle(request: web.BaseRequest) -> web.Response:
        if request.method == "GET":
            return web.Response(body=orjson.dumps(counts), content_type="application/json")
        body = await request.read()
        counts["bodies"] += 1
        if body[:1] == b"[":
            counts["events"] += len(orjson.loads(body))
        elif request.headers.get("Content-Type", "").startswith("application/x-ndjson"):
            counts["events"] += body.count(b"\n")
        else:
            counts["events"] += 1
        return web.Response()

    async def serve() -> None:
        runner = web.ServerRunner(web.Server(handle), handle_signals=False)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", port, backlog=1024)
        await site.start()
        print(runner.addresses[0][1], loop_name(), flush=True)
        await asyncio.Event().wait()

    run_loop(serve())


# --- the bare client (its own process) ------------------------------------------------------


def client_main(url: str, bodies_path: str, concurrency: int) -> None:
    """POST every line of ``bodies_path`` to ``url`` at ``concurrency``; print timings."""
    import aiohttp

    bodies = Path(bodies_path).read_bytes().splitlines()

    async def main() -> None:
        connector = aiohttp.TCPConnector(limit=concurrency)
        headers = {"Content-Type": "application/json"}
        async with aiohttp.ClientSession(connector=connector) as session:
            feed = iter(bodies)
            failed = 0

            async def worker() -> None:
                nonlocal failed
                for body in feed:
                    async with session.post(url, data=body, headers=headers) as resp:
                        await resp.read()
                        if resp.status != 200:
                            failed += 1

            started = time.perf_counter()
            await asyncio.gather(*(worker() for _ in range(concurrency)))
            seconds = time.perf_counter() - started
        print(json.dumps({"requests": len(bodies), "failed": failed, "seconds": seconds,
                          "loop": loop_name()}), flush=True)

    run_loop(main())


# --- shared -------------------------------------------------------------------------------


# the same event loop nwpipe runs on (uvloop when installed), for a fair comparison
from nwpipe.engine.pipeline import event_loop_run as run_loop  # noqa: E402


def loop_name() -> str:
    loop = asyncio.get_running_loop()
    return "uvloop" if type(loop).__module__.startswith("uvloop") else "asyncio"


# --- the driver -----------------------------------------------------------------------------


class Receiver:
    def __init__(self, port: int = 0) -> None:
        self.proc = subprocess.Popen([sys.executable, __file__, "--role", "receiver",
                                      "--port", str(port)], stdout=subprocess.PIPE, text=True)
        port, self.loop = self.proc.stdout.readline().split()
        self.url = f"http://127.0.0.1:{port}"

    def counts(self) -> dict:
        import urllib.request
        with urllib.request.urlopen(self.url + "/counts") as resp:
            return json.loads(resp.read())

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait()


def run_child(argv: list[str], **kwargs) -> tuple[str, str, float, int, bool, float]:
    """Run a process to its end: (stdout, stderr, wall seconds, peak RSS in KiB (sampled),
    uvloop seen, CPU seconds)."""
    started = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kwargs)
    seen = {"uvloop": False, "hwm": 0}
    # not proc.poll() in the watcher: it could reap the child before wait4 below, which
    # then fails with ECHILD (seen under load)
    ended = threading.Event()

    def watch_maps() -> None:
        # The event loop in use, from the shared objects the process has loaded, and its
        # peak resident set size (VmHWM; wait4's ru_maxrss would also count the memory
        # of this process, which the child shares until it execs).
        proc_dir = Path(f"/proc/{proc.pid}")
        while not ended.is_set():
            try:
                if not seen["uvloop"]:
                    seen["uvloop"] = "uvloop" in (proc_dir / "maps").read_text()
                for text in (proc_dir / "status").read_text().splitlines():
                    if text.startswith("VmHWM:"):
                        seen["hwm"] = max(seen["hwm"], int(text.split()[1]))
            except (OSError, ValueError):
                return
            time.sleep(0.01)

    watcher = threading.Thread(target=watch_maps, daemon=True)
    watcher.start()
    out_chunks: list[bytes] = []
    err_chunks: list[bytes] = []
    readers = [threading.Thread(target=lambda s=s, c=c: c.append(s.read()), daemon=True)
               for s, c in ((proc.stdout, out_chunks), (proc.stderr, err_chunks))]
    for r in readers:
        r.start()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - started
    ended.set()
    proc.returncode = os.waitstatus_to_exitcode(status)
    for r in readers:
        r.join()
    watcher.join()
    if proc.returncode != 0:
        raise SystemExit(f"{argv[:4]} exited with {proc.returncode}:\n"
                         f"{b''.join(err_chunks).decode()[-2000:]}")
    return (b"".join(out_chunks).decode(), b"".join(err_chunks).decode(), wall,
            seen["hwm"], seen["uvloop"], usage.ru_utime + usage.ru_stime)


SUMMARY = re.compile(r"bench: ([\d,]+) delivered.*?\(([\d.]+) s,")


def run_nwpipe(workdir: Path, receiver: Receiver, events_path: Path, concurrency: int,
               extra: str, count: int, mapped: bool = True, flags: tuple = (),
               url: str | None = None, mapping: str = "siem") -> dict:
    config = workdir / "bench.toml"
    text = CONFIG.format(url=url or receiver.url, concurrency=concurrency, extra=extra)
    if not mapped:
        text = text.replace('mapping     = "siem"\n', "")
    elif mapping != "siem":
        text = text.replace('mapping     = "siem"\n', f'mapping     = "{mapping}"\n')
    config.write_text(text)
    before = receiver.counts() if url is None else {"bodies": 0, "events": 0}
    env = {**os.environ, "NWPIPE_LOAD_PLUGINS": ""}
    queue = workdir / "queue.db"
    for leftover in workdir.glob("queue.db*"):
        leftover.unlink()
    _, err, wall, rss, uvloop_seen, cpu = run_child(
        [sys.executable, "-m", "nwpipe", "run", "-c", str(config), "--dead-letter",
         str(workdir / "dead.jsonl"), "--queue", str(queue), *flags, str(events_path)],
        env=env, cwd=workdir)
    match = SUMMARY.search(err)
    if not match or int(match.group(1).replace(",", "")) != count:
        raise SystemExit(f"unexpected nwpipe summary:\n{err}")
    after = receiver.counts() if url is None else {"bodies": 0, "events": 0}
    seconds = float(match.group(2))
    return {"seconds": seconds, "rate": count / seconds, "wall": wall, "rss_kib": rss,
            "cpu": cpu, "loop": "uvloop" if uvloop_seen else "asyncio",
            "bodies": after["bodies"] - before["bodies"],
            "events": after["events"] - before["events"]}


def run_outage(workdir: Path, events_path: Path, concurrency: int, count: int,
               down: float = 5.0) -> dict:
    """nwpipe against a receiver that starts ``down`` seconds after it."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    late: list[Receiver] = []
    timer = threading.Timer(down, lambda: late.append(Receiver(port)))
    timer.start()
    try:
        result = run_nwpipe(workdir, None, events_path, concurrency,  # type: ignore[arg-type]
                            "retry = { max_backoff = 1 }", count,
                            url=f"http://127.0.0.1:{port}")
        timer.join()
        counts = late[0].counts()
        result.update(bodies=counts["bodies"], events=counts["events"])
        dead = workdir / "dead.jsonl"
        if dead.exists() and dead.stat().st_size:
            raise SystemExit("receiver down 5 s: events were dead-lettered")
        return result
    finally:
        timer.cancel()
        for receiver in late:
            receiver.stop()


def run_bare(receiver: Receiver, bodies_path: Path, concurrency: int, count: int) -> dict:
    before = receiver.counts()
    out, _, wall, rss, _, cpu = run_child([sys.executable, __file__, "--role", "client",
                                           "--url", receiver.url + "/ingest", "--bodies",
                                           str(bodies_path), "--concurrency", str(concurrency)])
    result = json.loads(out)
    if result["failed"] or result["requests"] != count:
        raise SystemExit(f"bare client: {result}")
    after = receiver.counts()
    return {"seconds": result["seconds"], "rate": count / result["seconds"], "wall": wall,
            "rss_kib": rss, "cpu": cpu, "loop": result["loop"],
            "bodies": after["bodies"] - before["bodies"],
            "events": after["events"] - before["events"]}


def premap(workdir: Path, events: list[dict], concurrency: int) -> bytes:
    """The bodies nwpipe sends: the same config's mapping applied, serialised the same way."""
    import orjson

    from nwpipe.config import load_config
    from nwpipe.plugins import Plugins
    from nwpipe.transform.routing import Router

    config_path = workdir / "premap.toml"
    config_path.write_text(CONFIG.format(url="http://127.0.0.1:9", concurrency=concurrency,
                                         extra=""))
    plugins = Plugins(load_entry_points=False)
    router = Router(load_config(str(config_path), plugins.output_types), plugins.jinja_filters)
    [route] = router.routes
    return b"".join(orjson.dumps(route.mapper(e["customer"])(e)) + b"\n" for e in events)


def line(label: str, r: dict, count: int) -> str:
    return (f"  {label:<34}{r['rate']:>9,.0f}  {r['seconds']:5.2f} s ({r['wall']:5.2f})  "
            f"{r['loop']:<7}  {r['bodies']:>6} / {r['events']:>6}  "
            f"{r['cpu'] / count * 1e6:5.0f} us  {r['rss_kib'] / 1024:6.1f} MiB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--role", choices=("receiver", "client"), help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--bodies", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.role == "receiver":
        return receiver_main(args.port)
    if args.role == "client":
        return client_main(args.url, args.bodies, args.concurrency)

    sys.path.insert(0, str(HERE))
    sys.path.insert(0, str(ROOT))
    import orjson

    from events import generate

    count = args.events
    events = list(generate(count))
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        events_path = workdir / "events.jsonl"
        events_path.write_bytes(b"".join(orjson.dumps(e) + b"\n" for e in events))
        bodies_path = workdir / "bodies.jsonl"
        bodies_path.write_bytes(premap(workdir, events, args.concurrency))
        receiver = Receiver()
        batch = f"batch = {{ max_events = {args.batch} }}"
        runs = {
            "bare aiohttp client": lambda: run_bare(receiver, bodies_path, args.concurrency,
                                                    count),
            "nwpipe run": lambda: run_nwpipe(workdir, receiver, events_path, args.concurrency,
                                             "", count),
            f"nwpipe run, batch {args.batch}": lambda: run_nwpipe(
                workdir, receiver, events_path, args.concurrency, batch, count),
            "  the same without the mapping": lambda: run_nwpipe(
                workdir, receiver, events_path, args.concurrency, batch, count, mapped=False),
            f"nwpipe run --workers 2, batch {args.batch}": lambda: run_nwpipe(
                workdir, receiver, events_path, args.concurrency, batch, count,
                flags=("--workers", "2")),
            f"batch {args.batch}, bench_run's mapping": lambda: run_nwpipe(
                workdir, receiver, events_path, args.concurrency, batch, count,
                mapping="loop"),
            "  the same, --workers 2": lambda: run_nwpipe(
                workdir, receiver, events_path, args.concurrency, batch, count,
                mapping="loop", flags=("--workers", "2")),
            "nwpipe run --durable": lambda: run_nwpipe(
                workdir, receiver, events_path, args.concurrency, "", count,
                flags=("--durable",)),
            f"nwpipe run --durable, batch {args.batch}": lambda: run_nwpipe(
                workdir, receiver, events_path, args.concurrency, batch, count,
                flags=("--durable",)),
            "nwpipe run, receiver down 5 s": lambda: run_outage(
                workdir, events_path, args.concurrency, count),
        }
        results: dict[str, list[dict]] = {name: [] for name in runs}
        try:
            for _ in range(args.rounds):
                for name, run in runs.items():
                    results[name].append(run())
        finally:
            receiver.stop()
    size = sum(len(orjson.dumps(e)) for e in events) / count
    print(f"{count} events ({size:.0f} bytes each as read), concurrency {args.concurrency}, "
          f"best of {args.rounds} rounds, {os.cpu_count()} CPUs; the receiver in its own "
          f"process ({receiver.loop})")
    print(f"  {'':<34}{'events/s':>9}  {'time (wall)':<14}  {'loop':<7}  {'receiver got':>15}  "
          f"{'CPU/event':>9}  {'peak RSS':>8}")
    print(f"  {'':<34}{'':>9}  {'':<14}  {'':<7}  {'bodies / events':>15}  "
          f"{'(process)':>9}")
    best = {name: min(rounds, key=lambda r: r["seconds"]) for name, rounds in results.items()}
    for name, r in best.items():
        print(line(name, r, count))
    bare, single = best["bare aiohttp client"], best["nwpipe run"]
    batched = best[f"nwpipe run, batch {args.batch}"]
    print(f"nwpipe / bare client: {single['rate'] / bare['rate']:.2f}x (target >= 0.8x); "
          f"batches of {args.batch}: {batched['rate']:,.0f} events/s (target >= 100,000)")
    print("events/s and time are timed inside each process (nwpipe: its own summary line); "
          "wall time and CPU/event include interpreter start-up")
    for name, rounds in results.items():
        for r in rounds:
            if r["events"] != count:
                raise SystemExit(f"{name}: the receiver counted {r['events']} events, "
                                 f"not {count}")


if __name__ == "__main__":
    main()
