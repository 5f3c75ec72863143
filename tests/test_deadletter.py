"""The dead-letter file: record contents, durability, grouped fsyncs, locking with replay."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import textwrap

import orjson
import pytest

from nwpipe.engine.deadletter import (
    DeadLetterFile,
    Rewrite,
    delivery_record,
    event_record,
    raw_record,
    read_records,
)
from nwpipe.errors import NwpipeError
from nwpipe.outputs import Delivery

from conftest import until


def records(path):
    return [r for _, r in read_records(path)]


def test_record_fields(make_event):
    event = make_event()
    delivery = Delivery("nwp_1", {"x": 1}, event, "soc", "events.jsonl", 7,
                        attempts=[{"attempt": 1, "at": "t", "outcome": "retry", "status": 503}])
    record = delivery_record(delivery, stage="deliver", reason="HTTP 503", status=503,
                             response="busy")
    assert record["event"] is event and record["stage"] == "deliver"
    assert (record["output"], record["source"], record["line"]) == ("soc", "events.jsonl", 7)
    assert (record["status"], record["response"], record["delivery_id"]) == (503, "busy", "nwp_1")
    assert record["attempts"][0]["status"] == 503 and record["time"].endswith("Z")
    raw = raw_record("not json", source="<stdin>", line=3, reason="not valid JSON")
    assert raw["raw"] == "not json" and raw["stage"] == "parse" and "event" not in raw
    mapped = event_record(event, stage="map", output="soc", source="f", line=1, reason="boom",
                          delivery_id="nwp_2")
    assert mapped["attempts"] == [] and mapped["delivery_id"] == "nwp_2"


def test_created_on_first_record_only(tmp_path):
    dl = DeadLetterFile(tmp_path / "sub" / "dl.jsonl")
    dl.write(())
    dl.close()
    assert not (tmp_path / "sub").exists()
    dl = DeadLetterFile(tmp_path / "sub" / "dl.jsonl")
    dl.write([{"a": 1}, {"b": 2}])  # no event loop: written and fsynced at once
    assert records(dl.path) == [{"a": 1}, {"b": 2}] and dl.count == 2
    dl.close()


async def test_a_burst_shares_one_fsync(tmp_path, monkeypatch):
    # A receiver that is down dead-letters thousands of events one by one; each must
    # not cost an fsync of its own, or the whole run crawls at disk-flush speed.
    fsyncs = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (fsyncs.append(fd), real_fsync(fd)))
    dl = DeadLetterFile(tmp_path / "dl.jsonl")
    for i in range(1000):
        dl.write([{"n": i}])
    assert fsyncs == []  # not yet: at the end of this turn of the event loop
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert len(fsyncs) == 1
    assert [r["n"] for r in records(dl.path)] == list(range(1000))
    dl.close()


def test_written_records_survive_a_kill(tmp_path):
    # The process reports "written" after one turn of the loop, and is killed at once.
    script = textwrap.dedent(f"""
        import asyncio, sys, time
        from nwpipe.engine.deadletter import DeadLetterFile

        async def main():
            dl = DeadLetterFile({str(tmp_path / 'dl.jsonl')!r})
            for i in range(500):
                dl.write([{{"n": i}}])
            await asyncio.sleep(0)
            print("written", flush=True)
            time.sleep(60)

        asyncio.run(main())
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline() == "written\n"
    finally:
        proc.kill()
        proc.wait()
    assert [r["n"] for r in records(tmp_path / "dl.jsonl")] == list(range(500))


def test_check_finds_an_unwritable_place_before_reading(tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(NwpipeError, match="permission denied|is a folder"):
        DeadLetterFile(tmp_path / "file" / "dl.jsonl").check()
    with pytest.raises(NwpipeError, match="is a folder"):
        DeadLetterFile(tmp_path).check()
    DeadLetterFile(tmp_path / "new" / "dl.jsonl").check()  # a folder still to be made is fine


def test_cannot_write_prints_records_instead_of_losing_them(tmp_path, capfd):
    (tmp_path / "file").write_text("")
    dl = DeadLetterFile(tmp_path / "file" / "dl.jsonl")
    with pytest.raises(OSError):
        dl.write([{"n": 1}])  # no loop: the error shows at once
    with pytest.raises(NwpipeError, match="unwritten record"):
        dl.close()
    assert orjson.loads(capfd.readouterr().err.splitlines()[0]) == {"n": 1}


async def test_run_appending_during_a_replay_lands_in_the_new_file(tmp_path):
    path = tmp_path / "dl.jsonl"
    path.write_bytes(b'{"old": 1}\n{"old": 2}\n')
    rewrite = Rewrite(path)
    old = rewrite.open().read().splitlines()
    run = DeadLetterFile(path)
    run.write([{"new": 1}])  # the replay holds the file: this waits, in memory
    # the behaviour under test: for a while, nothing reaches the file (an absence
    # cannot be polled for)
    await asyncio.sleep(0.1)
    assert path.read_bytes().splitlines() == old
    rewrite.remaining.write_raw(old[1])  # record 1 was replayed, record 2 stays
    rewrite.commit()
    await until(lambda: b'"new"' in path.read_bytes())  # written once the lock is free
    run.close()
    assert records(path) == [{"old": 2}, {"new": 1}]
    assert not list(tmp_path.glob(".*tmp"))


async def test_rewrite_of_everything_removes_the_file(tmp_path):
    path = tmp_path / "dl.jsonl"
    path.write_bytes(b'{"old": 1}\n')
    rewrite = Rewrite(path)
    rewrite.open()
    rewrite.commit()
    assert not path.exists()
    run = DeadLetterFile(path)  # a run writing later starts a new file
    run.write([{"new": 1}])
    run.close()
    assert records(path) == [{"new": 1}]


def test_rewrite_abort_leaves_the_original(tmp_path):
    path = tmp_path / "dl.jsonl"
    path.write_bytes(b'{"old": 1}\n')
    rewrite = Rewrite(path)
    rewrite.open()
    rewrite.remaining.write([{"partial": True}])
    rewrite.abort()
    assert path.read_bytes() == b'{"old": 1}\n'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dl.jsonl"]


def test_second_replay_of_the_same_file_is_refused(tmp_path):
    path = tmp_path / "dl.jsonl"
    path.write_bytes(b'{"old": 1}\n')
    first = Rewrite(path)
    first.open()
    try:
        with pytest.raises(NwpipeError, match="locked by another nwpipe"):
            Rewrite(path, lock_timeout=0.1).open()
    finally:
        first.abort()
    with pytest.raises(NwpipeError, match="no such dead-letter file"):
        Rewrite(tmp_path / "missing.jsonl").open()


async def test_replay_waiting_for_the_lock_follows_a_file_replaced_meanwhile(tmp_path):
    path = tmp_path / "dl.jsonl"
    path.write_bytes(b'{"old": 1}\n{"old": 2}\n')
    first = Rewrite(path)
    first.open()
    second = Rewrite(path, lock_timeout=10)
    # the second replay opens the same file and waits for the first one's lock
    waiting = asyncio.ensure_future(asyncio.to_thread(second.open))
    # the behaviour under test: the second one is still waiting a while later
    await asyncio.sleep(0.2)
    assert not waiting.done()
    # the first one delivers record 1 and keeps record 2: the file is replaced
    first.remaining.write_raw(b'{"old": 2}')
    first.commit()
    handle = await asyncio.wait_for(waiting, 10)
    try:
        # the second replay reads the file as it is now (record 2 only), not the one it
        # first opened: record 1 is not sent twice, and a record a run appends to the new
        # file is not lost when the second replay replaces it
        assert handle.read() == b'{"old": 2}\n'
    finally:
        second.abort()
    assert path.read_bytes() == b'{"old": 2}\n'
