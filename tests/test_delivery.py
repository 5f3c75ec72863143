"""The delivery engine: ordering per alert, retries, backoff, batching, isolation, shutdown.

These drive the engine with small in-process outputs written against the public output
contract, exactly as a user's plugin would be; the webhook tests cover real HTTP.
"""

from __future__ import annotations

import asyncio
import random
import time

import orjson
import pytest

from nwpipe import Delivered, Failed, Output, Retry
from nwpipe.config import BatchPolicy, EngineSettings, RetryPolicy
from nwpipe.engine.deadletter import DeadLetterFile, read_records
from nwpipe.engine.delivery import DeliveryEngine, backoff_delay
from nwpipe.outputs import Delivery

FAST = RetryPolicy(max_attempts=5, initial_backoff=0.001, max_backoff=0.01, max_elapsed=5)


class Recorder(Output):
    """Records every batch; answers from a script of results (default: Delivered)."""

    def __init__(self, name="rec", script=None, delay=None):
        super().__init__(name, {})
        self.script = list(script or [])
        self.delay = delay
        self.batches: list[list[str]] = []
        self.calls = 0
        self.times: list[float] = []
        self.opened = self.closed = False

    async def open(self):
        self.opened = True

    async def send(self, batch):
        self.calls += 1
        self.times.append(time.monotonic())
        if self.delay:
            await asyncio.sleep(self.delay())
        result = self.script.pop(0) if self.script else Delivered()
        if isinstance(result, BaseException):
            raise result
        if isinstance(result, Delivered):
            self.batches.append([f"{d.event['id']}:{d.event['n']}" for d in batch])
        return result

    async def close(self):
        self.closed = True

    @property
    def delivered(self):
        return [item for b in self.batches for item in b]


def delivery(alert, n, output="rec"):
    event = {"id": alert, "n": n, "customer": "acme", "alerttype": "ongoing"}
    return Delivery(id=f"d-{alert}-{n}", body=event, event=event, output=output, source="t", line=n)


async def until(condition, timeout: float = 30.0) -> None:
    """Wait for ``condition()`` to hold, with a deadline that only a failure reaches."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.001)


def settings(**kw):
    kw.setdefault("retry", FAST)
    return EngineSettings(**kw)


@pytest.fixture
def dead(tmp_path):
    dl = DeadLetterFile(tmp_path / "dl.jsonl")
    yield dl
    dl.close()


def dead_records(dl):
    return [r for _, r in read_records(dl.path)] if dl.path.exists() else []


async def run_engine(output, cfg, dl, deliveries):
    engine = DeliveryEngine(output, cfg, dl)
    await engine.start()
    for d in deliveries:
        await engine.submit(d)
    await engine.drain()
    await engine.close()
    return engine


async def test_all_delivered_and_output_lifecycle(dead):
    out = Recorder()
    engine = await run_engine(out, settings(), dead, [delivery("a", i) for i in range(10)])
    assert out.delivered == [f"a:{i}" for i in range(10)]
    assert engine.stats.delivered == 10
    assert out.opened and out.closed
    assert not dead.path.exists()


async def test_order_per_alert_under_concurrency(dead):
    rng = random.Random(1)
    out = Recorder(delay=lambda: rng.random() * 0.003)
    alerts = [f"alert{i}" for i in range(40)]
    items = [delivery(a, n) for n in range(5) for a in alerts]
    rng.shuffle(alerts)
    await run_engine(out, settings(concurrency=32), dead, items)
    seen: dict[str, list[int]] = {}
    for item in out.delivered:
        alert, n = item.split(":")
        seen.setdefault(alert, []).append(int(n))
    assert len(out.delivered) == 200
    assert all(ns == list(range(5)) for ns in seen.values())


async def test_concurrency_is_used_across_alerts(dead):
    in_flight = 0
    peak = 0

    class Slow(Recorder):
        async def send(self, batch):
            nonlocal in_flight, peak
            in_flight += 1
            peak = max(peak, in_flight)
            await asyncio.sleep(0.01)
            in_flight -= 1
            return Delivered()

    await run_engine(Slow(), settings(concurrency=8), dead, [delivery(f"x{i}", 0) for i in range(32)])
    assert peak == 8


async def test_retry_then_delivered_records_nothing_dead(dead):
    out = Recorder(script=[Retry("HTTP 500", status=500), Retry("HTTP 503", status=503), Delivered()])
    engine = await run_engine(out, settings(), dead, [delivery("a", 0)])
    assert out.calls == 3 and out.delivered == ["a:0"]
    assert engine.stats.retried == 2
    assert not dead.path.exists()


async def test_retry_after_is_honoured(dead):
    out = Recorder(script=[Retry("HTTP 429", after=0.3, status=429), Delivered()])
    await run_engine(out, settings(), dead, [delivery("a", 0)])
    assert out.times[1] - out.times[0] >= 0.29


async def test_failed_goes_to_dead_letter_with_status(dead):
    out = Recorder(script=[Failed("HTTP 400 Bad Request", status=400, response="bad field")])
    engine = await run_engine(out, settings(), dead, [delivery("a", 0), delivery("b", 0)])
    [record] = dead_records(dead)
    assert record["stage"] == "deliver" and record["output"] == "rec"
    assert record["status"] == 400 and record["response"] == "bad field"
    assert record["event"]["id"] == "a" and record["delivery_id"] == "d-a-0"
    assert record["attempts"][0]["outcome"] == "failed"
    assert out.delivered == ["b:0"] and engine.stats.dead_lettered == 1


async def test_an_outage_is_retried_past_max_attempts_until_the_output_budget(dead):
    # max_attempts does not cut an outage short: the output's max_elapsed does
    out = Recorder(script=[Retry(f"HTTP 503 #{i}", status=503) for i in range(1000)])
    cfg = settings(retry=RetryPolicy(max_attempts=3, initial_backoff=0.01, max_backoff=0.01,
                                     max_elapsed=0.3))
    await run_engine(out, cfg, dead, [delivery("a", 0)])
    [record] = dead_records(dead)
    assert out.calls > 3
    assert "failing for longer than retry.max_elapsed (0.3 s)" in record["reason"]
    assert "last attempt: HTTP 503" in record["reason"]
    assert [a["reason"] for a in record["attempts"]] == [f"HTTP 503 #{i}" for i in range(out.calls)]
    assert record["status"] == 503


async def test_an_outage_shorter_than_the_budget_loses_nothing(dead):
    out = Recorder(script=[Retry("connection refused")] * 30)
    cfg = settings(retry=RetryPolicy(max_attempts=2, initial_backoff=0.005, max_backoff=0.01,
                                     max_elapsed=30))
    await run_engine(out, cfg, dead, [delivery("a", i) for i in range(5)])
    assert out.delivered == [f"a:{i}" for i in range(5)]
    assert out.calls == 35 and not dead_records(dead)


class Picky(Recorder):
    """Refuses (temporarily) every event of alert 'bad', delivers the others."""

    async def send(self, batch):
        self.calls += 1
        if any(d.event["id"] == "bad" for d in batch):
            await asyncio.sleep(0.005)
            return Retry("HTTP 500", status=500)
        self.batches.append([f"{d.event['id']}:{d.event['n']}" for d in batch])
        return Delivered()


async def test_max_attempts_limits_an_events_own_failures(dead):
    out = Picky()
    cfg = settings(concurrency=2, retry=RetryPolicy(max_attempts=3, initial_backoff=0.01,
                                                    max_backoff=0.01, max_elapsed=60))
    events = [delivery("bad", 0)] + [delivery(f"ok{i}", 0) for i in range(30)]
    engine = DeliveryEngine(out, cfg, dead)
    await engine.start()
    for d in events:
        await engine.submit(d)
        await asyncio.sleep(0.002)  # others keep being delivered while 'bad' retries
    await engine.drain()
    await engine.close()
    [record] = dead_records(dead)
    assert record["event"]["id"] == "bad"
    assert "gave up after 3 attempts while the output delivered other events" in record["reason"]
    assert len(out.delivered) == 30


async def test_retry_after_past_the_budget_gives_up_at_once(dead):
    out = Recorder(script=[Retry("HTTP 429", after=60, status=429)])
    cfg = settings(retry=RetryPolicy(max_attempts=5, max_elapsed=1))
    started = time.monotonic()
    await run_engine(out, cfg, dead, [delivery("a", 0)])
    assert time.monotonic() - started < 1
    assert "failing for longer than retry.max_elapsed" in dead_records(dead)[0]["reason"]


async def test_later_events_of_a_dead_lettered_alert_follow_it(dead):
    out = Recorder(script=[Failed("HTTP 400", status=400)])
    await run_engine(out, settings(), dead, [delivery("a", 0), delivery("b", 0),
                                             delivery("a", 1), delivery("a", 2)])
    records = dead_records(dead)
    assert [(r["event"]["id"], r["event"]["n"]) for r in records] == [("a", 0), ("a", 1), ("a", 2)]
    assert records[0]["reason"] == "HTTP 400"
    assert {r["reason"] for r in records[1:]} == {"an earlier event of this alert was dead-lettered"}
    assert out.delivered == ["b:0"]


async def test_exceptions_from_send(dead):
    out = Recorder(script=[ConnectionResetError("reset by peer"), ValueError("plugin bug")])
    await run_engine(out, settings(), dead, [delivery("a", 0)])
    [record] = dead_records(dead)
    assert record["attempts"][0]["outcome"] == "retry"
    assert "reset by peer" in record["attempts"][0]["reason"]
    assert "output raised ValueError: plugin bug" in record["reason"]


async def test_retrying_alert_does_not_hold_up_others(dead):
    out = Recorder(script=[Retry("503", after=1.0)])
    cfg = settings(concurrency=2)
    engine = DeliveryEngine(out, cfg, dead)
    await engine.start()
    await engine.submit(delivery("slow", 0))
    await until(lambda: out.calls == 1)  # slow's first attempt failed: it waits 1 s
    for i in range(5):
        await engine.submit(delivery("fast", i))
    await until(lambda: len(out.delivered) == 5)
    assert out.delivered == [f"fast:{i}" for i in range(5)]
    await engine.drain()
    await engine.close()
    assert out.delivered[-1] == "slow:0"


async def test_a_full_failing_output_refuses_to_take_more_when_asked_to_spill(dead):
    down = Recorder("down", script=[Retry("connection refused")] * 1000)
    cfg_down = settings(queue_size=5, retry=RetryPolicy(max_attempts=1000, initial_backoff=0.05,
                                                       max_backoff=0.05, max_elapsed=0.5))
    e_down = DeliveryEngine(down, cfg_down, dead)
    await e_down.start()
    taken = [await e_down.submit(delivery(f"a{i}", 0, "down"), spill=True) for i in range(5)]
    while not e_down.failing:
        await asyncio.sleep(0.01)
    assert e_down.full_and_failing
    started = time.monotonic()
    assert await e_down.submit(delivery("a5", 0, "down"), spill=True) is False
    assert time.monotonic() - started < 0.1  # the caller keeps it (on disk), no wait
    await e_down.drain()
    await e_down.close()
    assert taken == [True] * 5
    records = dead_records(dead)
    assert len(records) == 5  # the budget (max_elapsed) dead-letters what it took
    assert all("failing for longer than retry.max_elapsed" in r["reason"] for r in records)


async def test_backpressure_when_healthy_but_slow(dead):
    out = Recorder(delay=lambda: 0.005)
    await run_engine(out, settings(queue_size=2), dead, [delivery(f"a{i}", 0) for i in range(20)])
    assert len(out.delivered) == 20 and not dead.path.exists()


async def test_batches_respect_limits_and_order(dead):
    out = Recorder()
    items = [delivery(f"a{i % 7}", i // 7) for i in range(70)]
    cfg = settings(batch=BatchPolicy(max_events=10, max_wait=0.05))
    await run_engine(out, cfg, dead, items)
    assert all(len(b) <= 10 for b in out.batches)
    assert max(len(b) for b in out.batches) == 10
    assert sorted(out.delivered) == sorted(f"a{i % 7}:{i // 7}" for i in range(70))
    positions: dict[str, list[int]] = {}
    for item in out.delivered:
        alert, n = item.split(":")
        positions.setdefault(alert, []).append(int(n))
    assert all(ns == sorted(ns) for ns in positions.values())


async def test_batch_max_bytes(dead):
    out = Recorder()
    size = len(orjson.dumps(delivery("a0", 0).body)) + 1
    cfg = settings(batch=BatchPolicy(max_events=100, max_bytes=size * 3, max_wait=0.05))
    await run_engine(out, cfg, dead, [delivery(f"a{i}", 0) for i in range(10)])
    assert max(len(b) for b in out.batches) == 3
    assert len(out.delivered) == 10


async def test_rate_limit_spaces_sends(dead):
    out = Recorder()
    await run_engine(out, settings(concurrency=4, rate_limit=50), dead,
                     [delivery(f"a{i}", 0) for i in range(11)])
    assert out.times[-1] - out.times[0] >= 0.19  # 10 intervals of 20 ms


async def test_drain_deadline_dead_letters_the_rest(dead):
    out = Recorder(delay=lambda: 0.2)
    engine = DeliveryEngine(out, settings(concurrency=1), dead)
    await engine.start()
    for i in range(5):
        await engine.submit(delivery(f"a{i}", 0))
    await engine.refuse("interrupted")
    await engine.submit(delivery("late", 0))
    await engine.drain(timeout=0.05)
    await engine.close()
    reasons = [r["reason"] for r in dead_records(dead)]
    ids = {r["event"]["id"] for r in dead_records(dead)}
    assert ids == {"a0", "a1", "a2", "a3", "a4", "late"}
    assert "interrupted" in reasons


def test_backoff_is_full_jitter_and_capped():
    assert backoff_delay(1, 0.5, 30, rng=lambda: 1.0) == 0.5
    assert backoff_delay(4, 0.5, 30, rng=lambda: 1.0) == 4.0
    assert backoff_delay(20, 0.5, 30, rng=lambda: 1.0) == 30
    assert backoff_delay(3, 0.5, 30, rng=lambda: 0.0) == 0.0


@pytest.mark.parametrize("concurrency,alerts", [(1, 7), (4, 1)])
async def test_a_filling_batch_takes_new_events_of_its_own_lanes_at_once(dead, concurrency,
                                                                         alerts):
    # One lane being filled (concurrency = 1 puts every event in one lane; one alert
    # id does too): events arriving for it must join the batch at once, not wait for
    # max_wait while the batch holds the only worker that could take them.
    out = Recorder()
    cfg = settings(concurrency=concurrency,
                   batch=BatchPolicy(max_events=50, max_wait=60.0))
    engine = DeliveryEngine(out, cfg, dead)
    await engine.start()
    try:
        for i in range(100):
            await engine.submit(delivery(f"a{i % alerts}", i // alerts))
            await asyncio.sleep(0)  # the reader yields between chunks, as `nwpipe run` does
        # two full batches: sent long before max_wait (60 s) could end either
        await until(lambda: len(out.delivered) == 100, timeout=20.0)
        assert [len(b) for b in out.batches] == [50, 50]
    finally:
        await engine.drain()
        await engine.close()
