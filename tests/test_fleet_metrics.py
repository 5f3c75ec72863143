"""Per-shard queue metrics of a fleet, as Prometheus scrapes them.

Real processes only: redis-server, the receiver, `nwpipe run --no-deliver --metrics-listen`
as intake and `nwpipe work --metrics-listen` as workers. Every /metrics page is parsed
with ``prometheus_client.parser``, the reference parser.
"""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import time
import urllib.request

import aiohttp
from prometheus_client.parser import text_string_to_metric_families
from serveproc import ServeProcess
from test_fleet import (
    Fleet,
    all_delivered,
    check_every_event_in_order,
    fleet,  # noqa: F401 - a fixture, used as a parameter
    lifecycle,
    queue_empty,
    wait_until,
)

SHARDS = 4


def metrics_url(f: Fleet, name: str, proc) -> str:
    """The /metrics address a process logged (it listens on port 0)."""
    def found():
        match = re.search(r"metrics on (\S+)/metrics", f.log(name))
        return match and match.group(1) + "/metrics"
    return wait_until(found, f"{name} to listen for metrics", procs=[proc])


def samples(text: str) -> dict:
    """{(name, shard label or None): value} of one /metrics page."""
    return {(s.name, s.labels.get("shard")): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def scrape(url: str) -> dict:
    """:func:`samples` of the page at ``url``."""
    with urllib.request.urlopen(url, timeout=30) as response:
        assert response.status == 200
        return samples(response.read().decode())


def per_shard(page: dict, name: str) -> dict[int, float]:
    return {int(shard): value for (n, shard), value in page.items() if n == name and shard}


def owned(page: dict) -> set[int]:
    return {shard for shard, v in per_shard(page, "nwpipe_queue_shard_owned").items() if v == 1}


def test_shard_depth_lag_pending_and_ownership_on_run_and_work(fleet):  # noqa: F811
    f = fleet(receiver_delay=0.3, shards=SHARDS)
    intake = f._start(["run", "--no-deliver", "--metrics-listen", "127.0.0.1:0", "-"], "intake",
                      stdin=subprocess.PIPE)
    intake_url = metrics_url(f, "intake", intake)
    events = lifecycle(200)
    for e in events:
        intake.stdin.write(json.dumps(e).encode() + b"\n")
    intake.stdin.flush()

    # no worker yet: every event waits in its shard, nobody owns a shard
    def committed():
        page = scrape(intake_url)
        return sum(per_shard(page, "nwpipe_queue_shard_depth").values()) == len(events) and page
    page = wait_until(committed, "the intake's metrics to show every event queued",
                      procs=[intake])
    assert page[("nwpipe_queue_shards", None)] == SHARDS
    depth = per_shard(page, "nwpipe_queue_shard_depth")
    assert sorted(depth) == list(range(SHARDS)) and all(depth.values())
    assert all(v >= 0 for v in per_shard(page, "nwpipe_queue_shard_oldest_age_seconds").values())
    assert per_shard(page, "nwpipe_queue_shard_owned") == dict.fromkeys(range(SHARDS), 0)
    assert page[("nwpipe_queue_shards_held", None)] == 0
    assert page[("nwpipe_queue_depth", None)] == len(events)

    # lag grows while nobody delivers
    def lagging():
        page = scrape(intake_url)
        return min(per_shard(page, "nwpipe_queue_shard_oldest_age_seconds").values()) >= 1.0
    wait_until(lagging, "the shards' lag to reach 1 s", procs=[intake])

    # one worker takes every shard; entries read and not yet acknowledged show as pending
    w1 = f._start(["work", "--metrics-listen", "127.0.0.1:0"], "w1")
    w1_url = metrics_url(f, "w1", w1)
    wait_until(lambda: owned(scrape(w1_url)) == set(range(SHARDS)), "w1 to own every shard",
               procs=[w1])
    wait_until(lambda: sum(per_shard(scrape(w1_url), "nwpipe_queue_shard_pending").values()) > 0,
               "entries pending while the slow receiver answers", procs=[w1])

    # a second worker: the shards are split, each shard owned by exactly one of them
    w2 = f._start(["work", "--metrics-listen", "127.0.0.1:0"], "w2")
    w2_url = metrics_url(f, "w2", w2)

    def split():
        a, b = owned(scrape(w1_url)), owned(scrape(w2_url))
        return len(a) == len(b) == SHARDS // 2 and a | b == set(range(SHARDS)) and (a, b)
    a, b = wait_until(split, "two workers to share the shards", procs=[w1, w2])
    assert not a & b

    wait_until(lambda: all_delivered(f.receiver, events), "every event delivered",
               procs=[w1, w2])
    wait_until(lambda: queue_empty(f), "the queue to be empty", procs=[w1, w2])

    def drained():
        page = scrape(intake_url)
        return (not any(per_shard(page, "nwpipe_queue_shard_depth").values())
                and not any(per_shard(page, "nwpipe_queue_shard_pending").values())
                and not any(per_shard(page, "nwpipe_queue_shard_oldest_age_seconds").values())
                and page)
    page = wait_until(drained, "the intake's metrics to show empty shards", procs=[intake])
    assert owned(page) == set()  # the intake delivers nothing
    assert page[("nwpipe_queue_shards_held", None)] == SHARDS
    assert page[("nwpipe_queue_workers", None)] == 2
    check_every_event_in_order(f.receiver, events)
    intake.stdin.close()
    assert intake.wait(60) == 0, f.log("intake")


async def test_serve_with_a_redis_queue_shows_its_shards_on_metrics(tmp_path, receiver,
                                                                     redis_server, redis_prefix):
    serve = ServeProcess(tmp_path, f"""
[queue]
url = "{redis_server.url}"
prefix = "{redis_prefix}"
shards = {SHARDS}
[outputs.soc]
type = "webhook"
url = "{receiver.url}/in"
""").start()
    try:
        body = "".join(json.dumps({"id": f"a-{n}", "customer": "acme"}) + "\n" for n in range(20))
        async with aiohttp.ClientSession() as session:
            async with session.post(serve.url + "/", data=body) as r:
                assert r.status in (200, 202), await r.text()
        # polled without blocking: the receiver answers on this test's event loop
        deadline = time.monotonic() + 60
        while True:
            async with aiohttp.ClientSession() as session:
                async with session.get(serve.metrics_url + "/metrics") as r:
                    assert r.status == 200
                    page = samples(await r.text())
            if (owned(page) == set(range(SHARDS))
                    and not any(per_shard(page, "nwpipe_queue_shard_depth").values())
                    and len(receiver.requests) >= 1):
                break
            assert time.monotonic() < deadline, (page, serve.lines)
            await asyncio.sleep(0.05)
        assert page[("nwpipe_queue_shards", None)] == SHARDS
        assert page[("nwpipe_queue_workers", None)] == 1
        assert per_shard(page, "nwpipe_queue_shard_pending") == dict.fromkeys(range(SHARDS), 0)
    finally:
        assert serve.stop() == 0
