"""The ``http`` source plugin: ``nwpipe run`` with ``[source] type = "http"``.

A real ``nwpipe run`` process takes POSTs and answers each request only once the source
contract acknowledges its events: delivered to the receiver (or dead-lettered)."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import threading
import time

import aiohttp
import pytest
from serveproc import env


@pytest.fixture
def run_http(tmp_path):
    procs = []

    def start(config: str, *args: str):
        (tmp_path / "nwpipe.toml").write_text(config)
        proc = subprocess.Popen([sys.executable, "-m", "nwpipe", "run", "-c", "nwpipe.toml", *args],
                                cwd=tmp_path, env=env(), stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        procs.append(proc)
        proc.lines = []
        proc.reader = threading.Thread(target=lambda: proc.lines.extend(proc.stderr),
                                       daemon=True)
        proc.reader.start()
        deadline = time.monotonic() + 60
        while not any("listening on" in line for line in proc.lines):
            assert time.monotonic() < deadline and proc.poll() is None, "".join(proc.lines)
            time.sleep(0.02)
        proc.url = re.search(r"listening on (http://\S+?)/", "".join(proc.lines)).group(1)
        return proc

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


async def test_a_post_is_answered_once_its_event_is_delivered(tmp_path, receiver, run_http):
    proc = run_http(f"""
[source]
type = "http"
listen = "127.0.0.1:0"
authusername = "netography"
authpassword = "pw"

[outputs.soc]
type = "webhook"
url = "{receiver.url}/in"
""")
    event = {"id": "a-1", "customer": "acme", "alerttype": "start", "updatecount": 1}
    auth = {"Authorization": "Basic bmV0b2dyYXBoeTpwdw=="}
    async with aiohttp.ClientSession() as session:
        async with session.post(proc.url + "/", json=event, headers=auth) as r:
            assert (r.status, await r.json()) == (200, {"accepted": 1})
            # acknowledged means delivered: the receiver has it before the answer
            assert [req.json() for req in receiver.requests] == [event]
        async with session.post(proc.url + "/", json=event) as r:
            assert r.status == 401
        async with session.post(proc.url + "/", data=b'[{"id": "a-2", "customer": "acme"}, 5]',
                                headers=auth) as r:
            answer = await r.json()
            assert r.status == 400 and answer["accepted"] == 1
            assert answer["refused"][0]["index"] == 1
    records = [json.loads(x) for x in (tmp_path / "nwpipe-dead-letter.jsonl").read_text()
               .splitlines()]
    assert [(r["stage"], r["raw"]) for r in records] == [("parse", "5")]
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(60) == 143
    proc.reader.join(10)
    assert "read 3 events" in "".join(proc.lines)


def test_check_names_a_source_key(tmp_path):
    (tmp_path / "nwpipe.toml").write_text('[source]\ntype = "http"\nauthusername = "u"\n'
                                          '[outputs.a]\ntype = "stdout"\n')
    proc = subprocess.run([sys.executable, "-m", "nwpipe", "check", "-c", "nwpipe.toml"],
                          cwd=tmp_path, env=env(), capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    assert proc.stderr == ("nwpipe: error: nwpipe.toml: source: password: Basic Auth needs "
                           "both username and password\n")
