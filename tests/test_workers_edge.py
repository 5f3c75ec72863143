"""``nwpipe run --workers N`` against the inputs and faults a user meets: the real CLI in a
subprocess, compared with one process on the same input."""

from __future__ import annotations

import os
import re
import signal

from test_faults import receivers  # noqa: F401 (a fixture)
from test_workers import (
    DEADLINE,
    alive,
    children,
    dead_pairs,
    file_order,
    received_pairs,
    run,
    slow_run,
    summary_number,
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
    _, stderr = proc.communicate(timeout=DEADLINE)
    stderr = stderr.decode()
    assert proc.returncode == 143, stderr
    assert "Traceback" not in stderr
    summary = [line for line in stderr.splitlines() if "events/s)" in line][0]
    assert summary.startswith("nwpipe: interrupted by SIGTERM: read "), summary
    read = summary_number(summary, r"read ([\d,]+) events")
    assert 0 < read < len(events)  # reading stopped
    taken = set(file_order(events)[:read])
    done = received_pairs(receiver) | dead_pairs(tmp_path / "dl.jsonl", file_order(events))
    assert done == taken
    delivered = summary_number(summary, r"soc: ([\d,]+) delivered")
    dead = summary_number(summary, r"soc: .*?([\d,]+) dead-lettered")
    rejected = summary_number(summary, r"rejected ([\d,]+)")
    assert delivered + dead + rejected == read
    wait_until(lambda: all(not alive(pid) for pid in workers), "workers still running")
