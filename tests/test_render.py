"""`nwpipe render` through the real command: what each output would receive, nothing sent."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "examples" / "events.jsonl"


def nwpipe(*args, input=None, cwd=None, timeout=60):
    env = {k: v for k, v in os.environ.items() if k != "NWPIPE_CONFIG"}
    env["NWPIPE_LOAD_PLUGINS"] = ""
    return subprocess.run([sys.executable, "-m", "nwpipe", *args], input=input, cwd=cwd,
                          env=env, capture_output=True, text=True, timeout=timeout)


def json_lines(text: str) -> list:
    return [json.loads(line) for line in text.splitlines()]


def event(i, customer="acme", **extra):
    return {"id": f"alert-{i}", "customer": customer, "alerttype": "start", "updatecount": 1,
            "severity": "high", "algorithm": "portscan", "srcip": ["1.2.3.4"], **extra}


def jsonl(*events) -> str:
    return "".join(json.dumps(e) + "\n" for e in events)


# Per-customer mappings, a customers filter and a `when` filter, all to file outputs.
ROUTED = """
[mappings.siem]
drop = ["beta", "metrics.clockahead"]
rename = { alerttype = "state" }
[mappings.siem.fields]
src_ip = "$.srcip[0]"
title = "{{ algorithm | upper }} {{ alerttype }} for {{ customer }}"
flows = { template = "{{ metrics.count.flow }}", type = "int" }

[mappings.siem-acme]
extends = "siem"
rename = { customer = "tenant" }

[mappings.short]
keep = false
fields = { id = "$.id", severity = "$.severity", who = "{{ customer }}" }

[outputs.archive]
type = "file"
path = "archive.jsonl"
mapping = { default = "siem", acme = "siem-acme" }

[outputs.pager]
type = "file"
path = "pager.jsonl"
mapping = "short"
customers = ["acme", "globex"]
when = "severity in ['high', 'critical'] and alerttype != 'ongoing'"

[outputs.raw]
type = "file"
path = "raw.jsonl"
customers = ["initech"]
"""


def test_render_shows_exactly_what_file_outputs_receive(tmp_path):
    (tmp_path / "c.toml").write_text(ROUTED)
    rendered = nwpipe("render", "-c", "c.toml", "--json", str(SAMPLE), cwd=tmp_path)
    assert rendered.returncode == 0, rendered.stderr
    assert not list(tmp_path.glob("*.jsonl")), "render must not write to any output"

    ran = nwpipe("run", "-c", "c.toml", str(SAMPLE), cwd=tmp_path)
    assert ran.returncode == 0, ran.stderr

    by_output = defaultdict(list)
    for record in json_lines(rendered.stdout):
        assert set(record) == {"source", "line", "output", "mapping", "body"}
        assert record["source"] == str(SAMPLE)
        by_output[record["output"]].append(record["body"])
    for name in ("archive", "pager", "raw"):
        written = json_lines((tmp_path / f"{name}.jsonl").read_text())
        assert written, f"the sample should reach {name}"
        assert by_output[name] == written, name
    # every filter took part: not every event reached the filtered outputs
    events = len(SAMPLE.read_text().splitlines())
    assert len(by_output["archive"]) == events
    assert 0 < len(by_output["pager"]) < events and 0 < len(by_output["raw"]) < events
    assert "rendered 40 events" in rendered.stderr


def test_human_format_headers_and_pretty_bodies(tmp_path):
    (tmp_path / "c.toml").write_text(ROUTED)
    events = jsonl(event(1, metrics={"count": {"flow": 3}}),
                   event(2, customer="initech", alerttype="ongoing",
                         metrics={"count": {"flow": 4}}))
    proc = nwpipe("render", "-c", "c.toml", input=events, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    # renames move a field to the end, in the order written (extends: the parent's first)
    acme = {"id": "alert-1", "updatecount": 1, "severity": "high", "algorithm": "portscan",
            "srcip": ["1.2.3.4"], "metrics": {"count": {"flow": 3}}, "state": "start",
            "tenant": "acme", "src_ip": "1.2.3.4", "title": "PORTSCAN start for acme",
            "flows": 3}
    initech = {"id": "alert-2", "customer": "initech", "alerttype": "ongoing",
               "updatecount": 1, "severity": "high", "algorithm": "portscan",
               "srcip": ["1.2.3.4"], "metrics": {"count": {"flow": 4}}}
    assert proc.stdout == (
        "# <stdin>:1 -> archive (mapping siem-acme)\n" + json.dumps(acme, indent=2) + "\n"
        "# <stdin>:1 -> pager (mapping short)\n"
        + json.dumps({"id": "alert-1", "severity": "high", "who": "acme"}, indent=2) + "\n"
        "# <stdin>:2 -> archive (mapping siem)\n"
        + json.dumps({**{k: v for k, v in initech.items() if k != "alerttype"},
                      "state": "ongoing", "src_ip": "1.2.3.4",
                      "title": "PORTSCAN ongoing for initech", "flows": 4}, indent=2) + "\n"
        "# <stdin>:2 -> raw (no mapping: event unchanged)\n" + json.dumps(initech, indent=2)
        + "\n")


def test_customer_option_previews_another_customers_routing_and_mapping(tmp_path):
    (tmp_path / "c.toml").write_text(ROUTED)
    one = jsonl(event(1, customer="initech", metrics={"count": {"flow": 1}}))
    as_is = json_lines(nwpipe("render", "-c", "c.toml", "--json", input=one,
                              cwd=tmp_path).stdout)
    assert [(r["output"], r["mapping"]) for r in as_is] == [("archive", "siem"), ("raw", None)]

    proc = nwpipe("render", "-c", "c.toml", "--json", "--customer", "acme", input=one,
                  cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    records = json_lines(proc.stdout)
    assert [(r["output"], r["mapping"]) for r in records] == [("archive", "siem-acme"),
                                                                ("pager", "short")]
    assert records[0]["body"]["tenant"] == "acme" and "customer" not in records[0]["body"]
    assert records[0]["body"]["title"] == "PORTSCAN start for acme"
    assert records[1]["body"] == {"id": "alert-1", "severity": "high", "who": "acme"}


def test_output_option_and_why_an_event_is_not_sent(tmp_path):
    (tmp_path / "c.toml").write_text(ROUTED + """
[outputs.acme-only]
type = "file"
path = "acme.jsonl"
mapping = { acme = "short" }
""")
    events = jsonl(event(1, alerttype="ongoing"), event(2, customer="umbrella"),
                   event(3, severity="critical"))
    proc = nwpipe("render", "-c", "c.toml", "--output", "pager", input=events, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[:2] == [
        "# <stdin>:1 -> pager: not sent: its when is false: "
        "severity in ['high', 'critical'] and alerttype != 'ongoing'",
        "# <stdin>:2 -> pager: not sent: customer 'umbrella' is not in its customers "
        "['acme', 'globex']",
    ]
    assert "# <stdin>:3 -> pager (mapping short)" in proc.stdout
    assert "archive" not in proc.stdout

    proc = nwpipe("render", "-c", "c.toml", "--output", "acme-only", input=events, cwd=tmp_path)
    assert "# <stdin>:2 -> acme-only: not sent: its mapping table has no entry for customer " \
           "'umbrella' and no default" in proc.stdout
    # --json leaves out what is not sent
    proc = nwpipe("render", "-c", "c.toml", "--json", "--output", "acme-only", input=events,
                  cwd=tmp_path)
    assert [r["line"] for r in json_lines(proc.stdout)] == [1, 3]


def test_unknown_output_is_a_usage_error(tmp_path):
    (tmp_path / "c.toml").write_text(ROUTED)
    proc = nwpipe("render", "-c", "c.toml", "--output", "pagr", input="", cwd=tmp_path)
    assert proc.returncode == 1
    assert "no output named 'pagr' (did you mean 'pager'?)" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_errors_are_shown_per_event_and_the_others_go_on(tmp_path):
    (tmp_path / "c.toml").write_text("""
[mappings.m.fields]
title = "{{ algorithm | upper }} {{ region }}"
[outputs.out]
type = "file"
path = "out.jsonl"
mapping = "m"
""")
    lines = (jsonl(event(1, region="eu")) + "this is not json\n" + jsonl(event(3))
             + '{"customer": "acme"}\n' + jsonl(event(5, region="us")))
    proc = nwpipe("render", "-c", "c.toml", input=lines, cwd=tmp_path)
    assert proc.returncode == 3
    out = proc.stdout
    assert "# <stdin>:1 -> out (mapping m)\n" in out
    assert "# <stdin>:2: ERROR: not valid JSON" in out
    assert ("# <stdin>:3 -> out (mapping m): ERROR: mapping 'm' failed: "
            "mappings.m.fields.title: 'region' is undefined") in out
    assert "# <stdin>:4: ERROR: event has no 'id' field" in out
    assert '"title": "PORTSCAN us"' in out
    assert "rendered 5 events: 2 bodies, 3 errors" in proc.stderr
    assert "Traceback" not in proc.stderr

    proc = nwpipe("render", "-c", "c.toml", "--json", input=lines, cwd=tmp_path)
    assert proc.returncode == 3
    records = json_lines(proc.stdout)
    assert [r["line"] for r in records] == [1, 2, 3, 4, 5]
    assert [("body" in r, "error" in r) for r in records] == [
        (True, False), (False, True), (False, True), (False, True), (True, False)]
    assert records[2]["output"] == "out" and records[2]["mapping"] == "m"
    assert records[1]["output"] is None
    # the same reasons `nwpipe run` writes to the dead-letter file
    ran = nwpipe("run", "-c", "c.toml", "--dead-letter", "dl.jsonl", input=lines, cwd=tmp_path)
    assert ran.returncode == 3
    reasons = [r["reason"] for r in json_lines((tmp_path / "dl.jsonl").read_text())]
    assert reasons == [records[1]["error"], records[2]["error"], records[3]["error"]]


def test_a_failing_when_sends_the_event_nowhere(tmp_path):
    (tmp_path / "c.toml").write_text("""
[outputs.a]
type = "file"
path = "a.jsonl"
[outputs.b]
type = "file"
path = "b.jsonl"
when = "region == 'eu'"
""")
    proc = nwpipe("render", "-c", "c.toml", "--json", input=jsonl(event(1), event(2, region="eu")),
                  cwd=tmp_path)
    assert proc.returncode == 3
    first, *rest = json_lines(proc.stdout)
    assert first["line"] == 1 and first["output"] == "b"
    assert first["error"].startswith("'when' failed: outputs.b.when: 'region' is undefined")
    assert [(r["line"], r["output"]) for r in rest] == [(2, "a"), (2, "b")]


async def test_nothing_is_sent_to_a_webhook(receiver, tmp_path):
    (tmp_path / "c.toml").write_text(f"""
dead_letter = "dl.jsonl"
[outputs.hook]
type = "webhook"
url = "{receiver.url}"
""")
    env = {k: v for k, v in os.environ.items() if k != "NWPIPE_CONFIG"}
    env["NWPIPE_LOAD_PLUGINS"] = ""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "nwpipe", "render", "-c", "c.toml", "--json", str(SAMPLE),
        cwd=tmp_path, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    stdout, stderr = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, stderr.decode()
    assert [r["body"] for r in json_lines(stdout.decode())] == json_lines(SAMPLE.read_text())
    # the behaviour under test: nothing arrives (an absence cannot be polled for; the
    # process has exited, so a request it made would already be here)
    await asyncio.sleep(0.2)
    assert receiver.requests == []
    assert not (tmp_path / "dl.jsonl").exists()


def test_files_in_any_input_format_and_no_config(tmp_path):
    sample = ROOT / "examples" / "netography-sample.json"
    proc = nwpipe("render", str(sample), "-", input=jsonl(event(9)), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(f"# {sample}:1 -> stdout (no mapping: event unchanged)\n{{\n")
    assert json.loads(proc.stdout.split("\n# <stdin>:1 -> stdout")[0].split("\n", 1)[1]) == \
        json.loads(sample.read_text())


def test_a_reader_that_goes_away_stops_render_quietly(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "NWPIPE_CONFIG"}
    env["NWPIPE_LOAD_PLUGINS"] = ""
    proc = subprocess.Popen([sys.executable, "-m", "nwpipe", "render", str(SAMPLE), str(SAMPLE),
                             str(SAMPLE)], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    assert proc.stdout.read(100).startswith(b"# ")
    proc.stdout.close()  # like `nwpipe render ... | head`
    stderr = proc.stderr.read().decode()
    assert proc.wait(timeout=60) == 0
    assert "Traceback" not in stderr and "Broken pipe" not in stderr


def test_config_errors_exit_1(tmp_path):
    (tmp_path / "c.toml").write_text('[mappings.m.fields]\nx = "$.a[?"\n'
                                     '[outputs.o]\ntype = "stdout"\nmapping = "m"\n')
    proc = nwpipe("render", "-c", "c.toml", input=jsonl(event(1)), cwd=tmp_path)
    assert proc.returncode == 1
    assert "c.toml: mappings.m.fields.x: invalid jsonpath" in proc.stderr
    assert proc.stdout == ""
