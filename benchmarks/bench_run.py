"""End-to-end benchmark: `nwpipe run` against jq and a bare orjson loop, same mapping.

Run: python benchmarks/bench_run.py [--events N] [--repeat R]

Generates N events shaped like the vendor's sample (benchmarks/events.py; default
100,000), then maps them with 10 jsonpath fields and one Jinja title to a file, three
ways, each as its own process:

- `nwpipe run` (the real command) with a `file` output;
- `jq -c` doing the same picks and building the title in jq;
- a plain Python loop: orjson load, pick, orjson dump (what nwpipe could at best do).

For each it prints the wall-clock time (start-up included), events/s, CPU time and peak
RSS (the child's own VmHWM): the best times of R runs, the largest RSS. The contenders
run in turn, R rounds, so that a busy moment on the machine hits each of them alike. Then the ratios nwpipe/jq and nwpipe/orjson loop, a check that nwpipe and the
orjson loop wrote the same bytes, nwpipe's start-up time, and nwpipe's peak RSS at N/4
and at N events, which should be about the same (input is streamed, queues bounded).
"""

from __future__ import annotations

import argparse
import filecmp
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import orjson  # noqa: E402

from events import generate  # noqa: E402

CONFIG = """\
dead_letter = "{dead_letter}"

[mappings.bench]
keep = false
[mappings.bench.fields]
event_id    = "$.id"
state       = "$.alerttype"
tenant      = "$.customer"
severity    = "$.severity"
src_ip      = "$.srcip[0]"
dst_ip      = "$.dstip[-1]"
bits_max    = "$.metrics.bits.max"
packets_avg = "$.metrics.packets.avg"
flows       = "$.metrics.count.flow"
start       = "$.start"
title       = "{{{{ algorithm | upper }}}} {{{{ alerttype }}}} for {{{{ customer }}}}"

[outputs.out]
type    = "file"
path    = "{out}"
mapping = "bench"
"""

JQ_FILTER = (
    "{event_id: .id, state: .alerttype, tenant: .customer, severity: .severity, "
    "src_ip: .srcip[0], dst_ip: .dstip[-1], bits_max: .metrics.bits.max, "
    "packets_avg: .metrics.packets.avg, flows: .metrics.count.flow, start: .start, "
    'title: "\\(.algorithm | ascii_upcase) \\(.alerttype) for \\(.customer)"}'
)

# The same picks with jsonpath's rules for these paths (a missing value gives null).
ORJSON_LOOP = """\
import sys
from orjson import dumps, loads

def get(node, *keys):
    for key in keys:
        if isinstance(key, int):
            if not isinstance(node, list) or not -len(node) <= key < len(node):
                return None
        elif not isinstance(node, dict) or key not in node:
            return None
        node = node[key]
    return node

with open(sys.argv[1], "rb") as src, open(sys.argv[2], "wb") as dst:
    write = dst.write
    for line in src:
        e = loads(line)
        write(dumps({
            "event_id": e.get("id"), "state": e.get("alerttype"),
            "tenant": e.get("customer"), "severity": e.get("severity"),
            "src_ip": get(e, "srcip", 0), "dst_ip": get(e, "dstip", -1),
            "bits_max": get(e, "metrics", "bits", "max"),
            "packets_avg": get(e, "metrics", "packets", "avg"),
            "flows": get(e, "metrics", "count", "flow"), "start": e.get("start"),
            "title": f"{e['algorithm'].upper()} {e['alerttype']} for {e['customer']}",
        }))
        write(b"\\n")
"""


def _high_water(pid: int) -> int | None:
    """VmHWM of a running process, in bytes (None once it is gone, or without /proc)."""
    try:
        with open(f"/proc/{pid}/status", "rb") as fh:
            for line in fh:
                if line.startswith(b"VmHWM:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return None


def run_child(argv: list[str], stdout_path: Path | None = None) -> tuple[float, float, int]:
    """Run one contender; (wall seconds, CPU seconds, peak RSS in bytes) of that child alone.

    The peak is the child's VmHWM, sampled every 10 ms until it exits: the high-water
    mark of its own memory since exec. (ru_maxrss from wait4 would not do: a child
    started with fork/vfork starts from its parent's high-water mark, the benchmark's
    own memory.) Without /proc, ru_maxrss is the fallback.
    """
    stdout = open(stdout_path, "wb") if stdout_path else subprocess.DEVNULL
    try:
        started = time.perf_counter()
        # Popen returns once the child has exec'd, so every sample below is the child's.
        proc = subprocess.Popen(argv, stdout=stdout, stderr=subprocess.DEVNULL)
        peak = 0
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            peak = max(peak, _high_water(proc.pid) or 0)
            time.sleep(0.01)
        seconds = time.perf_counter() - started
        proc.returncode = os.waitstatus_to_exitcode(status)
    finally:
        if stdout_path:
            stdout.close()
    if proc.returncode != 0:
        sys.exit(f"{' '.join(argv[:4])} ... failed with exit code {proc.returncode}")
    cpu = usage.ru_utime + usage.ru_stime
    return seconds, cpu, peak or usage.ru_maxrss * 1024  # ru_maxrss is in kilobytes on Linux


class Contender:
    """One way of doing the job, and the best of its runs."""

    def __init__(self, label: str, short: str, argv: list[str], out: Path, stdout: bool = False):
        self.label, self.short, self.argv, self.out, self.stdout = label, short, argv, out, stdout
        self.seconds = self.cpu = float("inf")
        self.rss = 0

    def run(self) -> None:
        self.out.unlink(missing_ok=True)
        seconds, cpu, rss = run_child(self.argv, self.out if self.stdout else None)
        self.seconds, self.cpu = min(self.seconds, seconds), min(self.cpu, cpu)
        self.rss = max(self.rss, rss)


def count_lines(path: Path) -> int:
    with open(path, "rb") as fh:
        return sum(chunk.count(b"\n") for chunk in iter(lambda: fh.read(1 << 20), b""))


def mib(size: int) -> str:
    return f"{size / 2**20:.0f} MiB"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=100_000, help="events (default 100000)")
    parser.add_argument("--repeat", type=int, default=3,
                        help="rounds of runs, the best time is kept (default 3)")
    args = parser.parse_args()
    n, quarter = args.events, max(1, args.events // 4)
    work = Path(tempfile.mkdtemp(prefix="nwpipe-bench-"))
    try:
        events, events_quarter = work / "events.jsonl", work / "events-quarter.jsonl"
        with open(events, "wb") as full, open(events_quarter, "wb") as part:
            for i, event in enumerate(generate(n)):
                line = orjson.dumps(event) + b"\n"
                full.write(line)
                if i < quarter:
                    part.write(line)
        size = events.stat().st_size
        config = work / "bench.toml"
        config.write_text(CONFIG.format(out=work / "nwpipe.out",
                                        dead_letter=work / "dead-letter.jsonl"))
        nwpipe = [sys.executable, "-m", "nwpipe", "run", "-q", "-c", str(config)]

        print(f"{n:,} events, {size / n:,.0f} bytes each ({size / 1e6:,.0f} MB); Python "
              f"{platform.python_version()}, {os.cpu_count()} CPUs; best of {args.repeat} "
              "runs, wall clock including start-up\n")
        contenders = [Contender("nwpipe run (file output)", "nwpipe", [*nwpipe, str(events)],
                                work / "nwpipe.out")]
        jq = shutil.which("jq")
        if jq:
            version = subprocess.run([jq, "--version"], capture_output=True,
                                     text=True).stdout.strip()
            contenders.append(Contender(f"jq -c ({version})", "jq",
                                        [jq, "-c", JQ_FILTER, str(events)], work / "jq.out",
                                        stdout=True))
        else:
            print("(jq not found: skipped)")
        contenders.append(Contender("orjson loop (python)", "orjson loop",
                                    [sys.executable, "-c", ORJSON_LOOP, str(events),
                                     str(work / "loop.out")], work / "loop.out"))
        startup = Contender("", "", [*nwpipe, os.devnull], work / "nwpipe.out")
        small = Contender("", "", [*nwpipe, str(events_quarter)], work / "nwpipe.out")
        # Round robin, so that a busy moment on the machine hits every contender alike.
        for _ in range(args.repeat):
            for contender in contenders:
                contender.run()
                assert count_lines(contender.out) == n, f"{contender.short}: events missing"
        same = filecmp.cmp(work / "nwpipe.out", work / "loop.out", shallow=False)
        for _ in range(args.repeat):
            startup.run()
            small.run()

        print(f"{'':28} {'seconds':>8} {'events/s':>10} {'CPU s':>7} {'peak RSS':>10}")
        for c in contenders:
            print(f"{c.label:28} {c.seconds:8.2f} {n / c.seconds:10,.0f} {c.cpu:7.2f} "
                  f"{mib(c.rss):>10}")
        nw = contenders[0]
        ratios = [f"nwpipe/{c.short} {c.seconds / nw.seconds:.2f}x (CPU {c.cpu / nw.cpu:.2f}x)"
                  for c in contenders[1:]]
        print("\nspeed ratios (events/s): " + ", ".join(ratios))
        print(f"nwpipe and the orjson loop wrote the same bytes: {'yes' if same else 'NO'}")
        print(f"nwpipe start-up (0 events): {startup.seconds:.2f} s; without it "
              f"{n / max(nw.seconds - startup.seconds, 1e-9):,.0f} events/s")
        print(f"flat memory: nwpipe peak RSS {mib(small.rss)} at {quarter:,} events, "
              f"{mib(nw.rss)} at {n:,} events (largest of the runs)")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
