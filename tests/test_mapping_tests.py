"""`nwpipe test` through the real command: [[tests]] as contract tests for integrations."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def nwpipe(*args, cwd=None, timeout=60):
    env = {k: v for k, v in os.environ.items() if k != "NWPIPE_CONFIG"}
    env["NWPIPE_LOAD_PLUGINS"] = ""
    return subprocess.run([sys.executable, "-m", "nwpipe", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


CONFIG = """
[mappings.siem]
keep = false
[mappings.siem.fields]
src_ip = "$.srcip[0]"
title = "{{ algorithm | upper }} {{ alerttype }} for {{ customer }}"
who = "$.customer"
bits = { path = "$.metrics.bits.max", default = 0 }
"alert.severity" = "$.severity"
"alert.tags" = { path = "$.tags[*]", list = true }

[mappings.siem-acme]
extends = "siem"
fields = { tenant = "$.customer" }

[outputs.soc]
type = "stdout"
mapping = { default = "siem", acme = "siem-acme" }
customers = ["acme", "globex"]
when = "alerttype != 'ongoing'"
"""

EVENT = ('{ id = "a1", customer = "globex", alerttype = "start", algorithm = "portscan", '
         'severity = "high", srcip = ["1.2.3.4", "5.6.7.8"], tags = ["x", "y"], '
         'metrics = { bits = { max = 7 } } }')


def run_tests(tmp_path, tests: str, config: str = CONFIG):
    (tmp_path / "c.toml").write_text(config + tests)
    return nwpipe("test", "-c", "c.toml", cwd=tmp_path)


def test_passing_tests_exit_0(tmp_path):
    proc = run_tests(tmp_path, f"""
[[tests]]
name = "whole body"
mapping = "siem"
event = {EVENT}
[tests.expect]
src_ip = "1.2.3.4"
title = "PORTSCAN start for globex"
who = "globex"
bits = 7.0
alert = {{ severity = "high", tags = ["x", "y"] }}

[[tests]]
output = "soc"
event = {EVENT}
customer = "acme"
expect_subset = {{ tenant = "acme", alert = {{ severity = "high" }} }}
""")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout == ("ok    whole body (tests[0])\n"
                           "ok    tests[1]\n"
                           "2 tests: 2 passed, 0 failed\n")


def test_failures_show_each_path_and_a_diff_and_exit_1(tmp_path):
    proc = run_tests(tmp_path, f"""
[[tests]]
name = "fine"
mapping = "siem"
event = {EVENT}
expect_subset = {{ who = "globex" }}

[[tests]]
name = "the SOC's contract"
output = "soc"
event = {EVENT}
[tests.expect]
src_ip = "5.6.7.8"
title = "PORTSCAN start for globex"
bits = "7"
alert = {{ severity = "high", tags = ["x"] }}
extra = true
""")
    assert proc.returncode == 1
    lines = proc.stdout.splitlines()
    assert lines[0] == "ok    fine (tests[0])"
    assert lines[1] == "FAIL  the SOC's contract (tests[1]): output soc, mapping siem"
    assert lines[2:7] == [
        '      $.src_ip: expected "5.6.7.8", got "1.2.3.4"',
        '      $.bits: expected "7", got 7',
        "      $.alert.tags: expected 1 item, got 2",
        "      $.extra: expected true, got nothing (missing)",
        '      $.who: not expected, got "globex"',
    ]
    diff = lines[7:-1]
    assert diff[:2] == ["      --- expected", "      +++ actual"]
    for line in ['      -      "x"', '      +      "x",', '      +      "y"',
                 '      -  "bits": "7",', '      +  "bits": 7,', '      -  "extra": true,',
                 '      -  "src_ip": "5.6.7.8",', '      +  "src_ip": "1.2.3.4",',
                 '      +  "who": "globex"']:
        assert line in diff
    assert lines[-1] == "2 tests: 1 passed, 1 failed"


def test_subset_semantics(tmp_path):
    proc = run_tests(tmp_path, f"""
[[tests]]
name = "nested keys, extra keys allowed"
mapping = "siem"
event = {EVENT}
expect_subset = {{ alert = {{ tags = ["x", "y"] }} }}

[[tests]]
name = "numbers compare by value"
mapping = "siem"
event = {EVENT}
expect_subset = {{ bits = 7.0 }}

[[tests]]
name = "lists match item by item, same length"
mapping = "siem"
event = {EVENT}
expect_subset = {{ alert = {{ tags = ["x"] }} }}

[[tests]]
name = "true is not 1"
mapping = "siem"
event = {{ id = "a", customer = "c", alerttype = "start", algorithm = "a", metrics = {{ bits = {{ max = true }} }} }}
expect_subset = {{ bits = 1 }}
""")
    assert proc.returncode == 1
    out = proc.stdout
    assert "ok    nested keys, extra keys allowed" in out
    assert "ok    numbers compare by value" in out
    assert "FAIL  lists match item by item, same length (tests[2])" in out
    assert "      $.alert.tags: expected 1 item, got 2" in out
    assert "+++ actual (only the keys expected)" in out
    assert "FAIL  true is not 1 (tests[3])" in out
    assert "      $.bits: expected 1, got true (a boolean, not a number)" in out
    assert out.endswith("4 tests: 2 passed, 2 failed\n")


def test_event_file_relative_to_the_config_and_customer_override(tmp_path):
    folder = tmp_path / "conf"
    (folder / "events").mkdir(parents=True)
    shutil.copy(ROOT / "examples" / "netography-sample.json", folder / "events" / "sample.json")
    (folder / "c.toml").write_text(CONFIG + """
[[tests]]
name = "the vendor's sample for acme"
output = "soc"
event_file = "events/sample.json"
customer = "acme"
expect_subset = { tenant = "acme", title = "KNOWNBOTNET start for acme", bits = 0 }
""")
    proc = nwpipe("test", "-c", "conf/c.toml", cwd=tmp_path)  # run from elsewhere
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "ok    the vendor's sample for acme" in proc.stdout


def test_expect_file_holds_a_body_with_nulls(tmp_path):
    body = {"src_ip": None, "title": "PORTSCAN start for globex", "who": "globex", "bits": 0,
            "alert": {"severity": None, "tags": []}}
    (tmp_path / "body.json").write_text(json.dumps(body, indent=2))
    proc = run_tests(tmp_path, """
[[tests]]
mapping = "siem"
event = { id = "a1", customer = "globex", alerttype = "start", algorithm = "portscan" }
expect_file = "body.json"
""")
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_routing_is_part_of_the_contract(tmp_path):
    proc = run_tests(tmp_path, f"""
[[tests]]
name = "ongoing never reaches the SOC"
output = "soc"
event = {{ id = "a", customer = "acme", alerttype = "ongoing" }}
expect_sent = false

[[tests]]
name = "other customers never reach the SOC"
output = "soc"
event = {EVENT}
customer = "initech"
expect_sent = false

[[tests]]
name = "but starts do"
output = "soc"
event = {EVENT}
expect_sent = false

[[tests]]
name = "wrongly expected"
output = "soc"
event = {EVENT}
customer = "initech"
expect_subset = {{ who = "initech" }}
""")
    assert proc.returncode == 1
    out = proc.stdout
    assert "ok    ongoing never reaches the SOC" in out
    assert "ok    other customers never reach the SOC" in out
    assert "FAIL  but starts do (tests[2]): output soc, mapping siem" in out
    assert "      expected output 'soc' not to take this event, but it does" in out
    assert "      body it would receive:" in out
    assert "FAIL  wrongly expected (tests[3])" in out
    assert ("      output 'soc' does not take this event: customer 'initech' is not in its "
            "customers ['acme', 'globex']") in out


def test_a_mapping_that_fails_on_the_event_is_a_failure(tmp_path):
    proc = run_tests(tmp_path, """
[[tests]]
mapping = "siem"
event = { id = "a1", customer = "globex", alerttype = "start" }
expect_subset = { who = "globex" }
""")
    assert proc.returncode == 1
    assert proc.stdout.splitlines()[:2] == [
        "FAIL  tests[0]: mapping siem",
        "      mapping 'siem' failed: mappings.siem.fields.title: 'algorithm' is undefined "
        "(line 1 of the template)",
    ]
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize("tests,message", [
    ('[[tests]]\nmapping = "siem"\nevent = {}\nexpct = {}\n',
     "c.toml: tests[0].expct: unknown setting 'expct' (did you mean 'expect'?)"),
    ('[[tests]]\nmapping = "siem"\nevent = {}\nexpect = {}\n'
     '[[tests]]\nmapping = "siem"\nevent = {}\nexpect_subset = "x"\n',
     "c.toml: tests[1].expect_subset: must be a table or a list, got str"),
    ('[[tests]]\nmapping = "siem"\noutput = "soc"\nevent = {}\nexpect = {}\n',
     "c.toml: tests[0].mapping: set only one of 'output' and 'mapping'"),
    ('[[tests]]\nevent = {}\nexpect = {}\n',
     "c.toml: tests[0]: needs 'output' (an output's name) or 'mapping' (a mapping's name)"),
    ('[[tests]]\nmapping = "sime"\nevent = {}\nexpect = {}\n',
     "c.toml: tests[0].mapping: no mapping named 'sime' (did you mean 'siem'?)"),
    ('[[tests]]\noutput = "sco"\nevent = {}\nexpect = {}\n',
     "c.toml: tests[0].output: no output named 'sco' (did you mean 'soc'?)"),
    ('[[tests]]\nmapping = "siem"\nexpect = {}\n',
     "c.toml: tests[0]: needs an input event: 'event' (a table) or 'event_file' (a path)"),
    ('[[tests]]\nmapping = "siem"\nevent = {}\n',
     "c.toml: tests[0]: needs 'expect' (the whole body), 'expect_subset'"),
    ('[[tests]]\nmapping = "siem"\nevent = {}\nexpect = {}\nexpect_subset = {}\n',
     "c.toml: tests[0].expect_subset: set only one of 'expect', 'expect_subset' and "
     "'expect_file' (both 'expect' and 'expect_subset' are set)"),
    ('[[tests]]\nmapping = "siem"\nevent = {}\nexpect_sent = false\n',
     "c.toml: tests[0].expect_sent: only a test of an 'output' can expect it not to be sent"),
    ('[[tests]]\noutput = "soc"\nevent = {}\nexpect_sent = false\nexpect = {}\n',
     "c.toml: tests[0].expect: expect_sent = false: nothing is sent"),
    ('[[tests]]\nmapping = "siem"\nevent_file = "nope.json"\nexpect = {}\n',
     "c.toml: tests[0].event_file: nope.json: cannot read"),
    ('[[tests]]\nmapping = "siem"\nevent_file = "bad.jsonl"\nexpect = {}\n',
     "c.toml: tests[0].event_file: bad.jsonl:2: not valid JSON"),
    ('[[tests]]\nmapping = "siem"\nevent = {}\nexpect_file = "bad.jsonl"\n',
     "c.toml: tests[0].expect_file: bad.jsonl:2: not valid JSON"),
    ('tests = [1]\n', "c.toml: tests[0]: must be a table ([[tests]])"),
])
def test_config_errors_name_the_key_path(tmp_path, tests, message):
    (tmp_path / "bad.jsonl").write_text("\nnot json\n")
    config = tests + CONFIG if tests.startswith("tests =") else CONFIG + tests
    proc = run_tests(tmp_path, "", config=config)
    assert proc.returncode == 1
    assert message in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr
    assert proc.stdout == ""


def test_no_tests_is_an_error(tmp_path):
    proc = run_tests(tmp_path, "")
    assert proc.returncode == 1
    assert proc.stdout == ""
    assert "nwpipe: error: no tests in c.toml: add [[tests]] tables" in proc.stderr


def test_the_example_config_tests_pass(tmp_path):
    # The example's whole-body Slack template is shipped by the package; a stand-in in
    # a template folder keeps this test about the [[tests]] themselves.
    (tmp_path / "tpl").mkdir()
    (tmp_path / "tpl" / "slack.json.j2").write_text('{"text": {{ summary }}}')
    shutil.copy(ROOT / "examples" / "netography-sample.json", tmp_path)
    text = (ROOT / "examples" / "nwpipe.toml").read_text()
    (tmp_path / "nwpipe.toml").write_text('templates = ["tpl"]\n' + text)
    proc = nwpipe("test", "-c", "nwpipe.toml", cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.count("\nok    ") + proc.stdout.startswith("ok    ") >= 4
    assert "FAIL" not in proc.stdout
