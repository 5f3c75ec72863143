"""The progress line on a real pseudo-terminal: a percentage and an ETA for regular
files and .gz, nothing when stdout goes to the same terminal, and a hint when `run`
waits for events typed on the terminal."""

from __future__ import annotations

import gzip
import json
import os
import pty
import re
import select
import subprocess
import sys
import time

import pytest

if not hasattr(pty, "openpty"):  # pragma: no cover
    pytest.skip("needs a pseudo-terminal", allow_module_level=True)

#: slow enough (a rate limit, one delivery in the queue) for several redraws
SLOW = """
[outputs.f]
type = "file"
path = "out.jsonl"
rate_limit = 1000
queue_size = 1
batch = { max_events = 1 }
"""

EVENTS = 2500


def env():
    e = {k: v for k, v in os.environ.items() if k != "NWPIPE_CONFIG"}
    e["NWPIPE_LOAD_PLUGINS"] = ""
    return e


def write_events(path, compress=False):
    # random padding: a .gz of it stays large, so its compressed bytes are read in
    # many pieces as the run goes on
    lines = "".join(json.dumps({"id": f"alert-{i}", "customer": "acme", "alerttype": "start",
                                "pad": os.urandom(400).hex()}) + "\n" for i in range(EVENTS))
    data = lines.encode()
    path.write_bytes(gzip.compress(data) if compress else data)


def read_until_closed(fd, deadline=120.0) -> str:
    data = b""
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        ready, _, _ = select.select([fd], [], [], 1.0)
        if not ready:
            continue
        try:
            chunk = os.read(fd, 65536)
        except OSError:  # EIO: every writer has closed the terminal
            break
        if not chunk:
            break
        data += chunk
    return data.decode("utf-8", "replace")


@pytest.mark.parametrize("name, compress", [("events.jsonl", False),
                                            ("events.jsonl.gz", True)])
def test_percentage_and_eta_for_files(tmp_path, name, compress):
    (tmp_path / "c.toml").write_text(SLOW)
    write_events(tmp_path / name, compress)
    master, slave = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "nwpipe", "run", "-c", "c.toml", name],
                            cwd=tmp_path, env=env(), stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=slave)
    os.close(slave)
    try:
        screen = read_until_closed(master)
    finally:
        os.close(master)
    assert proc.wait(timeout=60) == 0, screen
    draws = re.findall(r"\rnwpipe: read [\d,]+ \([^)]*/s\), (\d+)%(?: ETA (\d+:\d\d))?", screen)
    assert draws, screen
    # part-way through, with an estimate of the time left
    assert any(0 < int(pct) < 100 and eta for pct, eta in draws), screen
    percents = [int(pct) for pct, _ in draws]
    assert percents == sorted(percents)
    assert f"read {EVENTS:,} events; rejected 0; f: {EVENTS:,} delivered" in screen
    assert len((tmp_path / "out.jsonl").read_text().splitlines()) == EVENTS


def test_no_progress_line_when_stdout_is_the_same_terminal(tmp_path):
    (tmp_path / "c.toml").write_text(SLOW.replace('type = "file"\npath = "out.jsonl"',
                                                  'type = "stdout"'))
    write_events(tmp_path / "events.jsonl")
    master, slave = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "nwpipe", "run", "-c", "c.toml",
                             "events.jsonl"], cwd=tmp_path, env=env(),
                            stdin=subprocess.DEVNULL, stdout=slave, stderr=slave)
    os.close(slave)
    try:
        screen = read_until_closed(master)
    finally:
        os.close(master)
    assert proc.wait(timeout=60) == 0, screen[-2000:]
    assert f"read {EVENTS:,} events" in screen  # the summary is still there
    assert "\x1b[K" not in screen and "ETA" not in screen
    assert screen.count('"id":"alert-') == EVENTS


def test_run_reading_the_terminal_says_so(tmp_path):
    master, slave = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "nwpipe", "run"], cwd=tmp_path, env=env(),
                            stdin=slave, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    os.close(slave)
    try:
        # the hint comes before any input; then one event and Ctrl-D end the run
        line = b""
        end = time.monotonic() + 60
        while b"\n" not in line and time.monotonic() < end:
            ready, _, _ = select.select([proc.stderr], [], [], 1.0)
            if ready:
                line += os.read(proc.stderr.fileno(), 4096)
        assert line.decode().startswith(
            "nwpipe: reading events from the terminal (end with Ctrl-D)"), line
        os.write(master, b'{"id": "a1", "customer": "acme"}\n\x04')
        out, err = proc.communicate(timeout=60)
    finally:
        os.close(master)
    assert proc.returncode == 0, err
    assert json.loads(out)["id"] == "a1"
