"""The operations endpoints as Prometheus sees them: ``nwpipe run --metrics-listen`` during
a long run, and ``[serve] metrics_listen`` (the endpoints on their own listener).

Each scrape is parsed with ``prometheus_client.parser``, the reference parser."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
import threading
import time

import aiohttp
import orjson
from prometheus_client.parser import text_string_to_metric_families
from serveproc import ServeProcess, env


def samples(text: str) -> dict:
    """{(name, sorted labels): value} of every sample in an exposition."""
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


async def scrape(url: str) -> dict:
    async with aiohttp.ClientSession() as session:
        async with session.get(url) as response:
            assert response.status == 200
            return samples(await response.text())


async def test_run_metrics_listen_exposes_the_run_while_it_lasts(tmp_path, receiver):
    (tmp_path / "nwpipe.toml").write_text(f"""
[outputs.soc]
type = "webhook"
url = "{receiver.url}/in"
""")
    proc = subprocess.Popen([sys.executable, "-m", "nwpipe", "run", "-c", "nwpipe.toml",
                             "--metrics-listen", "127.0.0.1:0"], cwd=tmp_path, env=env(),
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stderr), daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + 60
        while not any("metrics on" in line for line in lines):
            assert time.monotonic() < deadline and proc.poll() is None, lines
            time.sleep(0.02)
        url = re.search(r"metrics on (\S+)/metrics", "".join(lines)).group(1)
        for n in range(5):
            proc.stdin.write(json.dumps({"id": f"a-{n}", "customer": "acme"}) + "\n")
        proc.stdin.write("not json\n")
        proc.stdin.flush()
        await receiver.wait_for(5, timeout=60)
        deadline = time.monotonic() + 60
        while True:  # the counters follow the deliveries
            got = await scrape(url + "/metrics")
            if got.get(("nwpipe_deliveries_total", (("outcome", "delivered"),
                                                    ("output", "soc")))) == 5:
                break
            assert time.monotonic() < deadline, got
            time.sleep(0.05)
        assert got[("nwpipe_events_read_total", ())] == 6
        assert got[("nwpipe_events_rejected_total", ())] == 1
        assert got[("nwpipe_dead_letters_total", ())] == 1
        assert got[("nwpipe_delivery_latency_seconds_count", (("output", "soc"),))] == 5
        assert ("process_resident_memory_bytes", ()) in got
        async with aiohttp.ClientSession() as session:
            async with session.get(url + "/healthz") as r:
                assert r.status == 200
            async with session.get(url + "/readyz") as r:
                assert r.status == 200
    finally:
        proc.stdin.close()
        assert proc.wait(60) == 3  # one line was rejected
        reader.join(10)


async def test_serve_metrics_listen_moves_the_ops_endpoints(tmp_path):
    proc = ServeProcess(tmp_path, '[serve]\nmetrics_listen = "127.0.0.1:0"\nusername = "u"\n'
                        'password = "p"\n[outputs.a]\ntype = "file"\npath = "out.jsonl"\n',
                        "--no-deliver").start()
    try:
        assert proc.metrics_url != proc.url
        async with aiohttp.ClientSession() as session:
            async with session.get(proc.url + "/metrics") as r:
                assert r.status == 404  # not on the intake's listener any more
            async with session.post(proc.url + "/", data=orjson.dumps({"id": "a", "customer": "c"}),
                                    headers={"Authorization": "Basic dTpw"}) as r:
                assert r.status == 200
        got = await scrape(proc.metrics_url + "/metrics")
        assert got[("nwpipe_intake_events_accepted_total", ())] == 1
        assert got[("nwpipe_queue_depth", ())] == 1
    finally:
        assert proc.stop() == 0


async def test_the_queue_status_is_read_at_most_once_a_second_and_redis_down_still_answers():
    from nwpipe.engine.metrics import STATUS_MAX_AGE, Metrics
    from nwpipe.queue import QueueStatus, QueueUnavailable, ShardStatus

    reads = []

    async def status():
        reads.append(time.monotonic())
        if len(reads) > 1:
            raise QueueUnavailable("Redis at redis://127.0.0.1:1/0 does not answer")
        return QueueStatus(location="redis://127.0.0.1:1/0", max_bytes=1 << 20, shards=(
            ShardStatus(0, depth=3, bytes=30, oldest_at=time.time() - 5, owner="me", pending=2),
            ShardStatus(1, depth=0, bytes=0, oldest_at=None, owner="other", pending=0)),
            notes={"workers": "me other"})

    class Shared:  # what Metrics asks of a Redis queue: shared, and this worker's name
        shared = True
        name = "me"

    metrics = Metrics()
    metrics.watch_queue(status, Shared())
    started = time.monotonic()
    pages = [samples((await metrics.render())[0].decode()) for _ in range(5)]
    if time.monotonic() - started < STATUS_MAX_AGE:  # on a very slow machine, skip this
        assert len(reads) == 1
    got = pages[-1]
    assert got[("nwpipe_queue_shard_depth", (("shard", "0"),))] == 3
    assert got[("nwpipe_queue_shard_pending", (("shard", "0"),))] == 2
    assert got[("nwpipe_queue_shard_owned", (("shard", "0"),))] == 1
    assert got[("nwpipe_queue_shard_owned", (("shard", "1"),))] == 0
    assert got[("nwpipe_queue_shard_oldest_age_seconds", (("shard", "0"),))] >= 5
    assert got[("nwpipe_queue_shard_oldest_age_seconds", (("shard", "1"),))] == 0
    assert got[("nwpipe_queue_workers", ())] == 2
    assert got[("nwpipe_queue_depth", ())] == 3

    # once the status is stale it is read again; Redis down: the page answers without shards
    deadline = time.monotonic() + 30
    while len(reads) < 2:
        assert time.monotonic() < deadline
        got = samples((await metrics.render())[0].decode())
        await asyncio.sleep(0.05)
    got = samples((await metrics.render())[0].decode())
    assert not [key for key in got if key[0].startswith("nwpipe_queue_shard")]
    assert ("process_resident_memory_bytes", ()) in got
