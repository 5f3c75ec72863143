"""The same workload through each kind of queue: memory, SQLite, Redis with 1 and 2 workers.

    python benchmarks/bench_queue.py [--events 50000] [--batch 100] [--shards 16]

Vendor-shaped events (benchmarks/events.py), one batched webhook output
(``batch = { max_events = N }``), a receiver in its own process (the one of
bench_webhook.py, which counts events), and, in one run:

a. ``memory``:  ``nwpipe run -c bench.toml events.jsonl`` (no queue);
b. ``sqlite``:  ``nwpipe run --durable`` (every event committed to the SQLite queue first);
c. ``redis 1``: one ``nwpipe work`` already running, then ``nwpipe run --no-deliver``
                committing the events to Redis (its own redis-server, appendonly yes);
d. ``redis 2``: the same with two ``nwpipe work`` processes.

The time is from starting the ``nwpipe run`` process to the receiver having counted
every event (the same clock for all four, interpreter start-up included). CPU per event
is the CPU time of the nwpipe processes (intake and workers) divided by the events; the
receiver's and redis-server's CPU are shown apart, since on a 2-core machine they share
the cores with nwpipe.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench_webhook import CONFIG, Receiver  # noqa: E402 - the same receiver and mapping

from events import generate  # noqa: E402

TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """user + system CPU of a live process (and its waited-for children)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return sum(int(v) for v in fields[11:15]) / TICKS


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Redis:
    """A redis-server of the benchmark's own (append-only, as the README recommends)."""

    def __init__(self, folder: Path):
        self.port = free_port()
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(folder),
             "--appendonly", "yes", "--save", "", "--daemonize", "no", "--loglevel", "warning"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.url = f"redis://127.0.0.1:{self.port}/0"
        deadline = time.monotonic() + 30
        while not self.ping():
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise SystemExit("redis-server did not start")
            time.sleep(0.05)

    def ping(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                s.sendall(b"PING\r\n")
                return s.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def flush(self) -> None:
        subprocess.run(["redis-cli", "-p", str(self.port), "FLUSHALL"], check=True,
                       capture_output=True)

    def owned(self, prefix: str, shards: int) -> int:
        out = subprocess.run(["redis-cli", "-p", str(self.port), "--raw", "MGET",
                              *[f"{prefix}:lease:{i}" for i in range(shards)]],
                             capture_output=True, text=True, check=True).stdout
        return sum(1 for line in out.splitlines() if line.strip())

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait()


def reap(proc: subprocess.Popen) -> bool:
    """Whether ``proc`` has exited; keeps its CPU time (``proc.cpu``) when it has."""
    if getattr(proc, "cpu", None) is not None:
        return True
    pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
    if pid == 0:
        return False
    proc.returncode = os.waitstatus_to_exitcode(status)
    proc.cpu = usage.ru_utime + usage.ru_stime
    if proc.returncode != 0:
        raise SystemExit(f"{proc.args[:5]} exited with {proc.returncode}: {proc.stderr.read()[-2000:]}")
    return True


def wait_count(receiver: Receiver, target: int, procs, timeout: float = 600) -> float:
    """Poll the receiver until it counted ``target`` events; returns when (perf_counter)."""
    deadline = time.monotonic() + timeout
    while True:
        if receiver.counts()["events"] >= target:
            return time.perf_counter()
        for p in procs:
            reap(p)
        if time.monotonic() > deadline:
            raise SystemExit(f"the receiver got {receiver.counts()['events']} of {target} events")
        time.sleep(0.01)


def nwpipe(workdir: Path, *args: str) -> subprocess.Popen:
    env = {**os.environ, "NWPIPE_LOAD_PLUGINS": ""}
    return subprocess.Popen([sys.executable, "-m", "nwpipe", *args], cwd=workdir, env=env,
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)


def one(label: str, workdir: Path, receiver: Receiver, redis: Redis | None, count: int,
        run_args: list[str], workers: int, shards: int) -> dict:
    before = receiver.counts()["events"]
    receiver_cpu = cpu_seconds(receiver.proc.pid)
    redis_cpu = cpu_seconds(redis.proc.pid) if redis else 0.0
    crew = [nwpipe(workdir, "work", "-c", "bench.toml") for _ in range(workers)]
    if crew:
        deadline = time.monotonic() + 60
        while redis.owned("nwpipe", shards) < shards:  # every shard has its worker
            if time.monotonic() > deadline:
                raise SystemExit("the workers did not take the shards")
            time.sleep(0.05)
    worker_cpu0 = sum(cpu_seconds(p.pid) for p in crew)
    started = time.perf_counter()
    intake = nwpipe(workdir, "run", "-c", "bench.toml", *run_args, "events.jsonl")
    done = wait_count(receiver, before + count, [intake, *crew])
    while not reap(intake):
        time.sleep(0.01)
    cpu = intake.cpu + sum(cpu_seconds(p.pid) for p in crew) - worker_cpu0
    for p in crew:
        p.send_signal(signal.SIGTERM)
    for p in crew:
        try:
            p.wait(60)
        except subprocess.TimeoutExpired:
            print(f"  (a worker, pid {p.pid}, did not stop within 60 s of SIGTERM: killed)")
            p.kill()
            p.wait()
    seconds = done - started
    return {"label": label, "rate": count / seconds, "seconds": seconds,
            "cpu_us": cpu / count * 1e6,
            "receiver_us": (cpu_seconds(receiver.proc.pid) - receiver_cpu) / count * 1e6,
            "redis_us": ((cpu_seconds(redis.proc.pid) - redis_cpu) / count * 1e6) if redis else 0.0}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=50_000)
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--shards", type=int, default=16)
    args = parser.parse_args()
    if shutil.which("redis-server") is None:
        raise SystemExit("redis-server is needed (apt-get install redis-server)")
    workdir = Path(tempfile.mkdtemp(prefix="bench-queue-"))
    events = generate(args.events)
    (workdir / "events.jsonl").write_bytes(b"".join(json.dumps(e).encode() + b"\n" for e in events))
    receiver = Receiver()
    redis = Redis(workdir)
    extra = f"batch = {{ max_events = {args.batch} }}"
    base = CONFIG.format(url=receiver.url, concurrency=args.concurrency, extra=extra)
    redis_config = (f'[queue]\nurl = "{redis.url}"\nshards = {args.shards}\n'
                    f'max_bytes = {4 << 30}\n' + base)
    try:
        results = []
        print(f"{args.events} events, batches of {args.batch}, concurrency {args.concurrency}, "
              f"{os.cpu_count()} cores; receiver and redis-server in their own processes")
        for label, config, run_args, workers in (
                ("a memory", base, [], 0),
                ("b sqlite (--durable)", base, ["--durable", "--queue", "q.db"], 0),
                ("c redis, 1 worker", redis_config, ["--no-deliver"], 1),
                ("d redis, 2 workers", redis_config, ["--no-deliver"], 2)):
            (workdir / "bench.toml").write_text('dead_letter = "dead.jsonl"\n' + config)
            if workers:
                redis.flush()
            for stale in workdir.glob("q.db*"):
                stale.unlink()
            r = one(label, workdir, receiver, redis if workers else None, args.events, run_args,
                    workers, args.shards)
            results.append(r)
            print(f"  {label:<22} {r['rate']:>9,.0f} events/s  {r['seconds']:6.2f} s  "
                  f"nwpipe CPU {r['cpu_us']:5.0f} us/event  receiver {r['receiver_us']:4.0f} us"
                  + (f"  redis-server {r['redis_us']:4.0f} us" if workers else ""), flush=True)
        memory, _, one_worker, two_workers = results
        print(f"redis 1 worker / memory: {one_worker['rate'] / memory['rate']:.2f}x (goal >= 0.5); "
              f"2 workers / 1 worker: {two_workers['rate'] / one_worker['rate']:.2f}x (goal >= 1.5)")
    finally:
        redis.stop()
        receiver.stop()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
