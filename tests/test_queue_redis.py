"""The Redis Streams queue engine against a real redis-server: shards, leases, takeover.

The fleet as real processes (kill -9, SIGSTOP, a Redis restart) is in test_fleet.py; the
behaviour every engine shares is in test_queue_contract.py.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time

import pytest

from nwpipe.aio import within
from nwpipe.queue import QueueError, QueueSettings, QueueUnavailable, shard_of
from nwpipe.queue.redis import RedisQueue, check_url, public_url

DEADLINE = 60


async def bounded(awaitable, what: str, timeout: float = DEADLINE):
    """Await ``awaitable``, failing the test after ``timeout`` seconds instead of hanging
    the run (a Redis call that never answers)."""
    try:
        return await within(awaitable, timeout)
    except asyncio.TimeoutError:
        pytest.fail(f"timed out after {timeout} s {what}")


async def poll(predicate, what: str, timeout: float = DEADLINE):
    """Await ``predicate()`` (a coroutine function) until it is truthy, or fail; a call
    that does not answer counts against the same deadline."""
    end = time.monotonic() + timeout
    while True:
        value = await bounded(predicate(), f"waiting for {what}", max(0.0, end - time.monotonic()))
        if value:
            return value
        if time.monotonic() > end:
            pytest.fail(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


def settings(server, prefix, **kw) -> QueueSettings:
    kw.setdefault("shards", 4)
    kw.setdefault("lease_seconds", 1.5)
    return QueueSettings(url=server.url, prefix=prefix, **kw)


async def opened(server, prefix, name, **kw) -> RedisQueue:
    q = RedisQueue(settings(server, prefix, **kw), name=name)
    await bounded(q.open(), f"opening the queue as {name}")
    return q


def items(n: int, alerts: int = 10):
    return [(f"alert-{i % alerts}", b'{"id":"alert-%d","n":%d}' % (i % alerts, i), f"test:{i}")
            for i in range(n)]


async def test_shard_count_is_fixed_when_created(redis_server, redis_prefix):
    q = await opened(redis_server, redis_prefix, "a", shards=4)
    await q.close()
    other = RedisQueue(settings(redis_server, redis_prefix, shards=8))
    with pytest.raises(QueueError) as err:
        await other.open()
    text = str(err.value)
    assert "created with 4 shards" in text and "shards = 8" in text and "set shards = 4" in text
    await other.close()


async def test_put_read_ack_in_order_per_shard(redis_server, redis_prefix):
    q = await opened(redis_server, redis_prefix, "a")
    await asyncio.gather(*(q.put(items(50)[i:i + 5]) for i in range(0, 50, 5)))
    mine = await q.owned()
    assert mine == frozenset(range(4))  # alone: every shard
    seen = 0
    for shard in sorted(mine):
        entries = await q.read(shard, None, 1000)
        seen += len(entries)
        assert [e.pos for e in entries] == sorted(e.pos for e in entries)
        for e in entries:
            assert e.shard == shard == shard_of(e.data.split(b'"')[3].decode(), 4)
            assert e.origin.startswith("test:") and abs(e.at - time.time()) < 60
        # per alert, the order of put
        by_alert: dict[bytes, list[int]] = {}
        for e in entries:
            by_alert.setdefault(e.data.split(b'"')[3], []).append(int(e.data.split(b":")[-1][:-1]))
        assert all(ns == sorted(ns) for ns in by_alert.values())
        if len(entries) > 3:
            assert await q.read(shard, entries[1].pos, 2) == entries[2:4]
    assert seen == 50
    status = await q.status()
    assert status.depth == 50 and sum(s.pending for s in status.shards) == 50
    assert status.bytes == sum(len(d) for _, d, _ in items(50))
    assert {s.owner for s in status.shards} == {"a"}
    for shard in sorted(mine):
        entries = await q.read(shard, None, 1000)
        if entries:
            await q.ack(shard, entries[-1].pos)
    status = await q.status()
    assert status.depth == 0 and status.bytes == 0 and all(s.pending == 0 for s in status.shards)
    await q.close()


async def test_marks_and_notes_survive_reopening(redis_server, redis_prefix):
    q = await opened(redis_server, redis_prefix, "a")
    await q.save_marks(2, {"soc": (17, 3), "slack": (5, 0)})
    await q.set_note("failing:soc", "1700000000")
    await q.close()
    q = await opened(redis_server, redis_prefix, "b")
    assert await q.load_marks(2) == {"soc": (17, 3), "slack": (5, 0)}
    assert await q.load_marks(1) == {}
    assert (await q.notes())["failing:soc"] == "1700000000"
    await q.set_note("failing:soc", None)
    assert "failing:soc" not in await q.notes()
    await q.close()


async def test_workers_share_shards_fairly_and_rebalance(redis_server, redis_prefix):
    # a lease long enough that a busy machine's late heartbeat does not lapse it (the
    # shares would flap); handing shards over does not wait for leases to run out
    kw = {"shards": 16, "lease_seconds": 5}
    qs: list[RedisQueue] = []
    try:
        for name in ("w1", "w2", "w3"):
            qs.append(await opened(redis_server, redis_prefix, name, **kw))

        async def shares():
            owned = [await q.owned() for q in qs]
            flat = [s for o in owned for s in o]
            if len(flat) == len(set(flat)) == 16 and sorted(map(len, owned)) == [5, 5, 6]:
                return owned
            return None

        await poll(shares, "16 shards shared 5/5/6 by three workers")
        left = qs.pop()
        await bounded(left.close(), "closing w3")  # leaves: the two others take its shards

        async def two():
            owned = [await q.owned() for q in qs]
            return sorted(map(len, owned)) == [8, 8] and not (owned[0] & owned[1])

        await poll(two, "16 shards shared 8/8 after one worker left")
        qs.append(await opened(redis_server, redis_prefix, "w4", **kw))  # joins: gets a share

        async def joined():
            owned = [await q.owned() for q in qs]
            flat = [s for o in owned for s in o]
            return len(flat) == len(set(flat)) == 16 and sorted(map(len, owned)) == [5, 5, 6]

        await poll(joined, "a joining worker to get its share")
    finally:
        for q in qs:  # also after a failure: no heartbeat outlives the test
            await bounded(q.close(), "closing the workers")


async def test_new_owner_takes_over_pending_entries_in_order(redis_server, redis_prefix):
    """A worker that stops renewing (as if killed) loses its shards; the next owner gets
    the entries it had read and not acknowledged, first and in stream order, and the
    stale worker can neither read nor acknowledge any more."""
    a = await opened(redis_server, redis_prefix, "a", shards=1)
    await a.put(items(30, alerts=3))
    assert await a.owned() == {0}
    first = await a.read(0, None, 10)
    await a.ack(0, first[4].pos)  # settled the first 5; 5..9 are read, pending
    a._beat_task.cancel()  # noqa: SLF001 - stands for a process that died
    b = await opened(redis_server, redis_prefix, "b", shards=1)

    async def b_owns():
        return await b.owned() == {0}

    await poll(b_owns, "the second worker to take the shard after the lease ran out")
    assert await a.owned() == frozenset()  # a's own clock already told it to stop
    entries = await b.read(0, None, 100)
    assert [e.pos for e in entries] == [e.pos for e in first[5:]] + [e.pos for e in entries[5:]]
    assert len(entries) == 25
    status = await b.status()
    assert status.shards[0].pending == 25 and status.shards[0].owner == "b"
    # the stale worker, made to believe it still holds the shard: Redis says no
    a._valid_until = time.monotonic() + 60  # noqa: SLF001
    assert await a.read(0, None, 100) == []
    a._mine = frozenset({0})  # noqa: SLF001
    await a.ack(0, entries[-1].pos)
    assert (await b.status()).shards[0].depth == 25
    await b.ack(0, entries[-1].pos)
    status = await b.status()
    assert status.depth == 0 and status.shards[0].pending == 0
    a._beat_task = None  # noqa: SLF001 - it is cancelled already
    await a.close()
    await b.close()


async def test_redis_down_puts_fail_as_unavailable_and_leases_lapse_early(own_redis, redis_prefix):
    q = await opened(own_redis, redis_prefix, "a", lease_seconds=3)
    assert await q.owned() == frozenset(range(4))
    own_redis.stop()
    stopped = time.monotonic()
    with pytest.raises(QueueUnavailable) as err:
        await q.put(items(1))
    assert "cannot reach Redis" in str(err.value) and own_redis.url.split("/")[2] in str(err.value)

    async def lapsed():
        return await q.owned() == frozenset()

    await poll(lapsed, "the leases to lapse locally")
    # stopped reading before the lease (3 s from the last renewal) could have run out
    assert time.monotonic() - stopped < 3
    own_redis.start()

    async def back():
        return await q.owned() == frozenset(range(4))

    await poll(back, "the leases to come back with Redis")
    await q.put(items(3))
    assert (await q.status()).depth == 3
    await q.close()


async def test_wait_returns_when_another_process_puts(redis_server, redis_prefix):
    worker = await opened(redis_server, redis_prefix, "w", shards=2)
    intake = await opened(redis_server, redis_prefix, "i", shards=2)
    assert await worker.owned() == {0, 1}
    for shard in (0, 1):
        assert await worker.read(shard, None, 10) == []
    waiting = asyncio.ensure_future(worker.wait(30))
    await asyncio.sleep(0)
    started = time.monotonic()
    await intake.put(items(1))
    await asyncio.wait_for(waiting, DEADLINE)
    assert time.monotonic() - started < 10
    await worker.close()
    await intake.close()


def test_url_checks_and_public_form():
    assert check_url("redis://127.0.0.1:6379/0") is None
    assert check_url("rediss://h:6380") is None
    assert "redis://" in check_url("http://h:6379")
    assert "number" in check_url("redis://h:6379/zero")
    assert "no host" in check_url("redis://")
    assert public_url("redis://:s3cret@h:6379/2") == "redis://h:6379/2"
    assert public_url("rediss://user:s3cret@h/0") == "rediss://h/0"


def test_missing_redis_package_is_one_clear_message(tmp_path):
    code = (
        "import sys; sys.modules['redis'] = None; sys.modules['redis.asyncio'] = None\n"
        "from nwpipe.queue import QueueSettings, QueueError, create_queue\n"
        "try:\n"
        "    create_queue(QueueSettings(url='redis://127.0.0.1:1/0'))\n"
        "except QueueError as e:\n"
        "    print(e)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "'redis' package is not installed" in out.stdout and "nwpipe[redis]" in out.stdout


def run_cli(*args, cwd, env_extra=None, timeout=60):
    import os

    env = {k: v for k, v in os.environ.items() if k != "NWPIPE_CONFIG"}
    env["NWPIPE_LOAD_PLUGINS"] = ""
    env.update(env_extra or {})
    return subprocess.run([sys.executable, "-m", "nwpipe", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


def probe_config(tmp_path, url, shards=4, prefix="nwpipe"):
    (tmp_path / "c.toml").write_text(
        f'[queue]\nurl = "{url}"\nshards = {shards}\nprefix = "{prefix}"\n'
        '[outputs.out]\ntype = "stdout"\n')


async def test_check_probe_says_whether_redis_answers_and_shards_match(own_redis, tmp_path):
    own_redis.command("CONFIG", "SET", "requirepass", "s3cret-pw")
    url = own_redis.url.replace("redis://", "redis://:${REDIS_PASSWORD}@")
    env = {"REDIS_PASSWORD": "s3cret-pw"}
    probe_config(tmp_path, url)
    proc = run_cli("check", "--probe", "-c", "c.toml", cwd=tmp_path, env_extra=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "queue: redis://127.0.0.1" in proc.stdout and "no queue yet" in proc.stdout
    # a queue created with 4 shards, checked with a config that says 8
    q = RedisQueue(QueueSettings(url=own_redis.url.replace("redis://", "redis://:s3cret-pw@"),
                                 shards=4))
    await q.open()
    await q.close()
    probe_config(tmp_path, url, shards=8)
    proc = run_cli("check", "--probe", "-c", "c.toml", cwd=tmp_path, env_extra=env)
    assert proc.returncode == 1
    assert "the queue has 4 shards and [queue] shards = 8: set shards = 4" in proc.stdout
    probe_config(tmp_path, url, shards=4)
    proc = run_cli("check", "--probe", "-c", "c.toml", cwd=tmp_path, env_extra=env)
    assert proc.returncode == 0 and "4 shards as configured" in proc.stdout
    proc = run_cli("check", "--probe", "-c", "c.toml", cwd=tmp_path,
                   env_extra={"REDIS_PASSWORD": "wrong"})
    assert proc.returncode == 1 and "authentication failed" in proc.stdout
    own_redis.stop()
    proc = run_cli("check", "--probe", "-c", "c.toml", cwd=tmp_path, env_extra=env)
    assert proc.returncode == 1 and "cannot reach Redis" in proc.stdout
    for text in (proc.stdout, proc.stderr):
        assert "s3cret-pw" not in text and "Traceback" not in text


def test_a_test_server_whose_port_was_taken_meanwhile_starts_on_another(own_redis, tmp_path):
    """The port picked for a test's redis-server can be taken before it binds (by a
    server an earlier test or another run started): the test then gets a server of its
    own elsewhere, never the other one, whose owner may stop it mid-test."""
    from redisserver import RedisServer

    late = RedisServer(tmp_path / "late", port=own_redis.port)  # the port is taken
    try:
        late.start()
        assert late.port != own_redis.port
        assert late.proc is not None and late.server_pid() == late.proc.pid
        assert own_redis.proc is not None and own_redis.server_pid() == own_redis.proc.pid
    finally:
        late.stop()
    assert late.proc is not None and late.proc.poll() is not None
