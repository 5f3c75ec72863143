"""Config reload: a real ``nwpipe run`` process (``--pid-file``), ``nwpipe reload`` in
another process, and real HTTP receivers on 127.0.0.1 whose URL changes under load.

The promise checked: across a reload every event is delivered exactly once (to the old
receiver or the new one), and an alert's events arrive in order: one is sent only after
the previous one of its alert was answered, whichever receiver had it.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import aiohttp
import pytest
from aiohttp import web
from serveproc import ServeProcess

from nwpipe.commands.pidfile import pid_file, read_pid
from nwpipe.errors import NwpipeError

if TYPE_CHECKING:
    from conftest import Receiver

STATES = ("start", "ongoing", "end")


def env() -> dict:
    e = {k: v for k, v in os.environ.items() if k != "NWPIPE_CONFIG"}
    e["NWPIPE_LOAD_PLUGINS"] = ""
    return e


def events(first: int, count: int) -> bytes:
    """``count`` alerts from ``first``: every start, then every ongoing, then every end."""
    lines = []
    for update, state in enumerate(STATES, 1):
        for i in range(first, first + count):
            lines.append(json.dumps({"id": f"alert-{i}", "customer": "acme", "alerttype": state,
                                     "updatecount": update, "severity": "high"}))
    return ("\n".join(lines) + "\n").encode()


def webhook_config(path: Path, url: str, tag: str, *, extra: str = "") -> None:
    path.write_text(f"""
shutdown_timeout = 10
[outputs.soc]
type = "webhook"
url = "{url}"
headers = "X-Config: {tag}"
concurrency = 4
timeout = 10
[outputs.soc.retry]
initial_backoff = 0.02
max_backoff = 0.2
{extra}
""")


class Journal:
    """One ordered record of what every receiver saw: ``(what, receiver, config tag,
    alert id, alerttype)`` with what = "arrived" or "answered"."""

    def __init__(self):
        self.entries: list[tuple[str, str, str, str, str]] = []
        #: requests past ``hold_after`` wait for this before they are answered
        self.release = asyncio.Event()

    def handler(self, name: str, hold_after: int | None = None):
        """A receiver's handler; with ``hold_after``, requests after that many are held
        (in flight, for the sender) until :attr:`release` is set."""
        seen = 0

        async def handle(request: web.Request, record) -> web.Response:
            nonlocal seen
            tag = record.headers.get("X-Config", "")
            body = record.json()
            batch = body if isinstance(body, list) else [body]
            for e in batch:
                self.entries.append(("arrived", name, tag, e["id"], e["alerttype"]))
            seen += 1
            if hold_after is not None and seen > hold_after:
                await self.release.wait()
            for e in batch:
                self.entries.append(("answered", name, tag, e["id"], e["alerttype"]))
            return web.Response(status=200)
        return handle

    def check_handed_over(self) -> None:
        """The promise across the reload of the URL-change tests: 40 alerts' 120 events
        answered once each; the old receiver got 12 (8 answered, 4 in flight at the
        reload), the new one the rest, what waited included; order kept per alert."""
        answered = self.answered()
        keys = [(i, state) for _tag, i, state in answered]
        assert len(keys) == 120 and len(set(keys)) == 120, sorted(keys)
        # the old receiver got only the old output's deliveries, the new one the new one's
        assert {tag for tag, _i, _s in self.answered("old")} == {"1"}
        assert {tag for tag, _i, _s in self.answered("new")} == {"2"}
        # what waited in the old output's queue went to the new one, not only later events
        first_batch = {f"alert-{i}" for i in range(20)}
        assert {i for _t, i, _s in self.answered("new")} & first_batch
        assert len(self.answered("old")) == 12
        # per alert: an event is sent only once the previous one was answered
        answered_at: dict[tuple[str, str], int] = {}
        for n, (what, _who, _tag, i, state) in enumerate(self.entries):
            if what == "answered":
                answered_at[(i, state)] = n
        for n, (what, _who, _tag, i, state) in enumerate(self.entries):
            if what == "arrived" and state != "start":
                before = STATES[STATES.index(state) - 1]
                assert answered_at[(i, before)] < n, f"{i} {state} overtook {before}"

    async def until_in_flight(self) -> None:
        """Until the old receiver answered 8 requests and holds the next 4."""
        await wait_until(lambda: len(self.answered("old")) == 8
                         and len(self.entries) == 8 * 2 + 4, "4 deliveries held in flight")

    async def held_back(self) -> None:
        """While the old receiver holds its 4 requests, the new receiver gets all but
        those alerts' later events (8): none of those overtook."""
        await wait_until(lambda: len(self.answered("new")) >= 120 - 8 - 4 - 8,
                         "the new receiver's deliveries")
        held = {i for _what, _w, _t, i, _s in self.entries[16:20]}
        assert not [e for e in self.entries if e[1] == "new" and e[3] in held], \
            "an alert's later event overtook its earlier one still in flight on the old output"

    def answered(self, name: str | None = None) -> list[tuple[str, str, str]]:
        return [(tag, i, state) for what, who, tag, i, state in self.entries
                if what == "answered" and (name is None or who == name)]


async def receivers(make_receiver) -> tuple[Journal, Receiver, Receiver]:
    """The journal, and the old and new receivers of the URL-change tests: the old one
    answers 8 requests, then holds the next 4 (the output's concurrency) until the test
    releases them; those are in flight during the reload."""
    journal = Journal()
    old = await make_receiver()
    new = await make_receiver()
    old.handler = journal.handler("old", hold_after=8)
    new.handler = journal.handler("new")
    return journal, old, new


async def wait_until(predicate, what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


class Run:
    """``nwpipe run`` as its own process, stdin a pipe, stderr collected line by line."""

    def __init__(self, cwd: Path, *args: str):
        self.cwd = cwd
        self.args = args
        self.stderr: list[str] = []
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self) -> Run:
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "nwpipe", *self.args, cwd=self.cwd, env=env(),
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self._reader = asyncio.ensure_future(self._read())
        return self

    async def _read(self) -> None:
        assert self.proc is not None and self.proc.stderr is not None
        async for line in self.proc.stderr:
            self.stderr.append(line.decode().rstrip("\n"))

    def saw(self, text: str) -> bool:
        return any(text in line for line in self.stderr)

    async def send(self, data: bytes) -> None:
        assert self.proc is not None and self.proc.stdin is not None
        self.proc.stdin.write(data)
        await self.proc.stdin.drain()

    async def finish(self, timeout: float = 60.0) -> int:
        assert self.proc is not None and self.proc.stdin is not None
        self.proc.stdin.close()
        stdout = await asyncio.wait_for(self.proc.stdout.read(), timeout)
        self.stdout = stdout.decode()
        code = await asyncio.wait_for(self.proc.wait(), timeout)
        await self._reader
        return code

    def kill(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.kill()


async def reload_to(config: Path, text: str, run: Run, pid_path: Path,
                    outcome: str = "config reloaded") -> None:
    """Write ``text`` to the config file, run `nwpipe reload`, wait for ``outcome`` in
    the running process's log."""
    config.write_text(text)
    code, err = await reload_command(config.parent, pid_path)
    assert code == 0, err
    await wait_until(lambda: run.saw(outcome), outcome)


async def reload_command(cwd: Path, pid_path: Path) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "nwpipe", "reload", "--pid-file", str(pid_path), cwd=cwd,
        env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    _out, err = await asyncio.wait_for(proc.communicate(), 60)
    return proc.returncode, err.decode()


@pytest.fixture
async def runs():
    started: list[Run] = []

    async def make(cwd: Path, *args: str) -> Run:
        run = await Run(cwd, *args).start()
        started.append(run)
        return run

    yield make
    for run in started:
        run.kill()
        if run.proc is not None:
            await run.proc.wait()


@pytest.mark.parametrize("mode", ["memory", "durable"])
async def test_url_change_under_load_delivers_each_event_once_in_order(tmp_path, make_receiver,
                                                                        runs, mode):
    """``durable``: every event is committed to the queue file first and delivered from
    it by the output's feed, which then reads for the new engine."""
    journal, old, new = await receivers(make_receiver)
    config = tmp_path / "nwpipe.toml"
    webhook_config(config, old.url + "/in", "1")
    pid_path = tmp_path / "nwpipe.pid"
    durable = ["--durable", "--queue", str(tmp_path / "q.db")] if mode == "durable" else []
    run = await runs(tmp_path, "run", "-c", str(config), "--pid-file", str(pid_path), *durable)

    await run.send(events(0, 20))  # 60 events
    await journal.until_in_flight()
    assert read_pid(str(pid_path)) == run.proc.pid
    webhook_config(config, new.url + "/in", "2")
    code, err = await reload_command(tmp_path, pid_path)
    assert code == 0, err
    assert f"sent SIGHUP to nwpipe (process {run.proc.pid})" in err
    await wait_until(lambda: run.saw("config reloaded"), "the reload")
    await run.send(events(20, 20))
    # all but the 4 held alerts' later events (8) reach the new receiver meanwhile
    await journal.held_back()
    journal.release.set()
    assert await run.finish() == 0, "\n".join(run.stderr)

    journal.check_handed_over()
    assert any("config reloaded from" in line and "changed: soc" in line
               for line in run.stderr), run.stderr
    assert "soc: 120 delivered" in run.stderr[-1]
    if mode == "durable":
        assert "120 put by this run, 0 left for the next run" in run.stderr[-1]
    assert not pid_path.exists(), "the PID file is removed at exit"


async def test_a_config_with_problems_is_refused_and_the_old_one_keeps_running(
        tmp_path, make_receiver, runs):
    journal = Journal()
    receiver = await make_receiver()
    receiver.handler = journal.handler("old")
    config = tmp_path / "nwpipe.toml"
    webhook_config(config, receiver.url + "/in", "1")
    pid_path = tmp_path / "nwpipe.pid"
    run = await runs(tmp_path, "run", "-c", str(config), "--pid-file", str(pid_path))
    await run.send(events(0, 2))
    await wait_until(lambda: len(journal.answered()) >= 6, "the first deliveries")
    await wait_until(pid_path.exists, "the PID file")

    await reload_to(config, config.read_text().replace('url = "', 'url = "ftp://nowhere/')
                    .replace("concurrency = 4", "concurrency = 0"), run, pid_path,
                    outcome="reload refused")
    errors = [line for line in run.stderr if line.startswith("nwpipe: error:")]
    assert errors and all(str(config) in line for line in errors), run.stderr
    assert not any("Traceback" in line for line in run.stderr)

    await run.send(events(2, 2))
    assert await run.finish() == 0, "\n".join(run.stderr)
    assert len(journal.answered()) == 12
    assert {tag for tag, _i, _s in journal.answered()} == {"1"}


async def test_mapping_change_applies_to_later_events_of_an_unchanged_output(tmp_path, runs):
    config = tmp_path / "nwpipe.toml"
    body = """
[outputs.out]
type = "stdout"
mapping = "m"
[mappings.m.fields]
id = "$.id"
version = "{{ 'VERSION' }}"
"""
    config.write_text(body.replace("VERSION", "one"))
    pid_path = tmp_path / "nwpipe.pid"
    run = await runs(tmp_path, "run", "-c", str(config), "--pid-file", str(pid_path))
    await run.send(events(0, 1))
    await wait_until(pid_path.exists, "the PID file")
    await reload_to(config, 'dead_letter = "elsewhere.jsonl"\n' + body.replace("VERSION", "two"),
                    run, pid_path)
    assert any("unchanged: out" in line for line in run.stderr), run.stderr
    assert "nwpipe: reload: 'dead_letter' changed; it takes effect at the next start" \
        in run.stderr
    await run.send(events(1, 1))
    assert await run.finish() == 0, "\n".join(run.stderr)
    lines = [json.loads(line) for line in run.stdout.splitlines()]
    assert [(e["id"], e["version"]) for e in lines] == [
        ("alert-0", "one"), ("alert-0", "one"), ("alert-0", "one"),
        ("alert-1", "two"), ("alert-1", "two"), ("alert-1", "two")]


# -- nwpipe reload and --pid-file: the user's mistakes ----------------------------------


def nwpipe(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "nwpipe", *args], cwd=cwd, env=env(),
                          capture_output=True, text=True, timeout=60)


def test_reload_without_a_pid_file_says_so(tmp_path):
    result = nwpipe("reload", "--pid-file", str(tmp_path / "nope.pid"), cwd=tmp_path)
    assert result.returncode == 1
    assert result.stderr == (f"nwpipe: error: PID file {tmp_path / 'nope.pid'} does not exist: "
                             f"is nwpipe running with --pid-file {tmp_path / 'nope.pid'}?\n")


def test_reload_with_a_stale_pid_file_signals_nothing(tmp_path):
    ended = subprocess.Popen([sys.executable, "-c", "pass"])
    ended.wait()
    stale = tmp_path / "nwpipe.pid"
    stale.write_text(f"{ended.pid}\n")
    result = nwpipe("reload", "--pid-file", str(stale), cwd=tmp_path)
    assert result.returncode == 1
    assert "is stale" in result.stderr and str(ended.pid) in result.stderr
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr


def test_reload_of_a_pid_file_naming_another_program_signals_nothing(tmp_path):
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        other = tmp_path / "nwpipe.pid"
        other.write_text(f"{sleeper.pid}\n")
        result = nwpipe("reload", "--pid-file", str(other), cwd=tmp_path)
        assert result.returncode == 1 and "is stale" in result.stderr
        assert sleeper.poll() is None, "the other program was not signalled"
    finally:
        sleeper.kill()
        sleeper.wait()


def test_reload_with_a_garbled_pid_file(tmp_path):
    garbled = tmp_path / "nwpipe.pid"
    garbled.write_text("hello\n")
    result = nwpipe("reload", "--pid-file", str(garbled), cwd=tmp_path)
    assert result.returncode == 1
    assert "holds no process id" in result.stderr


def test_pid_file_is_written_for_the_block_and_removed_after(tmp_path):
    path = tmp_path / "run.pid"
    with pid_file(str(path)):
        assert read_pid(str(path)) == os.getpid()
    assert not path.exists()


def test_pid_file_of_a_running_nwpipe_is_not_taken_over(tmp_path):
    path = tmp_path / "run.pid"
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)",
                               "nwpipe"])  # an argument naming nwpipe, as `nwpipe run` has
    try:
        deadline = time.monotonic() + 60
        while b"nwpipe" not in Path(f"/proc/{holder.pid}/cmdline").read_bytes():
            assert time.monotonic() < deadline, "the stand-in process did not start"
            time.sleep(0.01)
        path.write_text(f"{holder.pid}\n")
        with pytest.raises(NwpipeError, match="which is running"):
            with pid_file(str(path)):
                pass
        assert read_pid(str(path)) == holder.pid
    finally:
        holder.kill()
        holder.wait()


@pytest.mark.parametrize("mode", ["memory", "durable"])
async def test_a_removed_output_finishes_and_an_added_one_takes_later_events(tmp_path, runs,
                                                                              mode):
    config = tmp_path / "nwpipe.toml"
    config.write_text('[outputs.a]\ntype = "file"\npath = "a.jsonl"\n')
    pid_path = tmp_path / "nwpipe.pid"
    durable = ["--durable", "--queue", str(tmp_path / "q.db")] if mode == "durable" else []
    run = await runs(tmp_path, "run", "-c", str(config), "--pid-file", str(pid_path), *durable)
    await run.send(events(0, 2))
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    await wait_until(lambda: a.exists() and len(a.read_text().splitlines()) == 6, "a's events")
    await wait_until(pid_path.exists, "the PID file")
    await reload_to(config, '[outputs.b]\ntype = "file"\npath = "b.jsonl"\n', run, pid_path)
    assert any("outputs added: b; removed: a" in line for line in run.stderr), run.stderr
    await run.send(events(2, 2))
    assert await run.finish() == 0, "\n".join(run.stderr)
    ids = lambda path: [json.loads(line)["id"] for line in path.read_text().splitlines()]  # noqa: E731
    assert sorted(set(ids(a))) == ["alert-0", "alert-1"] and len(ids(a)) == 6
    assert sorted(set(ids(b))) == ["alert-2", "alert-3"] and len(ids(b)) == 6
    assert "a: 6 delivered" in run.stderr[-1] and "b: 6 delivered" in run.stderr[-1]
    if mode == "durable":
        assert "12 put by this run, 0 left for the next run" in run.stderr[-1]


async def test_sighup_as_soon_as_the_pid_file_exists_reloads(tmp_path, runs):
    """A SIGHUP as soon as the PID file exists (maybe before the event loop took the
    signal over) does not end the process, as the default action of SIGHUP would."""
    config = tmp_path / "nwpipe.toml"
    config.write_text('[outputs.a]\ntype = "file"\npath = "a.jsonl"\n')
    pid_path = tmp_path / "nwpipe.pid"
    run = await runs(tmp_path, "run", "-c", str(config), "--pid-file", str(pid_path))
    await wait_until(pid_path.exists, "the PID file")
    for _ in range(5):
        run.proc.send_signal(signal.SIGHUP)
        await asyncio.sleep(0.01)
    await wait_until(lambda: run.saw("config reloaded"), "a reload")
    await run.send(events(0, 1))
    assert await run.finish() == 0, "\n".join(run.stderr)
    assert len((tmp_path / "a.jsonl").read_text().splitlines()) == 3


async def test_an_output_that_cannot_open_refuses_the_reload(tmp_path, runs):
    """`check` passes, but the changed output cannot start: the reload is refused and
    the old output goes on (nothing is half applied)."""
    config = tmp_path / "nwpipe.toml"
    config.write_text('[outputs.a]\ntype = "file"\npath = "a.jsonl"\n')
    pid_path = tmp_path / "nwpipe.pid"
    run = await runs(tmp_path, "run", "-c", str(config), "--pid-file", str(pid_path))
    await wait_until(pid_path.exists, "the PID file")
    await reload_to(config, '[outputs.a]\ntype = "file"\npath = "/dev/null/sub/a.jsonl"\n'
                    '[outputs.b]\ntype = "file"\npath = "b.jsonl"\n', run, pid_path,
                    outcome="reload refused")
    assert "nwpipe: error: outputs.a: cannot start: /dev/null/sub: Not a directory" \
        in run.stderr
    await run.send(events(0, 1))
    assert await run.finish() == 0, "\n".join(run.stderr)
    assert len((tmp_path / "a.jsonl").read_text().splitlines()) == 3
    assert not (tmp_path / "b.jsonl").exists()


async def test_serve_url_change_under_load_delivers_each_event_once_in_order(tmp_path,
                                                                              make_receiver):
    """``nwpipe serve --pid-file``: events POSTed to it, its output's URL changed by a
    reload while 4 requests are in flight and the rest waits."""
    journal, old, new = await receivers(make_receiver)
    pid_path = tmp_path / "nwpipe.pid"
    serve = ServeProcess(tmp_path, "", "--pid-file", str(pid_path))
    webhook_config(serve.config, old.url + "/in", "1")
    try:
        await asyncio.to_thread(serve.start)
        async with aiohttp.ClientSession() as session:
            async def post(body: bytes) -> None:
                lines = [json.loads(line) for line in body.splitlines()]
                async with session.post(serve.url, json=lines) as response:
                    assert response.status == 200, await response.text()

            await post(events(0, 20))
            await journal.until_in_flight()
            assert read_pid(str(pid_path)) == serve.proc.pid
            webhook_config(serve.config, new.url + "/in", "2")
            code, err = await reload_command(tmp_path, pid_path)
            assert code == 0, err
            await wait_until(lambda: any("config reloaded" in x for x in serve.lines),
                             "the reload")
            await post(events(20, 20))
        await journal.held_back()
        journal.release.set()
        await wait_until(lambda: len(journal.answered()) == 120, "every delivery")
        assert await asyncio.to_thread(serve.stop) == 0, serve.stderr
    finally:
        await asyncio.to_thread(serve.kill)
    journal.check_handed_over()
    assert "Traceback" not in serve.stderr
    assert not pid_path.exists(), "the PID file is removed at exit"


def test_serve_intake_only_checks_and_takes_a_new_config(tmp_path):
    """``serve --no-deliver`` starts no outputs: a reload checks the config (a bad one is
    refused) and takes a good one without starting any."""
    pid_path = tmp_path / "nwpipe.pid"
    serve = ServeProcess(tmp_path, "", "--no-deliver", "--pid-file", str(pid_path))
    webhook_config(serve.config, "http://127.0.0.1:9/in", "1")
    try:
        serve.start()
        serve.config.write_text(serve.config.read_text().replace("concurrency = 4",
                                                                 "concurrency = 0"))
        assert nwpipe("reload", "--pid-file", str(pid_path), cwd=tmp_path).returncode == 0
        serve.wait_line("reload refused")
        webhook_config(serve.config, "http://127.0.0.1:9/other", "2")
        assert nwpipe("reload", "--pid-file", str(pid_path), cwd=tmp_path).returncode == 0
        line = serve.wait_line("config reloaded")
        assert line.endswith("this process starts no outputs (intake only)"), line
        assert serve.stop() == 0, serve.stderr
    finally:
        serve.kill()


async def test_work_url_change_under_load_delivers_each_event_once_in_order(
        tmp_path, make_receiver, runs, redis_server, redis_prefix):
    """``nwpipe work --pid-file`` delivering from a Redis queue that ``nwpipe run
    --no-deliver`` fills; the worker's output URL changes by a reload under load."""
    journal, old, new = await receivers(make_receiver)
    queue = f"""
[queue]
url = "{redis_server.url}"
prefix = "{redis_prefix}"
shards = 4
"""
    config = tmp_path / "nwpipe.toml"
    webhook_config(config, old.url + "/in", "1", extra=queue)
    pid_path = tmp_path / "work.pid"
    worker = await runs(tmp_path, "work", "-c", str(config), "--pid-file", str(pid_path))
    intake = await runs(tmp_path, "run", "--no-deliver", "-c", str(config), "-")
    await intake.send(events(0, 20))
    await journal.until_in_flight()
    assert read_pid(str(pid_path)) == worker.proc.pid
    webhook_config(config, new.url + "/in", "2", extra=queue)
    code, err = await reload_command(tmp_path, pid_path)
    assert code == 0, err
    await wait_until(lambda: worker.saw("config reloaded"), "the reload")
    await intake.send(events(20, 20))
    assert await intake.finish() == 0, "\n".join(intake.stderr)
    await journal.held_back()
    journal.release.set()
    await wait_until(lambda: len(journal.answered()) == 120, "every delivery")
    worker.proc.send_signal(signal.SIGTERM)
    assert await worker.finish() == 0, "\n".join(worker.stderr)
    journal.check_handed_over()
    assert not pid_path.exists(), "the PID file is removed at exit"
