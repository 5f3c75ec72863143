"""The queue contract (nwpipe.queue.base), checked the same way on every engine.

``make_queue(**settings)`` gives an unopened queue of the engine under test; calling it
again with the same settings gives a second handle on the SAME store (to check what
survives a close). An engine joins by adding a parameter to the ``engine`` fixture.
"""

from __future__ import annotations

import asyncio
import time
import zlib

import orjson
import pytest

from nwpipe.queue import QueueFull, QueueSettings, create_queue, shard_of


@pytest.fixture(params=["sqlite", "redis"])
def engine(request):
    return request.param


@pytest.fixture
def make_queue(engine, tmp_path, request):
    """A factory of unopened queues on one store of ``engine``."""
    if engine == "redis":
        # the session's redis-server, and a key prefix of this test's own
        store = {"url": request.getfixturevalue("redis_server").url,
                 "prefix": request.getfixturevalue("redis_prefix")}
    else:
        store = {"path": str(tmp_path / "queue.db")}

    def make(**overrides):
        settings = dict(store)
        settings.update(overrides)
        return create_queue(QueueSettings(**settings))
    return make


@pytest.fixture
async def queue(make_queue):
    q = make_queue()
    await q.open()
    yield q
    await q.close()


def event(alert: str, n: int) -> bytes:
    return orjson.dumps({"id": alert, "n": n})


async def read_all(q, shard, after=None):
    out = []
    while True:
        got = await q.read(shard, after, 100)
        if not got:
            return out
        out.extend(got)
        after = got[-1].pos


def test_shard_of_is_crc32_modulo():
    assert shard_of("abc", 16) == zlib.crc32(b"abc") % 16 == 2
    assert shard_of("\udc80x", 7) == zlib.crc32("\udc80x".encode("utf-8", "surrogatepass")) % 7


async def test_put_then_read_in_order_per_shard(queue):
    items = [(f"a{i % 5}", event(f"a{i % 5}", i), f"in.jsonl:{i + 1}") for i in range(50)]
    positions = await queue.put(items)
    assert len(positions) == 50
    seen = []
    for shard in sorted(await queue.owned()):
        entries = await read_all(queue, shard)
        assert [e.pos for e in entries] == sorted(e.pos for e in entries)
        for e in entries:
            assert e.shard == shard
            assert shard_of(orjson.loads(e.data)["id"], queue.shards) == shard
            assert e.at == pytest.approx(time.time(), abs=60)
        seen.extend(entries)
    assert len(seen) == 50
    by_alert: dict[str, list[int]] = {}
    for e in seen:
        doc = orjson.loads(e.data)
        by_alert.setdefault(doc["id"], []).append(doc["n"])
        assert e.origin == f"in.jsonl:{doc['n'] + 1}"
    for alert, ns in by_alert.items():
        assert ns == sorted(ns), alert
    # each put's positions are where read finds the items
    assert {e.pos for e in seen} == set(positions)


async def test_read_after_a_position_and_limit(queue):
    await queue.put([("x", event("x", i), "t") for i in range(10)])
    shard = shard_of("x", queue.shards)
    first = await queue.read(shard, None, 3)
    assert [orjson.loads(e.data)["n"] for e in first] == [0, 1, 2]
    more = await queue.read(shard, first[-1].pos, 100)
    assert [orjson.loads(e.data)["n"] for e in more] == list(range(3, 10))
    assert await queue.read(shard, more[-1].pos, 100) == []


async def test_ack_removes_up_to_a_position_and_survives_reopen(make_queue):
    q = make_queue()
    await q.open()
    await q.put([("x", event("x", i), "t") for i in range(10)])
    shard = shard_of("x", q.shards)
    entries = await read_all(q, shard)
    await q.ack(shard, entries[5].pos)
    left = await read_all(q, shard)
    assert [orjson.loads(e.data)["n"] for e in left] == [6, 7, 8, 9]
    await q.close()
    again = make_queue()
    await again.open()
    try:
        left = await read_all(again, shard)
        assert [orjson.loads(e.data)["n"] for e in left] == [6, 7, 8, 9]
        assert (await again.status()).depth == 4
    finally:
        await again.close()


async def test_positions_are_never_reused_after_everything_was_acked(queue):
    shard = shard_of("x", queue.shards)
    [pos] = await queue.put([("x", event("x", 1), "t")])
    await queue.ack(shard, pos)
    [later] = await queue.put([("x", event("x", 2), "t")])
    assert later > pos
    assert [orjson.loads(e.data)["n"] for e in await queue.read(shard, pos, 10)] == [2]


async def test_marks_and_notes_are_kept(make_queue):
    q = make_queue()
    await q.open()
    [pos] = await q.put([("x", event("x", 1), "t")])
    shard = shard_of("x", q.shards)
    assert await q.load_marks(shard) == {}
    await q.save_marks(shard, {"soc": pos, "oncall": pos})
    await q.set_note("input:events.jsonl", "12")
    await q.set_note("failing:soc", "1700000000.0")
    await q.set_note("failing:soc", None)
    await q.close()
    again = make_queue()
    await again.open()
    try:
        assert await again.load_marks(shard) == {"soc": pos, "oncall": pos}
        assert await again.notes() == {"input:events.jsonl": "12"}
    finally:
        await again.close()


async def test_status_counts_depth_bytes_age_and_per_output_backlog(queue):
    before = time.time()
    positions = await queue.put([("x", event("x", i), "t") for i in range(4)])
    shard = shard_of("x", queue.shards)
    await queue.save_marks(shard, {"fast": positions[-1], "slow": positions[0]})
    status = await queue.status()
    assert status.depth == 4
    assert status.bytes >= sum(len(event("x", i)) for i in range(4))
    assert before - 1 <= status.oldest_at <= time.time() + 1
    assert status.backlog("fast").events == 0
    assert status.backlog("slow").events == 3
    assert status.backlog("never-marked").events == 4
    await queue.ack(shard, positions[-1])
    status = await queue.status()
    assert status.depth == 0 and status.bytes == 0 and status.oldest_at is None


async def test_put_past_max_bytes_raises_queue_full_and_stores_nothing(make_queue):
    q = make_queue(max_bytes=2000)
    await q.open()
    try:
        await q.put([("x", b"x" * 1500, "t")])
        with pytest.raises(QueueFull) as caught:
            await q.put([("y", b"y" * 1000, "t"), ("z", b"z", "t")])
        assert "max_bytes" in str(caught.value)
        assert (await q.status()).depth == 1
        shard = shard_of("x", q.shards)
        [entry] = await q.read(shard, None, 10)
        await q.ack(shard, entry.pos)
        await q.put([("y", b"y" * 1000, "t")])  # room again
    finally:
        await q.close()


async def test_many_concurrent_puts_share_commits_and_keep_each_callers_order(queue):
    async def producer(alert):
        for i in range(40):
            await queue.put([(alert, event(alert, i), "t")])

    await asyncio.gather(*(producer(f"alert-{k}") for k in range(25)))
    assert (await queue.status()).depth == 1000
    for shard in await queue.owned():
        by_alert: dict[str, list[int]] = {}
        for e in await read_all(queue, shard):
            doc = orjson.loads(e.data)
            by_alert.setdefault(doc["id"], []).append(doc["n"])
        for ns in by_alert.values():
            assert ns == list(range(40))


async def test_wait_returns_on_put_or_timeout(queue):
    started = time.monotonic()
    await queue.wait(0.2)
    assert time.monotonic() - started >= 0.15
    waiter = asyncio.ensure_future(queue.wait(30))
    await asyncio.sleep(0)
    await queue.put([("x", event("x", 1), "t")])
    await asyncio.wait_for(waiter, 10)


async def test_owned_shards_are_shards_of_the_queue(queue):
    owned = await queue.owned()
    assert owned and owned <= frozenset(range(queue.shards))
