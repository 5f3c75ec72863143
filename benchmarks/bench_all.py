"""Every speed figure in one run: python benchmarks/bench_all.py [--events N] [--rounds R]

Runs, one after the other on the same machine so that the ratios compare like with like:

1. start-up: wall and CPU seconds of `nwpipe --version` and of `nwpipe run` on empty input
   with a stdout output, 20 runs each with a bytecode cache (median and best), and with
   nothing cached (an empty PYTHONPYCACHEPREFIX: every module compiled); `--only-startup`
   stops there;
2. the engine with concurrency = 1 and batching (max_events 100, max_wait 0.5 s) to an
   output that does nothing: wall time against CPU time (a stall shows as wall >> CPU);
3. benchmarks/bench_run.py: W1 (file output) against jq and the plain orjson loop, with
   nwpipe's peak RSS at N/4 and N events;
4. benchmarks/bench_webhook.py: one POST per event against a bare aiohttp client, batched
   with and without the mapping, batched in 1 and 2 worker processes (--workers 2),
   --durable, an outage;
5. benchmarks/bench_stages.py: CPU microseconds per event for each stage;

then the batched webhook rates (one process and --workers 2) as a ratio of the orjson
loop's rate from (3), and --workers 2 against one process.
Load on a shared machine moves every absolute figure; read the ratios.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import os
import platform
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


def child_times(argv: list[str], env: dict | None = None) -> tuple[float, float]:
    """Wall and CPU seconds (user + system) of one run of a child process."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    began = time.perf_counter()
    done = subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env,
                          cwd=tempfile.gettempdir())
    wall = time.perf_counter() - began
    if done.returncode:
        raise SystemExit(f"{' '.join(argv)} failed:\n{done.stderr.decode()[-2000:]}")
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def startup(runs: int) -> None:
    """Start-up of `--version` and of `run` on empty input to stdout: wall and CPU seconds
    over ``runs`` runs with a bytecode cache, then a few with nothing cached."""
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "stdout.toml"
        config.write_text('[outputs.out]\ntype = "stdout"\n')
        empty = Path(tmp) / "empty.jsonl"
        empty.write_bytes(b"")
        commands = {
            "python -c pass (the floor)": [sys.executable, "-c", "pass"],
            "nwpipe --version": [sys.executable, "-m", "nwpipe", "--version"],
            "nwpipe run, empty input, stdout": [sys.executable, "-m", "nwpipe", "run", "-q",
                                                "-c", str(config), str(empty)],
        }
        # The cache lives in a folder of its own, written by a first run: the figure does
        # not depend on whether the checkout has __pycache__ folders or on an inherited
        # PYTHONDONTWRITEBYTECODE (with which nothing of nwpipe would be cached at all).
        cached_env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
        cached_env["PYTHONPYCACHEPREFIX"] = str(Path(tmp) / "pyc")
        # an empty cache folder that is never written: every module is compiled, the
        # standard library's too
        cold_env = dict(os.environ, PYTHONPYCACHEPREFIX=str(Path(tmp) / "nopyc"),
                        PYTHONDONTWRITEBYTECODE="1")
        cold_runs = max(2, runs // 5)
        print(f"start-up, seconds: with a bytecode cache, median and best of {runs} runs; "
              f"with nothing cached, best of {cold_runs}")
        print(f"  {'':<34} {'wall':>6} {'CPU':>6}   {'best wall':>9} {'CPU':>6}   "
              f"{'no cache CPU':>12}")
        for label, argv in commands.items():
            child_times(argv, cached_env)  # writes the cache
            cached = [child_times(argv, cached_env) for _ in range(runs)]
            walls = sorted(wall for wall, _ in cached)
            cpus = sorted(cpu for _, cpu in cached)
            cold = min(child_times(argv, cold_env)[1] for _ in range(cold_runs))
            print(f"  {label:<34} {walls[runs // 2]:6.3f} {cpus[runs // 2]:6.3f}   "
                  f"{walls[0]:9.3f} {cpus[0]:6.3f}   {cold:12.3f}")


def stall(count: int) -> None:
    sys.path.insert(0, str(ROOT))
    from nwpipe import Delivered, Output
    from nwpipe.config import BatchPolicy, EngineSettings
    from nwpipe.engine.deadletter import DeadLetterFile
    from nwpipe.engine.delivery import DeliveryEngine
    from nwpipe.outputs import Delivery

    class Nothing(Output):
        async def send(self, batch):
            return Delivered()

    async def main(dead: DeadLetterFile) -> int:
        cfg = EngineSettings(concurrency=1, batch=BatchPolicy(max_events=100, max_wait=0.5))
        engine = DeliveryEngine(Nothing("nothing", {}), cfg, dead)
        await engine.start()
        for i in range(count):
            event = {"id": f"a{i % 97}", "n": i}
            await engine.submit(Delivery(id=str(i), body=event, event=event, output="nothing",
                                         source="bench", line=i))
            if i % 100 == 0:
                await asyncio.sleep(0)  # a reader yields between chunks
        await engine.drain()
        await engine.close()
        return engine.stats.delivered

    with tempfile.TemporaryDirectory() as tmp:
        dead = DeadLetterFile(Path(tmp) / "dead.jsonl")
        wall, cpu = time.perf_counter(), time.process_time()
        delivered = asyncio.run(main(dead))
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        dead.close()
    print(f"engine, concurrency = 1, batches of 100, max_wait 0.5 s, {count:,} events to a "
          f"no-op output: {delivered:,} delivered in {wall:.2f} s wall for {cpu:.2f} s CPU "
          f"(wall/CPU {wall / cpu:.2f}; a stall shows as >> 1)")


def run_script(argv: list[str]) -> str:
    print(f"\n$ {' '.join(argv)}", flush=True)
    out = subprocess.run([sys.executable, *argv], capture_output=True, text=True, cwd=ROOT)
    sys.stdout.write(out.stdout)
    if out.returncode:
        sys.stdout.write(out.stderr)
        raise SystemExit(f"{argv[0]} failed with exit code {out.returncode}")
    return out.stdout


def rate(text: str, label: str) -> float | None:
    """The events/s figure on the line that starts with ``label``."""
    for line in text.splitlines():
        if line.strip().startswith(label):
            numbers = [n for n in re.findall(r"[\d,]+(?:\.\d+)?", line[len(label) + 2:])]
            for n in numbers:
                value = float(n.replace(",", ""))
                if value >= 100:  # the first events/s-sized figure after the label
                    return value
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=20_000,
                        help="events for each benchmark, the same for all (default 20000)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds, best kept (default 3)")
    parser.add_argument("--startup-runs", type=int, default=20,
                        help="runs of each start-up command (default 20)")
    parser.add_argument("--only-startup", action="store_true",
                        help="measure the start-up and stop")
    args = parser.parse_args()
    print(f"nwpipe benchmarks, {datetime.datetime.now():%Y-%m-%d %H:%M}, "
          f"{platform.machine()} {platform.processor() or ''}, {os.cpu_count()} CPUs, "
          f"Python {platform.python_version()}, load average "
          f"{' '.join(f'{x:.1f}' for x in os.getloadavg())}\n")
    startup(args.startup_runs)
    if args.only_startup:
        return
    stall(args.events)
    w1 = run_script(["benchmarks/bench_run.py", "--events", str(args.events),
                     "--repeat", str(args.rounds)])
    web = run_script(["benchmarks/bench_webhook.py", "--events", str(args.events),
                      "--rounds", str(args.rounds)])
    run_script(["benchmarks/bench_stages.py", "--events", str(args.events)])
    loop = rate(w1, "orjson loop (python)")
    loop_cpu = column(w1, "orjson loop (python)", 3) / args.events * 1e6
    print("\nbatched webhook delivery against the orjson loop (the loop's figures from "
          "bench_run;\nCPU per event counts only each process's own work, so load on the "
          "machine moves it least):")
    one, two = "nwpipe run, batch 100", "nwpipe run --workers 2, batch 100"
    for label in (one, "the same without the mapping", two):
        got = rate(web, label)
        cpu = cpu_per_event(web, label)
        if loop and got and cpu:
            print(f"  {label:<33} {got:8,.0f} events/s = {got / loop:.2f}x the loop "
                  f"({loop:,.0f}); CPU {cpu:.0f} us/event = {loop_cpu / cpu:.2f}x the "
                  f"loop's {loop_cpu:.1f} us (start-up included)")
    if rate(web, one) and rate(web, two):
        print(f"  --workers 2 against one process (batch 100, with the mapping): "
              f"{rate(web, two) / rate(web, one):.2f}x (CPU per event counts every process)")


def column(text: str, label: str, index: int) -> float:
    """The ``index``-th number after ``label`` on its line (bench_run's table)."""
    for line in text.splitlines():
        if line.startswith(label):
            return float(line[len(label):].split()[index - 1].replace(",", ""))
    return float("nan")


def cpu_per_event(text: str, label: str) -> float | None:
    """bench_webhook's CPU/event column (microseconds) on the line of ``label``."""
    for line in text.splitlines():
        if line.strip().startswith(label):
            found = re.search(r"(\d+) us", line)
            return float(found.group(1)) if found else None
    return None


if __name__ == "__main__":
    main()
