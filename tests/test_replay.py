"""`nwpipe replay`: the real command against a real receiver on 127.0.0.1.

The dead-letter files come from real runs that failed, as a user would have them.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys

from aiohttp import web


def nwpipe(*args, cwd, input=None, timeout=60):
    env = {k: v for k, v in os.environ.items() if k != "NWPIPE_CONFIG"}
    env["NWPIPE_LOAD_PLUGINS"] = ""
    return subprocess.run([sys.executable, "-m", "nwpipe", *args], input=input, cwd=cwd,
                          env=env, capture_output=True, text=True, timeout=timeout)


async def run_nwpipe(*args, cwd, input=None):
    """The CLI in a thread, so that the test's receiver keeps answering meanwhile."""
    return await asyncio.to_thread(nwpipe, *args, cwd=cwd, input=input)


def event(i, customer="acme", **extra):
    return {"id": f"alert-{i}", "customer": customer, "alerttype": "start", "updatecount": 1,
            **extra}


def jsonl(events):
    return "".join(json.dumps(e) + "\n" for e in events)


def config(url, outputs=("soc",), extra=""):
    text = extra
    for name in outputs:
        text += f"""
[outputs.{name}]
type = "webhook"
url = "{url}/{name}"
[outputs.{name}.retry]
max_attempts = 2
initial_backoff = 0.01
max_backoff = 0.01
"""
    return text


def lines(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def received(receiver, path=None):
    """(path, alert id, webhook-id) of each request the receiver answered with 2xx."""
    return [(r.path, r.json()["id"], r.headers["webhook-id"]) for r in receiver.requests
            if (path is None or r.path == path) and getattr(r, "status", 200) < 300]


def status_by_id(failing: set[str], status=400):
    """A receiver handler answering ``status`` for these alert ids, 200 for the rest."""
    async def handler(request, record):
        record.status = status if record.json()["id"] in failing else 200
        if record.status != 200:
            return web.Response(status=record.status, text="no thanks")
        return None
    return handler


async def failed_run(receiver, tmp_path, events, outputs=("soc",), status=400):
    """A run in which every delivery fails; returns the dead-letter records."""
    (tmp_path / "c.toml").write_text(config(receiver.url, outputs))
    receiver.handler = status_by_id({e["id"] for e in events}, status)
    proc = await run_nwpipe("run", "-c", "c.toml", "--dead-letter", "dl.jsonl",
                            input=jsonl(events), cwd=tmp_path)
    assert proc.returncode == 3, proc.stderr
    receiver.requests.clear()
    receiver.handler = status_by_id(set())
    return lines(tmp_path / "dl.jsonl")


async def test_replay_delivers_with_the_same_ids_and_removes_the_file(receiver, tmp_path):
    records = await failed_run(receiver, tmp_path, [event(i) for i in range(5)])
    assert [r["stage"] for r in records] == ["deliver"] * 5
    proc = await run_nwpipe("replay", "dl.jsonl", "-c", "c.toml", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    got = received(receiver)
    assert sorted(got) == sorted(("/soc", r["event"]["id"], r["delivery_id"]) for r in records)
    assert not (tmp_path / "dl.jsonl").exists()
    assert "replayed 5 of 5 records from dl.jsonl; soc: 5 delivered" in proc.stderr
    assert "dl.jsonl removed: nothing remains" in proc.stderr
    assert os.listdir(tmp_path) == ["c.toml"]  # no temporary file left behind


async def test_what_fails_again_stays_with_its_history(receiver, tmp_path):
    await failed_run(receiver, tmp_path, [event(i) for i in range(4)])
    receiver.handler = status_by_id({"alert-2"}, status=422)
    proc = await run_nwpipe("replay", "dl.jsonl", "-c", "c.toml", cwd=tmp_path)
    assert proc.returncode == 3, proc.stderr
    assert sorted(i for _, i, _ in received(receiver)) == ["alert-0", "alert-1", "alert-3"]
    [left] = lines(tmp_path / "dl.jsonl")
    assert left["event"]["id"] == "alert-2" and left["status"] == 422
    assert left["response"] == "no thanks" and left["line"] == 3
    # the first run's attempt and the replay's
    assert [a["status"] for a in left["attempts"]] == [400, 422]
    assert "1 record remains in dl.jsonl" in proc.stderr


async def test_output_option_leaves_other_records_untouched(receiver, tmp_path):
    await failed_run(receiver, tmp_path, [event(i) for i in range(3)], outputs=("soc", "ops"))
    before = (tmp_path / "dl.jsonl").read_bytes().splitlines(keepends=True)
    ops_lines = [line for line in before if json.loads(line)["output"] == "ops"]
    assert len(before) == 6 and len(ops_lines) == 3
    proc = await run_nwpipe("replay", "dl.jsonl", "-c", "c.toml", "--output", "soc",
                            cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert {p for p, _, _ in received(receiver)} == {"/soc"}
    assert (tmp_path / "dl.jsonl").read_bytes().splitlines(keepends=True) == ops_lines
    assert "3 kept (not for output 'ops')" not in proc.stderr
    assert "3 kept (not for output 'soc')" in proc.stderr
    proc = await run_nwpipe("replay", "dl.jsonl", "-c", "c.toml", "--output", "sco",
                            cwd=tmp_path)
    assert proc.returncode == 1
    assert "no output named 'sco'" in proc.stderr and "did you mean 'soc'" in proc.stderr


async def test_records_for_an_output_no_longer_configured_stay(receiver, tmp_path):
    await failed_run(receiver, tmp_path, [event(1)], outputs=("soc", "gone"))
    (tmp_path / "c2.toml").write_text(config(receiver.url, ("soc",)))
    proc = await run_nwpipe("replay", "dl.jsonl", "-c", "c2.toml", cwd=tmp_path)
    assert proc.returncode == 3
    assert "output 'gone' is not in the config" in proc.stderr
    assert [r["output"] for r in lines(tmp_path / "dl.jsonl")] == ["gone"]
    assert [p for p, _, _ in received(receiver)] == ["/soc"]


async def test_a_failed_mapping_is_mapped_again(receiver, tmp_path):
    broken = config(receiver.url, extra='[mappings.m.fields]\ntitle = "{{ extra.name }}"\n')
    broken = broken.replace('url = ', 'mapping = "m"\nurl = ', 1)
    (tmp_path / "c.toml").write_text(broken)
    proc = await run_nwpipe("run", "-c", "c.toml", "--dead-letter", "dl.jsonl",
                            input=jsonl([event(1), event(2, extra={"name": "x"})]), cwd=tmp_path)
    assert proc.returncode == 3
    [record] = lines(tmp_path / "dl.jsonl")
    assert (record["stage"], record["output"], record["line"]) == ("map", "soc", 1)
    # still broken: stays, as a mapping failure
    receiver.requests.clear()
    proc = await run_nwpipe("replay", "dl.jsonl", "-c", "c.toml", cwd=tmp_path)
    assert proc.returncode == 3 and receiver.requests == []
    assert [r["stage"] for r in lines(tmp_path / "dl.jsonl")] == ["map"]
    # fixed: delivered with the new mapping and the same delivery id
    (tmp_path / "c.toml").write_text(broken.replace("{{ extra.name }}",
                                                    "{{ extra.name if extra is defined else 'none' }}"))
    proc = await run_nwpipe("replay", "dl.jsonl", "-c", "c.toml", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    [request] = receiver.requests
    assert request.json()["title"] == "none"
    assert request.headers["webhook-id"] == record["delivery_id"]
    assert not (tmp_path / "dl.jsonl").exists()


async def test_bad_input_is_decoded_again(receiver, tmp_path):
    (tmp_path / "c.toml").write_text(config(receiver.url))
    text = ('{"id": "alert-1", "customer": "acme",}\n'  # a trailing comma
            'garbage\n'
            + json.dumps({"id": "alert-3"}) + "\n")
    proc = await run_nwpipe("run", "-c", "c.toml", "--dead-letter", "dl.jsonl", input=text,
                            cwd=tmp_path)
    assert proc.returncode == 3 and receiver.requests == []
    original = (tmp_path / "dl.jsonl").read_bytes().splitlines(keepends=True)
    records = [json.loads(line) for line in original]
    assert [(r["stage"], r["line"]) for r in records] == [("parse", 1), ("parse", 2),
                                                          ("parse", 3)]
    # The user fixes the first line and the third event by hand; the second stays bad.
    records[0]["raw"] = records[0]["raw"].replace(",}", "}")
    records[2]["event"]["customer"] = "acme"
    fixed = [json.dumps(records[0]).encode() + b"\n", original[1],
             json.dumps(records[2]).encode() + b"\n"]
    (tmp_path / "dl.jsonl").write_bytes(b"".join(fixed))
    proc = await run_nwpipe("replay", "dl.jsonl", "-c", "c.toml", cwd=tmp_path)
    assert proc.returncode == 3
    assert sorted(r.json()["id"] for r in receiver.requests) == ["alert-1", "alert-3"]
    assert (tmp_path / "dl.jsonl").read_bytes().splitlines(keepends=True) == [original[1]]
    assert "dl.jsonl:2: still not a valid event: not valid JSON" in proc.stderr


async def test_a_file_that_is_not_all_records(receiver, tmp_path):
    records = await failed_run(receiver, tmp_path, [event(1)])
    path = tmp_path / "dl.jsonl"
    # a line cut short (a disk that filled up, say) and an unrelated line
    path.write_bytes(path.read_bytes() + b'{"nwpipe_dead_letter": 1, "stage": "deli\n'
                     + b'[1, 2]\n')
    proc = await run_nwpipe("replay", "dl.jsonl", "-c", "c.toml", cwd=tmp_path)
    assert proc.returncode == 3
    assert [i for _, i, _ in received(receiver)] == [records[0]["event"]["id"]]
    assert path.read_bytes() == b'{"nwpipe_dead_letter": 1, "stage": "deli\n[1, 2]\n'
    assert "dl.jsonl:2: not a dead-letter record (not valid JSON) (kept)" in proc.stderr
    assert "dl.jsonl:3: not a dead-letter record (kept)" in proc.stderr


async def test_nothing_to_replay_leaves_the_file_alone(receiver, tmp_path):
    await failed_run(receiver, tmp_path, [event(1)], outputs=("soc", "ops"))
    path = tmp_path / "dl.jsonl"
    (tmp_path / "c2.toml").write_text(config(receiver.url, ("soc", "ops", "idle")))
    before = path.stat()
    proc = await run_nwpipe("replay", "dl.jsonl", "-c", "c2.toml", "--output", "idle",
                            cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    after = path.stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    assert receiver.requests == []


def test_missing_file_is_a_clear_error(tmp_path):
    proc = nwpipe("replay", "nope.jsonl", cwd=tmp_path)
    assert proc.returncode == 1
    assert proc.stderr.strip() == "nwpipe: error: nope.jsonl: no such dead-letter file"
    assert "replay" in nwpipe("--help", cwd=tmp_path).stdout
    text = nwpipe("replay", "--help", cwd=tmp_path).stdout
    for word in ("DEAD_LETTER", "--output", "-c FILE", "--shutdown-timeout", "atomically"):
        assert word in text


async def test_an_edited_delivery_id_cannot_inject_headers(receiver, tmp_path):
    records = await failed_run(receiver, tmp_path, [event(1)])
    good_id = records[0]["delivery_id"]
    records[0]["delivery_id"] = "nwp_x\r\nX-Injected: yes"
    (tmp_path / "dl.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    proc = await run_nwpipe("replay", "dl.jsonl", "-c", "c.toml", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    [request] = receiver.requests
    assert "X-Injected" not in request.headers
    assert request.headers["webhook-id"] == good_id  # rebuilt from the event, as first sent
