"""Dead letters in the Redis stream PREFIX:dead, and `nwpipe replay redis://…` / `--queue`.

A real redis-server, the real CLI in a subprocess, a real receiver on 127.0.0.1.
"""

from __future__ import annotations

import json

import orjson
import pytest
from test_replay import config, event, received, run_nwpipe, status_by_id

from nwpipe.engine.deadletter import event_record
from nwpipe.errors import NwpipeError
from nwpipe.queue.redisdead import RedisDeadLetters, RedisRewrite


def stream_records(server, prefix="nwpipe"):
    """The records in PREFIX:dead, in order (read with redis-cli, not with nwpipe)."""
    import redis

    r = redis.Redis.from_url(server.url)
    try:
        return [orjson.loads(f[b"r"]) for _, f in r.xrange(f"{prefix}:dead")]
    finally:
        r.close()


def records(events, output="soc"):
    return [event_record(e, stage="deliver", output=output, source="serve 127.0.0.1", line=0,
                         reason="HTTP 503", delivery_id=f"nwp_{i:032x}")
            for i, e in enumerate(events)]


async def test_writer_adds_file_format_records_in_order(own_redis):
    writer = RedisDeadLetters(own_redis.url, "fleet")
    writer.check()
    writer.write(records([event(1), event(2)]))
    writer.write_raw(orjson.dumps(records([event(3)])[0]) + b"\n")
    assert writer.pending == 3  # sent at the end of this turn of the loop
    writer.close()
    got = stream_records(own_redis, "fleet")
    assert [r["event"]["id"] for r in got] == ["alert-1", "alert-2", "alert-3"]
    assert got[0]["nwpipe_dead_letter"] == 1 and got[0]["stage"] == "deliver"
    assert writer.count == 2 and "fleet:dead" in writer.path and "redis://127.0.0.1" in writer.path


def test_writer_says_where_when_redis_is_down(own_redis):
    url = own_redis.url.replace("redis://", "redis://:hunter2@")
    own_redis.stop()
    writer = RedisDeadLetters(url)
    with pytest.raises(NwpipeError) as err:
        writer.check()
    assert "cannot reach Redis" in str(err.value) and "hunter2" not in str(err.value)


async def test_replay_from_redis_sends_again_and_keeps_what_fails(own_redis, receiver, tmp_path):
    writer = RedisDeadLetters(own_redis.url)
    writer.write(records([event(i) for i in range(6)]))
    writer.close()
    (tmp_path / "c.toml").write_text(config(receiver.url))
    receiver.handler = status_by_id({"alert-4"})  # still refused: stays, with the new reason
    url = own_redis.url.replace("redis://", "redis://:@")  # an empty password is fine
    proc = await run_nwpipe("replay", url, "-c", "c.toml", cwd=tmp_path)
    assert proc.returncode == 3, proc.stderr
    got = received(receiver)
    assert sorted(i for _, i, _ in got) == [f"alert-{i}" for i in range(6) if i != 4]
    # the same delivery ids as in the records
    assert {w for _, _, w in got} == {f"nwp_{i:032x}" for i in range(6) if i != 4}
    left = stream_records(own_redis)
    assert [r["event"]["id"] for r in left] == ["alert-4"]
    assert left[0]["reason"].startswith("HTTP 400") and left[0]["delivery_id"] == f"nwp_{4:032x}"
    assert "1 record remains in redis://127.0.0.1" in proc.stderr
    # fixed receiver: replay --queue (the config's [queue] url) empties the stream
    receiver.handler = None
    (tmp_path / "c.toml").write_text(config(receiver.url, extra=f'[queue]\nurl = "{own_redis.url}"\n'))
    proc = await run_nwpipe("replay", "--queue", "-c", "c.toml", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert stream_records(own_redis) == []
    assert received(receiver)[-1][1] == "alert-4"


async def test_replay_leaves_records_added_meanwhile(own_redis):
    writer = RedisDeadLetters(own_redis.url)
    writer.write(records([event(1), event(2)]))
    writer.flush()
    rewrite = RedisRewrite(own_redis.url)
    lines = rewrite.open()
    assert [json.loads(line)["event"]["id"] for line in lines] == ["alert-1", "alert-2"]
    second = RedisRewrite(own_redis.url)
    with pytest.raises(NwpipeError) as err:
        second.open()
    assert "another replay" in str(err.value)
    writer.write(records([event(3)]))  # a worker dead-letters while the replay runs
    writer.close()
    rewrite.remaining.write_raw(lines[1])  # alert-1 delivered, alert-2 kept
    rewrite.commit()
    assert [r["event"]["id"] for r in stream_records(own_redis)] == ["alert-3", "alert-2"]


async def test_replay_needs_a_source(tmp_path):
    (tmp_path / "c.toml").write_text(config("http://127.0.0.1:9"))
    proc = await run_nwpipe("replay", "--queue", "-c", "c.toml", cwd=tmp_path)
    assert proc.returncode != 0 and "no [queue] url" in proc.stderr
    assert "Traceback" not in proc.stderr
    proc = await run_nwpipe("replay", "-c", "c.toml", cwd=tmp_path)
    assert proc.returncode != 0 and "give a dead-letter file" in proc.stderr
