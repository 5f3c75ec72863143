"""``nwpipe serve`` end to end, with faults: real processes, real signals, real HTTP.

A client in the test posts alert lifecycles (start, ongoing, end; one alert's events
one after another, as Netography sends them) to a real ``nwpipe serve``, which delivers
to a real receiver process (tests/receiver.py, which logs every request before
answering). Each test accounts for every acknowledged event: delivered (answered 200 by
the receiver), dead-lettered, or still in the queue; duplicates only with the same
delivery id (``webhook-id``), and per alert in the order posted.
"""

from __future__ import annotations

import asyncio
import collections
import json
import signal
import subprocess
import time
from pathlib import Path

import aiohttp
import pytest
from serveproc import ServeProcess
from test_faults import ReceiverProcess, receivers  # noqa: F401 (a fixture)

ALERTTYPES = ("start", "ongoing", "end")


def config(url: str, *, shutdown_timeout: float = 10, extra: str = "") -> str:
    return f"""
shutdown_timeout = {shutdown_timeout}
[queue]
sync = "full"
[outputs.soc]
type = "webhook"
url = "{url}"
concurrency = 8
timeout = 5
[outputs.soc.retry]
max_attempts = 1000
initial_backoff = 0.02
max_backoff = 0.2
max_elapsed = 120
{extra}
"""


def lifecycle(alert: int) -> list[dict]:
    return [{"id": f"alert-{alert}", "customer": "acme", "alerttype": t, "updatecount": i + 1,
             "severity": "high"} for i, t in enumerate(ALERTTYPES)]


class Poster:
    """Posts lifecycles, each alert's events in order; remembers what got a 2xx."""

    def __init__(self):
        self.acked: list[tuple[str, str]] = []  # (alert id, alerttype), in ack order
        self.failed = 0

    async def alert(self, session: aiohttp.ClientSession, url: str, alert: int) -> None:
        for event in lifecycle(alert):
            try:
                async with session.post(url, json=event) as response:
                    if response.status != 200:
                        self.failed += 1
                        return  # the rest of this alert is not sent: order is kept
                    assert await response.json() == {"accepted": 1}
                    self.acked.append((event["id"], event["alerttype"]))
            except (aiohttp.ClientError, asyncio.TimeoutError):
                self.failed += 1
                return

    async def run(self, url: str, alerts: range, concurrency: int = 8) -> None:
        timeout = aiohttp.ClientTimeout(total=30)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            pending = iter(alerts)

            async def lane():
                for alert in pending:
                    await self.alert(session, url, alert)
            await asyncio.gather(*(lane() for _ in range(concurrency)))


def delivered(receiver: ReceiverProcess) -> list[tuple[str, str, str]]:
    """(alert id, alerttype, webhook-id) of every request the receiver answered 200."""
    out = []
    for entry in receiver.lines():
        if entry["status"] == 200:
            for e in entry["events"]:
                out.append((e["id"], e["alerttype"], entry["webhook_id"]))
    return out


def wait_delivered(receiver: ReceiverProcess, wanted: set, timeout: float = 60) -> list:
    deadline = time.monotonic() + timeout
    while True:
        got = delivered(receiver)
        missing = wanted - {(a, t) for a, t, _ in got}
        if not missing:
            return got
        assert time.monotonic() < deadline, f"{len(missing)} acknowledged events not delivered"
        time.sleep(0.05)


def check_order_and_duplicates(got: list) -> None:
    """Per alert, first deliveries in lifecycle order; a repeat has the same delivery id."""
    ids: dict[tuple[str, str], str] = {}
    firsts: dict[str, list[str]] = collections.defaultdict(list)
    for alert, alerttype, webhook_id in got:
        key = (alert, alerttype)
        if key in ids:
            assert ids[key] == webhook_id, f"{key} sent again with another delivery id"
            continue
        ids[key] = webhook_id
        firsts[alert].append(alerttype)
    for alert, order in firsts.items():
        assert order == sorted(order, key=ALERTTYPES.index), f"{alert}: {order}"


def dead_letters(folder: Path) -> list[dict]:
    path = folder / "nwpipe-dead-letter.jsonl"
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


@pytest.fixture
def servers():
    started: list[ServeProcess] = []

    def make(folder: Path, text: str, *args: str) -> ServeProcess:
        proc = ServeProcess(folder, text, *args)
        started.append(proc)
        return proc

    yield make
    for proc in started:
        if proc.proc is not None and proc.proc.poll() is None:
            proc.kill()


async def test_lifecycles_are_delivered_in_order_with_their_delivery_ids(tmp_path, receivers,
                                                                         servers):
    receiver = receivers(tmp_path / "received.jsonl").start()
    proc = servers(tmp_path, config(receiver.url)).start()
    poster = Poster()
    await poster.run(proc.url + "/", range(20))
    assert len(poster.acked) == 60 and poster.failed == 0
    got = wait_delivered(receiver, set(poster.acked))
    check_order_and_duplicates(got)
    assert proc.stop() == 0
    assert dead_letters(tmp_path) == []


async def test_kill_9_during_a_load_loses_no_acknowledged_event(tmp_path, receivers, servers):
    receiver = receivers(tmp_path / "received.jsonl", delay=0.01).start()
    proc = servers(tmp_path, config(receiver.url)).start()
    poster = Poster()
    load = asyncio.ensure_future(poster.run(proc.url + "/", range(400)))
    # kill in the middle: some events acknowledged, others not yet posted
    deadline = time.monotonic() + 60
    while len(poster.acked) < 150:
        assert time.monotonic() < deadline and not load.done()
        await asyncio.sleep(0.01)
    proc.kill()
    await load
    acked = set(poster.acked)
    assert 150 <= len(acked) < 1200 and poster.failed > 0

    # the same queue file, a new process: everything acknowledged arrives
    proc = servers(tmp_path, config(receiver.url)).start()
    got = wait_delivered(receiver, acked)
    check_order_and_duplicates(got)
    assert proc.stop() == 0
    assert dead_letters(tmp_path) == []
    assert "0 events stay queued" in proc.stderr


async def test_a_receiver_down_during_intake_delays_delivery_but_not_the_answers(
        tmp_path, receivers, servers):
    down = tmp_path / "down"
    down.touch()
    receiver = receivers(tmp_path / "received.jsonl", fail_while=down).start()
    proc = servers(tmp_path, config(receiver.url)).start()
    poster = Poster()
    await poster.run(proc.url + "/", range(50))
    assert len(poster.acked) == 150 and poster.failed == 0  # every post answered 2xx
    async with aiohttp.ClientSession() as session:
        async with session.get(proc.url + "/metrics") as r:
            text = await r.text()
    depth = [line for line in text.splitlines() if line.startswith("nwpipe_queue_depth ")]
    assert float(depth[0].split()[1]) > 0  # waiting on disk, not in the dead-letter file
    down.unlink()  # the receiver is back
    got = wait_delivered(receiver, set(poster.acked))
    check_order_and_duplicates(got)
    assert proc.stop() == 0
    assert dead_letters(tmp_path) == []


async def test_sigterm_refuses_new_posts_finishes_in_flight_and_keeps_the_rest(
        tmp_path, receivers, servers):
    receiver = receivers(tmp_path / "received.jsonl", delay=3).start()
    proc = servers(tmp_path, config(receiver.url, shutdown_timeout=30)
                   .replace("concurrency = 8", "concurrency = 1")).start()
    poster = Poster()
    await poster.run(proc.url + "/", range(5), concurrency=5)
    assert len(poster.acked) == 15
    receiver.wait_for(1)  # the first delivery is in flight (the receiver answers in 3 s)
    proc.signal(signal.SIGTERM)
    proc.wait_line("SIGTERM: new posts get 503")
    async with aiohttp.ClientSession() as session:
        async with session.post(proc.url + "/", json=lifecycle(99)[0]) as r:
            assert r.status == 503 and r.headers["Retry-After"] == "5"
            assert "shutting down" in (await r.json())["error"]
    assert proc.wait() == 0
    first = delivered(receiver)
    assert len(first) == 1  # the one in flight finished; nothing else was started
    assert dead_letters(tmp_path) == []  # nothing dead-lettered because of the shutdown
    # one closing line says what stays queued, in serve's words (not a run's)
    [closing] = [line for line in proc.stderr.splitlines() if "queued for the next" in line]
    assert "serve: stopped; interrupted by SIGTERM" in closing
    assert closing.endswith(": 15 received, 14 events stay queued for the next start"), closing
    assert "by this run" not in proc.stderr and "nwpipe run" not in proc.stderr
    assert "wait in the queue" not in proc.stderr

    proc = servers(tmp_path, config(receiver.url)).start()
    got = wait_delivered(receiver, set(poster.acked))
    check_order_and_duplicates(got)
    assert proc.stop() == 0


@pytest.fixture
def small_disk(tmp_path):
    """A 1 MiB tmpfs (root only): the disk that fills up."""
    mount = tmp_path / "small"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)],
                          capture_output=True)
    if done.returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root): " + done.stderr.decode().strip())
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=True)


async def test_a_full_disk_answers_503_and_loses_nothing_acknowledged(
        tmp_path, small_disk, receivers, servers):
    down = tmp_path / "down"
    down.touch()
    receiver = receivers(tmp_path / "received.jsonl", fail_while=down).start()
    text = config(receiver.url).replace('sync = "full"',
                                        f'sync = "full"\npath = "{small_disk}/queue.db"')
    proc = servers(tmp_path, text).start()
    padding = "x" * 2000
    acked: set = set()
    refused = 0
    async with aiohttp.ClientSession() as session:
        for n in range(2000):  # 2000 events of 2 KB: more than the disk holds
            event = {"id": f"alert-{n}", "customer": "acme", "alerttype": "start",
                     "updatecount": 1, "description": padding}
            async with session.post(proc.url + "/", json=event) as r:
                if r.status == 200:
                    acked.add((event["id"], "start"))
                    continue
                assert r.status == 503 and r.headers["Retry-After"] == "5"
                assert "cannot store events" in (await r.json())["error"]
                refused += 1
                if refused >= 3:
                    break
        assert refused and acked
        async with session.get(proc.url + "/readyz") as r:
            assert r.status == 503 and "cannot be written" in (await r.json())["error"]
    proc.wait_line("serve: cannot store events: .*queue.db.*full")
    assert proc.stderr.count("cannot store events:") == 1  # one line per outage, not per post
    down.unlink()  # the receiver is back
    got = wait_delivered(receiver, acked)
    check_order_and_duplicates(got)
    # Every acknowledged event is delivered. (Removing them from the queue needs room
    # on that disk too: SQLite cannot write its journal on a full disk, so they stay in
    # the queue, to be sent again, with the same delivery ids, after a restart with
    # space freed.)
    assert proc.stop() == 0
    assert dead_letters(tmp_path) == []
