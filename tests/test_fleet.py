"""The fleet: `nwpipe work` processes and intake processes sharing one Redis queue.

Everything is a real process: redis-server (append-only), the receiver
(tests/receiver.py, which logs every request before answering, with the header that
tells the workers apart), `nwpipe run --no-deliver` as intake and `nwpipe work` as
workers. Faults are real signals: kill -9, SIGSTOP/SIGCONT, a Redis restart.

Each test accounts for every event: at the end each (alert, updatecount) was answered
200 at least once, per alert the first arrivals are in order (start, ongoing..., end),
every repeat carries the delivery id of the first, and Redis has nothing left: no entry,
no pending entry.
"""

from __future__ import annotations

import collections
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
DEADLINE = 120  # generous: reached only when something is wrong
LEASE = 2  # seconds; short so that the takeover tests are quick


def env(**extra):
    e = {k: v for k, v in os.environ.items() if k != "NWPIPE_CONFIG"}
    e["NWPIPE_LOAD_PLUGINS"] = ""
    e.update(extra)
    return e


#: the fleet of the running test, whose logs a failure shows
_current: list = []


def _logs() -> str:
    """The tail of every process log of the current test's fleet."""
    if not _current:
        return ""
    fleet = _current[-1]
    text = "".join(f"\n--- {log.name}:\n" + log.read_text(errors="replace")[-3000:]
                   for log in sorted(fleet.folder.glob("*.log")))
    try:
        shards = [s for s in fleet.status()["shards"] if s["length"] or s["pending"]]
        text += f"\n--- shards not empty: {shards}"
    except Exception as exc:  # noqa: BLE001 - only for the failure message
        text += f"\n--- no queue status: {exc}"
    return text


def wait_until(predicate, what: str, timeout: float = DEADLINE, procs=()):
    """Poll ``predicate`` until truthy; fail with ``what``, and the processes' logs."""
    end = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        for p in procs:
            if p.poll() is not None and p.returncode not in (0, -9, -15):
                pytest.fail(f"{what}: {getattr(p, 'name', 'a process')} exited with "
                            f"{p.returncode}{_logs()}")
        if time.monotonic() > end:
            pytest.fail(f"timed out after {timeout} s waiting for {what}{_logs()}")
        time.sleep(0.05)


def lifecycle(alerts: int, ongoing: int = 2) -> list[dict]:
    """start, ``ongoing`` x ongoing, end for each alert, interleaved across alerts."""
    events = []
    steps = ["start"] + ["ongoing"] * ongoing + ["end"]
    wave = 50
    for base in range(0, alerts, wave):
        for n, kind in enumerate(steps, 1):
            for a in range(base, min(base + wave, alerts)):
                events.append({"id": f"alert-{a}", "customer": "acme", "alerttype": kind,
                               "updatecount": n, "severity": "high", "srcip": ["10.0.0.1"]})
    return events


def write_jsonl(path: Path, events: list[dict]) -> None:
    path.write_text("".join(json.dumps(e) + "\n" for e in events))


class Receiver:
    """tests/receiver.py in its own process, logging the X-Worker header."""

    def __init__(self, log: Path, delay: float = 0.0):
        self.log = log
        self.proc = subprocess.Popen(
            [sys.executable, str(HERE / "receiver.py"), "--log", str(log), "--header", "X-Worker",
             "--delay", str(delay)], stdout=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline()
        assert line.strip().isdigit(), "the receiver did not start"
        self.url = f"http://127.0.0.1:{int(line)}/in"

    def lines(self) -> list[dict]:
        if not self.log.exists():
            return []
        text = self.log.read_text()
        return [json.loads(line) for line in text.splitlines() if line.endswith("}")]

    def stop(self):
        self.proc.kill()
        self.proc.wait()


class Fleet:
    """The processes of one test, all stopped at the end."""

    def __init__(self, folder: Path, redis, receiver: Receiver, *, shards=16, lease=LEASE):
        self.folder = folder
        self.redis = redis
        self.receiver = receiver
        self.procs: list[subprocess.Popen] = []
        (folder / "fleet.toml").write_text(f"""
shutdown_timeout = 5
dead_letter = "dead.jsonl"
[queue]
url = "{redis.url}"
shards = {shards}
lease_seconds = {lease}
[outputs.soc]
type = "webhook"
url = "{receiver.url}"
headers = {{ X-Worker = "${{NWPIPE_WORKER:-none}}" }}
concurrency = 8
timeout = 5
[outputs.soc.retry]
max_attempts = 1000
initial_backoff = 0.05
max_backoff = 0.5
max_elapsed = 600
""")

    def _start(self, args, name, stdin=subprocess.DEVNULL) -> subprocess.Popen:
        proc = subprocess.Popen([sys.executable, "-m", "nwpipe", *args, "-c", "fleet.toml"],
                                cwd=self.folder, env=env(NWPIPE_WORKER=name),
                                stdin=stdin, stdout=subprocess.DEVNULL,
                                stderr=open(self.folder / f"{name}.log", "w"))
        proc.name = name
        self.procs.append(proc)
        return proc

    def worker(self, name: str) -> subprocess.Popen:
        """``nwpipe work`` with X-Worker: NAME on every delivery."""
        return self._start(["work"], name)

    def intake(self, path: str, name: str = "intake") -> subprocess.Popen:
        """``nwpipe run --no-deliver FILE``: commits every event to Redis, delivers none."""
        return self._start(["run", "--no-deliver", path], name)

    def intake_stdin(self, name: str = "intake") -> subprocess.Popen:
        """``nwpipe run --no-deliver`` reading stdin (the test writes to ``proc.stdin``)."""
        return self._start(["run", "--no-deliver", "-"], name, stdin=subprocess.PIPE)

    def log(self, name: str) -> str:
        return (self.folder / f"{name}.log").read_text(errors="replace")

    def status(self) -> dict:
        out = subprocess.run([sys.executable, "-m", "nwpipe", "queue", "status", "--json",
                              "-c", "fleet.toml"], cwd=self.folder, env=env(),
                             capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        return json.loads(out.stdout)

    def owners(self) -> collections.Counter:
        """How many shards each worker owns (None: shards nobody holds)."""
        return collections.Counter(s.get("owner") for s in self.status()["shards"])


    def stop(self):
        for p in self.procs:
            if p.poll() is None:
                try:
                    os.kill(p.pid, signal.SIGCONT)
                except ProcessLookupError:
                    pass
                p.send_signal(signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(60)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


def shares(fleet: Fleet) -> list[int]:
    """The number of shards each live worker holds, smallest first."""
    return sorted(n for owner, n in fleet.owners().items() if owner)


@pytest.fixture
def fleet(tmp_path, own_redis):
    made = []

    def make(receiver_delay=0.0, **kw) -> Fleet:
        receiver = Receiver(tmp_path / "received.jsonl", delay=receiver_delay)
        f = Fleet(tmp_path, own_redis, receiver, **kw)
        made.append(f)
        _current.append(f)
        return f

    yield make
    _current.clear()
    for f in made:
        f.stop()
        f.receiver.stop()


def delivered(receiver: Receiver) -> dict[tuple[str, int], list[str]]:
    """(alert, updatecount) -> delivery ids of its 200 answers, in arrival order."""
    got: dict[tuple[str, int], list[str]] = collections.defaultdict(list)
    for entry in receiver.lines():
        if entry["status"] == 200:
            for e in entry["events"]:
                got[(e["id"], e["updatecount"])].append(entry["webhook_id"])
    return got


def all_delivered(receiver: Receiver, events: list[dict]):
    got = delivered(receiver)
    return all((e["id"], e["updatecount"]) in got for e in events)


def check_every_event_in_order(receiver: Receiver, events: list[dict]) -> int:
    """Every event arrived; per alert the first arrivals are in order; a repeat has the
    same delivery id. Returns the number of repeats (at-least-once)."""
    got = delivered(receiver)
    missing = [(e["id"], e["updatecount"]) for e in events if (e["id"], e["updatecount"]) not in got]
    assert not missing, f"{len(missing)} events never delivered, e.g. {missing[:5]}"
    repeats = 0
    for key, ids in got.items():
        assert len(set(ids)) == 1, f"{key} arrived with different delivery ids {set(ids)}"
        repeats += len(ids) - 1
    first: dict[str, list[int]] = collections.defaultdict(list)
    seen = set()
    for entry in receiver.lines():
        if entry["status"] != 200:
            continue
        for e in entry["events"]:
            key = (e["id"], e["updatecount"])
            if key not in seen:
                seen.add(key)
                first[e["id"]].append(e["updatecount"])
    for alert, counts in first.items():
        assert counts == sorted(counts), f"{alert} arrived out of order: {counts}"
    return repeats


def queue_empty(fleet: Fleet) -> bool:
    status = fleet.status()
    return all(s["length"] == 0 and s["pending"] == 0 for s in status["shards"])


def test_three_workers_one_killed_every_event_in_order(fleet):
    f = fleet(receiver_delay=0.002)
    events = lifecycle(1000)  # 4000 events
    write_jsonl(f.folder / "events.jsonl", events)
    workers = [f.worker(f"w{i}") for i in range(3)]
    wait_until(lambda: shares(f) == [5, 5, 6], "three workers to share the shards",
               procs=workers)
    intake = f.intake("events.jsonl")
    total = len(events)
    wait_until(lambda: len(delivered(f.receiver)) > total // 3, "a third of the events",
               procs=[intake, *workers])
    workers[0].kill()  # kill -9 in the middle
    workers[0].wait()
    wait_until(lambda: intake.poll() is not None, "the intake to commit every event")
    assert intake.returncode == 0, f.log("intake")
    wait_until(lambda: all_delivered(f.receiver, events), "every event to be delivered",
               procs=workers[1:])
    check_every_event_in_order(f.receiver, events)
    wait_until(lambda: queue_empty(f), "no entry and no pending entry left in Redis")
    assert shares(f) == [8, 8]  # the dead worker's shards were taken over
    assert f.redis.command("XLEN", "nwpipe:dead") == "(integer) 0"  # no dead letter
    f.stop()
    assert [w.returncode for w in workers[1:]] == [0, 0], f.log("w1") + f.log("w2")


def test_stopped_worker_past_its_lease_delivers_nothing_from_lost_shards(fleet):
    f = fleet(receiver_delay=0.01)
    events = lifecycle(300, ongoing=1)  # 900 events
    write_jsonl(f.folder / "events.jsonl", events)
    a, b = f.worker("a"), f.worker("b")
    wait_until(lambda: shares(f) == [8, 8], "two workers with 8 shards each", procs=[a, b])
    intake = f.intake("events.jsonl")
    wait_until(lambda: sum(1 for e in f.receiver.lines() if e.get("header") == "a") > 50,
               "worker a to be delivering", procs=[a, b, intake])
    os.kill(a.pid, signal.SIGSTOP)  # frozen with deliveries in memory, past its lease
    wait_until(lambda: intake.poll() is not None, "the intake to commit every event")
    wait_until(lambda: all_delivered(f.receiver, events), "worker b to deliver everything",
               procs=[b])
    wait_until(lambda: queue_empty(f), "no entry and no pending entry left in Redis")
    before = len(f.receiver.lines())
    from_a_before = sum(1 for e in f.receiver.lines() if e.get("header") == "a")
    os.kill(a.pid, signal.SIGCONT)
    # a wakes up, finds its leases gone, and rejoins: it gets shards again
    wait_until(lambda: shares(f) == [8, 8], "worker a to rejoin", procs=[a, b])
    late = [e for e in f.receiver.lines()[before:] if e.get("header") == "a"]
    assert late == [], f"the stale worker delivered {len(late)} more requests"
    assert sum(1 for e in f.receiver.lines() if e.get("header") == "a") == from_a_before
    check_every_event_in_order(f.receiver, events)
    a.send_signal(signal.SIGTERM)
    assert a.wait(60) == 0
    log = f.log("a")
    assert "taken over by another worker" in log
    # what it held in memory for the lost shards was dropped unsent, not dead-lettered
    assert "handed over (their shards went to another worker)" in log, log


def test_redis_restart_in_the_middle_loses_nothing_acknowledged(fleet):
    f = fleet(receiver_delay=0.005)
    events = lifecycle(1000, ongoing=1)  # 3000 events
    workers = [f.worker("w1"), f.worker("w2")]
    intake = f.intake_stdin()
    half = len(events) // 2
    intake.stdin.write("".join(json.dumps(e) + "\n" for e in events[:half]).encode())
    intake.stdin.flush()
    wait_until(lambda: len(delivered(f.receiver)) > 500, "deliveries to start",
               procs=[intake, *workers])
    f.redis.stop()  # SIGTERM: Redis writes its append-only file and exits
    # the second half arrives while Redis is down: the intake waits and tries again
    intake.stdin.write("".join(json.dumps(e) + "\n" for e in events[half:]).encode())
    intake.stdin.close()
    wait_until(lambda: "cannot reach Redis" in f.log("intake"),
               "the intake to say it waits for Redis", procs=[intake])
    assert intake.poll() is None  # still waiting, nothing given up
    f.redis.start()
    wait_until(lambda: intake.poll() is not None, "the intake to finish after the restart")
    assert intake.returncode == 0, f.log("intake")
    wait_until(lambda: all_delivered(f.receiver, events), "every event to be delivered",
               procs=workers)
    check_every_event_in_order(f.receiver, events)
    wait_until(lambda: queue_empty(f), "no entry and no pending entry left in Redis")


def test_a_worker_joining_mid_stream_gets_shards(fleet):
    f = fleet(receiver_delay=0.02)  # at most 400 events/s: the stream lasts several seconds
    events = lifecycle(1000, ongoing=1)  # 3000 events
    write_jsonl(f.folder / "events.jsonl", events)
    first = f.worker("first")
    intake = f.intake("events.jsonl")
    wait_until(lambda: len(delivered(f.receiver)) > 100, "the first worker to deliver",
               procs=[first, intake])
    assert shares(f) == [16]
    second = f.worker("second")
    wait_until(lambda: shares(f) == [8, 8], "the joining worker to get half of the shards",
               procs=[first, second])
    wait_until(lambda: all_delivered(f.receiver, events), "every event to be delivered",
               procs=[first, second])
    assert any(e.get("header") == "second" for e in f.receiver.lines())
    check_every_event_in_order(f.receiver, events)
    wait_until(lambda: queue_empty(f), "no entry and no pending entry left in Redis")
