"""What a person sees: the live progress line on a terminal, the summary, -v, --quiet.

The terminal is a real pseudo-terminal (``pty.openpty``) given to nwpipe as stderr.
"""

from __future__ import annotations

import asyncio
import json
import os
import pty
import re
import select
import subprocess
import sys
import time

import pytest

if not hasattr(pty, "openpty"):  # pragma: no cover
    pytest.skip("needs a pseudo-terminal", allow_module_level=True)


def env():
    e = {k: v for k, v in os.environ.items() if k != "NWPIPE_CONFIG"}
    e["NWPIPE_LOAD_PLUGINS"] = ""
    return e


def event(i):
    return {"id": f"alert-{i}", "customer": "acme", "alerttype": "start", "updatecount": 1}


def read_all(fd) -> bytes:
    data = b""
    while True:
        try:
            chunk = os.read(fd, 65536)
        except OSError:  # EIO: the other side is closed
            return data
        if not chunk:
            return data
        data += chunk


#: how long a test that expects NO progress line watches for one: more than three
#: redraw intervals (0.25 s). The absence of a drawing cannot be polled for, so this
#: window is the behaviour under test, not a wait for something to happen.
NOTHING_DRAWN_WINDOW = 0.8


def watch(master: int, screen: str, done, timeout: float) -> str:
    """``screen`` plus what the terminal shows until ``done(screen)`` holds (polled), or
    until ``timeout`` (``done=None``: watch the whole time)."""
    deadline = time.monotonic() + timeout
    while done is None or not done(screen):
        left = deadline - time.monotonic()
        if left <= 0:
            assert done is None, f"the terminal never showed what was expected: {screen!r}"
            return screen
        if select.select([master], [], [], min(left, 0.05))[0]:
            try:
                screen += os.read(master, 65536).decode()
            except OSError:  # EIO: nwpipe has gone
                return screen
    return screen


def run_on_terminal(*args, cwd, until=None):
    """Run nwpipe with a pseudo-terminal as stderr: one event; then, while the input
    stays open, until the terminal shows ``until(screen)`` (polled, with a deadline), or
    without ``until`` for :data:`NOTHING_DRAWN_WINDOW`; then two more events."""
    master, slave = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "nwpipe", *args], cwd=cwd, env=env(),
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=slave)
    os.close(slave)
    try:
        proc.stdin.write((json.dumps(event(0)) + "\n").encode())
        proc.stdin.flush()
        assert json.loads(proc.stdout.readline())["id"] == "alert-0"  # nwpipe is running
        screen = watch(master, "", until, 30.0 if until else NOTHING_DRAWN_WINDOW)
        proc.stdin.write(("".join(json.dumps(event(i)) + "\n" for i in (1, 2))).encode())
        proc.stdin.close()
        proc.stdout.read()
        proc.wait(timeout=30)
        return proc.returncode, screen + read_all(master).decode()
    finally:
        os.close(master)


def draws(screen: str) -> list[str]:
    """The progress lines drawn: each starts with \r and erases the rest of the line."""
    return [part for part in screen.split("\r") if part.startswith("nwpipe: read ")
            and part.endswith("\x1b[K")]


def test_progress_line_on_a_terminal(tmp_path):
    master, slave = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "nwpipe", "run", "--dead-letter", "dl.jsonl"],
                            cwd=tmp_path, env=env(), stdin=subprocess.PIPE,
                            stdout=subprocess.DEVNULL, stderr=slave)
    os.close(slave)
    screen = ""

    def send(line: str) -> None:
        proc.stdin.write((line + "\n").encode())
        proc.stdin.flush()

    def read_until(done, timeout=30.0) -> None:
        nonlocal screen
        screen = watch(master, screen, done, timeout)

    try:
        send(json.dumps(event(0)))
        read_until(lambda s: len(draws(s)) >= 1)  # the line is up while input is open
        send("not json")  # a message while the line is shown
        read_until(lambda s: "not valid JSON" in s)
        for i in range(1, 4):
            send(json.dumps(event(i)))
        read_until(lambda s: any("read 5 " in d for d in draws(s)))  # redrawn in place
        proc.stdin.close()
        proc.wait(timeout=30)
        screen += read_all(master).decode()
    finally:
        os.close(master)
    assert proc.returncode == 3
    assert re.search(r"\| stdout: \d delivered", draws(screen)[-1])
    # cleared before a message and before the summary: each stands alone on its line
    assert "\r\x1b[Knwpipe: <stdin>:2: not valid JSON" in screen
    before, summary = screen.rsplit("\r\x1b[K", 1)
    assert summary.startswith("nwpipe: read 5 events; rejected 1; stdout: 4 delivered")


@pytest.mark.parametrize("flag", ["--quiet", "--log-format=json"])
def test_no_progress_line_when_quiet_or_json(tmp_path, flag):
    code, screen = run_on_terminal("run", flag, "--dead-letter", "dl.jsonl", cwd=tmp_path)
    assert code == 0
    assert "\r" not in screen.replace("\r\n", "\n")
    if flag == "--quiet":
        assert screen == ""
    else:
        assert json.loads(screen.splitlines()[-1])["message"].startswith("read 3 events")


def test_no_progress_line_when_stderr_is_not_a_terminal(tmp_path):
    proc = subprocess.Popen([sys.executable, "-m", "nwpipe", "run", "--dead-letter", "dl.jsonl"],
                            cwd=tmp_path, env=env(), stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdin.write((json.dumps(event(0)) + "\n").encode())
    proc.stdin.flush()
    proc.stdout.readline()
    # the behaviour under test: no progress line while nwpipe runs with stderr a pipe
    time.sleep(NOTHING_DRAWN_WINDOW)
    _, err = proc.communicate(("".join(json.dumps(event(i)) + "\n" for i in (1, 2))).encode(),
                              timeout=30)
    assert err.decode().startswith("nwpipe: read 3 events") and b"\r" not in err


async def test_summary_per_output_and_verbose_retries(receiver, tmp_path):
    receiver.queue(503, body="busy").queue(503)  # the first two attempts
    (tmp_path / "c.toml").write_text(f"""
[outputs.soc]
type = "webhook"
url = "{receiver.url}/soc"
concurrency = 1
[outputs.soc.retry]
initial_backoff = 0.01
max_backoff = 0.01
[outputs.archive]
type = "file"
path = "archive.jsonl"
""")
    events = "".join(json.dumps(event(i)) + "\n" for i in range(3))
    proc = await asyncio.to_thread(
        subprocess.run, [sys.executable, "-m", "nwpipe", "run", "-v", "-c", "c.toml",
                         "--dead-letter", "dl.jsonl"],
        input=events, cwd=tmp_path, env=env(), capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    retries = [line for line in proc.stderr.splitlines() if "retrying in" in line]
    assert len(retries) == 2 and "soc: attempt 1 failed (HTTP 503" in retries[0]
    assert "soc: 3 delivered, 2 retried; archive: 3 delivered" in proc.stderr.splitlines()[-1]


def test_progress_line_shows_the_queue_file_in_a_durable_run(tmp_path):
    code, screen = run_on_terminal(
        "run", "--durable", "--dead-letter", "dl.jsonl", cwd=tmp_path,
        until=lambda s: any(re.search(r"\| \d+ in the queue file", d) for d in draws(s)))
    assert code == 0, screen
    assert any(re.search(r"\| \d+ in the queue file", d) for d in draws(screen)), screen
    summary = screen.strip().splitlines()[-1]
    assert "queue nwpipe-queue.db: 3 put by this run, 0 left for the next run" in summary
