"""The source seam under faults, with the real CLI: every event a source produced is
acknowledged exactly once when it is settled (delivered, or dead-lettered with the record
on disk), also when SIGTERM stops the run while a receiver hangs; an event that was never
read is never acknowledged."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import textwrap

SOURCE = '''
import asyncio
import json
import os

from nwpipe import Event, Setting, Source, hookimpl


class Ticker(Source):
    """Yields alert-0, alert-1, ... one every few milliseconds; logs reads and acks."""

    settings = {"count": Setting(int, required=True), "log": Setting(str, required=True)}

    async def open(self):
        self.fh = open(self.config["log"], "a", buffering=1)

    async def read(self):
        for n in range(self.config["count"]):
            if self.stopping:
                return
            customer = "acme" if n % 2 else "globex"
            event = {"id": f"alert-{n}", "customer": customer, "alerttype": "start",
                     "updatecount": 1}
            self.fh.write(json.dumps(["read", n]) + "\\n")
            yield [Event(event, "ticker", n + 1)]
            await asyncio.sleep(0.002)

    def ack(self, item):
        self.fh.write(json.dumps(["ack", item.line - 1]) + "\\n")

    async def close(self):
        self.fh.write(json.dumps(["closed"]) + "\\n")
        self.fh.close()


@hookimpl
def register_sources(register):
    register("ticker", Ticker)
'''


def lines(path):
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


async def test_sigterm_every_event_read_is_acknowledged_once_after_it_settled(
        receiver, tmp_path):
    async def hang(request, record):
        await asyncio.sleep(60)
    receiver.handler = hang  # acme's webhook never answers: its events are dead-lettered
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "ticker.py").write_text(SOURCE)
    (tmp_path / "c.toml").write_text(textwrap.dedent(f"""
        shutdown_timeout = 0.5
        [source]
        type = "ticker"
        count = 100000
        log = "source.log"

        [outputs.archive]
        type = "file"
        path = "archive.jsonl"

        [outputs.soc]
        type = "webhook"
        url = "{receiver.url}/in"
        customers = ["acme"]
        concurrency = 2
        queue_size = 20
        """))
    env = {k: v for k, v in os.environ.items() if k != "NWPIPE_CONFIG"}
    env["NWPIPE_LOAD_PLUGINS"] = ""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "nwpipe", "--plugins-dir", str(plugins), "run", "-c", "c.toml",
        "--dead-letter", "dl.jsonl", cwd=tmp_path, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    log = tmp_path / "source.log"
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 60
    # running, with acknowledgements coming in (globex's), acme's in flight or queued
    while sum(1 for entry in lines(log) if entry[0] == "ack") < 10:
        assert loop.time() < deadline, lines(log)[-5:]
        await asyncio.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    _, stderr = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 143, stderr.decode()

    entries = lines(log)
    assert entries[-1] == ["closed"]  # closed after the last acknowledgement
    read = [n for kind, *rest in entries[:-1] if kind == "read" for n in rest]
    acked = [n for kind, *rest in entries[:-1] if kind == "ack" for n in rest]
    assert len(acked) == len(set(acked))  # never twice
    assert sorted(acked) == sorted(read)  # every event read, and only those
    assert len(read) < 100000  # the signal stopped the reading
    assert any(n % 2 for n in acked)  # acme's events: acknowledged once dead-lettered
    archived = {json.loads(x)["id"] for x in (tmp_path / "archive.jsonl").read_text().split()}
    dead = {r["event"]["id"] for r in lines(tmp_path / "dl.jsonl")}
    for n in read:
        # delivered to the archive, and for acme also dead-lettered by the webhook
        assert f"alert-{n}" in archived or f"alert-{n}" in dead, n
        if n % 2:
            assert f"alert-{n}" in dead, n


BUGGY = '''
from nwpipe import Event, Setting, Source, hookimpl


class Buggy(Source):
    settings = {"fail_in": Setting(str, required=True)}

    async def open(self):
        if self.config["fail_in"] == "open":
            raise OSError("spool not mounted")

    async def read(self):
        yield [Event({"id": "a1", "customer": "acme"}, "buggy", 1),
               Event({"id": "a2", "customer": "acme"}, "buggy", 2)]
        if self.config["fail_in"] == "read":
            raise RuntimeError("lost the broker")

    def ack(self, item):
        if self.config["fail_in"] == "ack":
            raise KeyError(item.line)


@hookimpl
def register_sources(register):
    register("buggy", Buggy)
'''


def test_a_source_plugins_failures_are_one_clear_line(tmp_path):
    import subprocess

    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "buggy.py").write_text(BUGGY)
    env = {k: v for k, v in os.environ.items() if k != "NWPIPE_CONFIG"}
    env["NWPIPE_LOAD_PLUGINS"] = ""

    def run(fail_in):
        (tmp_path / "c.toml").write_text(f'[source]\ntype = "buggy"\nfail_in = "{fail_in}"\n'
                                         '[outputs.out]\ntype = "stdout"\n')
        return subprocess.run([sys.executable, "-m", "nwpipe", "--plugins-dir", str(plugins),
                               "run", "-c", "c.toml"], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=60)

    opened = run("open")
    assert opened.returncode == 1 and opened.stdout == ""
    assert "error: source: cannot start: OSError: spool not mounted" in opened.stderr
    read = run("read")  # what was read is still delivered; the exit code says the rest
    assert read.returncode == 3
    assert [json.loads(x)["id"] for x in read.stdout.splitlines()] == ["a1", "a2"]
    assert "error: source Buggy stopped: RuntimeError: lost the broker" in read.stderr
    acked = run("ack")  # a failing ack never fails the delivery it confirms
    assert acked.returncode == 0
    assert [json.loads(x)["id"] for x in acked.stdout.splitlines()] == ["a1", "a2"]
    assert acked.stderr.count("ack failed: KeyError") == 1
    for proc in (opened, read, acked):
        assert "Traceback" not in proc.stderr
