"""Fault injection with real processes: nwpipe and a webhook receiver (tests/receiver.py),
each its own process, talking HTTP over 127.0.0.1, with real signals.

Each test checks the promise "nothing lost": every event nwpipe read was received by the
server (answered 200) or is in the dead-letter file. And it states which duplicates
at-least-once delivery allows: a request the receiver logged but whose answer never
reached nwpipe (the receiver was killed, or the run was interrupted) is sent again, by a
retry or a replay, with the same delivery id (``webhook-id``) so the receiver can drop it.
"""

from __future__ import annotations

import collections
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent


def env():
    e = {k: v for k, v in os.environ.items() if k != "NWPIPE_CONFIG"}
    e["NWPIPE_LOAD_PLUGINS"] = ""
    return e


class ReceiverProcess:
    """tests/receiver.py in its own process; what it answered is in ``log``."""

    def __init__(self, log: Path, *, delay: float = 0.0, fail_while: Path | None = None):
        self.log = log
        self.delay = delay
        self.fail_while = fail_while
        self.port = 0
        self.proc: subprocess.Popen | None = None

    def start(self, port: int = 0, log: Path | None = None) -> ReceiverProcess:
        self.log = log or self.log
        args = [sys.executable, str(HERE / "receiver.py"), "--port", str(port), "--log",
                str(self.log), "--delay", str(self.delay)]
        if self.fail_while is not None:
            args += ["--fail-while", str(self.fail_while)]
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline()
        assert line.strip().isdigit(), "the receiver did not start"
        self.port = int(line)
        return self

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/in"

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
        if self.proc is not None:
            self.proc.wait()

    def lines(self, log: Path | None = None) -> list[dict]:
        path = log or self.log
        if not path.exists():
            return []
        text = path.read_text()
        # the receiver may be writing a line right now: only complete lines count
        return [json.loads(line) for line in text[:text.rfind("\n") + 1].splitlines()]

    def wait_for(self, count: int, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while len(self.lines()) < count:
            assert time.monotonic() < deadline, f"fewer than {count} requests arrived"
            time.sleep(0.02)


def received_ok(*receivers_logs) -> collections.Counter:
    """How often each alert id was answered 200, over the given (receiver, log) pairs."""
    counts: collections.Counter = collections.Counter()
    for receiver, log in receivers_logs:
        for entry in receiver.lines(log):
            if entry["status"] == 200:
                counts.update(e["id"] for e in entry["events"])
    return counts


@pytest.fixture
def receivers():
    started: list[ReceiverProcess] = []

    def make(log: Path, **kw) -> ReceiverProcess:
        receiver = ReceiverProcess(log, **kw)
        started.append(receiver)
        return receiver

    yield make
    for receiver in started:
        receiver.kill()


def event(i):
    return {"id": f"alert-{i}", "customer": "acme", "alerttype": "start", "updatecount": 1,
            "severity": "high", "srcip": ["10.0.0.1"]}


def write_events(path: Path, count: int) -> list[str]:
    path.write_text("".join(json.dumps(event(i)) + "\n" for i in range(count)))
    return [f"alert-{i}" for i in range(count)]


def config(path: Path, url: str, *, concurrency=8, queue_size=10000, shutdown_timeout=10,
           max_attempts=30, max_line_bytes=1 << 20) -> None:
    path.write_text(f"""
shutdown_timeout = {shutdown_timeout}
max_line_bytes = {max_line_bytes}
[outputs.soc]
type = "webhook"
url = "{url}"
concurrency = {concurrency}
queue_size = {queue_size}
timeout = 5
[outputs.soc.retry]
max_attempts = {max_attempts}
initial_backoff = 0.02
max_backoff = 0.2
max_elapsed = 60
""")


def nwpipe(*args, cwd, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "nwpipe", *args], cwd=cwd, env=env(),
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kw)


def dead_letters(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def summary_count(stderr: str, pattern: str) -> int:
    match = re.search(pattern.replace(r"(\d+)", r"([\d,]+)"), stderr)
    assert match, stderr
    return int(match.group(1).replace(",", ""))


# (a) ----------------------------------------------------------------------------------


def test_receiver_answers_503_for_a_while_then_recovers(tmp_path, receivers):
    down = tmp_path / "down"
    down.touch()
    receiver = receivers(tmp_path / "received.jsonl", fail_while=down).start()
    ids = write_events(tmp_path / "events.jsonl", 300)
    config(tmp_path / "c.toml", receiver.url)
    proc = nwpipe("run", "-c", "c.toml", "events.jsonl", "--dead-letter", "dl.jsonl",
                  cwd=tmp_path)
    receiver.wait_for(40)  # 40 requests answered 503
    down.unlink()          # the receiver is back
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 0, stderr
    statuses = collections.Counter(entry["status"] for entry in receiver.lines())
    assert statuses[503] >= 40
    # No loss, and no duplicate: a 503 is not a receipt, and every 200 reached nwpipe.
    assert received_ok((receiver, None)) == collections.Counter(ids)
    assert not (tmp_path / "dl.jsonl").exists()
    assert summary_count(stderr, r"soc: 300 delivered, (\d+) retried") >= 40


# (b) ----------------------------------------------------------------------------------


def test_receiver_killed_and_restarted_mid_run(tmp_path, receivers):
    first_log, second_log = tmp_path / "first.jsonl", tmp_path / "second.jsonl"
    receiver = receivers(first_log, delay=0.003).start()
    ids = write_events(tmp_path / "events.jsonl", 1000)
    config(tmp_path / "c.toml", receiver.url, concurrency=4, max_attempts=100)
    proc = nwpipe("run", "-c", "c.toml", "events.jsonl", "--dead-letter", "dl.jsonl",
                  cwd=tmp_path)
    receiver.wait_for(200)
    receiver.kill()  # SIGKILL: connections die mid-request
    time.sleep(0.3)  # nwpipe meets refused connections meanwhile
    receiver.start(port=receiver.port, log=second_log)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 0, stderr
    counts = received_ok((receiver, first_log), (receiver, second_log))
    assert set(counts) == set(ids)  # no loss
    assert not (tmp_path / "dl.jsonl").exists()
    # Duplicates allowed: only requests the first process logged (200) and was killed
    # before answering, at most one per connection in flight (concurrency 4).
    duplicates = {i for i, n in counts.items() if n > 1}
    first_ok = set(received_ok((receiver, first_log)))
    assert duplicates <= first_ok and len(duplicates) <= 4
    assert all(n <= 2 for n in counts.values())


# (c) and (e) -------------------------------------------------------------------------


def test_sigterm_in_the_middle_of_10000_events_then_replay(tmp_path, receivers):
    receiver = receivers(tmp_path / "received.jsonl", delay=0.002).start()
    ids = write_events(tmp_path / "events.jsonl", 10_000)
    # a small queue: reading waits for the slow receiver, so SIGTERM meets it mid-file
    config(tmp_path / "c.toml", receiver.url, concurrency=8, queue_size=500)
    proc = nwpipe("run", "-c", "c.toml", "events.jsonl", "--dead-letter", "dl.jsonl",
                  cwd=tmp_path)
    receiver.wait_for(1500)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 143, stderr
    read = summary_count(stderr, r"interrupted by SIGTERM: read (\d+) events")
    assert 1500 <= read < 10_000  # reading stopped

    records = dead_letters(tmp_path / "dl.jsonl")
    dead_ids = collections.Counter(r["event"]["id"] for r in records if "event" in r)
    cut = [r for r in records if "raw" in r]
    # The signal may have come in the middle of a line: that fragment is recorded, with
    # its line number, as where reading stopped.
    for record in cut:
        assert record["line"] == read and record["reason"].startswith("input cut short")
    whole = read - len(cut)
    got = received_ok((receiver, None))
    # No loss: every event read was received or dead-lettered, and nothing unread was.
    assert set(got) | set(dead_ids) == set(ids[:whole])
    assert max(dead_ids.values()) == 1 and max(got.values()) == 1
    # At-least-once allows an event both received and dead-lettered only when its
    # request was in flight at the deadline (at most one per connection); with a
    # receiver this quick and a 10 s deadline, they all finish.
    assert len(set(got) & set(dead_ids)) <= 8
    assert {r["reason"] for r in records if "event" in r} <= {
        "interrupted by SIGTERM before delivery", "not delivered before the shutdown deadline"}

    # (e) replay delivers the rest, with the delivery ids of the first run
    before_replay = len(receiver.lines())
    replay = subprocess.run([sys.executable, "-m", "nwpipe", "replay", "dl.jsonl", "-c",
                             "c.toml"], cwd=tmp_path, env=env(), capture_output=True,
                            text=True, timeout=60)
    assert replay.returncode == (3 if cut else 0), replay.stderr
    after = received_ok((receiver, None))
    assert set(after) == set(ids[:whole])
    # a duplicate only for what was both received and dead-lettered by the run
    assert {i for i, n in after.items() if n > 1} == set(got) & set(dead_ids)
    replayed_ids = {e["id"]: entry["webhook_id"] for entry in receiver.lines()[before_replay:]
                    for e in entry["events"]}
    assert all(replayed_ids[r["event"]["id"]] == r["delivery_id"] for r in records
               if "event" in r)
    assert dead_letters(tmp_path / "dl.jsonl") == cut  # only the fragment, if any, remains


# (d) ----------------------------------------------------------------------------------

#: every kind of bad input, each on its own line
BAD_LINES = [
    b"this is not json",
    b'{"id": "cut-short", "customer": "ac',      # an object cut off mid-line
    b"42",                                      # JSON, not an object
    b'"just a string"',
    b"null",
    b"[1]",
    b'{"id": "alert-\xff\xfe", "customer": "acme"}',  # invalid UTF-8
    b'{"id": "huge", "customer": "acme", "pad": "' + b"x" * 5000 + b'"}',  # > max_line_bytes
    b'{"customer": "acme", "alerttype": "start"}',  # no id
    b'{"id": "no-customer", "alerttype": "start"}',  # no customer
]


def test_corrupted_lines_of_every_kind(tmp_path, receivers):
    receiver = receivers(tmp_path / "received.jsonl").start()
    config(tmp_path / "c.toml", receiver.url, max_line_bytes=4096)
    lines: list[bytes] = []
    bad: dict[int, bytes] = {}
    valid: list[str] = []
    for i in range(2000):
        if i % 20 == 10:  # 5%, each kind ten times, always between valid lines
            line = BAD_LINES[(i // 20) % len(BAD_LINES)]
            bad[len(lines) + 1] = line
        else:
            line = json.dumps(event(i)).encode()
            valid.append(f"alert-{i}")
        lines.append(line)
        if i % 200 == 0:
            lines.append(b"")  # empty lines are skipped, not rejected
    (tmp_path / "events.jsonl").write_bytes(b"\n".join(lines) + b"\n")

    proc = nwpipe("run", "-c", "c.toml", "events.jsonl", "--dead-letter", "dl.jsonl",
                  cwd=tmp_path)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 3, stderr
    # every valid event delivered, exactly once
    assert received_ok((receiver, None)) == collections.Counter(valid)
    # every bad line dead-lettered, once, with its line number and the raw input
    records = dead_letters(tmp_path / "dl.jsonl")
    assert sorted(r["line"] for r in records) == sorted(bad)
    for record in records:
        assert record["stage"] == "parse" and record["source"] == "events.jsonl"
        original = bad[record["line"]]
        if "raw" in record:
            # the line (an array's element: that element), capped past max_line_bytes
            shown = original.decode("utf-8", "backslashreplace")
            assert record["raw"].removesuffix("…[truncated]") in shown
        else:
            assert record["event"] == json.loads(original)
    reasons = " | ".join(r["reason"] for r in records)
    for words in ("not valid JSON", "unfinished JSON object", "not an object (got number)",
                  "(got string)", "(got null)", "array element is not an object",
                  "invalid UTF-8", "line longer than max_line_bytes (4096)",
                  "event has no 'id' field", "event has no 'customer' field"):
        assert words in reasons
    # one stderr line each for the first 50, then a count
    messages = [line for line in stderr.splitlines() if line.endswith("(dead-lettered)")]
    assert len(messages) == 50
    assert messages[0].startswith(f"nwpipe: events.jsonl:{min(bad)}: not valid JSON")
    assert f"... and {len(bad) - 50} more rejected events, all in dl.jsonl" in stderr
    assert f"read {2000:,} events; rejected {len(bad)}; soc: {len(valid):,} delivered" in stderr
