"""The hand-over between two delivery engines of one output across a config reload:
what waits moves to the new engine, what is in flight finishes on the old one, and no
alert's later event is sent before its earlier one is settled, whether each engine has
one lane per alert (concurrency > 1) or one lane for everything (concurrency = 1).

Driven with an in-process output written against the public output contract; the
end-to-end test with real processes and receivers is tests/test_reload.py.
"""

from __future__ import annotations

import asyncio

import pytest

from nwpipe import Delivered, Output
from nwpipe.config import EngineSettings
from nwpipe.engine.deadletter import DeadLetterFile
from nwpipe.engine.delivery import DeliveryEngine
from nwpipe.outputs import Delivery


class Gate(Output):
    """Records each send in a shared journal; holds every send until it is let go."""

    def __init__(self, name: str, journal: list, hold: bool):
        super().__init__(name, {})
        self.journal = journal
        self.open_gate = asyncio.Event()
        if not hold:
            self.open_gate.set()

    async def send(self, batch):
        for d in batch:
            self.journal.append(("sent", self.name, d.id))
        await self.open_gate.wait()
        for d in batch:
            self.journal.append(("done", self.name, d.id))
        return Delivered()


def delivery(alert: str, n: int) -> Delivery:
    event = {"id": alert, "customer": "acme", "alerttype": "start", "updatecount": n}
    return Delivery(id=f"{alert}:{n}", body=event, event=event, output="soc")


async def until(predicate, timeout: float = 30.0) -> None:
    async def poll():
        while not predicate():
            await asyncio.sleep(0.005)
    await asyncio.wait_for(poll(), timeout)


@pytest.mark.parametrize("old_lanes,new_lanes", [(2, 2), (2, 1), (1, 2), (1, 1)])
async def test_an_alert_waits_for_its_batch_in_flight_on_the_old_engine(tmp_path, old_lanes,
                                                                         new_lanes):
    journal: list = []
    dead = DeadLetterFile(str(tmp_path / "dl.jsonl"))
    old_output, new_output = Gate("old", journal, hold=True), Gate("new", journal, hold=False)
    old = DeliveryEngine(old_output, EngineSettings(concurrency=old_lanes), dead)
    new = DeliveryEngine(new_output, EngineSettings(concurrency=new_lanes), dead)
    await old.start()
    await new.start()
    for d in (delivery("a", 1), delivery("b", 1), delivery("a", 2), delivery("c", 1),
              delivery("b", 2)):
        await old.submit(d)
    in_flight = ["a:1", "b:1"][:old_lanes]
    await until(lambda: len(journal) == len(in_flight))

    moved = old.hand_over(new)
    assert sorted(d.id for d in moved) == sorted({"a:1", "b:1", "a:2", "c:1", "b:2"}
                                                 - set(in_flight))
    new.take(moved)
    if old_lanes > 1 and new_lanes > 1:
        # c has nothing on the old output: it goes at once; a and b wait
        await until(lambda: ("done", "new", "c:1") in journal)
        assert not [e for e in journal if e[1] == "new" and e[2][0] in "ab"]
    else:
        # one lane on either side: everything waits for the old output's batch (the
        # loop gets many turns in which the new engine could send, and does not)
        for _ in range(50):
            await asyncio.sleep(0)
        assert not [e for e in journal if e[1] == "new"]
    old_output.open_gate.set()
    await old.drain()
    await old.close()
    new.release_predecessor()
    await new.drain()
    await new.close()

    sent = [(who, i) for what, who, i in journal if what == "sent"]
    assert sorted(i for _w, i in sent) == ["a:1", "a:2", "b:1", "b:2", "c:1"]  # once each
    done_at = {i: n for n, (what, _w, i) in enumerate(journal) if what == "done"}
    sent_at = {i: n for n, (what, _w, i) in enumerate(journal) if what == "sent"}
    for alert in "ab":
        assert done_at[f"{alert}:1"] < sent_at[f"{alert}:2"], journal
    assert old.stats is new.stats and new.stats.delivered == 5
    dead.close()
