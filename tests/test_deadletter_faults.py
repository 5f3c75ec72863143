"""The dead-letter file on a disk that fills up, with a real small tmpfs and a real
`nwpipe run`: bounded memory and retries, signals honoured, every record written once
and whole or printed on stderr once, a clear exit code and summary."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from nwpipe.engine import deadletter
from nwpipe.engine.deadletter import DeadLetterFile


@pytest.fixture
def small_disk(tmp_path):
    """A 256 KiB tmpfs mounted for this test, unmounted after it."""
    folder = tmp_path / "small"
    folder.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(folder)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {mounted.stderr.strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], capture_output=True)


def bad_line(i: int) -> str:
    return f"not json {i:06d} " + "x" * 200


def good_event(i: int) -> dict:
    return {"id": f"alert-{i}", "customer": "acme", "alerttype": "start", "n": i}


def stderr_records(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def file_records(path: Path) -> list[dict]:
    if not path.exists():
        return []
    data = path.read_bytes()
    assert data == b"" or data.endswith(b"\n"), "a cut line at the end of the file"
    return [json.loads(line) for line in data.splitlines()]  # every line whole JSON


def env() -> dict:
    e = {**os.environ, "NWPIPE_LOAD_PLUGINS": ""}
    e.pop("NWPIPE_CONFIG", None)
    return e


def write_config(tmp_path: Path, dead_letter: Path) -> None:
    (tmp_path / "nwpipe.toml").write_text(
        f'dead_letter = "{dead_letter}"\n[outputs.f]\ntype = "file"\npath = "out.jsonl"\n')


async def test_a_full_disk_spills_each_record_once_and_whole(small_disk, capfd):
    dl = DeadLetterFile(small_disk / "dl.jsonl", spill=True)
    for i in range(3000):  # about 700 KB of records for 256 KiB
        dl.write([{"n": i, "pad": "p" * 200}])
        if i % 100 == 0:
            await asyncio.sleep(0)
    deadline = time.monotonic() + 30
    while dl._pending and time.monotonic() < deadline:  # retries, then the spill
        await asyncio.sleep(0.05)
    dl.close()
    in_file = [r["n"] for r in file_records(small_disk / "dl.jsonl")]
    on_stderr = [r["n"] for r in stderr_records(capfd.readouterr().err)]
    assert in_file and on_stderr
    assert sorted(in_file + on_stderr) == list(range(3000))  # each once, none cut
    assert dl.spilled == len(on_stderr) and dl.error == "No space left on device"


async def test_waiting_records_stay_within_the_memory_bound(small_disk, capfd, monkeypatch):
    monkeypatch.setattr(deadletter, "PENDING_LIMIT", 50_000)
    monkeypatch.setattr(deadletter, "RETRY_DELAYS", (30, 30))  # only the bound can spill
    dl = DeadLetterFile(small_disk / "dl.jsonl", spill=True)
    most = 0
    for i in range(3000):
        dl.write([{"n": i, "pad": "p" * 200}])
        most = max(most, dl._pending_bytes)
        await asyncio.sleep(0)
    assert most <= 50_000 + 300
    dl.close()
    in_file = [r["n"] for r in file_records(small_disk / "dl.jsonl")]
    on_stderr = [r["n"] for r in stderr_records(capfd.readouterr().err)]
    assert sorted(in_file + on_stderr) == list(range(3000))


def test_cli_run_with_the_dead_letter_disk_full(tmp_path, small_disk):
    write_config(tmp_path, small_disk / "dl.jsonl")
    lines = []
    for i in range(10000):
        lines.append(json.dumps(good_event(i)))
        lines.append(bad_line(i))
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "nwpipe", "run", "-c", "nwpipe.toml"],
                          cwd=tmp_path, env=env(), input="\n".join(lines) + "\n",
                          capture_output=True, text=True, timeout=300)
    took = time.monotonic() - started
    assert took < 120, f"took {took:.0f} s"
    assert proc.returncode == 4, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    delivered = [json.loads(x)["n"] for x in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert delivered == list(range(10000))
    in_file = file_records(small_disk / "dl.jsonl")
    on_stderr = stderr_records(proc.stderr)
    raws = sorted(r["raw"] for r in in_file + on_stderr)
    assert raws == [bad_line(i) for i in range(10000)]  # each exactly once, whole
    summary = proc.stderr.strip().splitlines()[-1]
    assert f"{len(on_stderr):,} dead letters could not be written to {small_disk / 'dl.jsonl'} " \
           "(No space left on device) and are printed on stderr above" in summary
    assert f"{len(in_file):,} written there" in summary
    assert proc.stderr.count("cannot write the dead-letter file") == 1  # not once a try


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_cli_signal_during_a_full_disk_ends_the_run_with_every_record(tmp_path, small_disk,
                                                                       signum):
    write_config(tmp_path, small_disk / "dl.jsonl")
    proc = subprocess.Popen([sys.executable, "-m", "nwpipe", "run", "-c", "nwpipe.toml"],
                            cwd=tmp_path, env=env(), stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    err: list[str] = []
    reader = threading.Thread(target=lambda: err.extend(proc.stderr), daemon=True)
    reader.start()
    sent = 0
    try:
        deadline = time.monotonic() + 60
        # Feed bad lines until the dead-letter disk is full (the run says so once).
        while not any("cannot write the dead-letter file" in line for line in err):
            assert time.monotonic() < deadline and proc.poll() is None, "".join(err)
            proc.stdin.write("".join(bad_line(sent + i) + "\n" for i in range(200)))
            proc.stdin.flush()
            sent += 200
            time.sleep(0.01)
        # ... and a few more, while it is full.
        proc.stdin.write("".join(bad_line(sent + i) + "\n" for i in range(200)))
        proc.stdin.flush()
        sent += 200
        stopped = time.monotonic()
        proc.send_signal(signum)
        proc.wait(timeout=60)
        took = time.monotonic() - stopped
        reader.join(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert took < 10, f"{took:.1f} s after the signal"
    assert proc.returncode == 128 + signum, "".join(err)[-2000:]
    text = "".join(err)
    assert "Traceback" not in text
    read = int(text.rsplit("read ", 1)[1].split(" ", 1)[0].replace(",", ""))
    records = file_records(small_disk / "dl.jsonl") + stderr_records(text)
    raws = [r["raw"] for r in records]
    assert len(raws) == len(set(raws)) == read  # every line read: once, whole
    assert set(raws) <= {bad_line(i) for i in range(sent)}
