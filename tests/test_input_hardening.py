"""Damaged, huge, deep and big-number input: each costs at most its own piece, never the rest."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from nwpipe import jsonio
from nwpipe.engine.deadletter import DeadLetterFile, encode_record, raw_record
from nwpipe.outputs import Delivery, delivery_id
from nwpipe.sources.decode import Decoder, Event, Reject

from test_sources import decode, summary

BIG = 99999999999999999999999  # beyond 64 bits: orjson alone reads it as 1e+23


def pretty(i: int, indent: str = "") -> str:
    text = json.dumps({"id": f"e{i}", "customer": "acme", "srcip": ["192.0.2.1"],
                       "metrics": {"bits": {"max": i}}}, indent=2)
    return indent + text.replace("\n", "\n" + indent)


def nwpipe_run(tmp_path: Path, config: str, input: bytes, *args) -> subprocess.CompletedProcess:
    (tmp_path / "nwpipe.toml").write_text(config)
    env = {**os.environ, "NWPIPE_LOAD_PLUGINS": ""}
    env.pop("NWPIPE_CONFIG", None)
    return subprocess.run([sys.executable, "-m", "nwpipe", "run", "-c", "nwpipe.toml", *args],
                          input=input, capture_output=True, cwd=tmp_path, env=env, timeout=120)


FILE_OUTPUT = '[outputs.f]\ntype = "file"\npath = "out.jsonl"\n'


# -- 14.1: a damaged pretty-printed object costs one reject --------------------------------

@pytest.mark.parametrize("chunk", [None, 1, 7, 4096])
def test_an_object_cut_short_costs_one_reject(chunk):
    objects = [pretty(i) for i in range(6)]
    cut = objects[2][: objects[2].index('"bits"') + 12]  # a writer died mid-object
    data = ("\n".join(objects[:2] + [cut] + objects[3:]) + "\n").encode()
    items = decode(data, chunk)
    assert [i.data["id"] for i in items if isinstance(i, Event)] == ["e0", "e1", "e3", "e4", "e5"]
    rejects = [i for i in items if isinstance(i, Reject)]
    assert len(rejects) == 1
    assert rejects[0].line == 25
    assert "unfinished JSON object: a new value starts at line 34" in rejects[0].reason
    assert rejects[0].raw.startswith("{\n  \"id\": \"e2\"")


@pytest.mark.parametrize("chunk", [None, 3, 4096])
def test_a_stray_opening_line_costs_one_reject(chunk):
    objects = [pretty(i) for i in range(4)]
    data = ("\n".join(objects[:2] + ["{"] + objects[2:]) + "\n").encode()
    assert summary(decode(data, chunk)) == [
        ("E", 1, "e0"), ("E", 13, "e1"),
        ("R", 25, "unfinished JSON object: a new value starts at line 26 before it was closed"),
        ("E", 26, "e2"), ("E", 38, "e3")]


@pytest.mark.parametrize("chunk", [None, 5, 4096])
def test_damage_inside_a_pretty_printed_array_costs_one_element(chunk):
    objects = [pretty(i, "  ") for i in range(5)]
    cut = objects[1][: objects[1].index('"metrics"')]
    data = ("[\n" + ",\n".join([objects[0], cut, "  {"] + objects[2:]) + "\n]\n").encode()
    items = decode(data, chunk)
    assert [i.data["id"] for i in items if isinstance(i, Event)] == ["e0", "e2", "e3", "e4"]
    assert len([i for i in items if isinstance(i, Reject)]) == 2  # the cut one, the stray "{"


def test_nested_values_at_the_left_margin_are_not_mistaken_for_new_ones():
    # Not pretty-printed (the opening line holds members): no resynchronisation by layout.
    data = b'{"a": 1,\n "b": [\n{"x": 1},\n{"y": 2}\n]}\n{"id": "next"}\n'
    assert summary(decode(data)) == [("E", 1, None), ("E", 6, "next")]
    assert decode(data)[0].data == {"a": 1, "b": [{"x": 1}, {"y": 2}]}


def test_cli_twenty_thousand_pretty_events_with_one_damaged(tmp_path):
    objects = [pretty(i) for i in range(20000)]
    objects[10] = objects[10][:40]
    proc = nwpipe_run(tmp_path, FILE_OUTPUT, ("\n".join(objects) + "\n").encode(),
                      "--dead-letter", "dl.jsonl")
    assert proc.returncode != 0  # a dead letter was written
    delivered = (tmp_path / "out.jsonl").read_text().splitlines()
    assert len(delivered) == 19999
    dead = [json.loads(line) for line in (tmp_path / "dl.jsonl").read_text().splitlines()]
    assert len(dead) == 1 and dead[0]["stage"] == "parse"
    assert "unfinished JSON object" in dead[0]["reason"]


# -- 14.2: a one-line array longer than max_line_bytes is streamed -------------------------

@pytest.mark.parametrize("chunk", [None, 1, 13, 65536])
def test_a_long_one_line_array_is_streamed_with_the_limit_per_element(chunk):
    events = [{"id": i, "tricky": "x,]}[{\"\\"} for i in range(200)]
    events[50] = {"id": "big", "pad": "y" * 3000}
    data = json.dumps(events[:100] + [7] + events[100:]).encode() + b' {"id": "tail"}\n' \
        + b'{"id": "next"}\n'
    items = decode(data, chunk, max_line_bytes=1000)
    ids = [i.data["id"] for i in items if isinstance(i, Event)]
    assert ids == [e["id"] for e in events if e["id"] != "big"] + ["tail", "next"]
    assert [(r.line, r.reason) for r in items if isinstance(r, Reject)] == [
        (1, "JSON array element larger than max_line_bytes (1000)"),
        (1, "a JSON array element is not an object (got number)")]
    assert all(i.line == 1 for i in items[:-1]) and items[-1].line == 2


@pytest.mark.parametrize("chunk", [None, 3, 999])
def test_a_long_line_of_elements_inside_a_pretty_printed_array(chunk):
    body = json.dumps([{"id": i} for i in range(100)])[1:-1]
    data = f'[\n{body}, {{\n  "id": "multi"\n}},\n{{"id": "last"}}\n]\n'.encode()
    items = decode(data, chunk, max_line_bytes=200)
    assert summary(items)[-2:] == [("E", 2, "multi"), ("E", 5, "last")]
    assert len(items) == 102 and all(isinstance(i, Event) for i in items)


def test_a_long_array_keeps_memory_bounded():
    decoder = Decoder("test", max_line_bytes=1000)
    data = json.dumps([{"id": i, "pad": "p" * 100} for i in range(5000)]).encode()
    count = 0
    for i in range(0, len(data), 4096):
        count += len(decoder.feed(data[i:i + 4096]))
        assert decoder.buffered_bytes == 0 or decoder.buffered_bytes <= 1000 + 4096
    count += len(decoder.finish())
    assert count == 5000


def test_cli_one_line_array_of_20000_events_over_the_line_limit(tmp_path):
    events = [{"id": f"a{i}", "customer": "acme", "alerttype": "start", "n": i}
              for i in range(20000)]
    data = json.dumps(events).encode()
    assert len(data) > 1 << 20  # longer than the default max_line_bytes
    proc = nwpipe_run(tmp_path, FILE_OUTPUT, data)
    assert proc.returncode == 0, proc.stderr.decode()
    delivered = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert delivered == events


# -- 14.3: too deep is rejected at decode; the dead-letter writer never raises -------------

def deep(levels: int) -> bytes:
    return b'{"a":' * levels + b"1" + b"}" * levels


@pytest.mark.parametrize("levels", [jsonio.MAX_DEPTH + 1, 254, 300, 2000])
def test_too_deep_events_are_rejected_at_decode(levels):
    data = b'{"id": "before"}\n' + deep(levels) + b'\n[' + deep(levels) + b', {"id": "el"}]\n' \
        + b'{"id": "after"}\n'
    items = decode(data)
    assert summary(items) == [
        ("E", 1, "before"),
        ("R", 2, f"JSON nested deeper than {jsonio.MAX_DEPTH} levels (objects and arrays "
                 "inside each other); such an event could not be written to an output"),
        ("R", 3, items[2].reason), ("E", 3, "el"), ("E", 4, "after")]
    assert "nested deeper" in items[2].reason


def test_the_deepest_allowed_event_is_kept():
    items = decode(deep(jsonio.MAX_DEPTH) + b"\n")
    assert isinstance(items[0], Event)
    assert jsonio.depth(items[0].data) == jsonio.MAX_DEPTH


def test_the_dead_letter_writer_never_raises(tmp_path):
    nested: dict = {}
    inner = nested
    for _ in range(1000):
        inner["a"] = {}
        inner = inner["a"]
    record = raw_record("x", source="s", line=3, reason="why")
    record["event"] = nested
    line = encode_record(record)
    back = json.loads(line)
    assert back["event"] is None and back["reason"] == "why" and back["line"] == 3
    assert "could not be written as JSON" in back["encode_error"]
    assert back["event_text"].startswith("{'a': {'a':")
    dl = DeadLetterFile(tmp_path / "dl.jsonl")
    dl.write([record, raw_record("y", source="s", line=4, reason="ok")])
    dl.close()
    lines = (tmp_path / "dl.jsonl").read_text().splitlines()
    assert len(lines) == 2 and json.loads(lines[1])["raw"] == "y"


def test_cli_too_deep_event_ends_normally_with_the_rest_delivered(tmp_path):
    data = b'{"id": "a", "customer": "c"}\n' + deep(300) + b'\n{"id": "b", "customer": "c"}\n'
    proc = nwpipe_run(tmp_path, FILE_OUTPUT, data, "--dead-letter", "dl.jsonl")
    assert b"Traceback" not in proc.stderr
    assert [json.loads(x)["id"] for x in (tmp_path / "out.jsonl").read_text().splitlines()] \
        == ["a", "b"]
    dead = [json.loads(x) for x in (tmp_path / "dl.jsonl").read_text().splitlines()]
    assert len(dead) == 1 and "nested deeper" in dead[0]["reason"]


# -- 14.4: integers beyond 64 bits keep their exact value ----------------------------------

def test_big_integers_keep_their_exact_value():
    data = (f'{{"id": {BIG}, "neg": -18446744073709551617, "u64": 18446744073709551615, '
            f'"f": 1.5, "s": "{BIG}"}}\n').encode()
    for chunk in (None, 5):
        event = decode(data, chunk)[0].data
        assert event == {"id": BIG, "neg": -18446744073709551617, "u64": 18446744073709551615,
                         "f": 1.5, "s": str(BIG)}
        assert type(event["id"]) is int
    assert delivery_id(event) == delivery_id({"id": BIG})
    assert delivery_id(event) != delivery_id({"id": float(BIG)})


def test_big_integers_are_written_exactly():
    body = {"id": BIG, "list": [-(2 ** 70)], "text": "é"}
    delivery = Delivery(id="x", body=body, event=body, output="o")
    assert delivery.body_json() == \
        f'{{"id":{BIG},"list":[{-(2 ** 70)}],"text":"é"}}'.encode()
    assert jsonio.loads(delivery.body_json()) == body


def test_cli_big_integer_reaches_the_body_of_every_mapping_kind(tmp_path):
    config = FILE_OUTPUT + 'mapping = "m"\n' + (
        '[mappings.m]\nfields = { copy = "$.n", text = "{{ n }}", '
        'typed = { template = "{{ n }}", type = "int" } }\n')
    proc = nwpipe_run(tmp_path, config, f'{{"id": "x", "customer": "c", "n": {BIG}}}\n'.encode())
    assert proc.returncode == 0, proc.stderr.decode()
    line = (tmp_path / "out.jsonl").read_text()
    assert f'"n":{BIG}' in line and f'"copy":{BIG}' in line
    assert f'"text":"{BIG}"' in line and f'"typed":{BIG}' in line
    body_config = FILE_OUTPUT + 'mapping = "b"\n[mappings.b]\nbody = \'{"n": {{ n }}}\'\n'
    (tmp_path / "out.jsonl").unlink()
    proc = nwpipe_run(tmp_path, body_config,
                      f'{{"id": "x", "customer": "c", "n": {BIG}}}\n'.encode())
    assert proc.returncode == 0, proc.stderr.decode()
    assert (tmp_path / "out.jsonl").read_text() == f'{{"n":{BIG}}}\n'


def test_cli_a_body_template_nesting_too_deep_dead_letters_that_event(tmp_path):
    config = FILE_OUTPUT + 'mapping = "b"\n[mappings.b]\n' + \
        'body = \'{% if n %}{% for i in range(300) %}[{% endfor %}1' + \
        '{% for i in range(300) %}]{% endfor %}{% else %}{"ok": 1}{% endif %}\'\n'
    events = [{"id": "a", "customer": "c", "n": 0}, {"id": "b", "customer": "c", "n": 1},
              {"id": "c", "customer": "c", "n": 0}]
    proc = nwpipe_run(tmp_path, config, "".join(json.dumps(e) + "\n" for e in events).encode(),
                      "--dead-letter", "dl.jsonl")
    assert proc.returncode == 3, proc.stderr.decode()
    assert b"Traceback" not in proc.stderr
    assert (tmp_path / "out.jsonl").read_text() == '{"ok":1}\n{"ok":1}\n'
    [record] = [json.loads(x) for x in (tmp_path / "dl.jsonl").read_text().splitlines()]
    assert record["event"]["id"] == "b"
    assert "nested deeper than 200 levels" in record["reason"]
