"""The chunked hot path of `nwpipe run`: a chunk of events routed, mapped and handed to an
engine at once (route_and_map_many, DeliveryEngine.offer_many), and delivery ids worked out
only when something needs one. The outcomes and guarantees are those of the event-by-event
path: per-alert order, dead letters with their ids, the same ids in single sends."""

from __future__ import annotations

import asyncio
import json

import pytest

from nwpipe import Delivered, Output, Retry
from nwpipe.config import BatchPolicy, EngineSettings, RetryPolicy, build_config
from nwpipe.engine.deadletter import DeadLetterFile
from nwpipe.engine.delivery import DeliveryEngine
from nwpipe.outputs import Delivery, delivery_id
from nwpipe.plugins import Plugins
from nwpipe.sources.decode import Event
from nwpipe.transform.route_map import route_and_map, route_and_map_many
from nwpipe.transform.routing import Router
from nwpipe.webhook.request import batch_id

FAST = RetryPolicy(max_attempts=5, initial_backoff=0.001, max_backoff=0.002, max_elapsed=30)


def event(alert: str, n: int, customer: str = "acme", **extra) -> dict:
    return {"id": alert, "customer": customer, "alerttype": "ongoing", "updatecount": n,
            "n": n, **extra}


def delivery(alert: str, n: int) -> Delivery:
    e = event(alert, n)
    return Delivery(None, e, e, "rec", "t", n)


async def until(condition, timeout: float = 30.0) -> None:
    """Wait for ``condition()`` to hold, with a deadline that only a failure reaches."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.001)


class Holding(Output):
    """Records what it delivers; the first send of a batch holding ``hold`` waits for
    ``release`` and then asks for a retry (the alert is in flight, then held)."""

    def __init__(self, hold: str):
        super().__init__("rec", {})
        self.hold = hold
        self.release = asyncio.Event()
        self.holding = False
        self.delivered: list[tuple[str, int]] = []

    async def send(self, batch):
        if any(d.event["id"] == self.hold for d in batch) and not self.release.is_set():
            self.holding = True
            await self.release.wait()
            return Retry("held on purpose")
        self.delivered.extend((d.event["id"], d.event["n"]) for d in batch)
        return Delivered()


@pytest.fixture
def dead(tmp_path):
    dl = DeadLetterFile(tmp_path / "dl.jsonl")
    yield dl
    dl.close()


@pytest.mark.parametrize("concurrency", [1, 4])
async def test_a_chunk_with_mixed_alerts_keeps_per_alert_order_while_one_is_held(dead,
                                                                                 concurrency):
    output = Holding(hold="a")
    engine = DeliveryEngine(output, EngineSettings(concurrency=concurrency, retry=FAST,
                                                   batch=BatchPolicy(max_events=3, max_wait=0)),
                            dead)
    await engine.start()
    assert engine.offer_many([delivery("a", 1)]) == 1
    await until(lambda: output.holding)  # alert a is in flight, and will be retried
    chunk = [delivery("b", 1), delivery("a", 2), delivery("c", 1), delivery("a", 3),
             delivery("b", 2), delivery("c", 2), delivery("a", 4)]
    assert engine.offer_many(chunk) == len(chunk)
    output.release.set()
    await engine.drain(timeout=30)
    await engine.close()
    for alert, count in (("a", 4), ("b", 2), ("c", 2)):
        assert [n for a, n in output.delivered if a == alert] == list(range(1, count + 1))
    if concurrency == 1:  # one lane: exactly the input order
        assert output.delivered == [("a", 1), ("b", 1), ("a", 2), ("c", 1), ("a", 3),
                                    ("b", 2), ("c", 2), ("a", 4)]
    assert engine.stats.delivered == 8 and engine.stats.dead_lettered == 0


async def test_offer_many_takes_what_fits_and_leaves_the_rest_in_order(dead):
    output = Holding(hold="x")
    engine = DeliveryEngine(output, EngineSettings(concurrency=2, retry=FAST, queue_size=3),
                            dead)
    await engine.start()
    chunk = [delivery(f"k{i}", 1) for i in range(5)]
    taken = engine.offer_many(chunk)
    assert taken == 3 and engine.backlog == 3
    for d in chunk[taken:]:
        await engine.submit(d)
    await engine.drain(timeout=30)
    await engine.close()
    assert sorted(output.delivered) == [(f"k{i}", 1) for i in range(5)]


async def test_a_chunk_behind_a_dead_lettered_alert_follows_it_with_its_ids(tmp_path, dead):
    class Refusing(Output):
        def __init__(self):
            super().__init__("rec", {})
            self.delivered: list[tuple[str, int]] = []

        async def send(self, batch):
            from nwpipe import Failed
            if any(d.event["id"] == "bad" for d in batch):
                return Failed("refused")
            self.delivered.extend((d.event["id"], d.event["n"]) for d in batch)
            return Delivered()

    output = Refusing()
    engine = DeliveryEngine(output, EngineSettings(concurrency=1, retry=FAST), dead)
    await engine.start()
    assert engine.offer_many([delivery("bad", 1)]) == 1
    await until(lambda: engine.stats.dead_lettered == 1)
    chunk = [delivery("ok", 1), delivery("bad", 2), delivery("ok", 2)]
    assert engine.offer_many(chunk) == 3
    await engine.drain(timeout=30)
    await engine.close()
    dead.close()
    assert output.delivered == [("ok", 1), ("ok", 2)]
    records = [json.loads(line) for line in (tmp_path / "dl.jsonl").read_text().splitlines()]
    assert [(r["event"]["id"], r["event"]["n"]) for r in records] == [("bad", 1), ("bad", 2)]
    # the ids were worked out for the dead letters, equal to the eager ones
    assert [r["delivery_id"] for r in records] == [delivery_id(event("bad", 1)),
                                                   delivery_id(event("bad", 2))]


def test_a_lazy_delivery_id_is_the_eager_one():
    e = event("alert-1", 7)
    lazy = Delivery(None, {"x": 1}, e, "o")
    assert lazy.id == delivery_id(e) == Delivery(delivery_id(e), {"x": 1}, e, "o").id
    assert lazy.attempts == [] and lazy.body_json() == b'{"x":1}'


def test_a_batch_id_is_stable_and_does_not_depend_on_ids_being_worked_out():
    batch = [delivery("a", 1), delivery("b", 1)]
    first = batch_id([d.seed for d in batch])
    again = [delivery("a", 1), delivery("b", 1)]
    for d in again:
        assert d.id.startswith("nwp_")  # worked out now: the batch id stays the same
    assert batch_id([d.seed for d in again]) == first
    # a replayed delivery carries its id from the dead-letter record: same batch id
    replayed = [Delivery(d.id, d.body, d.event, "rec") for d in again]
    assert batch_id([d.seed for d in replayed]) == first
    assert batch_id([d.seed for d in (delivery("a", 1), delivery("b", 2))]) != first
    assert batch_id([d.seed for d in reversed(batch)]) != first


CONFIG = """
[mappings.m.fields]
title = "{{ extra.name }}"

[outputs.soc]
type = "webhook"
url = "http://127.0.0.1:9/soc"
mapping = "m"
customers = ["acme", "globex"]

[outputs.audit]
type = "webhook"
url = "http://127.0.0.1:9/audit"
customers = ["globex"]
"""


def router(text: str) -> Router:
    import tomllib

    plugins = Plugins(load_entry_points=False)
    config = build_config(tomllib.loads(text), plugins.output_types,
                          source_types=plugins.source_types)
    return Router(config, plugins.jinja_filters)


def outcomes_of(outcome):
    return [outcome] if type(outcome) is Delivery else outcome


def shown(outcome):
    if type(outcome) is Delivery:
        return ("delivery", outcome.output, outcome.id, outcome.body_json(), outcome.source,
                outcome.line)
    return outcome


@pytest.mark.parametrize("text", [CONFIG, CONFIG.split("[outputs.audit]")[0]],
                         ids=["two outputs", "one output"])
def test_a_chunk_has_the_outcomes_of_its_events_one_by_one(text):
    routes = router(text).routes
    events = [event("a", 1, extra={"name": "x"}),            # mapped
              event("a", 2),                                  # its mapping fails
              {"id": "", "customer": "acme"},                 # not routable
              event("b", 1, customer="initech", extra={}),    # no output takes it
              event("c", 1, customer="globex", extra={"name": "y"}),  # both outputs
              {"customer": "acme"},                           # no id
              event("d", 1, extra={"name": 2**70})]           # beyond 64 bits: still JSON
    records = [Event(e, "in.jsonl", i + 1) for i, e in enumerate(events)]
    chunk = route_and_map_many(records, routes)
    assert len(chunk) == len(events)
    for record, outcome in zip(records, chunk):
        single = route_and_map(record.data, routes, record.source, record.line)
        assert [shown(o) for o in outcomes_of(outcome)] == [shown(o) for o in single]


# -- the real command: ids in single sends and in dead letters ---------------------------------


async def test_single_sends_and_dead_letters_carry_the_eager_ids(receiver, tmp_path):
    from test_replay import nwpipe  # the real CLI as a subprocess

    (tmp_path / "c.toml").write_text(f"""
[mappings.m.fields]
title = "{{{{ extra.name }}}}"

[outputs.soc]
type = "webhook"
url = "{receiver.url}/soc"
mapping = "m"
concurrency = 4
""")
    events = [event(f"alert-{i}", i, extra={"name": f"n{i}"}) for i in range(1, 40)]
    events[10] = event("alert-11", 11)  # its mapping fails: a dead letter
    text = "".join(json.dumps(e) + "\n" for e in events)
    proc = await asyncio.to_thread(nwpipe, "run", "-c", "c.toml", "--dead-letter", "dl.jsonl",
                                   cwd=tmp_path, input=text)
    assert proc.returncode == 3, proc.stderr
    sent = {r.json()["id"]: r.headers["webhook-id"] for r in receiver.requests}
    assert len(sent) == 38
    for e in events:
        if e["id"] != "alert-11":
            assert sent[e["id"]] == delivery_id(e)
    [record] = [json.loads(line) for line in (tmp_path / "dl.jsonl").read_text().splitlines()]
    assert record["stage"] == "map" and record["delivery_id"] == delivery_id(events[10])


async def test_a_reload_while_a_chunk_waits_for_room_maps_the_rest_again(tmp_path, receiver):
    """The reader waits mid-chunk for room in output a (its receiver holds a request);
    meanwhile a reload removes output b. The rest of the chunk, already mapped for the old
    outputs, is routed again with the new ones: nothing goes to the removed output, and
    every event is accounted for."""
    from test_reload import Run, reload_to, wait_until

    release = asyncio.Event()

    async def hold(request, record):
        await release.wait()
        return None  # then the default answer, 200

    receiver.handler = hold
    both = f"""
shutdown_timeout = 10
[outputs.a]
type = "webhook"
url = "{receiver.url}/a"
customers = ["acme"]
concurrency = 1
queue_size = 2

[outputs.b]
type = "file"
path = "b.jsonl"
customers = ["globex"]
"""
    config = tmp_path / "nwpipe.toml"
    config.write_text(both)
    pid_path = tmp_path / "nwpipe.pid"
    run = await Run(tmp_path, "run", "-c", str(config), "--pid-file", str(pid_path),
                    "--dead-letter", "dl.jsonl").start()
    try:
        events = [event(f"alert-{i}", 1, customer="acme" if i % 2 == 0 else "globex")
                  for i in range(40)]
        await run.send("".join(json.dumps(e) + "\n" for e in events).encode())  # one chunk
        b_file = tmp_path / "b.jsonl"
        # a holds alert-0 in flight and alert-2 waits: the reader waits at alert-4, after
        # handing b alert-1 and alert-3
        await wait_until(lambda: b_file.exists() and len(b_file.read_text().splitlines()) == 2,
                         "b's first events")
        await wait_until(lambda: len(receiver.requests) == 1, "a's request in flight")
        await wait_until(pid_path.exists, "the PID file")
        await reload_to(config, both.split("[outputs.b]")[0], run, pid_path)
        release.set()
        code = await run.finish()
    finally:
        run.kill()
    assert code == 0, "\n".join(run.stderr)
    assert not any("stopped" in line or "Traceback" in line for line in run.stderr), run.stderr
    sent = [r.json()["id"] for r in receiver.requests]
    assert sent == [f"alert-{i}" for i in range(0, 40, 2)]  # every acme event, in order
    assert [json.loads(line)["id"] for line in b_file.read_text().splitlines()] == \
        ["alert-1", "alert-3"]
    summary = run.stderr[-1]
    assert "read 40 events" in summary and "18 matched no output" in summary, summary
