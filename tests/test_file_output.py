"""The file output: JSON lines appended, rotation by size (rotate_bytes, rotate_keep)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from nwpipe import Delivered
from nwpipe.config import build_config
from nwpipe.errors import ConfigError
from nwpipe.outputs import Delivery
from nwpipe.plugins import Plugins
from nwpipe.settings import validate_settings
from nwpipe_plugins.file import FileOutput

ROOT = Path(__file__).resolve().parent.parent


def make_output(**table) -> FileOutput:
    return FileOutput("f", validate_settings(table, FileOutput.settings, key="outputs.f"))


def deliveries(start: int, count: int, pad: int = 0) -> list[Delivery]:
    out = []
    for i in range(start, start + count):
        body = {"n": i, "pad": "x" * pad}
        out.append(Delivery(id=str(i), body=body, event=body, output="f"))
    return out


def lines(path: Path) -> list[dict]:
    text = path.read_bytes().decode()
    assert text == "" or text.endswith("\n")  # never a partial line
    return [json.loads(line) for line in text.splitlines()]


async def write(out: FileOutput, *batches: list[Delivery]) -> None:
    await out.open()
    for batch in batches:
        assert await out.send(batch) == Delivered()
    await out.close()


async def test_appends_json_lines_and_keeps_what_was_there(tmp_path):
    path = tmp_path / "sub" / "events.jsonl"
    await write(make_output(path=str(path)), deliveries(0, 2))
    await write(make_output(path=str(path)), deliveries(2, 1))
    assert [e["n"] for e in lines(path)] == [0, 1, 2]


async def test_rotates_by_size_and_keeps_rotate_keep_files(tmp_path):
    path = tmp_path / "events.jsonl"
    line_size = len(deliveries(0, 1, pad=80)[0].body_json()) + 1
    out = make_output(path=str(path), rotate_bytes=3 * line_size, rotate_keep=2)
    # 10 batches of one line each: files hold 3 lines, only two old files are kept
    await write(out, *[deliveries(i, 1, pad=80) for i in range(10)])
    assert sorted(p.name for p in tmp_path.iterdir()) == \
        ["events.jsonl", "events.jsonl.1", "events.jsonl.2"]
    assert [e["n"] for e in lines(Path(f"{path}.2"))] == [3, 4, 5]
    assert [e["n"] for e in lines(Path(f"{path}.1"))] == [6, 7, 8]
    assert [e["n"] for e in lines(path)] == [9]
    for p in tmp_path.iterdir():
        assert p.stat().st_size <= 3 * line_size


async def test_a_batch_larger_than_the_limit_is_written_whole(tmp_path):
    path = tmp_path / "events.jsonl"
    out = make_output(path=str(path), rotate_bytes=100, rotate_keep=3)
    await write(out, deliveries(0, 1), deliveries(1, 5, pad=50), deliveries(6, 1))
    assert [e["n"] for e in lines(Path(f"{path}.2"))] == [0]
    assert [e["n"] for e in lines(Path(f"{path}.1"))] == [1, 2, 3, 4, 5]
    assert [e["n"] for e in lines(path)] == [6]


async def test_size_of_an_existing_file_counts_after_a_restart(tmp_path):
    path = tmp_path / "events.jsonl"
    path.write_text('{"old": true}\n' * 10)
    out = make_output(path=str(path), rotate_bytes=150)
    await write(out, deliveries(0, 1))
    assert lines(Path(f"{path}.1")) == [{"old": True}] * 10
    assert [e["n"] for e in lines(path)] == [0]


async def test_rotate_keep_zero_starts_the_file_over(tmp_path):
    path = tmp_path / "events.jsonl"
    out = make_output(path=str(path), rotate_bytes=30, rotate_keep=0)
    await write(out, deliveries(0, 1, pad=10), deliveries(1, 1, pad=10))
    assert [p.name for p in tmp_path.iterdir()] == ["events.jsonl"]
    assert [e["n"] for e in lines(path)] == [1]


async def test_rotation_survives_the_file_being_moved_away(tmp_path):
    path = tmp_path / "events.jsonl"
    out = make_output(path=str(path), rotate_bytes=30)
    await out.open()
    await out.send(deliveries(0, 1, pad=10))
    os.replace(path, tmp_path / "moved.jsonl")  # e.g. by an external logrotate
    assert await out.send(deliveries(1, 1, pad=10)) == Delivered()
    await out.close()
    assert [e["n"] for e in lines(path)] == [1]


def test_describe_and_settings_errors():
    assert make_output(path="a.jsonl").describe() == "JSON lines appended to a.jsonl"
    assert make_output(path="a.jsonl", rotate_bytes=1000, rotate_keep=3).describe() == \
        "JSON lines appended to a.jsonl (rotated at 1000 bytes, keeping 3)"
    output_types = Plugins(load_entry_points=False).output_types
    for table, message in (({"rotate_bytes": -1}, "outputs.f.rotate_bytes: rotate_bytes must"),
                           ({"rotate_keep": -2}, "outputs.f.rotate_keep: rotate_keep must"),
                           ({"rotate_byte": 10}, "did you mean 'rotate_bytes'")):
        with pytest.raises(ConfigError, match=message):
            build_config({"outputs": {"f": {"type": "file", "path": "x", **table}}},
                         output_types)


def test_cli_run_with_rotation_keeps_every_event_in_order(tmp_path):
    config = tmp_path / "nwpipe.toml"
    config.write_text('[outputs.f]\ntype = "file"\npath = "out/events.jsonl"\n'
                      'rotate_bytes = 4096\nrotate_keep = 100\nbatch = { max_events = 5 }\n')
    sample = (ROOT / "examples" / "events.jsonl").read_text()
    env = {**os.environ, "NWPIPE_LOAD_PLUGINS": ""}
    env.pop("NWPIPE_CONFIG", None)
    proc = subprocess.run([sys.executable, "-m", "nwpipe", "run", "-c", str(config)],
                          input=sample, capture_output=True, text=True, cwd=tmp_path, env=env,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    out = tmp_path / "out"
    rotated = sorted((p for p in out.iterdir() if p.suffix != ".jsonl"),
                     key=lambda p: int(p.suffix[1:]), reverse=True)
    assert rotated, "the sample is larger than 4 KiB: some files were rotated"
    got = [e for p in [*rotated, out / "events.jsonl"] for e in lines(p)]
    assert got == [json.loads(line) for line in sample.splitlines() if line.strip()]
