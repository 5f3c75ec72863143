"""The real `nwpipe` command in a subprocess: what a user types and sees."""

from __future__ import annotations

import gzip
import json
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "examples" / "events.jsonl"


def nwpipe(*args, input=None, cwd=None, env=None, timeout=60):
    full_env = {k: v for k, v in os.environ.items() if k != "NWPIPE_CONFIG"}
    full_env["NWPIPE_LOAD_PLUGINS"] = ""
    full_env.update(env or {})
    return subprocess.run([sys.executable, "-m", "nwpipe", *args], input=input, cwd=cwd,
                          env=full_env, capture_output=True, text=True, timeout=timeout)


def event(i, customer="acme", **extra):
    return {"id": f"alert-{i}", "customer": customer, "alerttype": "start", "updatecount": 1,
            "severity": "high", **extra}


def jsonl(events):
    return "".join(json.dumps(e) + "\n" for e in events)


def test_version_and_help():
    assert nwpipe("--version").stdout.startswith("nwpipe ")
    text = nwpipe("--help").stdout
    for word in ("run", "check", "plugins", "exit codes", "130", "143", "NWPIPE_CONFIG"):
        assert word in text
    run_help = nwpipe("run", "--help").stdout
    for word in ("-c FILE", "--dead-letter", "--shutdown-timeout", "--plugins-dir", "FILE", ".gz",
                 "example:"):
        assert word in run_help


def test_usage_error_exits_1():
    proc = nwpipe("run", "--no-such-flag")
    assert proc.returncode == 1 and "unrecognized arguments" in proc.stderr
    assert nwpipe().returncode == 1


def test_no_config_passes_events_through_to_stdout(tmp_path):
    text = SAMPLE.read_text()
    proc = nwpipe("run", input=text, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert [json.loads(line) for line in proc.stdout.splitlines()] == [json.loads(line) for line in text.splitlines()]
    assert all(line == json.dumps(json.loads(line), separators=(",", ":"), ensure_ascii=False)
               for line in proc.stdout.splitlines())  # compact
    count = len(text.splitlines())
    assert f"read {count} events; rejected 0; stdout: {count} delivered" in proc.stderr


def test_files_in_order_and_stdin_dash(tmp_path):
    (tmp_path / "a.jsonl").write_text(jsonl([event(1)]))
    with gzip.open(tmp_path / "b.jsonl.gz", "wt") as fh:
        fh.write(jsonl([event(2)]))
    proc = nwpipe("run", "a.jsonl", "-", "b.jsonl.gz", input=jsonl([event(3)]), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert [json.loads(line)["id"] for line in proc.stdout.splitlines()] == ["alert-1", "alert-3", "alert-2"]


def test_missing_input_file_is_a_clear_error_before_reading(tmp_path):
    (tmp_path / "a.jsonl").write_text(jsonl([event(1)]))
    proc = nwpipe("run", "a.jsonl", "nope.jsonl", cwd=tmp_path)
    assert proc.returncode == 1
    assert proc.stderr.strip() == "nwpipe: error: nope.jsonl: no such file"
    assert proc.stdout == ""  # nothing was read, nothing sent
    folder = nwpipe("run", ".", cwd=tmp_path)
    assert folder.returncode == 1 and "is a folder" in folder.stderr


def test_input_failing_midway_loses_nothing_read(tmp_path):
    (tmp_path / "a.jsonl").write_text(jsonl([event(1)]))
    whole = gzip.compress(jsonl([event(i) for i in range(2, 12)]).encode())
    (tmp_path / "b.jsonl.gz").write_bytes(whole[: len(whole) - 20])  # truncated
    (tmp_path / "c.jsonl").write_text(jsonl([event(99)]))
    proc = nwpipe("run", "--dead-letter", "dl.jsonl", "a.jsonl", "b.jsonl.gz", "c.jsonl",
                  cwd=tmp_path)
    assert proc.returncode == 3
    assert "b.jsonl.gz" in proc.stderr and "Traceback" not in proc.stderr
    assert "1 input not read to the end" in proc.stderr
    sent = {json.loads(line)["id"] for line in proc.stdout.splitlines()}
    dead = [json.loads(line) for line in (tmp_path / "dl.jsonl").read_text().splitlines()] \
        if (tmp_path / "dl.jsonl").exists() else []
    # every event the decompressor gave back is sent or dead-lettered; the next file is read
    assert {"alert-1", "alert-99"} <= sent
    assert len(sent) + len(dead) >= 3


def test_config_discovery(tmp_path):
    (tmp_path / "nwpipe.toml").write_text('[outputs.f]\ntype = "file"\npath = "local.jsonl"\n')
    (tmp_path / "other.toml").write_text('[outputs.f]\ntype = "file"\npath = "other.jsonl"\n')
    assert nwpipe("run", input=jsonl([event(1)]), cwd=tmp_path).returncode == 0
    assert (tmp_path / "local.jsonl").exists()
    proc = nwpipe("run", input=jsonl([event(1)]), cwd=tmp_path, env={"NWPIPE_CONFIG": "other.toml"})
    assert proc.returncode == 0 and (tmp_path / "other.jsonl").exists()


def test_config_error_exits_1_before_reading(tmp_path):
    (tmp_path / "c.toml").write_text('[outputs.f]\ntype = "file"\npaht = "x"\n')
    proc = nwpipe("run", "-c", "c.toml", input=jsonl([event(1)]), cwd=tmp_path)
    assert proc.returncode == 1
    assert proc.stderr.strip() == ("nwpipe: error: c.toml: outputs.f.paht: unknown setting 'paht' "
                                   "(did you mean 'path'?)")
    assert not (tmp_path / "nwpipe-dead-letter.jsonl").exists()


def test_fan_out_with_customer_filters(tmp_path):
    (tmp_path / "c.toml").write_text("""
        [outputs.all]
        type = "file"
        path = "all.jsonl"
        [outputs.acme]
        type = "file"
        path = "acme.jsonl"
        customers = ["acme"]
    """)
    events = [event(1, "acme"), event(2, "globex"), event(3, "acme")]
    proc = nwpipe("run", "-c", "c.toml", input=jsonl(events), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    def read(name):
        return [json.loads(line)["id"] for line in (tmp_path / name).read_text().splitlines()]

    assert read("all.jsonl") == ["alert-1", "alert-2", "alert-3"]
    assert read("acme.jsonl") == ["alert-1", "alert-3"]
    assert "all: 3 delivered; acme: 2 delivered" in proc.stderr


def test_bad_lines_are_dead_lettered_and_exit_3(tmp_path):
    text = jsonl([event(1)]) + "this is not json\n" + json.dumps({"customer": "acme"}) + "\n" + jsonl([event(2)])
    proc = nwpipe("run", "--dead-letter", "dl.jsonl", input=text, cwd=tmp_path)
    assert proc.returncode == 3
    assert [json.loads(line)["id"] for line in proc.stdout.splitlines()] == ["alert-1", "alert-2"]
    assert "<stdin>:2: not valid JSON" in proc.stderr
    assert "<stdin>:3: event has no 'id' field" in proc.stderr
    records = [json.loads(line) for line in (tmp_path / "dl.jsonl").read_text().splitlines()]
    assert [(r["stage"], r["line"]) for r in records] == [("parse", 2), ("parse", 3)]
    assert records[0]["raw"] == "this is not json"
    assert records[1]["event"] == {"customer": "acme"}
    assert "Traceback" not in proc.stderr


def test_quiet_hides_summary(tmp_path):
    proc = nwpipe("run", "-q", input=jsonl([event(1)]), cwd=tmp_path)
    assert proc.returncode == 0 and proc.stderr == ""


def test_json_log_format(tmp_path):
    proc = nwpipe("run", "--log-format", "json", input=jsonl([event(1)]), cwd=tmp_path)
    record = json.loads(proc.stderr.splitlines()[-1])
    assert record["level"] == "info" and "read 1 event" in record["message"]


def test_stdout_reader_going_away_is_quiet(tmp_path):
    big = jsonl([event(i) for i in range(20000)])
    (tmp_path / "big.jsonl").write_text(big)
    proc = subprocess.run(["bash", "-c", f"set -o pipefail; {sys.executable} -m nwpipe run "
                           "big.jsonl | head -n 1"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=60,
                          env={**os.environ, "NWPIPE_LOAD_PLUGINS": ""})
    assert json.loads(proc.stdout)["id"] == "alert-0"
    assert "Traceback" not in proc.stderr and "Error" not in proc.stderr
    assert proc.returncode == 0, proc.stderr
    assert not (tmp_path / "nwpipe-dead-letter.jsonl").exists()
    # nothing vanishes from the count: what the closed output did not take is said
    m = re.search(r"read ([\d,]+) events; rejected 0; stdout: ([\d,]+) delivered, ([\d,]+) "
                  r"not sent \(the output was closed\)", proc.stderr)
    assert m, proc.stderr
    assert int(m[2].replace(",", "")) + int(m[3].replace(",", "")) == int(m[1].replace(",", ""))


def test_body_with_an_integer_beyond_64_bits_keeps_its_exact_value(tmp_path):
    (tmp_path / "c.toml").write_text("""
        [mappings.m]
        fields = { big = { template = "{{ n }}", type = "int" } }
        [outputs.f]
        type = "file"
        path = "out.jsonl"
        mapping = "m"
    """)
    events = [event(1, n="1"), event(2, n="123456789012345678901234567890"), event(3, n="3")]
    proc = nwpipe("run", "-c", "c.toml", "--dead-letter", "dl.jsonl", input=jsonl(events),
                  cwd=tmp_path, timeout=30)
    assert proc.returncode == 0, proc.stderr
    lines = (tmp_path / "out.jsonl").read_text().splitlines()
    assert '"big":123456789012345678901234567890' in lines[1]
    assert [(e["id"], e["big"]) for e in map(json.loads, lines)] == \
        [("alert-1", 1), ("alert-2", 123456789012345678901234567890), ("alert-3", 3)]
    assert not (tmp_path / "dl.jsonl").exists()


def test_output_that_cannot_open_is_named_before_reading(tmp_path):
    (tmp_path / "blocker").write_text("a file, not a folder")
    (tmp_path / "c.toml").write_text('[outputs.archive]\ntype = "file"\npath = "blocker/x.jsonl"\n')
    proc = nwpipe("run", "-c", "c.toml", input=jsonl([event(1)]), cwd=tmp_path)
    assert proc.returncode == 1
    assert proc.stderr == ("nwpipe: error: outputs.archive: cannot start: "
                           "blocker: File exists\n"), proc.stderr


def test_check_describes_without_secrets(tmp_path):
    (tmp_path / "c.toml").write_text('[outputs.f]\ntype = "file"\npath = "x.jsonl"\ncustomers = ["acme"]\n')
    proc = nwpipe("check", "-c", "c.toml", cwd=tmp_path)
    assert proc.returncode == 0
    assert "c.toml: OK, 1 output" in proc.stdout
    assert "f: type file" in proc.stdout and "customers acme" in proc.stdout


def test_example_config_is_valid():
    proc = nwpipe("check", "-c", str(ROOT / "examples" / "nwpipe.toml"), cwd=ROOT)
    assert proc.returncode == 0, proc.stderr


def test_check_validates_mapping_tests(tmp_path):
    (tmp_path / "c.toml").write_text('[outputs.f]\ntype = "stdout"\n'
                                     '[[tests]]\noutput = "f"\nevent = { id = "a", customer = "x" }\n'
                                     'expct = { id = "a" }\n')
    proc = nwpipe("check", "-c", "c.toml", cwd=tmp_path)
    assert proc.returncode == 1
    assert "c.toml: tests[0].expct: unknown setting 'expct' (did you mean 'expect'?)" in proc.stderr
