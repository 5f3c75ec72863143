"""``nwpipe run --workers N`` against the inputs and faults a user meets: the real CLI in a
subprocess, compared with one process on the same input."""

from __future__ import annotations

import re

from test_workers import run


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
