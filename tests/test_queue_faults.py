"""The durable queue under real faults: nwpipe and webhook receivers (tests/receiver.py)
as their own processes over 127.0.0.1, receivers down for a while or all along,
``kill -9``, a small disk budget, a damaged or deleted queue file.

Each test accounts for every event: received (answered 200), in the dead-letter file,
or still in the queue; never missing. Order per alert is checked at the receiver (the
log is in arrival order, and an alert's next event is only sent once the previous one
was answered).
"""

from __future__ import annotations

import collections
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

from test_faults import ReceiverProcess, dead_letters, env, receivers  # noqa: F401 (a fixture)

ALERTTYPES = ("start", "ongoing", "ongoing", "ongoing", "end")


def free_port() -> int:
    """A port nobody listens on (for a receiver that is down, then started there)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_alerts(path: Path, alerts: int, per_alert: int = len(ALERTTYPES)) -> list[tuple]:
    """Events of ``alerts`` alerts interleaved, each start, ongoing..., end; returns
    (id, updatecount) of each event in file order."""
    lines, keys = [], []
    for n in range(per_alert):
        for a in range(alerts):
            alerttype = ALERTTYPES[min(n, len(ALERTTYPES) - 2)] if n < per_alert - 1 else "end"
            event = {"id": f"alert-{a}", "customer": "acme", "alerttype": alerttype,
                     "updatecount": n, "severity": "high", "srcip": ["10.0.0.1"],
                     "padding": "x" * 150}
            lines.append(json.dumps(event) + "\n")
            keys.append((event["id"], n))
    path.write_text("".join(lines))
    return keys


def config(path: Path, outputs: dict[str, str], *, queue_size=300, concurrency=8,
           max_backoff=1.0, max_elapsed=300, extra="") -> None:
    """One webhook output per (name, url); retry defaults but a short max_backoff so
    that a receiver that is back is noticed within a second."""
    text = extra + "\n"
    for name, url in outputs.items():
        text += f"""
[outputs.{name}]
type = "webhook"
url = "{url}"
concurrency = {concurrency}
queue_size = {queue_size}
timeout = 5
retry = {{ max_backoff = {max_backoff}, max_elapsed = {max_elapsed} }}
"""
    path.write_text(text)


def nwpipe(*args, cwd, stdin=subprocess.DEVNULL) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "nwpipe", *args], cwd=cwd, env=env(),
                            stdin=stdin, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def run(*args, cwd, timeout=120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "nwpipe", *args], cwd=cwd, env=env(),
                          stdin=subprocess.DEVNULL, capture_output=True, text=True,
                          timeout=timeout)


def arrivals(receiver: ReceiverProcess, log: Path | None = None) -> list[tuple]:
    """(id, updatecount, webhook_id) of every event answered 200, in arrival order."""
    out = []
    for entry in receiver.lines(log):
        if entry["status"] == 200:
            out.extend((e["id"], e["updatecount"], entry["webhook_id"]) for e in entry["events"])
    return out


def assert_order_per_alert(got: list[tuple]) -> None:
    """Per alert, the first arrivals are in updatecount order (a duplicate of an
    earlier one may follow)."""
    seen: dict[str, int] = {}
    for alert, n, _wid in got:
        last = seen.get(alert, -1)
        if n > last:  # a first arrival: the next one of its alert
            assert n == last + 1, f"{alert}: update {n} arrived before update {last + 1}"
            seen[alert] = n


def queue_status(cwd: Path, *args) -> dict:
    done = run("queue", "status", "--json", "-c", "c.toml", *args, cwd=cwd)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def wait_until(predicate, timeout: float = 60, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


# -- an outage waits on disk -----------------------------------------------------------


def test_the_only_receiver_down_for_20_seconds_loses_nothing_and_keeps_order(tmp_path,
                                                                           receivers):
    port = free_port()
    keys = write_alerts(tmp_path / "events.jsonl", alerts=1000)  # 5,000 events
    config(tmp_path / "c.toml", {"soc": f"http://127.0.0.1:{port}/in"})
    started = time.monotonic()
    proc = nwpipe("run", "-c", "c.toml", "events.jsonl", "--dead-letter", "dl.jsonl",
                  cwd=tmp_path)
    # the memory queue (300) fills while the receiver is down: the rest waits on disk
    wait_until(lambda: (tmp_path / "nwpipe-queue.db").exists(), what="the queue file")
    # the outage: 20 seconds, longer than 8 attempts (max_attempts) of backoff take
    time.sleep(max(0.0, 20 - (time.monotonic() - started)))
    assert proc.poll() is None  # still waiting for the receiver, not dead-lettering
    receiver = receivers(tmp_path / "received.jsonl").start(port=port)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0, stderr
    assert "Traceback" not in stderr
    assert "events wait in the queue nwpipe-queue.db" in stderr
    assert not (tmp_path / "dl.jsonl").exists()  # zero dead letters
    got = arrivals(receiver)
    assert {(a, n) for a, n, _ in got} == set(keys)  # every event delivered
    assert len(got) == len(keys)  # a refused connection is not a receipt: no duplicate
    assert_order_per_alert(got)
    assert "0 left for the next run" in stderr
    assert queue_status(tmp_path)["events"] == 0


def test_a_receiver_down_all_along_beside_a_healthy_one(tmp_path, receivers):
    healthy = receivers(tmp_path / "healthy.jsonl").start()
    down_url = f"http://127.0.0.1:{free_port()}/in"
    keys = write_alerts(tmp_path / "events.jsonl", alerts=600)  # 3,000 events
    config(tmp_path / "c.toml", {"healthy": healthy.url, "down": down_url}, max_backoff=0.5,
           max_elapsed=15)
    started = time.monotonic()
    proc = nwpipe("run", "-c", "c.toml", "events.jsonl", "--dead-letter", "dl.jsonl",
                  cwd=tmp_path)
    wait_until(lambda: len(arrivals(healthy)) >= len(keys), what="the healthy output")
    healthy_done = time.monotonic() - started
    _, stderr = proc.communicate(timeout=120)
    elapsed = time.monotonic() - started
    assert proc.returncode == 3, stderr
    # the healthy output did not wait for the down one's budget (15 s) to run out
    assert healthy_done < 15, healthy_done
    got = arrivals(healthy)
    assert len(got) == len(keys) and {(a, n) for a, n, _ in got} == set(keys)
    assert_order_per_alert(got)
    # the down one: everything in the dead-letter file, in order per alert, and the run
    # ended once its budget was spent, not hours later
    records = dead_letters(tmp_path / "dl.jsonl")
    assert all(r["output"] == "down" for r in records)
    dead = [(r["event"]["id"], r["event"]["updatecount"]) for r in records]
    assert sorted(dead) == sorted(keys) and len(dead) == len(set(dead))
    assert_order_per_alert([(a, n, None) for a, n in dead])
    assert elapsed < 15 + 45, elapsed
    assert "retrying longer would pass retry.max_elapsed (15 s)" in stderr
    assert queue_status(tmp_path)["events"] == 0


def test_keep_queue_leaves_a_down_outputs_backlog_for_the_next_run(tmp_path, receivers):
    healthy = receivers(tmp_path / "healthy.jsonl").start()
    port = free_port()
    keys = write_alerts(tmp_path / "events.jsonl", alerts=400)  # 2,000 events
    config(tmp_path / "c.toml", {"healthy": healthy.url, "down": f"http://127.0.0.1:{port}/in"})
    started = time.monotonic()
    first = run("run", "-c", "c.toml", "events.jsonl", "--dead-letter", "dl.jsonl",
                "--keep-queue", cwd=tmp_path)
    # exits once only the failing output holds events: not after max_elapsed (300 s)
    assert time.monotonic() - started < 60
    assert first.returncode == 0, first.stderr
    assert "--keep-queue: down failing" in first.stderr
    assert "2,000 left for the next run" in first.stderr
    assert not (tmp_path / "dl.jsonl").exists()
    assert {(a, n) for a, n, _ in arrivals(healthy)} == set(keys)
    status = queue_status(tmp_path)
    assert status["outputs"]["down"]["events"] == len(keys)
    assert status["outputs"]["healthy"]["events"] == 0
    assert status["outputs"]["down"]["failing_since"] is not None

    # the receiver is back: the next run, on empty input, delivers the backlog first
    back = receivers(tmp_path / "back.jsonl").start(port=port)
    second = run("run", "-c", "c.toml", "--dead-letter", "dl.jsonl", cwd=tmp_path)
    assert second.returncode == 0, second.stderr
    assert "left by an earlier run: delivering them first" in second.stderr
    got = arrivals(back)
    assert len(got) == len(keys) and {(a, n) for a, n, _ in got} == set(keys)
    assert_order_per_alert(got)
    assert len(arrivals(healthy)) == len(keys)  # nothing sent twice to the healthy one
    assert queue_status(tmp_path)["events"] == 0


def backlog_of_a_down_output(tmp_path: Path, receivers) -> tuple[ReceiverProcess, int, list]:
    """A run with --keep-queue leaves the backlog of output "down" (its port closed)."""
    healthy = receivers(tmp_path / "healthy.jsonl").start()
    port = free_port()
    keys = write_alerts(tmp_path / "events.jsonl", alerts=100)
    config(tmp_path / "c.toml", {"healthy": healthy.url, "down": f"http://127.0.0.1:{port}/in"},
           queue_size=50)
    first = run("run", "-c", "c.toml", "events.jsonl", "--keep-queue", "--dead-letter",
                "dl.jsonl", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    assert queue_status(tmp_path)["outputs"]["down"]["events"] == len(keys)
    return healthy, port, keys


def test_queue_drain_moves_one_outputs_backlog_to_the_dead_letter_file(tmp_path, receivers):
    healthy, port, keys = backlog_of_a_down_output(tmp_path, receivers)
    drained = run("queue", "drain", "-c", "c.toml", "--output", "down", "--dead-letter",
                  "--dead-letter-file", "dl.jsonl", cwd=tmp_path)
    assert drained.returncode == 3, drained.stderr
    records = dead_letters(tmp_path / "dl.jsonl")
    assert sorted((r["event"]["id"], r["event"]["updatecount"]) for r in records) == sorted(keys)
    assert {r["reason"] for r in records} == {
        "moved to the dead-letter file by `nwpipe queue drain --dead-letter`"}
    assert_order_per_alert([(r["event"]["id"], r["event"]["updatecount"], None)
                            for r in records])
    assert queue_status(tmp_path)["events"] == 0
    assert len(arrivals(healthy)) == len(keys)
    # and the dead letters replay, in order, once the receiver is up
    back = receivers(tmp_path / "back.jsonl").start(port=port)
    replay = run("replay", "dl.jsonl", "-c", "c.toml", cwd=tmp_path)
    assert replay.returncode == 0, replay.stderr
    got = arrivals(back)
    assert {(a, n) for a, n, _ in got} == set(keys)
    assert_order_per_alert(got)


def test_queue_drain_delivers_one_outputs_backlog(tmp_path, receivers):
    healthy, port, keys = backlog_of_a_down_output(tmp_path, receivers)
    back = receivers(tmp_path / "back.jsonl").start(port=port)
    drained = run("queue", "drain", "-c", "c.toml", "--output", "down", cwd=tmp_path)
    assert drained.returncode == 0, drained.stderr
    got = arrivals(back)
    assert len(got) == len(keys) and {(a, n) for a, n, _ in got} == set(keys)
    assert_order_per_alert(got)
    assert queue_status(tmp_path)["events"] == 0
    assert len(arrivals(healthy)) == len(keys)  # the other output's backlog was not touched


# -- crash safety ----------------------------------------------------------------------


def test_kill_9_during_a_durable_run_then_rerun_delivers_every_committed_event(tmp_path,
                                                                             receivers):
    receiver = receivers(tmp_path / "received.jsonl", delay=0.003).start()
    keys = write_alerts(tmp_path / "events.jsonl", alerts=1600)  # 8,000 events
    config(tmp_path / "c.toml", {"soc": receiver.url}, queue_size=10000)
    proc = nwpipe("run", "-c", "c.toml", "events.jsonl", "--durable", cwd=tmp_path)
    receiver.wait_for(600)
    proc.kill()  # SIGKILL: no shutdown at all
    proc.communicate(timeout=30)
    status = queue_status(tmp_path)
    committed = status["inputs"][str(tmp_path / "events.jsonl")]
    assert 0 < committed <= len(keys)
    before = arrivals(receiver)
    assert len(before) < len(keys)

    # the next run, on empty input, delivers what was committed and not delivered
    again = run("run", "-c", "c.toml", "--durable", cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert "left by an earlier run" in again.stderr or status["events"] == 0
    got = arrivals(receiver)
    assert {(a, n) for a, n, _ in got} >= set(keys[:committed])

    # --resume continues the file after what was committed: nothing sent twice from it
    resumed = run("run", "-c", "c.toml", "--durable", "--resume", "events.jsonl", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming after line {committed}" in resumed.stderr
    got = arrivals(receiver)
    assert {(a, n) for a, n, _ in got} == set(keys)  # every event, at least once
    counts = collections.Counter((a, n) for a, n, _ in got)
    duplicates = [k for k, c in counts.items() if c > 1]
    # duplicates only of what was in flight at the kill (8 connections), or delivered
    # in the moment before its acknowledgement was committed
    assert all(keys.index(k) < committed for k in duplicates)
    assert len(duplicates) <= 100, len(duplicates)
    # same delivery ids the second time
    ids: dict[tuple, set] = collections.defaultdict(set)
    for a, n, wid in got:
        ids[(a, n)].add(wid)
    assert all(len(v) == 1 for v in ids.values())
    assert_order_per_alert(got)
    assert queue_status(tmp_path)["events"] == 0


def test_resume_without_the_queue_file_is_a_clear_error(tmp_path):
    write_alerts(tmp_path / "events.jsonl", alerts=2)
    config(tmp_path / "c.toml", {"soc": f"http://127.0.0.1:{free_port()}/in"})
    done = run("run", "-c", "c.toml", "--durable", "--resume", "events.jsonl", cwd=tmp_path)
    assert done.returncode == 1
    assert "--resume: queue file nwpipe-queue.db does not exist" in done.stderr
    assert "Traceback" not in done.stderr


# -- the disk budget -----------------------------------------------------------------


def test_disk_budget_reached_reading_waits_and_nothing_is_lost(tmp_path, receivers):
    port = free_port()
    keys = write_alerts(tmp_path / "events.jsonl", alerts=400)  # 2,000 events of ~300 bytes
    config(tmp_path / "c.toml", {"soc": f"http://127.0.0.1:{port}/in"}, queue_size=100,
           extra="[queue]\nmax_bytes = 100000\n")
    proc = nwpipe("run", "-c", "c.toml", "events.jsonl", "--dead-letter", "dl.jsonl",
                  cwd=tmp_path)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stderr), daemon=True)
    reader.start()
    wait_until(lambda: any("reading waits" in line for line in lines),
               what="the queue to reach its budget")
    assert "its budget (queue.max_bytes = 100,000) is reached: reading waits" in "".join(lines)
    status = queue_status(tmp_path)
    assert 0 < status["bytes"] <= 100_000 and status["events"] < len(keys)
    assert proc.poll() is None  # reading waits; nothing is dead-lettered
    assert not (tmp_path / "dl.jsonl").exists()
    receiver = receivers(tmp_path / "received.jsonl").start(port=port)
    proc.wait(timeout=120)
    reader.join(timeout=30)
    stderr = "".join(lines)
    assert proc.returncode == 0, stderr
    assert "reading waited" in stderr
    got = arrivals(receiver)
    assert len(got) == len(keys) and {(a, n) for a, n, _ in got} == set(keys)
    assert_order_per_alert(got)
    assert not (tmp_path / "dl.jsonl").exists()


# -- a damaged queue file ----------------------------------------------------------------


def test_damaged_queue_file_is_a_clear_error_and_recover_keeps_what_can_be_read(tmp_path,
                                                                              receivers):
    port = free_port()
    keys = write_alerts(tmp_path / "events.jsonl", alerts=600)  # 3,000 events
    config(tmp_path / "c.toml", {"soc": f"http://127.0.0.1:{port}/in"}, queue_size=20)
    first = run("run", "-c", "c.toml", "events.jsonl", "--durable", "--keep-queue",
                cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    queue = tmp_path / "nwpipe-queue.db"
    assert queue_status(tmp_path)["events"] == len(keys)
    # damage two pages in the middle of the file
    size = queue.stat().st_size
    with open(queue, "r+b") as fh:
        fh.seek((size // 2) // 4096 * 4096)
        fh.write(os.urandom(8192))

    broken = run("run", "-c", "c.toml", cwd=tmp_path)
    assert broken.returncode == 1
    assert "queue file nwpipe-queue.db is damaged" in broken.stderr
    assert "nwpipe queue recover" in broken.stderr
    assert "Traceback" not in broken.stderr

    recovered = run("queue", "recover", "-c", "c.toml", cwd=tmp_path)
    assert recovered.returncode in (0, 3), recovered.stderr
    count = int(recovered.stdout.split(": ")[1].split(" ")[0].replace(",", ""))
    assert 0 < count < len(keys)  # the damaged pages' entries are gone, the rest is kept
    assert list(tmp_path.glob("nwpipe-queue.db.damaged-*"))
    assert queue_status(tmp_path)["events"] == count

    receiver = receivers(tmp_path / "received.jsonl").start(port=port)
    again = run("run", "-c", "c.toml", "--dead-letter", "dl.jsonl", cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    got = arrivals(receiver)
    assert len(got) == count and {(a, n) for a, n, _ in got} <= set(keys)
    assert queue_status(tmp_path)["events"] == 0


def test_sigterm_in_a_durable_run_leaves_the_rest_in_the_queue(tmp_path, receivers):
    receiver = receivers(tmp_path / "received.jsonl", delay=0.003).start()
    keys = write_alerts(tmp_path / "events.jsonl", alerts=800)  # 4,000 events
    config(tmp_path / "c.toml", {"soc": receiver.url}, queue_size=10000)
    proc = nwpipe("run", "-c", "c.toml", "events.jsonl", "--durable", "--dead-letter",
                  "dl.jsonl", cwd=tmp_path)
    receiver.wait_for(300)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 143, stderr
    # every event read is received, dead-lettered (only what was cut short in flight) or
    # still queued; what is queued is not dead-lettered
    status = queue_status(tmp_path)
    committed = status["inputs"][str(tmp_path / "events.jsonl")]
    received = {(a, n) for a, n, _ in arrivals(receiver)}
    dead = {(r["event"]["id"], r["event"]["updatecount"])
            for r in dead_letters(tmp_path / "dl.jsonl") if "event" in r}
    assert status["events"] > 0 and "left for the next run" in stderr
    assert len(dead) <= 8
    # the next run delivers what was left, then --resume reads on where reading stopped
    again = run("run", "-c", "c.toml", "--durable", "--resume", "events.jsonl",
                "--dead-letter", "dl.jsonl", cwd=tmp_path)
    assert again.returncode in (0, 3), again.stderr
    received = {(a, n) for a, n, _ in arrivals(receiver)}
    assert received | dead == set(keys)
    assert committed <= len(keys) and queue_status(tmp_path)["events"] == 0


def test_queue_config_mistakes_name_the_key(tmp_path):
    (tmp_path / "c.toml").write_text('[queue]\nsinc = "full"\n[outputs.out]\ntype = "stdout"\n')
    done = run("check", "-c", "c.toml", cwd=tmp_path)
    assert done.returncode == 1
    assert "c.toml: queue.sinc: unknown setting 'sinc' (did you mean 'sync'?)" in done.stderr
    (tmp_path / "c.toml").write_text('[queue]\nsync = "sometimes"\n[outputs.out]\ntype = "stdout"\n')
    done = run("check", "-c", "c.toml", cwd=tmp_path)
    assert done.returncode == 1
    assert "queue.sync: 'sometimes' is not one of 'normal', 'full'" in done.stderr
    (tmp_path / "c.toml").write_text('[queue]\nurl = "http://user:pw-9@redis"\n'
                                     '[outputs.out]\ntype = "stdout"\n')
    done = run("check", "-c", "c.toml", cwd=tmp_path)
    assert done.returncode == 1
    assert "queue.url: must start with redis:// or rediss://" in done.stderr
    assert "pw-9" not in done.stderr


# -- only the secrets a queue command needs ----------------------------------------------


def test_queue_commands_need_only_the_secrets_of_what_they_deliver(tmp_path, receivers):
    # each output and the mapping of one of them take a secret from the environment
    healthy = receivers(tmp_path / "healthy.jsonl").start()
    port = free_port()
    keys = write_alerts(tmp_path / "events.jsonl", alerts=20)
    (tmp_path / "c.toml").write_text(f"""
[mappings.tagged]
vars = {{ tenant = "${{HEALTHY_TENANT}}" }}
fields = {{ id = "$.id", updatecount = "$.updatecount", tenant = "{{{{ tenant }}}}" }}

[outputs.healthy]
type = "webhook"
url = "{healthy.url}"
username = "soc"
password = "${{HEALTHY_PASSWORD}}"
mapping = "tagged"

[outputs.down]
type = "webhook"
url = "http://127.0.0.1:{port}/in"
bearer_token = "${{DOWN_TOKEN}}"
retry = {{ max_backoff = 1.0 }}
""")
    secrets = {"HEALTHY_TENANT": "acme", "HEALTHY_PASSWORD": "pw-H3", "DOWN_TOKEN": "tok-D4"}

    def queue_cmd(*args, **given):
        return subprocess.run([sys.executable, "-m", "nwpipe", "queue", *args, "-c", "c.toml"],
                              cwd=tmp_path, env={**env(), **given}, stdin=subprocess.DEVNULL,
                              capture_output=True, text=True, timeout=120)

    # the backlog of both outputs: a run that only commits the events to the queue
    first = subprocess.run([sys.executable, "-m", "nwpipe", "run", "-c", "c.toml",
                            "events.jsonl", "--no-deliver", "--dead-letter", "dl.jsonl"],
                           cwd=tmp_path, env={**env(), **secrets}, stdin=subprocess.DEVNULL,
                           capture_output=True, text=True, timeout=120)
    assert first.returncode == 0, first.stderr
    # status: no secret at all
    status = queue_cmd("status", "--json")
    assert status.returncode == 0, status.stderr
    backlog = json.loads(status.stdout)["outputs"]
    assert backlog["down"]["events"] == backlog["healthy"]["events"] == len(keys)
    # drain of "down" without its token: one clear message naming the variable and the
    # output; nothing moves
    refused = queue_cmd("drain", "--output", "down")
    assert refused.returncode == 1
    assert "outputs.down.bearer_token: environment variable DOWN_TOKEN is not set" \
        in refused.stderr
    assert "HEALTHY" not in refused.stderr and "Traceback" not in refused.stderr
    assert json.loads(queue_cmd("status", "--json").stdout)["outputs"]["down"]["events"] \
        == len(keys)
    # with it, but without the other output's password and its mapping's tenant: delivered
    back = receivers(tmp_path / "back.jsonl").start(port=port)
    drained = queue_cmd("drain", "--output", "down", DOWN_TOKEN="tok-D4")
    assert drained.returncode == 0, drained.stderr
    got = arrivals(back)
    assert {(a, n) for a, n, _ in got} == set(keys)
    backlog = json.loads(queue_cmd("status", "--json").stdout)["outputs"]
    assert backlog["down"]["events"] == 0
    assert backlog["healthy"]["events"] == len(keys)  # the other output's stays
    assert arrivals(healthy) == []
    # recover reads only the queue file too
    recovered = queue_cmd("recover")
    assert recovered.returncode == 0, recovered.stderr


def test_work_stopped_with_a_backlog_names_work_as_what_delivers_it_next(tmp_path):
    keys = write_alerts(tmp_path / "events.jsonl", alerts=20)
    config(tmp_path / "c.toml", {"down": f"http://127.0.0.1:{free_port()}/in"})
    first = run("run", "-c", "c.toml", "events.jsonl", "--no-deliver", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    proc = nwpipe("work", "-c", "c.toml", "--dead-letter", "dl.jsonl", cwd=tmp_path)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stderr), daemon=True)
    reader.start()
    try:
        wait_until(lambda: any("delivering them first" in line for line in lines),
                   what="work to take the backlog")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0, "".join(lines)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    reader.join(10)
    stderr = "".join(lines)
    assert f"{len(keys)} events wait in the queue nwpipe-queue.db: the next `nwpipe work` " \
        "with it delivers them first" in stderr, stderr
    assert "`nwpipe run`" not in stderr
    assert queue_status(tmp_path)["outputs"]["down"]["events"] == len(keys)
