"""HTTP intake throughput: ``nwpipe serve`` (durable queue) against a bare aiohttp.web server.

    python benchmarks/bench_serve.py [--events 20000] [--concurrency 32] [--sync full] [--rounds 3]

Generates vendor-shaped events (benchmarks/events.py) and posts each one as its own
request (as Netography does), at ``--concurrency`` requests in flight, from a client in
its own process, to each of these in the same run:

1. ``bare aiohttp.web``: a server in its own process that reads the body and answers
   200 without storing anything (the ceiling for an HTTP intake in Python);
2. ``nwpipe serve --no-deliver``: the real CLI committing to the durable SQLite queue
   (``sync`` as given; ``full`` is what docs/receive.md recommends for serve), intake only;
3. ``nwpipe serve``: the same, also delivering, as it receives, to a receiver (a minimal
   aiohttp server in its own process) with a webhook output, one request per event;
4. the same with ``batch = { max_events = 100 }`` on the webhook output.

For each: acknowledged events per second and the p50/p99 latency of a POST as the
client saw them, the server's CPU time per event (user + system, for the whole round:
with delivery, delivering included; steadier than rates on a shared machine) and its
peak RSS (VmHWM). For nwpipe also the end-to-end rate:
from the client's first POST to the receiver having every event. The two alternate for
``--rounds`` rounds (the machine's load changes; alternating exposes both to it alike)
and the best round of each is shown. Goal (issue 11): nwpipe at least half the bare
server's rate with p99 under 50 ms.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT))

from bench_webhook import Receiver, loop_name, run_loop  # noqa: E402

CONFIG = """\
[serve]
max_connections = 1024

[queue]
path = "{queue}"
sync = "{sync}"

[outputs.soc]
type        = "webhook"
url         = "{url}/ingest"
concurrency = 64
{extra}
"""


# --- the bare server (its own process) -------------------------------------------------------


def bare_main() -> None:
    """Read each POST's body and answer 200 ``{"accepted": 1}``; store nothing."""
    from aiohttp import web

    async def handle(request: web.Request) -> web.Response:
        await request.read()
        return web.json_response({"accepted": 1})

    async def serve() -> None:
        app = web.Application()
        app.router.add_post("/", handle)
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0, backlog=1024)
        await site.start()
        print(f"listening on http://127.0.0.1:{runner.addresses[0][1]}/ {loop_name()}", flush=True)
        await __import__("asyncio").Event().wait()

    run_loop(serve())


# --- the client (its own process) ------------------------------------------------------------


def client_main(url: str, bodies_path: str, concurrency: int) -> None:
    """POST each line of ``bodies_path`` as one request; print rate and latencies as JSON."""
    import asyncio

    import aiohttp

    bodies = Path(bodies_path).read_bytes().splitlines()

    async def main() -> None:
        connector = aiohttp.TCPConnector(limit=concurrency)
        headers = {"Content-Type": "application/json"}
        latencies: list[float] = []
        failed = 0
        async with aiohttp.ClientSession(connector=connector) as session:
            feed = iter(bodies)

            async def worker() -> None:
                nonlocal failed
                clock = time.perf_counter
                for body in feed:
                    sent = clock()
                    async with session.post(url, data=body, headers=headers) as resp:
                        await resp.read()
                        if resp.status != 200:
                            failed += 1
                    latencies.append(clock() - sent)

            started_at = time.time()
            started = time.perf_counter()
            await asyncio.gather(*(worker() for _ in range(concurrency)))
            seconds = time.perf_counter() - started
        latencies.sort()
        print(json.dumps({"requests": len(bodies), "failed": failed, "seconds": seconds,
                          "started_at": started_at,
                          "p50": latencies[len(latencies) // 2],
                          "p99": latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))],
                          "loop": loop_name()}), flush=True)

    run_loop(main())


# --- the driver ------------------------------------------------------------------------------

LISTENING = re.compile(r"listening on (http://\S+?)/?\s")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time the process has used so far (from /proc/PID/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def peak_rss_mib(pid: int) -> float:
    """The process's peak resident set size so far (VmHWM), in MiB."""
    for text in Path(f"/proc/{pid}/status").read_text().splitlines():
        if text.startswith("VmHWM:"):
            return int(text.split()[1]) / 1024
    return 0.0


def start_server(argv: list[str], **kwargs) -> tuple[subprocess.Popen, str]:
    """Start a server process and return it with the URL it says it listens on."""
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            **kwargs)
    stream = proc.stdout if "--role" in argv else proc.stderr
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        line = stream.readline()
        if not line:
            raise SystemExit(f"{argv[:4]} exited: {proc.stderr.read()[-2000:]}")
        match = LISTENING.search(line + " ")
        if match:
            return proc, match.group(1)
    raise SystemExit(f"{argv[:4]} did not start")


def run_client(url: str, bodies_path: Path, concurrency: int, count: int) -> dict:
    out = subprocess.run([sys.executable, __file__, "--role", "client", "--url", url + "/",
                          "--bodies", str(bodies_path), "--concurrency", str(concurrency)],
                         capture_output=True, text=True, check=True).stdout
    result = json.loads(out)
    if result["failed"] or result["requests"] != count:
        raise SystemExit(f"client: {result}")
    return result


def bench_bare(bodies_path: Path, concurrency: int, count: int) -> dict:
    proc, url = start_server([sys.executable, __file__, "--role", "bare"])
    try:
        before = cpu_seconds(proc.pid)
        result = run_client(url, bodies_path, concurrency, count)
        result["cpu"] = cpu_seconds(proc.pid) - before
        result["rss"] = peak_rss_mib(proc.pid)
    finally:
        proc.terminate()
        proc.wait()
    return result


def bench_nwpipe(workdir: Path, receiver: Receiver, bodies_path: Path, concurrency: int,
                 count: int, sync: str, round_: int, extra: str = "",
                 deliver: bool = True) -> dict:
    """One round against ``nwpipe serve``; with ``deliver`` also the end-to-end time."""
    config = workdir / "serve.toml"
    queue = workdir / f"queue-{round_}-{deliver}-{bool(extra)}.db"
    config.write_text(CONFIG.format(queue=queue, sync=sync, url=receiver.url, extra=extra))
    env = {**os.environ, "NWPIPE_LOAD_PLUGINS": ""}
    before = receiver.counts()["events"]
    proc, url = start_server([sys.executable, "-m", "nwpipe", "serve", "-c", str(config),
                              "--listen", "127.0.0.1:0", "--dead-letter",
                              str(workdir / "dead.jsonl"), *([] if deliver else ["--no-deliver"])],
                             env=env, cwd=workdir)
    try:
        cpu_before = cpu_seconds(proc.pid)
        result = run_client(url, bodies_path, concurrency, count)
        if deliver:  # end to end: until the receiver has every event
            deadline = time.monotonic() + 600
            while receiver.counts()["events"] - before < count:
                if time.monotonic() > deadline:
                    raise SystemExit("nwpipe serve did not deliver every event within 600 s")
                time.sleep(0.01)
            result["end_to_end"] = time.time() - result["started_at"]
        result["cpu"] = cpu_seconds(proc.pid) - cpu_before
        result["rss"] = peak_rss_mib(proc.pid)
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=120)
    left = "0 events stay queued" if deliver else f"{count} events stay queued"
    if proc.returncode != 0 or left not in err:
        raise SystemExit(f"nwpipe serve exited {proc.returncode}:\n{err[-2000:]}")
    return result


def best(results: list[dict]) -> dict:
    return min(results, key=lambda r: r["seconds"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--sync", choices=("normal", "full"), default="full")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch", type=int, default=100,
                        help="max_events of the batched delivery variant")
    parser.add_argument("--role", choices=("bare", "client"), help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--bodies", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.role == "bare":
        return bare_main()
    if args.role == "client":
        return client_main(args.url, args.bodies, args.concurrency)

    import orjson

    from events import generate

    count = args.events
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        bodies_path = workdir / "bodies.jsonl"
        bodies_path.write_bytes(b"".join(orjson.dumps(e) + b"\n" for e in generate(count)))
        receiver = Receiver()
        batch = f"batch = {{ max_events = {args.batch} }}"
        kinds = {
            "bare aiohttp.web (stores nothing)":
                lambda n: bench_bare(bodies_path, args.concurrency, count),
            "nwpipe serve, intake only": lambda n: bench_nwpipe(
                workdir, receiver, bodies_path, args.concurrency, count, args.sync, n,
                deliver=False),
            "nwpipe serve, delivering": lambda n: bench_nwpipe(
                workdir, receiver, bodies_path, args.concurrency, count, args.sync, n),
            "nwpipe serve, delivering batched": lambda n: bench_nwpipe(
                workdir, receiver, bodies_path, args.concurrency, count, args.sync, n, batch),
        }
        results: dict[str, list[dict]] = {label: [] for label in kinds}
        try:
            for n in range(args.rounds):
                for label, bench in kinds.items():
                    results[label].append(bench(n))
        finally:
            receiver.stop()
    bare = best(results["bare aiohttp.web (stores nothing)"])
    print(f"{count} single-event POSTs, concurrency {args.concurrency}, {os.cpu_count()} CPUs, "
          f"{bare['loop']}, queue sync = {args.sync!r}, best of {args.rounds} rounds")
    print(f"  {'':<36}{'events/s':>9}  {'x bare':>6}  {'p50 ms':>7}  {'p99 ms':>7}  "
          f"{'CPU/event':>9}  {'peak RSS':>9}  {'end to end':>14}")
    for label, rounds in results.items():
        r = best(rounds)
        e2e = (f"{count / r['end_to_end']:>7,.0f} ev/s" if "end_to_end" in r else "")
        print(f"  {label:<36}{count / r['seconds']:>9,.0f}  {bare['seconds'] / r['seconds']:5.2f}x"
              f"  {r['p50'] * 1e3:7.1f}  {r['p99'] * 1e3:7.1f}  {r['cpu'] / count * 1e6:6.0f} us"
              f"  {r['rss']:5.1f} MiB  {e2e:>14}")
    print("  rounds (events/s): " + "; ".join(
        f"{label.split(',')[-1].strip()} " + ", ".join(f"{count / r['seconds']:,.0f}" for r in rs)
        for label, rs in results.items()))
    print("  goal: nwpipe serve >= 0.5x the bare server with p99 < 50 ms; end to end = from "
          "the first POST until the receiver has every event")


if __name__ == "__main__":
    main()
