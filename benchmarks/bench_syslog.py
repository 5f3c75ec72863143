"""Throughput of the syslog output into a real rsyslogd: TCP against RELP.

    python benchmarks/bench_syslog.py [EVENTS]

Starts rsyslogd (imtcp and imrelp, direct queue, one file; needs the rsyslog and
rsyslog-relp packages) in a temporary folder, then for each setup pipes EVENTS (default
20000) events into ``nwpipe run`` and times it until rsyslog has written every message.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from rsyslog import Rsyslog, rsyslog_missing  # noqa: E402

SETUPS = [("tcp", {}), ("relp", {"relp_window": 128}), ("relp", {"relp_window": 1024})]


def main() -> None:
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 20000
    if rsyslog_missing():
        sys.exit(rsyslog_missing())
    sample = json.loads((ROOT / "examples" / "events.jsonl").read_text().splitlines()[0])
    data = b"".join(json.dumps({**sample, "id": f"bench-{i}"}).encode() + b"\n"
                    for i in range(count))
    env = {**os.environ, "NWPIPE_LOAD_PLUGINS": ""}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        collector = Rsyslog(folder / "rsyslog").start()
        try:
            for protocol, extra in SETUPS:
                before = len(collector.lines())  # rsyslog keeps its file open: append
                port = collector.relp_port if protocol == "relp" else collector.tcp_port
                config = folder / "nwpipe.toml"
                config.write_text(
                    f'dead_letter = "{folder / "dead.jsonl"}"\n[outputs.siem]\n'
                    f'type = "syslog"\nhost = "127.0.0.1"\nport = {port}\n'
                    f'protocol = "{protocol}"\n'
                    + "".join(f"{k} = {v}\n" for k, v in extra.items()))
                started = time.perf_counter()
                subprocess.run([sys.executable, "-m", "nwpipe", "run", "-c", str(config)],
                               input=data, env=env, cwd=folder, check=True,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                collector.wait_for_lines(before + count, timeout=300)
                elapsed = time.perf_counter() - started
                label = protocol + "".join(f" {k}={v}" for k, v in extra.items())
                print(f"{label:24} {count} events in {elapsed:5.2f} s: "
                      f"{count / elapsed:8,.0f} events/s")
        finally:
            collector.stop()


if __name__ == "__main__":
    main()
