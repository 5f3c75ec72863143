"""Typed environment values and `check` reporting every problem at once, with the real
CLI: a whole "${VAR}" takes the setting's type; a wrong one names the variable."""

from __future__ import annotations

import pytest
from test_cli import nwpipe

SYSLOG = """
[outputs.siem]
type = "syslog"
host = "127.0.0.1"
port = "${SYSLOG_PORT:-514}"
facility = "${SYSLOG_FACILITY:-local3}"

[outputs.soc]
type = "webhook"
url = "https://soc.example.com/hook"
timeout = "${SOC_TIMEOUT:-5}"
concurrency = "${SOC_CONCURRENCY:-2}"
follow_redirects = "${SOC_REDIRECTS:-true}"
customers = "${SOC_CUSTOMERS}"
"""


def test_numbers_booleans_and_lists_from_the_environment(tmp_path):
    (tmp_path / "c.toml").write_text(SYSLOG)
    proc = nwpipe("check", "-c", "c.toml", cwd=tmp_path,
                  env={"SYSLOG_PORT": "1514", "SOC_REDIRECTS": "no",
                       "SOC_CUSTOMERS": "acme, globex ,"})
    assert proc.returncode == 0, proc.stderr
    assert "syslog udp 127.0.0.1:1514 (json, facility local3)" in proc.stdout
    assert "customers acme, globex" in proc.stdout
    # the defaults after :- convert the same way
    proc = nwpipe("check", "-c", "c.toml", cwd=tmp_path, env={"SOC_CUSTOMERS": "acme"})
    assert proc.returncode == 0, proc.stderr
    assert "127.0.0.1:514" in proc.stdout


@pytest.mark.parametrize("variable, value, message", [
    ("SYSLOG_PORT", "fivefourteen",
     "outputs.siem.port: environment variable SYSLOG_PORT must be an integer, "
     "got 'fivefourteen'"),
    ("SOC_REDIRECTS", "maybe",
     "outputs.soc.follow_redirects: environment variable SOC_REDIRECTS must be true or false "
     "(true/false, yes/no, on/off or 1/0), got 'maybe'"),
    ("SOC_TIMEOUT", "5s",
     "outputs.soc.timeout: environment variable SOC_TIMEOUT must be a number, got '5s'"),
])
def test_a_value_that_does_not_convert_names_the_variable(tmp_path, variable, value, message):
    (tmp_path / "c.toml").write_text(SYSLOG)
    proc = nwpipe("check", "-c", "c.toml", cwd=tmp_path,
                  env={"SOC_CUSTOMERS": "acme", variable: value})
    assert proc.returncode == 1
    assert proc.stderr == f"nwpipe: error: c.toml: {message}\n"
    assert "Traceback" not in proc.stderr


def test_a_secret_is_not_shown_when_it_does_not_convert(tmp_path):
    # the value of a setting read from the environment is only shown when not secret;
    # a string setting takes any text, so an int-typed secret is not needed here:
    (tmp_path / "c.toml").write_text('[outputs.o]\ntype = "webhook"\n'
                                     'url = "https://x.example.com/"\nusername = "u"\npassword = "${PW}"\n')
    proc = nwpipe("check", "-c", "c.toml", cwd=tmp_path, env={"PW": "12345"})
    assert proc.returncode == 0, proc.stderr
    assert "12345" not in proc.stdout + proc.stderr


def test_text_around_a_variable_stays_text(tmp_path):
    (tmp_path / "c.toml").write_text('[outputs.o]\ntype = "syslog"\nhost = "h"\n'
                                     'port = "${P}0"\n')
    proc = nwpipe("check", "-c", "c.toml", cwd=tmp_path, env={"P": "51"})
    assert proc.returncode == 1
    assert "outputs.o.port: must be an integer, got str" in proc.stderr


def test_check_reports_every_problem_in_one_pass(tmp_path):
    (tmp_path / "c.toml").write_text("""
dead_lettr = "dl.jsonl"

[outputs.a]
type = "webhok"

[outputs.b]
type = "webhook"
url = "https://b.example.com/"
timeout = "${B_TIMEOUT}"
mapping = "siem"

[outputs.c]
type = "file"
pth = "out.jsonl"

[defaults]
bogus = 1
""")
    proc = nwpipe("check", "-c", "c.toml", cwd=tmp_path, env={"B_TIMEOUT": "soon"})
    assert proc.returncode == 1
    assert proc.stdout == ""
    lines = proc.stderr.splitlines()
    assert lines == [
        "nwpipe: error: c.toml: dead_lettr: unknown setting 'dead_lettr' "
        "(did you mean 'dead_letter'?)",
        "nwpipe: error: c.toml: outputs.a.type: unknown output type 'webhok' "
        "(did you mean 'webhook'?) (known types: file, stdout, syslog, webhook; "
        "see `nwpipe plugins`)",
        "nwpipe: error: c.toml: outputs.b.timeout: environment variable B_TIMEOUT must be "
        "a number, got 'soon'",
        "nwpipe: error: c.toml: outputs.b.mapping: no mapping named 'siem' "
        "(mappings: none defined)",
        "nwpipe: error: c.toml: outputs.c.pth: unknown setting 'pth' (did you mean 'path'?)",
        "nwpipe: error: c.toml: defaults.bogus: unknown setting 'bogus'",
        "nwpipe: 6 problems in the config",
    ]


def test_check_reports_every_broken_mapping(tmp_path):
    (tmp_path / "c.toml").write_text("""
[mappings.a.fields]
x = "$.[bad"

[mappings.b.fields]
y = "{{ unclosed"

[mappings.c]
extends = "a"

[outputs.o]
type = "stdout"
mapping = "b"
""")
    proc = nwpipe("check", "-c", "c.toml", cwd=tmp_path)
    assert proc.returncode == 1
    errors = [line for line in proc.stderr.splitlines() if line.startswith("nwpipe: error:")]
    assert len(errors) == 2, proc.stderr  # c's copy of a's problem is not repeated
    assert "mappings.a.fields.x" in errors[0]
    assert "mappings.b.fields.y" in errors[1]
    assert proc.stderr.splitlines()[-1] == "nwpipe: 2 problems in the config"


def test_queue_status_still_needs_the_queues_own_variables(tmp_path):
    # status skips the outputs' secrets, not what it reads: the queue's address
    (tmp_path / "c.toml").write_text('[queue]\nurl = "${REDIS_URL}"\n\n[outputs.soc]\n'
                                     'type = "webhook"\nurl = "https://soc.example.com/${T}"\n')
    proc = nwpipe("queue", "status", "-c", "c.toml", cwd=tmp_path, env={})
    assert proc.returncode == 1
    assert "queue.url: environment variable REDIS_URL is not set" in proc.stderr
    assert "outputs.soc" not in proc.stderr and "Traceback" not in proc.stderr


def test_queue_status_needs_no_variable_of_the_outputs_defaults(tmp_path):
    (tmp_path / "c.toml").write_text('[defaults]\nusername = "u"\npassword = "${PW}"\n\n'
                                     '[outputs.soc]\ntype = "webhook"\n'
                                     'url = "https://soc.example.com/in"\n')
    proc = nwpipe("queue", "status", "-c", "c.toml", cwd=tmp_path, env={})
    assert (proc.returncode, proc.stderr) == (0, "")
    assert "nothing is queued" in proc.stdout
    drain = nwpipe("queue", "drain", "-c", "c.toml", "--output", "soc", cwd=tmp_path, env={})
    assert drain.returncode == 1
    assert "defaults.password: environment variable PW is not set" in drain.stderr
