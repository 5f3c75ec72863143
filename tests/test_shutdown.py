"""Ctrl-C and SIGTERM: the real command, real signals, a real receiver on 127.0.0.1.

The promise: reading stops at once, deliveries in flight get ``shutdown_timeout`` to
finish, everything else read is dead-lettered, a second signal cuts the wait short,
and the exit code (130/143) comes only after the dead-letter file is complete.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys

import pytest


def event(i):
    return {"id": f"alert-{i}", "customer": "acme", "alerttype": "start", "updatecount": 1}


def jsonl(events):
    return "".join(json.dumps(e) + "\n" for e in events)


async def start(*args, cwd):
    env = {k: v for k, v in os.environ.items() if k != "NWPIPE_CONFIG"}
    env["NWPIPE_LOAD_PLUGINS"] = ""
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "nwpipe", *args, cwd=cwd, env=env, stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)


async def finish(proc, timeout=20):
    """Wait for the exit (stdin stays open until then); return (code, stdout, stderr)."""
    code = await asyncio.wait_for(proc.wait(), timeout)
    return code, (await proc.stdout.read()).decode(), (await proc.stderr.read()).decode()


async def poll(condition, what: str, timeout: float = 60.0) -> None:
    """Wait until ``condition()`` is true; fail naming ``what`` after ``timeout`` seconds."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


def read_to_end(pid: int, path) -> bool:
    """True when process ``pid`` has read the open file ``path`` to its end (Linux)."""
    size = os.path.getsize(path)
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            if os.path.realpath(f"/proc/{pid}/fd/{fd}") == os.path.realpath(path):
                with open(f"/proc/{pid}/fdinfo/{fd}") as info:
                    return int(info.readline().split()[1]) >= size
    except FileNotFoundError:  # the fd was closed meanwhile
        pass
    return False


async def stderr_lines(proc, seen: list, count: int, needle: bytes, timeout=60.0) -> None:
    """Read stderr into ``seen`` until ``count`` lines hold ``needle``."""
    deadline = asyncio.get_running_loop().time() + timeout
    while sum(needle in line for line in seen) < count:
        left = deadline - asyncio.get_running_loop().time()
        line = await asyncio.wait_for(proc.stderr.readline(), max(left, 0.01))
        assert line, b"".join(seen).decode()  # nwpipe ended first
        seen.append(line)


def dead_letters(path):
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def webhook_config(url, shutdown_timeout=30):
    return f"""
shutdown_timeout = {shutdown_timeout}
[outputs.soc]
type = "webhook"
url = "{url}/in"
concurrency = 1
queue_size = 5
[outputs.soc.retry]
initial_backoff = 0.01
max_backoff = 0.01
"""


@pytest.mark.parametrize("signum, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
async def test_signal_while_waiting_on_a_slow_pipe(tmp_path, signum, code):
    proc = await start("run", "--dead-letter", "dl.jsonl", cwd=tmp_path)
    proc.stdin.write(jsonl([event(i) for i in range(3)]).encode() + b'{"id": "alert-3", "cus')
    await proc.stdin.drain()
    for i in range(3):  # delivered while the input is still open
        assert json.loads(await proc.stdout.readline())["id"] == f"alert-{i}"
    proc.send_signal(signum)  # nwpipe is waiting for the rest of line 4
    returncode, _, stderr = await finish(proc)
    proc.stdin.close()
    assert returncode == code, stderr
    [record] = dead_letters(tmp_path / "dl.jsonl")
    assert record["line"] == 4 and record["raw"] == '{"id": "alert-3", "cus'
    assert record["reason"].startswith(f"input cut short by {signal.Signals(signum).name}")
    assert f"interrupted by {signal.Signals(signum).name}: read 4 events" in stderr


async def test_reader_waiting_on_a_full_queue_is_released(receiver, tmp_path):
    async def hang(request, record):
        await asyncio.sleep(30)
    receiver.handler = hang
    (tmp_path / "c.toml").write_text(webhook_config(receiver.url, shutdown_timeout=30))
    (tmp_path / "in.jsonl").write_text(jsonl([event(i) for i in range(50)]))
    # --shutdown-timeout wins over the config's 30 s: the test would time out otherwise
    proc = await start("run", "-c", "c.toml", "in.jsonl", "--dead-letter", "dl.jsonl",
                       "--shutdown-timeout", "0.5", cwd=tmp_path)
    await receiver.wait_for(1, timeout=15)
    # 1 in flight, 5 queued: reading waits for room, the whole file decoded
    await poll(lambda: read_to_end(proc.pid, tmp_path / "in.jsonl"), "in.jsonl read")
    proc.send_signal(signal.SIGTERM)
    code, _, stderr = await finish(proc)
    assert code == 143, stderr
    records = dead_letters(tmp_path / "dl.jsonl")
    # Every event read is dead-lettered exactly once. alert-0 was in flight: the
    # receiver got it but never answered, so it is also in the dead-letter file
    # (at-least-once: a replay sends it again, with the same delivery id).
    assert sorted(r["event"]["id"] for r in records) == sorted(f"alert-{i}" for i in range(50))
    reasons = {r["event"]["id"]: r["reason"] for r in records}
    assert reasons["alert-0"] == "not delivered before the shutdown deadline"
    assert reasons["alert-49"] == "interrupted by SIGTERM before delivery"
    assert "interrupted by SIGTERM: read 50 events" in stderr
    assert "soc: 0 delivered, 50 dead-lettered" in stderr


async def test_in_flight_delivery_finishes_within_the_deadline(receiver, tmp_path):
    receiver.queue(200, delay=1.0)  # the first request is slow, and still answered
    (tmp_path / "c.toml").write_text(webhook_config(receiver.url, shutdown_timeout=20))
    (tmp_path / "in.jsonl").write_text(jsonl([event(i) for i in range(20)]))
    proc = await start("run", "-c", "c.toml", "in.jsonl", "--dead-letter", "dl.jsonl",
                       cwd=tmp_path)
    await receiver.wait_for(1, timeout=15)
    proc.send_signal(signal.SIGTERM)
    code, _, stderr = await finish(proc)
    assert code == 143, stderr
    assert [r.json()["id"] for r in receiver.requests] == ["alert-0"]
    ids = sorted(r["event"]["id"] for r in dead_letters(tmp_path / "dl.jsonl"))
    assert ids == sorted(f"alert-{i}" for i in range(1, 20))
    assert "soc: 1 delivered, 19 dead-lettered" in stderr


async def test_second_signal_cuts_the_wait_short(receiver, tmp_path):
    async def hang(request, record):
        await asyncio.sleep(60)
    receiver.handler = hang
    (tmp_path / "c.toml").write_text(webhook_config(receiver.url, shutdown_timeout=60))
    (tmp_path / "in.jsonl").write_text(jsonl([event(i) for i in range(3)]))
    proc = await start("run", "-c", "c.toml", "in.jsonl", "--dead-letter", "dl.jsonl",
                       cwd=tmp_path)
    await receiver.wait_for(1, timeout=15)
    proc.send_signal(signal.SIGINT)
    # the first signal is handled once the two queued events are dead-lettered
    await poll(lambda: len(dead_letters(tmp_path / "dl.jsonl")) == 2, "the first SIGINT")
    proc.send_signal(signal.SIGINT)  # without it, nwpipe would wait 60 s for alert-0
    code, _, stderr = await finish(proc, timeout=20)
    assert code == 130, stderr
    records = dead_letters(tmp_path / "dl.jsonl")
    assert sorted(r["event"]["id"] for r in records) == ["alert-0", "alert-1", "alert-2"]
    assert "Traceback" not in stderr


async def test_signal_stops_retrying_a_receiver_that_is_down(tmp_path, closed_port):
    # Without the signal these retries would go on for a minute; the signal ends them
    # after the attempt under way, long before shutdown_timeout.
    (tmp_path / "c.toml").write_text(f"""
shutdown_timeout = 60
[outputs.soc]
type = "webhook"
url = "http://127.0.0.1:{closed_port}/in"
retry = {{ max_attempts = 1000, initial_backoff = 1, max_backoff = 5, max_elapsed = 60 }}
""")
    proc = await start("run", "-v", "-c", "c.toml", "--dead-letter", "dl.jsonl", cwd=tmp_path)
    proc.stdin.write(jsonl([event(i) for i in range(20)]).encode())
    await proc.stdin.drain()
    # every event in flight has failed once and is backing off (-v shows each retry)
    await stderr_lines(proc, [], 16, b"attempt 1 failed")
    loop = asyncio.get_running_loop()
    signalled = loop.time()
    proc.send_signal(signal.SIGTERM)
    returncode, _, stderr = await finish(proc, timeout=30)
    proc.stdin.close()
    assert returncode == 143, stderr
    assert loop.time() - signalled < 15
    records = dead_letters(tmp_path / "dl.jsonl")
    assert sorted(r["event"]["id"] for r in records) == sorted(f"alert-{i}" for i in range(20))
    # 16 were in flight (the webhook's concurrency) and tried; the rest never left the queue
    tried = [r for r in records if r["attempts"]]
    assert len(tried) == 16
    assert all("connection refused" in r["attempts"][-1]["reason"] for r in tried)
