"""Conventions every command follows, checked with the real `nwpipe` in a subprocess:
global options anywhere, "did you mean", the command's own usage on its errors, an
example in each help, no traceback when the reader of stdout goes away, `nwpipe:` on
every error line."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from test_cli import SAMPLE, nwpipe

from nwpipe.commands.cli import command_names

CONFIG = """
[outputs.out]
type = "stdout"
mapping = "m"

[mappings.m.fields]
id = "$.id"

[[tests]]
name = "one"
output = "out"
event = { id = "a" }
expect = { id = "a" }

[[tests]]
name = "two"
output = "out"
event = { id = "b" }
expect = { id = "b" }
"""


@pytest.mark.parametrize("args", [
    ("-c", "t.toml", "check"),
    ("check", "-c", "t.toml"),
    ("-q", "--log-format", "json", "check", "-c", "t.toml"),
    ("check", "-q", "-c", "t.toml", "--plugins-dir", "."),
])
def test_global_options_before_or_after_the_command(tmp_path, args):
    (tmp_path / "t.toml").write_text(CONFIG)
    proc = nwpipe(*args, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("t.toml: OK, 1 output")


def test_global_options_are_described_once():
    top = nwpipe("--help").stdout
    assert "--log-format" in top and "--plugins-dir" in top
    commands = command_names()
    assert {"run", "check", "replay", "test", "render", "init", "plugins"} <= set(commands)
    for command in commands:
        text = nwpipe(command, "--help").stdout
        assert "--log-format {text,json}" not in text.split("example:")[0], command
        assert "\nexample:\n  nwpipe " in text, command
        assert "global options, before or after the command" in text, command


def test_unknown_command_gets_did_you_mean():
    proc = nwpipe("chekc")
    assert proc.returncode == 1
    assert "nwpipe: error: unknown command 'chekc' (did you mean 'check'?)" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_no_command_shows_the_help_on_stderr():
    proc = nwpipe()
    assert proc.returncode == 1
    assert proc.stdout == "" and proc.stderr.startswith("usage: nwpipe ")


def test_short_version_flag():
    proc = nwpipe("-V")
    assert proc.returncode == 0 and proc.stdout.startswith("nwpipe ")


@pytest.mark.parametrize("command", ["run", "check", "replay", "test", "plugins", "init"])
def test_unknown_option_shows_the_commands_own_usage(command):
    proc = nwpipe(command, "--bogus", *(["dead.jsonl"] if command == "replay" else []))
    assert proc.returncode == 1
    assert proc.stderr.startswith(f"usage: nwpipe {command} "), proc.stderr
    assert "nwpipe: error: unrecognized arguments: --bogus" in proc.stderr


def _piped_into_head(tmp_path, command):
    return subprocess.run(["bash", "-c", f"{sys.executable} -m nwpipe {command} | head -c 1"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=60,
                          env={**os.environ, "NWPIPE_LOAD_PLUGINS": ""})


@pytest.mark.parametrize("command", ["plugins --json", "plugins", "test -c t.toml",
                                     "check -c t.toml"])
def test_closed_pipe_is_quiet(tmp_path, command):
    # Enough tests that the report outgrows the pipe's buffer after `head` has gone.
    many = CONFIG + "".join(
        f'\n[[tests]]\nname = "t{i}"\noutput = "out"\nevent = {{ id = "x{i}" }}\n'
        f'expect = {{ id = "x{i}" }}\n' for i in range(3000))
    (tmp_path / "t.toml").write_text(many)
    proc = _piped_into_head(tmp_path, command)
    assert len(proc.stdout) == 1
    assert "Traceback" not in proc.stderr and "BrokenPipe" not in proc.stderr, proc.stderr


def test_init_with_a_trailing_slash_writes_into_a_new_folder(tmp_path):
    proc = nwpipe("init", "newdir/", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "newdir" / "nwpipe.toml").is_file()
    assert nwpipe("check", "-c", "newdir/nwpipe.toml", cwd=tmp_path,
                  env={"SOC_URL": "https://soc.example.com/x"}).returncode == 0


def test_replay_of_an_events_file_is_one_line_and_exit_1(tmp_path):
    events = tmp_path / "events.jsonl"
    events.write_bytes(SAMPLE.read_bytes())
    before = events.read_bytes()
    proc = nwpipe("replay", "events.jsonl", cwd=tmp_path)
    assert proc.returncode == 1
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("nwpipe: error: events.jsonl: holds no dead-letter record")
    assert "nwpipe run events.jsonl" in lines[0]
    assert events.read_bytes() == before


def test_every_error_line_has_the_prefix(tmp_path):
    (tmp_path / "empty.toml").write_text('[outputs.o]\ntype = "stdout"\n')
    for args in (("test", "-c", "empty.toml"), ("chekc",), ("run", "missing.jsonl"),
                 ("check", "-c", "nope.toml")):
        proc = nwpipe(*args, cwd=tmp_path, input="")
        assert proc.returncode == 1, args
        assert proc.stdout == "", args
        problems = [line for line in proc.stderr.splitlines()
                    if line and not line.startswith(("usage:", " "))]
        assert problems and all(line.startswith("nwpipe: ") for line in problems), proc.stderr
