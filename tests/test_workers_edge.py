"""``nwpipe run --workers N`` against the inputs and faults a user meets: the real CLI in a
subprocess, compared with one process on the same input."""

from __future__ import annotations

import json
import os
import queue
import re
import signal
import subprocess
import threading
from pathlib import Path

import pytest
from test_faults import receivers  # noqa: F401 (a fixture)
from test_workers import (
    DEADLINE,
    alive,
    children,
    nwpipe,
    run,
    slow_run,
    stopped_by_sigterm,
    wait_until,
)


def test_rejected_lines_are_shown_up_to_the_same_limit_as_one_process(tmp_path):
    # 200 bad lines: one process shows 50 and then "... and 150 more" once; workers
    # must not show 50 each, nor say "... and N more" once each.
    (tmp_path / "bad.jsonl").write_text("".join(f"bad{i}\n" for i in range(200)))
    (tmp_path / "c.toml").write_text('[outputs.out]\ntype = "stdout"\n')
    seen = {}
    for workers in ("1", "3"):
        (tmp_path / workers).mkdir()
        code, out, err = run("run", "--workers", workers, "-c", "../c.toml", "--dead-letter",
                             "dl.jsonl", "../bad.jsonl", cwd=tmp_path / workers)
        assert code == 3 and out == b"", err
        shown = re.findall(r"^nwpipe: \.\./bad\.jsonl:\d+: not valid JSON.*\(dead-lettered\)$",
                           err, re.M)
        more = re.findall(r"^nwpipe: \.\.\. and (\d+) more rejected events, all in dl\.jsonl$",
                          err, re.M)
        seen[workers] = (len(shown), more)
        assert "Traceback" not in err
        assert len((tmp_path / workers / "dl.jsonl").read_text().splitlines()) == 200
    assert seen["3"] == seen["1"] == (50, ["150"])


def test_sigterm_to_one_worker_stops_the_run_as_one_process_would(tmp_path, receivers):  # noqa: F811
    # `kill <pid of a worker>` (found with ps): the run stops as when the reader gets
    # the signal (reading stops, the other workers stop too, exit 143), rather than
    # that worker dead-lettering its share of the rest of the input while the others
    # deliver theirs, and the run ending with exit 3.
    receiver, events, proc = slow_run(tmp_path, receivers)
    workers = children(proc.pid)
    assert len(workers) == 3
    os.kill(workers[1], signal.SIGTERM)
    stderr = stopped_by_sigterm(tmp_path, receiver, events, proc)
    assert "Traceback" not in stderr
    wait_until(lambda: all(not alive(pid) for pid in workers), "workers still running")


def process_state(pid: int) -> str:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]


def test_a_worker_stopped_and_continued_does_not_end_reading_stdin(tmp_path):
    # SIGSTOP + SIGCONT of a worker (a debugger, `kill -STOP`, a job-control stop)
    # sends the reader SIGCHLD; while it waited for more input on stdin, that used to
    # end reading: the rest of stdin was never read, and the run exited 0.
    (tmp_path / "c.toml").write_text('[outputs.out]\ntype = "stdout"\n')
    proc = nwpipe("run", "--workers", "2", "-c", "c.toml", cwd=tmp_path,
                  stdin=subprocess.PIPE)
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in proc.stdout],
                     daemon=True).start()

    def send(first: int, last: int) -> None:
        for n in range(first, last):
            event = {"id": f"alert-{n % 3}", "customer": "acme", "updatecount": n}
            proc.stdin.write(json.dumps(event).encode() + b"\n")
        proc.stdin.flush()

    send(0, 10)
    got = [json.loads(lines.get(timeout=DEADLINE)) for _ in range(10)]
    workers = children(proc.pid)
    assert len(workers) == 2
    os.kill(workers[0], signal.SIGSTOP)
    wait_until(lambda: process_state(workers[0]) == "T", "the worker did not stop")
    os.kill(workers[0], signal.SIGCONT)
    wait_until(lambda: process_state(workers[0]) != "T", "the worker did not continue")
    send(10, 20)  # the reader is still reading stdin: no broken pipe
    proc.stdin.close()
    got += [json.loads(lines.get(timeout=DEADLINE)) for _ in range(10)]
    assert proc.wait(timeout=DEADLINE) == 0
    stderr = proc.stderr.read().decode()
    assert "read 20 events; rejected 0; out: 20 delivered" in stderr, stderr
    assert sorted(e["updatecount"] for e in got) == list(range(20))


def processes_in(folder: Path) -> list[int]:
    """The processes whose working folder is ``folder`` (a run's workers inherit it)."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and Path(os.readlink(entry / "cwd")) == folder:
                found.append(int(entry.name))
        except OSError:
            continue
    return found


def test_more_workers_than_the_open_files_limit_is_one_clear_error(tmp_path):
    import resource

    (tmp_path / "c.toml").write_text('[outputs.out]\ntype = "stdout"\n')
    (tmp_path / "e.jsonl").write_text('{"id":"a","customer":"acme"}\n')

    def few_files() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))

    proc = nwpipe("run", "--workers", "40", "-c", "c.toml", "e.jsonl", cwd=tmp_path,
                  preexec_fn=few_files)
    out, err = proc.communicate(timeout=DEADLINE)
    stderr = err.decode()
    assert proc.returncode == 1, stderr
    assert "Traceback" not in stderr
    assert re.fullmatch(r"nwpipe: error: cannot start 40 worker processes \(Too many open "
                        r"files, after \d+\): use fewer --workers, or raise the limit "
                        r"\(ulimit -n for open files, ulimit -u for processes\)\n", stderr)
    assert out == b""  # nothing was read
    wait_until(lambda: processes_in(tmp_path) == [], "worker processes left running")


@pytest.mark.xfail(strict=True, reason="the reader takes a line whose braces balance only by "
                   "count (one inside a string) for one whole object; one process's decoder "
                   "reads on into the next line")
def test_a_line_balanced_only_by_a_brace_in_a_string_gives_one_process_messages(tmp_path):
    (tmp_path / "e.jsonl").write_text(
        '{"id":"a","customer":"acme","n":1}\n'
        '{"id":"b","s":"}","x":{"y":1}\n'       # the object is left open: "}" is text
        '"customer":"acme","n":3}\n'
        '{"id":"d","customer":"acme","n":4}\n')
    (tmp_path / "c.toml").write_text('[outputs.out]\ntype = "stdout"\n')
    seen = {}
    for workers in ("1", "2"):
        code, out, err = run("run", "--workers", workers, "-c", "c.toml", "e.jsonl",
                             cwd=tmp_path)
        seen[workers] = (code, sorted(out.splitlines()),
                         sorted(re.sub(r"\(\d+\.\d\d s, .*events/s\)", "", line)
                                for line in err.splitlines()))
    assert seen["2"] == seen["1"]
