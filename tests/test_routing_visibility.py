"""Events that match no output are counted and named in the summary; with
--strict-routing (or strict_routing = true) they are dead-lettered with stage "route"
and can be replayed. The real CLI in a subprocess."""

from __future__ import annotations

import json
import time
import urllib.request

from serveproc import ServeProcess
from test_cli import event, jsonl, nwpipe

from nwpipe.numbers import count, rate

CONFIG = """
[outputs.out]
type = "file"
path = "out.jsonl"
customers = ["acme"]
"""


def _events():
    return ([event(i, customer="acme") for i in range(3)]
            + [event(10 + i, customer="acmee") for i in range(4)]
            + [event(20, customer="globex"), event(21, customer="initech"),
               event(22, customer="umbrella")])


def test_unrouted_events_are_counted_and_named(tmp_path):
    (tmp_path / "c.toml").write_text(CONFIG)
    proc = nwpipe("run", "-c", "c.toml", input=jsonl(_events()), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert ("7 matched no output (customers acmee 4, globex 1, initech 1, 1 of other "
            "customers)") in proc.stderr
    assert "out: 3 delivered" in proc.stderr
    assert not (tmp_path / "nwpipe-dead-letter.jsonl").exists()


def test_strict_routing_dead_letters_them_and_replay_sends_them(tmp_path):
    (tmp_path / "c.toml").write_text(CONFIG)
    proc = nwpipe("run", "-c", "c.toml", "--strict-routing", input=jsonl(_events()),
                  cwd=tmp_path)
    assert proc.returncode == 3, proc.stderr
    assert "7 matched no output (customers acmee 4, globex 1, initech 1, 1 of other " \
           "customers), dead-lettered" in proc.stderr
    records = [json.loads(line) for line in
               (tmp_path / "nwpipe-dead-letter.jsonl").read_text().splitlines()]
    assert len(records) == 7
    assert {r["stage"] for r in records} == {"route"}
    assert records[0]["reason"].startswith("matched no output: customer 'acmee' is not in "
                                           "its customers ['acme']")
    # every event is accounted for: delivered or dead-lettered
    delivered = (tmp_path / "out.jsonl").read_text().splitlines()
    assert len(delivered) + len(records) == len(_events())

    # the customer list is fixed; the replay delivers what was held back
    (tmp_path / "c.toml").write_text(CONFIG.replace('["acme"]', '["acme", "acmee"]'))
    proc = nwpipe("replay", "-c", "c.toml", "nwpipe-dead-letter.jsonl", cwd=tmp_path)
    assert proc.returncode == 3, proc.stderr  # globex, initech, umbrella still match nothing
    remaining = (tmp_path / "nwpipe-dead-letter.jsonl").read_text().splitlines()
    assert sorted(json.loads(r)["event"]["customer"] for r in remaining) == \
        ["globex", "initech", "umbrella"]
    assert len((tmp_path / "out.jsonl").read_text().splitlines()) == 7


def test_strict_routing_from_the_config(tmp_path):
    (tmp_path / "c.toml").write_text("strict_routing = true\n" + CONFIG)
    proc = nwpipe("run", "-c", "c.toml", input=jsonl([event(1, customer="other")]),
                  cwd=tmp_path)
    assert proc.returncode == 3
    record = json.loads((tmp_path / "nwpipe-dead-letter.jsonl").read_text())
    assert record["stage"] == "route"


def test_numbers_are_formatted_one_way():
    assert count(1234567) == "1,234,567"
    assert rate(12345.6) == "12,346/s"
    assert rate(2.54) == "2.5/s"
    assert rate(0.3) == "0.3/s"
    assert rate(0.034) == "0.03/s"
    assert rate(0.001) == "<0.01/s"
    assert rate(0) == "0/s"
    assert rate(1500, " events/s") == "1,500 events/s"


def _wait_for_lines(path, n, deadline=60.0):
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        if path.exists():
            lines = [x for x in path.read_text().splitlines() if x]
            if len(lines) >= n:
                return lines
        time.sleep(0.05)
    raise AssertionError(f"{path}: fewer than {n} lines after {deadline} s")


def test_serve_with_strict_routing_dead_letters_what_matches_no_output(tmp_path):
    # serve delivers from its queue, output by output: the event is recorded once
    proc = ServeProcess(tmp_path, '[queue]\nsync = "full"\n' + CONFIG, "--strict-routing",
                        "--dead-letter", "dl.jsonl").start()
    try:
        body = jsonl([event(1, customer="acme"), event(2, customer="acmee")]).encode()
        request = urllib.request.Request(proc.url + "/", data=body, method="POST",
                                         headers={"Content-Type": "application/x-ndjson"})
        with urllib.request.urlopen(request, timeout=30) as answer:
            assert answer.status // 100 == 2
        delivered = _wait_for_lines(tmp_path / "out.jsonl", 1)
        dead = _wait_for_lines(tmp_path / "dl.jsonl", 1)
    finally:
        proc.stop()
    assert [json.loads(x)["id"] for x in delivered] == ["alert-1"]
    assert len(dead) == 1
    record = json.loads(dead[0])
    assert record["stage"] == "route" and record["event"]["id"] == "alert-2"
