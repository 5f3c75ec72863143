"""``nwpipe run --workers N``: the real CLI in a subprocess, real receivers in their own
processes on 127.0.0.1, real signals.

Each fault test accounts for every event: delivered (the receiver answered 200),
dead-lettered, or reported by the summary as possibly not delivered (a worker killed).
"""

from __future__ import annotations

import collections
import gzip
import http.server
import json
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from test_deadletter_faults import small_disk  # noqa: F401 (a fixture)
from test_faults import ReceiverProcess, config, env, receivers  # noqa: F401 (a fixture)

from nwpipe.sources.decode import Decoder, Event
from nwpipe.sources.shard import HEADER, LINES, REJECTS, Sharder, decode_lines, decode_rejects

DEADLINE = 60


def nwpipe(*args, cwd, stdin=subprocess.DEVNULL, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "nwpipe", *args], cwd=cwd, env=env(),
                            stdin=stdin, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            **kw)


def run(*args, cwd, timeout=DEADLINE) -> tuple[int, bytes, str]:
    proc = nwpipe(*args, cwd=cwd)
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err.decode()


def event(alert: int, update: int, pad: int = 0) -> dict:
    e = {"id": f"alert-{alert}", "customer": "acme", "alerttype": "ongoing",
         "updatecount": update, "severity": "high", "srcip": ["10.0.0.1"]}
    if pad:
        e["summary"] = "x" * pad
    return e


def webhook_config(path: Path, url: str, *, concurrency=4, batch=0,
                   queue_size: int = 10000) -> None:
    config(path, url, concurrency=concurrency, queue_size=queue_size)
    if batch:
        with path.open("a") as fh:
            fh.write(f"[outputs.soc.batch]\nmax_events = {batch}\nmax_wait = 0.05\n")


def dead_letters(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def summary_number(stderr: str, pattern: str) -> int:
    match = re.search(pattern, stderr)
    assert match, stderr
    return int(match.group(1).replace(",", ""))


def children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(p) for p in text.split()]


def wait_until(predicate, what: str, timeout: float = DEADLINE) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, what
        time.sleep(0.02)


# -- order, counts, the summary ------------------------------------------------------------


def test_each_alerts_events_arrive_in_order_with_three_workers(tmp_path, receivers):
    receiver = receivers(tmp_path / "received.jsonl").start()
    updates = 40
    events = [event(a, u) for u in range(1, updates + 1) for a in range(60)]
    (tmp_path / "events.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))
    webhook_config(tmp_path / "c.toml", receiver.url, concurrency=8, batch=20)
    code, _, stderr = run("run", "-v", "--workers", "3", "-c", "c.toml", "--dead-letter",
                          "dl.jsonl", "events.jsonl", cwd=tmp_path)
    assert code == 0, stderr
    # three worker processes ran, and one summary line sums what they did
    assert re.search(r"3 worker processes: \d+ \d+ \d+", stderr), stderr
    summaries = [line for line in stderr.splitlines() if "events/s)" in line]
    assert len(summaries) == 1, stderr
    assert "read 2,400 events; rejected 0; soc: 2,400 delivered" in summaries[0]
    seen: dict[str, list[int]] = collections.defaultdict(list)
    for entry in receiver.lines():
        assert entry["status"] == 200
        for e in entry["events"]:
            seen[e["id"]].append(e["updatecount"])
    assert len(seen) == 60
    for alert, got in seen.items():
        assert got == list(range(1, updates + 1)), alert  # in order, no loss, no duplicate
    assert not (tmp_path / "dl.jsonl").exists()


MIXED = [
    '{"id":"a1","customer":"acme","alerttype":"start","updatecount":1}',
    '{"id": "a2", "customer": "acme", "alerttype": "start", "updatecount": 1}',
    '{"id": "a1", "customer": "acme", broken}',
    '',
    '{"id":123,"customer":"acme"}',
    '{"customer":"acme","n":1}',
    '{"id":"x1","customer":"acme"} {"id":"x2","customer":"acme"}',
    '{"id":"a2","customer":"acme","nested":{"id":"zzz"},"updatecount":2}',
    '{"id":"q\\"uote","customer":"acme"}',
    '{"id":"\\u0061\\u0031","customer":"acme","updatecount":9}',
    '{"id": "a3", "customer": "acme", "x": {"y": 1}',
    '{"id":"a3","customer":"acme","updatecount":2}',
    '{"id":"big","customer":"acme","n":123456789012345678901234567890}',
    'not json at all',
    '{"id":"a1","customer":"acme","updatecount":3}',
    '[1, {"id": "a2", "customer": "acme", "updatecount": 3}]',
    '{',
    '  "id": "p1",',
    '  "customer": "acme"',
    '}',
    '{"id":"a1","customer":"acme","updatecount":4}',
    '{"id":"nocustomer"}',
]


def comparable(stderr: str) -> list[str]:
    """The messages, in a stable order, without the timing of the summary."""
    return sorted(re.sub(r"\(\d+\.\d\d s, .*events/s\)", "", line)
                  for line in stderr.splitlines())


def test_rejects_dead_letters_and_output_match_one_process(tmp_path):
    text = "\n".join(MIXED) + "\n" + '{"id":"last","customer":"acme"}'  # no final newline
    (tmp_path / "mixed.jsonl").write_text(text)
    with gzip.open(tmp_path / "mixed.jsonl.gz", "wt") as fh:
        fh.write(text)
    (tmp_path / "c.toml").write_text('[outputs.out]\ntype = "stdout"\n')
    results = {}
    for workers in ("1", "3"):
        (tmp_path / workers).mkdir()
        code, out, err = run("run", "--workers", workers, "-c", "../c.toml", "--dead-letter",
                             "dl.jsonl", "../mixed.jsonl", "../mixed.jsonl.gz",
                             cwd=tmp_path / workers)
        records = sorted((r["source"], r["line"], r["stage"], r["reason"], r.get("raw"))
                         for r in dead_letters(tmp_path / workers / "dl.jsonl"))
        results[workers] = (code, sorted(out.splitlines()), comparable(err), records)
    assert results["3"] == results["1"]
    code, _, err, records = results["3"]
    assert code == 3
    assert "../mixed.jsonl:3: not valid JSON" in "\n".join(err)
    assert "../mixed.jsonl.gz:11: unfinished JSON object: a new object starts at line 12" \
        in "\n".join(err)
    assert len(records) == 2 * 7  # the same 7 rejects in each input


def test_sharder_gives_the_decoders_items_however_the_input_is_cut():
    mixed = ("\n".join(MIXED) + "\n").encode()
    long_line = b'{"id":"x","customer":"acme","pad":"' + b"y" * 3000 + b'"}'
    long_array = b"[" + b",".join(b'{"id":"e%d","customer":"acme"}' % i for i in range(200)) \
        + b"]\n"
    text = (b"\xef\xbb\xbf" + mixed + long_line + b"\n" + mixed + long_array + mixed
            + b'\xef\xbb\xbf{"id":"after-bom"}\n' + long_line)
    decoder = Decoder("in", max_line_bytes=2000)
    want = decoder.feed(text) + decoder.finish()
    rng = random.Random(7)
    for _ in range(20):
        sharder = Sharder(3, max_line_bytes=2000)
        frames = [sharder.start(0, "in")]
        pos = 0
        while pos < len(text):
            size = rng.choice((1, 2, 7, 64, 500, 4096))
            frames.append(sharder.feed(text[pos:pos + size]))
            pos += size
        frames.append(sharder.finish())
        got = []
        per_worker: list[list] = [[], [], []]
        for batch in frames:
            for w, parts in enumerate(batch):
                data = b"".join(parts)
                at = 0
                while at < len(data):
                    kind, _arg, size = HEADER.unpack_from(data, at)
                    payload = data[at + HEADER.size:at + HEADER.size + size]
                    at += HEADER.size + size
                    if kind == LINES:
                        for items in decode_lines(payload, "in", 2000, per=5):
                            per_worker[w] += items
                    elif kind == REJECTS:
                        per_worker[w] += decode_rejects(payload, "in")
        for items in per_worker:
            got += items
        key = lambda item: (item.line, repr(item))  # noqa: E731
        assert sorted(got, key=key) == sorted(want, key=key)
        # every alert's events are in one worker, in input order
        alerts: dict[object, int] = {}
        for w, items in enumerate(per_worker):
            events = [i for i in items if isinstance(i, Event)]
            assert [e.line for e in events] == sorted(e.line for e in events)
            for e in events:
                assert alerts.setdefault(e.data.get("id"), w) == w


# -- whole lines and records from many processes --------------------------------------------


def test_stdout_and_file_lines_stay_whole_with_four_workers(tmp_path):
    events = [event(a, u, pad=20_000 + a * 37) for u in range(1, 6) for a in range(80)]
    (tmp_path / "events.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))
    (tmp_path / "c.toml").write_text("""
[outputs.out]
type = "stdout"
batch = { max_events = 7 }
[outputs.archive]
type = "file"
path = "archive.jsonl"
batch = { max_events = 5 }
""")
    code, out, err = run("run", "--workers", "4", "-c", "c.toml", "events.jsonl",
                         cwd=tmp_path)
    assert code == 0, err
    for data in (out, (tmp_path / "archive.jsonl").read_bytes()):
        lines = data.splitlines()
        assert len(lines) == len(events)
        got = collections.defaultdict(list)
        for line in lines:
            e = json.loads(line)  # whole: each line parses
            got[e["id"]].append(e["updatecount"])
        assert all(v == [1, 2, 3, 4, 5] for v in got.values())  # and in order per alert


class Refusing(http.server.BaseHTTPRequestHandler):
    """Answers every POST with 400 (not retried: straight to the dead-letter file)."""

    def do_POST(self):  # noqa: N802 - the handler's API
        self.rfile.read(int(self.headers["Content-Length"]))
        self.send_response(400)
        self.send_header("Content-Length", "7")
        self.end_headers()
        self.wfile.write(b"refused")

    def log_message(self, *args):
        pass


@pytest.fixture
def refusing_url():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Refusing)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/in"
    server.shutdown()
    server.server_close()


def test_dead_letters_stay_whole_with_four_workers(tmp_path, refusing_url):
    events = [event(a, u, pad=30_000) for u in range(1, 4) for a in range(50)]
    (tmp_path / "events.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))
    webhook_config(tmp_path / "c.toml", refusing_url, concurrency=4)
    code, _, err = run("run", "--workers", "4", "-c", "c.toml", "--dead-letter", "dl.jsonl",
                       "events.jsonl", cwd=tmp_path)
    assert code == 3, err
    records = dead_letters(tmp_path / "dl.jsonl")  # each line parses: whole records
    assert len(records) == len(events)
    assert collections.Counter(r["event"]["id"] for r in records) == \
        collections.Counter(e["id"] for e in events)
    assert all(len(r["event"]["summary"]) == 30_000 for r in records)
    # each alert's records keep its order (the later ones follow the first)
    order = collections.defaultdict(list)
    for r in records:
        order[r["event"]["id"]].append(r["event"]["updatecount"])
    assert all(v == [1, 2, 3] for v in order.values())
    assert "soc: 0 delivered, 150 dead-lettered" in err


# -- signals and dead processes ---------------------------------------------------------------


def file_order(events: list[dict]) -> list[tuple[str, int]]:
    return [(e["id"], e["updatecount"]) for e in events]


def received_pairs(receiver: ReceiverProcess) -> set[tuple[str, int]]:
    return {(e["id"], e["updatecount"]) for entry in receiver.lines()
            if entry["status"] == 200 for e in entry["events"]}


def dead_pairs(path: Path, order: list[tuple[str, int]]) -> set[tuple[str, int]]:
    pairs = set()
    for r in dead_letters(path):
        if "event" in r:
            pairs.add((r["event"]["id"], r["event"]["updatecount"]))
        else:  # the event a signal cut in half, rejected whole
            assert r["reason"].startswith(("input cut short by SIGTERM: ",
                                           "input cut short: a worker process died: ")), r
            pairs.add(order[r["line"] - 1])
    return pairs


def slow_run(tmp_path: Path, receivers, count: int = 6000, delay: float = 0.02,
             requests: int = 60) -> tuple:
    """A run of 3 workers against a slow receiver, once 60 requests arrived. The input
    (12 MB) is larger than what the pipes (1 MiB each) and the small memory queues
    hold, so reading is still going on."""
    receiver = receivers(tmp_path / "received.jsonl", delay=delay).start()
    events = [event(a, u, pad=2000) for u in range(1, count // 100 + 1) for a in range(100)]
    (tmp_path / "events.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))
    webhook_config(tmp_path / "c.toml", receiver.url, concurrency=2, queue_size=100)
    proc = nwpipe("run", "-v", "--workers", "3", "-c", "c.toml", "--dead-letter", "dl.jsonl",
                  "events.jsonl", cwd=tmp_path)
    receiver.wait_for(requests)
    return receiver, events, proc


def test_sigterm_mid_stream_delivers_or_dead_letters_what_was_read(tmp_path, receivers):
    receiver, events, proc = slow_run(tmp_path, receivers)
    workers = children(proc.pid)
    assert len(workers) == 3
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=DEADLINE)
    stderr = stderr.decode()
    assert proc.returncode == 143, stderr
    summary = [line for line in stderr.splitlines() if "events/s)" in line][0]
    assert summary.startswith("nwpipe: interrupted by SIGTERM: read ")
    read = summary_number(summary, r"read ([\d,]+) events")
    assert 0 < read < len(events)  # reading stopped
    # what was read is the start of the input: each event of it was delivered or
    # dead-lettered, and nothing after it was
    taken = set(file_order(events)[:read])
    done = received_pairs(receiver) | dead_pairs(tmp_path / "dl.jsonl", file_order(events))
    assert done == taken
    delivered = summary_number(summary, r"soc: ([\d,]+) delivered")
    dead = summary_number(summary, r"soc: .*?([\d,]+) dead-lettered")
    rejected = summary_number(summary, r"rejected ([\d,]+)")  # an event cut in half
    assert delivered + dead + rejected == read
    wait_until(lambda: all(not alive(pid) for pid in workers), "workers still running")


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_a_worker_killed_is_reported_and_the_rest_accounted_for(tmp_path, receivers):
    receiver, events, proc = slow_run(tmp_path, receivers)
    workers = children(proc.pid)
    assert len(workers) == 3
    victim = workers[1]
    os.kill(victim, signal.SIGKILL)
    _, stderr = proc.communicate(timeout=DEADLINE)
    stderr = stderr.decode()
    assert proc.returncode == 5, stderr
    assert re.search(rf"error: worker \d \(pid {victim}\) was killed by SIGKILL; stopping",
                     stderr), stderr
    summary = [line for line in stderr.splitlines() if "events/s)" in line][0]
    match = re.search(rf"worker (\d) \(pid {victim}\) was killed by SIGKILL: up to ([\d,]+) of "
                      r"the ([\d,]+) events sent to it may not have been delivered", summary)
    assert match, summary
    index = int(match.group(1)) - 1
    unaccounted = int(match.group(2).replace(",", ""))
    # The reader sent the start of the input. Up to the last event anyone took, every
    # event of the other workers was delivered or dead-lettered; of the killed worker's
    # share, at most the reported number is missing.
    order = file_order(events)
    done = received_pairs(receiver) | dead_pairs(tmp_path / "dl.jsonl", order)
    last = max(order.index(pair) for pair in done)
    missing = [pair for pair in order[:last + 1] if pair not in done]
    assert all(shard_of(alert) == index for alert, _ in missing)
    assert len(missing) <= unaccounted
    wait_until(lambda: all(not alive(pid) for pid in workers), "workers still running")


def shard_of(alert: str, workers: int = 3) -> int:
    from zlib import crc32
    return crc32(alert.encode()) % workers


def test_workers_do_not_outlive_a_killed_reader(tmp_path, receivers):
    _, _, proc = slow_run(tmp_path, receivers)
    workers = children(proc.pid)
    assert len(workers) == 3
    proc.kill()
    proc.communicate(timeout=DEADLINE)
    wait_until(lambda: all(not alive(pid) for pid in workers),
               "workers kept running after the reader was killed")


# -- the flag, the config key, what is refused ---------------------------------------------


def test_flag_config_key_and_auto(tmp_path):
    (tmp_path / "events.jsonl").write_text("".join(json.dumps(event(a, 1)) + "\n"
                                                   for a in range(20)))
    for top, flag, want in (("workers = 2", [], 2), ('workers = "auto"', [], os.cpu_count()),
                            ("workers = 3", ["--workers", "1"], 1), ("", [], 1),
                            ("", ["--workers", "auto"], os.cpu_count())):
        (tmp_path / "c.toml").write_text(f'{top}\n[outputs.out]\ntype = "stdout"\n')
        code, out, err = run("run", "-v", *flag, "-c", "c.toml", "events.jsonl", cwd=tmp_path)
        assert code == 0, err
        assert len(out.splitlines()) == 20
        processes = re.search(r"(\d+) worker processes", err)
        assert (int(processes.group(1)) if processes else 1) == want, (top, flag, err)


@pytest.mark.parametrize("value", ["0", '"lots"', "-2", "2.5", "true"])
def test_bad_workers_value_names_the_key(tmp_path, value):
    (tmp_path / "c.toml").write_text(f'workers = {value}\n[outputs.out]\ntype = "stdout"\n')
    code, out, err = run("run", "-c", "c.toml", cwd=tmp_path)
    assert code == 1 and out == b""
    assert "c.toml" in err and "workers" in err, err
    assert "Traceback" not in err
    assert len(err.strip().splitlines()) == 1, err


@pytest.mark.parametrize("value", ["0", "lots"])
def test_bad_workers_flag(tmp_path, value):
    code, _, err = run("run", "--workers", value, cwd=tmp_path)
    assert code == 1
    assert 'argument --workers: must be a number of processes (1 or more) or "auto"' in err


@pytest.mark.parametrize("option,shown", [
    (["--durable"], "--durable"), (["--resume"], "--resume"), (["--keep-queue"], "--keep-queue"),
    (["--no-deliver"], "--no-deliver"), (["--metrics-listen", "127.0.0.1:0"], "--metrics-listen"),
])
def test_options_that_need_one_process_are_refused(tmp_path, option, shown):
    (tmp_path / "c.toml").write_text('[outputs.out]\ntype = "stdout"\n')
    (tmp_path / "events.jsonl").write_text(json.dumps(event(1, 1)) + "\n")
    code, out, err = run("run", "--workers", "2", *option, "-c", "c.toml", "events.jsonl",
                         cwd=tmp_path)
    assert code == 1 and out == b""
    assert f"error: {shown} cannot be combined with --workers 2 (more than one process): run " \
           f"with --workers 1 (or workers = 1 in the config), or without {shown}" in err, err
    assert not (tmp_path / "nwpipe-queue.db").exists()


def test_an_output_that_cannot_open_is_one_error_before_reading(tmp_path):
    (tmp_path / "c.toml").write_text('[outputs.out]\ntype = "file"\n'
                                     'path = "/proc/none/x.jsonl"\nmkdir = false\n')
    (tmp_path / "events.jsonl").write_text(json.dumps(event(1, 1)) + "\n")
    code, out, err = run("run", "--workers", "3", "-c", "c.toml", "events.jsonl",
                         cwd=tmp_path)
    assert code == 1 and out == b""
    assert err == ("nwpipe: error: outputs.out: cannot start: /proc/none/x.jsonl: "
                   "No such file or directory\n")


def test_dead_letter_disk_full_with_three_workers(tmp_path, small_disk):
    """Three workers fill a 256 KiB dead-letter disk: each record is in the file whole
    or printed on stderr, exactly once; the run says so with exit code 4."""
    (tmp_path / "c.toml").write_text(f'dead_letter = "{small_disk / "dl.jsonl"}"\n'
                                     '[outputs.f]\ntype = "file"\npath = "out.jsonl"\n')
    lines = []
    for i in range(6000):
        lines.append(json.dumps({"id": f"alert-{i}", "customer": "acme", "n": i}))
        lines.append(f"not json {i:06d} " + "x" * 200)
    (tmp_path / "events.jsonl").write_text("\n".join(lines) + "\n")
    code, _, err = run("run", "--workers", "3", "-c", "c.toml", "events.jsonl", cwd=tmp_path,
                       timeout=240)
    assert code == 4, err[-2000:]
    assert "Traceback" not in err
    delivered = [json.loads(x)["n"] for x in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert sorted(delivered) == list(range(6000))
    data = (small_disk / "dl.jsonl").read_bytes()
    assert data.endswith(b"\n")
    in_file = [json.loads(line) for line in data.splitlines()]  # every line whole
    on_stderr = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
    assert in_file and on_stderr
    raws = sorted(r["raw"] for r in in_file + on_stderr)
    assert raws == sorted(f"not json {i:06d} " + "x" * 200 for i in range(6000))
    summary = [line for line in err.splitlines() if "events/s)" in line][0]
    assert f"{len(on_stderr):,} dead letters could not be written" in summary


def test_stdout_reader_going_away_stops_the_run(tmp_path):
    (tmp_path / "events.jsonl").write_text("".join(json.dumps(event(a % 50, a)) + "\n"
                                                   for a in range(200_000)))
    (tmp_path / "c.toml").write_text('[outputs.out]\ntype = "stdout"\n')
    proc = nwpipe("run", "--workers", "2", "-c", "c.toml", "events.jsonl", cwd=tmp_path)
    for _ in range(3):
        json.loads(proc.stdout.readline())
    proc.stdout.close()  # like `| head -3`
    stderr = proc.stderr.read().decode()
    assert proc.wait(timeout=DEADLINE) == 0, stderr
    assert "not sent (the output was closed)" in stderr
    assert "Traceback" not in stderr and "error" not in stderr
    read = summary_number(stderr, r"read ([\d,]+) events")
    assert read < 200_000  # reading stopped


def test_sigterm_to_every_process_at_once_is_one_signal(tmp_path, receivers):
    """systemd's default KillMode signals every process of the service at once: each
    worker gets SIGTERM from it and from the reader, and counts it once (a second
    signal would cut the wait for the requests in flight short)."""
    # each request takes 1 s: some are in flight when the signal comes
    receiver, events, proc = slow_run(tmp_path, receivers, delay=1.0, requests=6)
    workers = children(proc.pid)
    assert len(workers) == 3
    for pid in [proc.pid, *workers]:
        os.kill(pid, signal.SIGTERM)
    _, stderr = proc.communicate(timeout=DEADLINE)
    stderr = stderr.decode()
    assert proc.returncode == 143, stderr
    reasons = {r["reason"] for r in dead_letters(tmp_path / "dl.jsonl")}
    assert "not delivered before the shutdown deadline" not in reasons
    assert "interrupted by SIGTERM before delivery" in reasons
    read = summary_number(stderr, r"read ([\d,]+) events")
    done = received_pairs(receiver) | dead_pairs(tmp_path / "dl.jsonl", file_order(events))
    assert done == set(file_order(events)[:read])


def test_sigint_to_the_reader_exits_130(tmp_path, receivers):
    receiver, events, proc = slow_run(tmp_path, receivers)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=DEADLINE)
    stderr = stderr.decode()
    assert proc.returncode == 130, stderr
    assert "nwpipe: interrupted by SIGINT: read " in stderr
    read = summary_number(stderr, r"read ([\d,]+) events")
    order = file_order(events)
    done = received_pairs(receiver) | {
        (r["event"]["id"], r["event"]["updatecount"]) if "event" in r else order[r["line"] - 1]
        for r in dead_letters(tmp_path / "dl.jsonl")}
    assert done == set(order[:read])
