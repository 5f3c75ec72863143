"""Order per alert survives dead letters: once an alert's event is dead-lettered for an
output, its later events for that output follow it into the dead-letter file, and a
replay sends them in their original order.

Proved end to end with the PagerDuty template against a receiver that keeps incidents
the way PagerDuty's Events API v2 does (trigger opens or updates the incident of a
dedup_key, resolve closes it, a resolve without an open incident is dropped): without
the rule, an alert whose ``start`` was dead-lettered would have its ``end`` delivered
first, and the replayed ``start`` would open an incident that is never resolved.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path

from aiohttp import web

ROUTING_KEY = "R0123456789abcdef0123456789abcde"


class PagerDuty:
    """Incidents by dedup_key, as PagerDuty keeps them; refuses the first trigger of
    ``refuse`` with 400 (a permanent failure: dead-lettered at once)."""

    def __init__(self, refuse: str):
        self.refuse = refuse
        self.refused = False
        self.open: dict[str, int] = {}      # dedup_key -> triggers folded in
        self.resolved: set[str] = set()
        self.actions: list[tuple[str, str]] = []

    async def handle(self, request, record):
        body = record.json()
        key, action = body["dedup_key"], body["event_action"]
        if key == self.refuse and not self.refused:
            self.refused = True
            return web.json_response({"status": "invalid event"}, status=400)
        self.actions.append((key, action))
        if action == "trigger":
            self.open[key] = self.open.get(key, 0) + 1
            self.resolved.discard(key)
        elif action == "resolve" and key in self.open:
            del self.open[key]
            self.resolved.add(key)
        return web.json_response({"status": "success", "dedup_key": key}, status=202)


def events() -> list[dict]:
    out = []
    for n, alerttype in enumerate(("start", "ongoing", "ongoing", "end")):
        for alert in ("a-1", "a-2", "a-3"):
            out.append({"id": alert, "customer": "acme", "alerttype": alerttype,
                        "updatecount": n, "severity": "high", "algorithm": "ddos",
                        "srcip": ["10.0.0.1"], "dstip": ["10.0.0.2"]})
    return out


def config(url: str) -> str:
    return f"""
[mappings.pagerduty]
template = "pagerduty.json.j2"
vars = {{ routing_key = "{ROUTING_KEY}" }}

[outputs.pagerduty]
type = "webhook"
url = "{url}/v2/enqueue"
mapping = "pagerduty"
concurrency = 4
"""


async def nwpipe(cwd: Path, *args: str, stdin: bytes = b""):
    env = {k: v for k, v in os.environ.items() if k != "NWPIPE_CONFIG"}
    env["NWPIPE_LOAD_PLUGINS"] = ""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "nwpipe", *args, cwd=cwd, env=env, stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(stdin), 60)
    return proc.returncode, out.decode(), err.decode()


async def test_a_dead_lettered_start_then_replay_ends_with_the_incident_resolved(tmp_path,
                                                                              receiver):
    pd = PagerDuty(refuse="a-2")
    receiver.handler = pd.handle
    (tmp_path / "c.toml").write_text(config(receiver.url))
    stream = "".join(json.dumps(e) + "\n" for e in events()).encode()
    code, _out, err = await nwpipe(tmp_path, "run", "-c", "c.toml", "--dead-letter", "dl.jsonl",
                                   stdin=stream)
    assert code == 3, err
    # a-2's start was refused: its ongoing and end did not overtake it
    assert [a for k, a in pd.actions if k == "a-2"] == []
    assert pd.resolved == {"a-1", "a-3"} and "a-2" not in pd.open
    records = [json.loads(line) for line in (tmp_path / "dl.jsonl").read_text().splitlines()]
    assert [(r["event"]["alerttype"], r["event"]["updatecount"]) for r in records] == [
        ("start", 0), ("ongoing", 1), ("ongoing", 2), ("end", 3)]
    assert records[0]["status"] == 400
    assert {r["reason"] for r in records[1:]} == {
        "an earlier event of this alert was dead-lettered"}
    assert "3 more events dead-lettered: an earlier event of this alert was dead-lettered" in err

    # the receiver is fixed: replay sends a-2's events in their original order
    code, _out, err = await nwpipe(tmp_path, "replay", "dl.jsonl", "-c", "c.toml")
    assert code == 0, err
    assert [a for k, a in pd.actions if k == "a-2"] == ["trigger", "trigger", "trigger",
                                                         "resolve"]
    assert pd.open == {}  # every incident ends resolved
    assert pd.resolved == {"a-1", "a-2", "a-3"}
    assert not (tmp_path / "dl.jsonl").exists() or not (tmp_path / "dl.jsonl").read_text()
