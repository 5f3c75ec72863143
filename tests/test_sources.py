"""The streaming input decoder: every input shape, bad input, gzip, pipes, memory."""

from __future__ import annotations

import asyncio
import gzip
import json
import os
import random
import subprocess
import sys
import threading
import time
import tracemalloc
from pathlib import Path

import pytest

from nwpipe.errors import NwpipeError
from nwpipe.sources.decode import (
    Decoder,
    Event,
    Reject,
    aiter_chunks,
    iter_chunks,
    read_events,
    source_name,
)

ROOT = Path(__file__).resolve().parent.parent
DATA = Path(__file__).resolve().parent / "data"
SAMPLE = ROOT / "examples" / "netography-sample.json"
REFERENCE = Path("/work/shared/reference/netography-webhook.txt")

posix_only = pytest.mark.skipif(sys.platform == "win32", reason="POSIX pipes")


def decode(data: bytes, chunk: int | None = None, **kwargs) -> list[Event | Reject]:
    """Run ``data`` through a Decoder, all at once or in ``chunk``-byte pieces."""
    decoder = Decoder("test", **kwargs)
    out: list[Event | Reject] = []
    if chunk is None:
        out += decoder.feed(data)
    else:
        for i in range(0, len(data), chunk):
            out += decoder.feed(data[i:i + chunk])
    out += decoder.finish()
    return out


def summary(items: list[Event | Reject]) -> list[tuple]:
    """(kind, line, id-or-reason) per item: compact to compare."""
    return [("E", item.line, item.data.get("id")) if isinstance(item, Event)
            else ("R", item.line, item.reason) for item in items]


def events(items) -> list[Event]:
    assert all(isinstance(item, Event) for item in items), summary(items)
    return items


# -- the input shapes ------------------------------------------------------------------


def test_json_lines():
    lines = [{"id": f"e{i}", "customer": "acme", "n": i} for i in range(5)]
    data = b"".join(json.dumps(line).encode() + b"\n" for line in lines)
    out = events(decode(data))
    assert [event.data for event in out] == lines
    assert [event.line for event in out] == [1, 2, 3, 4, 5]
    assert {event.source for event in out} == {"test"}


def test_vendor_sample_as_is():
    text = SAMPLE.read_bytes()
    # The example is the vendor's JSON exactly as documented, from "{" to its "}".
    reference = REFERENCE.read_bytes() if REFERENCE.exists() else None
    if reference is not None:
        assert text.rstrip(b"\n") in reference
    expected = json.loads(text)
    for data in (text, text.rstrip(b"\n")):  # with and without a final newline
        (event,) = events(decode(data))
        assert event.data == expected
        assert event.line == 1
        assert event.data["id"] == "00edee24-bc66-4b37-803c-123456789012"
        assert event.data["metrics"]["count"] == {"flow": 1}


def test_vendor_sample_followed_by_prose_on_the_same_line():
    # What a copy-paste from the vendor's page gives: "}Customizing the webhook JSON".
    text = SAMPLE.read_bytes().rstrip(b"\n") + b"Customizing the webhook JSON\n"
    event, reject = decode(text)
    assert isinstance(event, Event) and event.data["alerttype"] == "start"
    assert isinstance(reject, Reject)
    assert reject.line == text.count(b"\n")
    assert reject.raw == "Customizing the webhook JSON"
    assert reject.reason.startswith("not valid JSON: ")


def test_pretty_printed_objects_back_to_back():
    sample = SAMPLE.read_bytes()
    sample_lines = sample.count(b"\n")
    indented = json.dumps({"id": "x", "customer": "acme", "deep": {"a": [1, {"b": 2}]}},
                          indent=2).encode() + b"\n"
    data = sample + sample + indented + sample
    out = events(decode(data))
    assert [event.line for event in out] == [
        1, sample_lines + 1, 2 * sample_lines + 1,
        2 * sample_lines + indented.count(b"\n") + 1]
    assert out[2].data["deep"] == {"a": [1, {"b": 2}]}
    assert out[0].data == out[1].data == out[3].data == json.loads(sample)


def test_array_on_one_line():
    out = events(decode(b'[{"id": "a"}, {"id": "b"}, {"id": "c"}]\n'))
    assert summary(out) == [("E", 1, "a"), ("E", 1, "b"), ("E", 1, "c")]


def test_pretty_printed_array_gives_each_element_its_line():
    items = [{"id": "a", "customer": "acme", "nested": {"x": [1, {"y": 2}]}},
             {"id": "b", "tags": ["]", "[", "{"]},
             {"id": "c"}]
    data = json.dumps(items, indent=2).encode()
    out = events(decode(data))
    assert [event.data for event in out] == items
    lines = data.split(b"\n")
    starts = [i + 1 for i, line in enumerate(lines) if line == b"  {"]
    assert [event.line for event in out] == starts


def test_array_with_one_element_per_line_and_vendor_style_objects():
    sample = SAMPLE.read_bytes().rstrip(b"\n")
    data = (b"[\n" + b'{"id": "one"},\n' + sample + b",\n" + sample + b"\n]\n"
            + b'{"id": "after"}\n')
    out = events(decode(data))
    sample_lines = sample.count(b"\n") + 1
    assert summary(out) == [
        ("E", 2, "one"),
        ("E", 3, "00edee24-bc66-4b37-803c-123456789012"),
        ("E", 3 + sample_lines, "00edee24-bc66-4b37-803c-123456789012"),
        ("E", 4 + 2 * sample_lines, "after"),
    ]


def test_empty_arrays_and_arrays_split_anywhere():
    data = b'[]\n[\n]\n[{"id": "a"},\n{"id": "b"}, {"id": "c"}\n,{"id": "d"}]\n'
    assert summary(decode(data)) == [("E", 4, "a"), ("E", 5, "b"), ("E", 5, "c"),
                                     ("E", 6, "d")]


def test_mixed_fixture():
    out = decode((DATA / "mixed.txt").read_bytes())
    got = summary(out)
    assert got == [
        ("E", 1, "a1"),
        ("E", 3, "a2"),
        ("E", 8, "a3"),
        ("E", 8, "a4"),
        ("E", 10, "a5"),
        ("E", 14, "a6"),
        ("R", 15, "a JSON array element is not an object (got number)"),
        ("E", 16, "a7"),
        ("R", 19, "not valid JSON: invalid literal, expected 'true' (line 19, column 1)"),
        ("R", 20, "a top-level JSON value is not an object (got string)"),
        ("E", 21, "a8"),
        ("R", 22, "unfinished JSON object: a new object starts at line 25 before it "
                  "was closed"),
        ("E", 25, "a9"),
        ("E", 26, "a10"),
        ("E", 26, "a11"),
        ("E", 27, "a12"),
    ]
    assert out[4].data["nested"] == [{"x": 1}, {"y": [2, 3]}]
    assert out[7].data["tags"] == ["t]", "{"]
    assert out[10].data["s"] == 'brace } inside " string {'
    assert out[11].raw == '{\n"id": "broken",\n"metrics": {'


# -- details of the line format --------------------------------------------------------


def test_blank_lines_crlf_and_bom():
    data = b'\xef\xbb\xbf{"id": "a"}\r\n\r\n   \t\r\n{\r\n"id": "b"\r\n}\r\n[{"id": "c"}]\r\n'
    assert summary(decode(data)) == [("E", 1, "a"), ("E", 4, "b"), ("E", 7, "c")]
    # A BOM that starts a pretty-printed object, or the only (unterminated) line.
    assert summary(decode(b'\xef\xbb\xbf{\n"id": "d"\n}')) == [("E", 1, "d")]
    assert summary(decode(b'\xef\xbb\xbf{"id": "e"}')) == [("E", 1, "e")]


def test_bom_in_the_middle_is_not_ignored():
    out = decode(b'{"id": "a"}\n\xef\xbb\xbf{"id": "b"}\n')
    assert summary(out)[0] == ("E", 1, "a")
    assert out[1].line == 2 and "byte order mark" in out[1].reason


def test_indented_json_lines_and_commas_between_values():
    data = b'  {"id": "a"}\n{"id": "b"},\n{"id": "c"},{"id": "d"}\n'
    assert summary(decode(data)) == [("E", 1, "a"), ("E", 2, "b"), ("E", 3, "c"),
                                     ("E", 3, "d")]


# -- bad input: every kind, with its line ----------------------------------------------


@pytest.mark.parametrize("line, got", [
    (b"42", "number"), (b"-1.5e3", "number"), (b'"text"', "string"),
    (b"true", "boolean"), (b"false", "boolean"), (b"null", "null"),
])
def test_top_level_scalar_is_rejected(line, got):
    out = decode(b'{"id": "a"}\n' + line + b'\n{"id": "b"}\n')
    assert summary(out) == [
        ("E", 1, "a"),
        ("R", 2, f"a top-level JSON value is not an object (got {got})"),
        ("E", 3, "b"),
    ]
    assert out[1].raw == line.decode()


def test_array_elements_that_are_not_objects():
    data = b'[1, "two", {"id": "a"}, null, [1], true]\n[\n3,\n{"id": "b"},\n[\n{"id": "c"}\n]\n]\n'
    got = summary(decode(data))
    assert got == [
        ("R", 1, "a JSON array element is not an object (got number)"),
        ("R", 1, "a JSON array element is not an object (got string)"),
        ("E", 1, "a"),
        ("R", 1, "a JSON array element is not an object (got null)"),
        ("R", 1, "a JSON array element is not an object (got array)"),
        ("R", 1, "a JSON array element is not an object (got boolean)"),
        ("R", 3, "a JSON array element is not an object (got number)"),
        ("E", 4, "b"),
        ("R", 5, "a JSON array element is not an object (got array)"),
    ]


def test_junk_lines_are_rejected_and_the_stream_goes_on():
    data = b'{"id": "a"}\nhello world\n{"id": "b", oops}\n]\n{"id": "c"}\n'
    out = decode(data)
    assert [(item.line, type(item).__name__) for item in out] == [
        (1, "Event"), (2, "Reject"), (3, "Reject"), (4, "Reject"), (5, "Event")]
    assert out[1].raw == "hello world"
    assert out[2].raw == '{"id": "b", oops}'
    assert out[2].reason.startswith("not valid JSON: ")
    assert "(line 3, column" in out[2].reason


def test_invalid_json_inside_a_multi_line_object_names_the_line():
    data = b'{\n"id": "a",\n"bad": tru,\n"x": 1\n}\n{"id": "b"}\n'
    reject, event = decode(data)
    assert reject.line == 1
    assert reject.reason.startswith("not valid JSON: ")
    assert "(line 3, column" in reject.reason
    assert reject.raw == '{\n"id": "a",\n"bad": tru,\n"x": 1\n}'
    assert event.line == 6


def test_invalid_utf8():
    data = b'{"id": "a"}\n{"id": "b\xff\xfe"}\n{\n"id": "c",\n"name": "\xc3"\n}\n{"id": "d"}\n'
    out = decode(data)
    assert summary(out)[0] == ("E", 1, "a")
    assert summary(out)[3] == ("E", 7, "d")
    one, multi = out[1], out[2]
    assert one.line == 2
    assert one.reason == ("invalid UTF-8: invalid start byte (byte 0xff at line 2, "
                          "column 10)")
    assert one.raw == '{"id": "b\\xff\\xfe"}'
    assert multi.line == 3
    assert multi.reason.startswith("invalid UTF-8: ")
    assert "at line 5, column 10" in multi.reason


def test_line_longer_than_max_line_bytes():
    long_line = b'{"id": "long", "pad": "' + b"x" * 300 + b'"}'
    data = b'{"id": "a"}\n' + long_line + b'\n{"id": "b"}\n'
    for chunk in (None, 7, 64):
        out = decode(data, chunk, max_line_bytes=100)
        assert summary(out) == [
            ("E", 1, "a"), ("R", 2, "line longer than max_line_bytes (100)"), ("E", 3, "b")]
        assert out[1].raw == long_line[:100].decode() + "…[truncated]"


@pytest.mark.parametrize("length", range(97, 105))
def test_limit_boundary_with_bom_and_crlf_does_not_depend_on_chunks(length):
    data = (b'\xef\xbb\xbf{"id": "' + b"x" * (length - 10) + b'"}\r\n'
            + b'{"id": "' + b"y" * (length - 10) + b'"}\r\n{"id": "z"}\n')
    whole = decode(data, max_line_bytes=100)
    assert whole[-1].data == {"id": "z"}
    for chunk in range(1, 12):
        assert decode(data, chunk, max_line_bytes=100) == whole


def test_overlong_last_line_without_newline():
    out = decode(b'{"id": "a"}\n' + b"y" * 500, max_line_bytes=100)
    assert summary(out) == [("E", 1, "a"),
                            ("R", 2, "line longer than max_line_bytes (100)")]


def test_multi_line_value_larger_than_max_line_bytes():
    big = json.dumps({"id": "big", "items": [{"n": i} for i in range(50)]}, indent=1)
    data = big.encode() + b'\n{"id": "after"}\n'
    after_line = big.count("\n") + 2
    for chunk in (None, 1, 13):
        out = decode(data, chunk, max_line_bytes=200)
        assert summary(out) == [
            ("R", 1, "multi-line JSON value larger than max_line_bytes (200)"),
            ("E", after_line, "after"),
        ]
        assert out[0].raw.startswith('{\n "id": "big"')


def test_long_line_inside_a_multi_line_value_rejects_the_value_once():
    data = (b'{\n"id": "a",\n"blob": "' + b"z" * 500 + b'",\n"x": [1, 2]\n}\n'
            b'{"id": "b"}\n')
    assert summary(decode(data, max_line_bytes=100)) == [
        ("R", 1, "multi-line JSON value larger than max_line_bytes (100)"),
        ("E", 6, "b"),
    ]


def test_raw_text_is_capped_at_64_kib():
    junk = "é" * 40_000  # 80,000 bytes, two per character
    (reject,) = decode(junk.encode() + b"\n")
    assert reject.raw.endswith("…[truncated]")
    kept = reject.raw[: -len("…[truncated]")]
    assert kept == "é" * 32_768  # 64 KiB, not cut inside a character
    (short,) = decode(b"not json\n")
    assert short.raw == "not json"


def test_unfinished_value_at_end_of_input():
    out = decode(b'{"id": "a"}\n{\n"id": "b",\n')
    assert summary(out) == [
        ("E", 1, "a"),
        ("R", 2, "unexpected end of input inside a JSON object started here"),
    ]
    assert out[1].raw == '{\n"id": "b",'
    out = decode(b'[\n{"id": "a"},\n{"id": "b",\n')
    assert summary(out) == [
        ("E", 2, "a"),
        ("R", 3, "unexpected end of input inside a JSON object started here"),
        ("R", 1, "unexpected end of input inside a JSON array started here"),
    ]


def test_recovery_after_a_broken_pretty_printed_object():
    sample = SAMPLE.read_bytes().split(b"\n")
    truncated = b"\n".join(sample[:30]) + b"\n"  # cut off inside "metrics"
    data = truncated + b'{"id": "next"}\n{"id": "then"}\n' + SAMPLE.read_bytes()
    out = decode(data)
    assert summary(out) == [
        ("R", 1, "unfinished JSON object: a new object starts at line 31 before it "
                 "was closed"),
        ("E", 31, "next"),
        ("E", 32, "then"),
        ("E", 33, "00edee24-bc66-4b37-803c-123456789012"),
    ]
    assert out[0].raw == truncated.decode().rstrip()


def test_recovery_inside_an_array_keeps_the_array_going():
    data = b'[\n{\n"id": "cut",\n{"id": "a"}\n, {"id": "b"}\n]\n{"id": "c"}\n'
    assert summary(decode(data)) == [
        ("R", 2, "unfinished JSON object: a new object starts at line 4 before it was "
                 "closed"),
        ("E", 4, "a"),
        ("E", 5, "b"),
        ("E", 7, "c"),
    ]


def test_object_at_column_0_that_continues_a_value_is_not_a_recovery():
    # After "key":, "[" or "," a complete object is a legitimate part of the value.
    data = b'{\n"id": "a",\n"metrics":\n{"bits": 1}\n}\n[\n{"id": "b"}\n]\n'
    out = events(decode(data))
    assert summary(out) == [("E", 1, "a"), ("E", 7, "b")]
    assert out[0].data["metrics"] == {"bits": 1}


# -- chunking never changes the result ------------------------------------------------


def varied_input() -> bytes:
    mixed = (DATA / "mixed.txt").read_bytes()
    sample = SAMPLE.read_bytes()
    small = [{"id": f"s{i}", "deep": {"a": {"b": [i, {"c": "}" * i}]}}} for i in range(3)]
    jq_style = json.dumps(small, indent=2).encode() + b"\n"
    return (b"\xef\xbb\xbf" + mixed
            + mixed.replace(b"\n", b"\r\n")
            + sample + sample.replace(b"\n", b"\r\n")
            + b"[\n" + sample.rstrip() + b",\n" + sample.rstrip() + b"\n]\n"
            + jq_style + jq_style.replace(b"\n", b"\r\n")
            + b'{\n"s": "{{",\n"id": "braces in a string"\n}\n'
            + b'{\n"id": "cut short",\n"x": {\n}\n{"id": "after the cut"}\n'
            + b"  {\n  \"id\": \"indented\"\n  }\n"
            + b'{"id": "u\xff"}\n'
            + b'{"id": "long", "pad": "' + b"p" * 400 + b'"}\n'
            + b"{\n" + b'"k": "v",\n' * 40 + b'"id": "too big"\n}\n'
            + b'[\n{"id": "el"},\n7,\n' + b"q" * 300 + b"\n]\n"
            + b'{"id": "end"}\n{\n"unfinished": true')


def test_any_chunking_gives_identical_results():
    data = varied_input()
    whole = decode(data, max_line_bytes=256)
    whole_large = decode(data, max_line_bytes=2048)
    assert sum(isinstance(item, Event) for item in whole_large) >= 40
    kinds = {item.reason.split(" ")[0] for item in whole if isinstance(item, Reject)}
    assert {"line", "multi-line", "invalid", "unexpected", "unfinished", "not", "a"} <= kinds
    assert sum(isinstance(item, Event) for item in whole) >= 25
    # Small chunks (every value crosses a boundary, decoded line by line) and larger
    # ones (some pretty-printed objects arrive whole and are decoded in one go).
    for size in [*range(1, 400), *range(400, 4000, 37)]:
        assert decode(data, size, max_line_bytes=2048) == whole_large, size
    assert decode(data, 1, max_line_bytes=256) == whole
    rng = random.Random(1)
    for _ in range(20):
        decoder = Decoder("test", max_line_bytes=256)
        out, pos = [], 0
        while pos < len(data):
            size = rng.choice((1, 2, 3, 5, 17, 100, 257, 1000))
            out += decoder.feed(data[pos:pos + size])
            pos += size
        out += decoder.finish()
        assert out == whole


# -- reading files, stdin and gzip -----------------------------------------------------


def test_source_name():
    assert source_name("-") == "<stdin>"
    assert source_name("events.jsonl") == "events.jsonl"


def test_read_events_from_a_file(tmp_path):
    path = tmp_path / "events.json"
    path.write_bytes(SAMPLE.read_bytes() + b'{"id": "b"}\n')
    out = list(read_events(str(path)))
    assert summary(out) == [("E", 1, "00edee24-bc66-4b37-803c-123456789012"),
                            ("E", 104, "b")]
    assert out[0].source == str(path)
    assert out[0].where == f"{path}:1"


def test_missing_file_is_a_clear_error(tmp_path):
    missing = tmp_path / "nope.jsonl"
    with pytest.raises(NwpipeError, match=r"nope\.jsonl: cannot read: No such file"):
        list(read_events(str(missing)))


def test_gzip_file_multi_member(tmp_path):
    first = b"".join(b'{"id": "a%d"}\n' % i for i in range(1000))
    second = SAMPLE.read_bytes()
    path = tmp_path / "events.jsonl.gz"
    # Two members, the second followed by zero padding as some tools write it.
    path.write_bytes(gzip.compress(first) + gzip.compress(second) + b"\0" * 10)
    out = events(list(read_events(str(path))))
    assert len(out) == 1001
    assert out[999].data == {"id": "a999"} and out[999].line == 1000
    assert out[1000].line == 1001 and out[1000].data["alerttype"] == "start"


def test_gzip_pieces_stay_small(tmp_path):
    # Highly compressible data must not expand into one huge piece in memory.
    path = tmp_path / "zeros.gz"
    path.write_bytes(gzip.compress(b" " * (8 << 20)))
    sizes = [len(chunk) for chunk in iter_chunks(str(path), chunk_size=4096)]
    assert sum(sizes) == 8 << 20
    assert max(sizes) <= 4096


def test_truncated_gzip_keeps_what_was_decoded(tmp_path):
    data = gzip.compress(b"".join(b'{"id": "a%d"}\n' % i for i in range(5000)))
    path = tmp_path / "cut.gz"
    path.write_bytes(data[: len(data) * 2 // 3])
    got = []
    with pytest.raises(NwpipeError, match="cut.gz: gzip data ends early"):
        for item in read_events(str(path)):
            got.append(item)
    assert len(got) > 100
    assert all(isinstance(item, Event) for item in got[:-1])


def test_corrupt_gzip_is_a_clear_error(tmp_path):
    path = tmp_path / "bad.gz"
    path.write_bytes(b"\x1f\x8b" + b"garbage" * 10)
    with pytest.raises(NwpipeError, match="bad.gz: not valid gzip data"):
        list(read_events(str(path)))


READ_STDIN = """
import sys
from nwpipe.sources.decode import read_events, Event
for item in read_events('-'):
    kind = 'E' if isinstance(item, Event) else 'R'
    print(kind, item.source, item.line, item.data.get('id') if kind == 'E' else item.reason)
"""


def test_gzip_via_stdin(tmp_path):
    path = tmp_path / "in.gz"
    path.write_bytes(gzip.compress(b'{"id": "a"}\n') + gzip.compress(SAMPLE.read_bytes()))
    with open(path, "rb") as stdin:
        result = subprocess.run([sys.executable, "-c", READ_STDIN], stdin=stdin,
                                capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "E <stdin> 1 a", "E <stdin> 2 00edee24-bc66-4b37-803c-123456789012"]


def test_plain_stdin_through_a_pipe():
    data = b'{"id": "a"}\n[\n{"id": "b"}\n]\n'
    result = subprocess.run([sys.executable, "-c", READ_STDIN], input=data,
                            capture_output=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.decode().splitlines() == ["E <stdin> 1 a", "E <stdin> 3 b"]


ASYNC_STDIN = """
import asyncio, sys
from nwpipe.sources.decode import aiter_chunks, Decoder

async def main():
    decoder = Decoder('<stdin>')
    n = 0
    async for chunk in aiter_chunks('-'):
        n += sum(1 for item in decoder.feed(chunk))
    n += len(decoder.finish())
    print(n, 'blocking' if __import__('os').get_blocking(0) else 'nonblocking')

asyncio.run(main())
"""


@posix_only
def test_aiter_chunks_gzip_from_stdin_pipe():
    data = gzip.compress(b"".join(b'{"id": "a%d"}\n' % i for i in range(3000)))
    data += gzip.compress(b'{"id": "last"}\n')
    result = subprocess.run([sys.executable, "-c", ASYNC_STDIN], input=data,
                            capture_output=True, timeout=60)
    assert result.returncode == 0, result.stderr
    # All events, and stdin handed back in blocking mode as it was found.
    assert result.stdout.decode().split() == ["3001", "blocking"]


@posix_only
def test_aiter_chunks_stdin_from_dev_null():
    # /dev/null cannot be watched by the event loop; it must still end at once.
    result = subprocess.run([sys.executable, "-c", ASYNC_STDIN], stdin=subprocess.DEVNULL,
                            capture_output=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.decode().split() == ["0", "blocking"]


@posix_only
async def test_aiter_chunks_named_pipe_waits_for_its_writer_without_blocking(tmp_path):
    fifo = tmp_path / "events.fifo"
    os.mkfifo(fifo)
    ticks = 0

    async def ticker():
        nonlocal ticks
        while True:
            await asyncio.sleep(0.002)
            ticks += 1

    def late_writer():
        # the writer comes only once the loop has kept running while the reader waits to
        # open the pipe (a blocking open would leave ticks at 0 until the deadline)
        deadline = time.monotonic() + 30
        while ticks < 5 and time.monotonic() < deadline:
            time.sleep(0.005)
        with open(fifo, "wb") as pipe:
            pipe.write(b'{"id": "late"}\n')

    writer = threading.Thread(target=late_writer)
    tick_task = asyncio.create_task(ticker())
    writer.start()
    try:
        chunks = [chunk async for chunk in aiter_chunks(str(fifo))]
        ticks_then = ticks
    finally:
        tick_task.cancel()
        writer.join()
    assert chunks == [b'{"id": "late"}\n']
    assert ticks_then > 0  # the loop ran while open() waited for the writer


@posix_only
async def test_aiter_chunks_on_a_slow_pipe_does_not_block_the_loop():
    read_fd, write_fd = os.pipe()
    lines = [b'{"id": "e%d"}\n' % i for i in range(4)]

    def slow_writer():
        with os.fdopen(write_fd, "wb", buffering=0) as pipe:
            for line in lines:
                time.sleep(0.05)  # the behaviour under test: a slow writer
                pipe.write(line)

    ticks = 0

    async def ticker():
        nonlocal ticks
        while True:
            await asyncio.sleep(0.002)
            ticks += 1

    writer = threading.Thread(target=slow_writer)
    tick_task = asyncio.create_task(ticker())
    writer.start()
    try:
        decoder = Decoder("pipe")
        got, ticks_at = [], []
        async for chunk in aiter_chunks(f"/dev/fd/{read_fd}"):
            got += decoder.feed(chunk)
            ticks_at.append(ticks)
        got += decoder.finish()
    finally:
        tick_task.cancel()
        writer.join()
        os.close(read_fd)
    assert [event.data["id"] for event in events(got)] == ["e0", "e1", "e2", "e3"]
    # The other task kept running while the reader waited for each slow write.
    assert len(ticks_at) >= 2
    assert all(later > earlier for earlier, later in zip(ticks_at, ticks_at[1:]))


async def test_aiter_chunks_regular_file_and_gzip(tmp_path):
    plain = tmp_path / "e.jsonl"
    plain.write_bytes(b"".join(b'{"id": "a%d"}\n' % i for i in range(20000)))
    packed = tmp_path / "e.jsonl.gz"
    packed.write_bytes(gzip.compress(plain.read_bytes()))
    for path in (plain, packed):
        chunks = [chunk async for chunk in aiter_chunks(str(path), chunk_size=8192)]
        assert b"".join(chunks) == plain.read_bytes()
        assert max(len(chunk) for chunk in chunks) <= 8192


async def test_aiter_chunks_missing_file(tmp_path):
    with pytest.raises(NwpipeError, match="cannot read"):
        async for _ in aiter_chunks(str(tmp_path / "missing.jsonl")):
            pass


# -- memory stays flat -----------------------------------------------------------------


def generated_chunks(count: int, shape: str, chunk_size: int = 65536):
    """A ``count``-event stream made on the fly, in chunks."""
    pending = bytearray()
    if shape == "array":
        pending += b"[\n"
    # a long text field makes a stream of many megabytes from few events (quick to trace)
    pad = b"x" * 600
    for i in range(count):
        if shape == "jsonl":
            pending += b'{"id": "e%d", "customer": "acme", "summary": "%s"}\n' % (i, pad)
        elif shape == "pretty":
            pending += b'{\n"id": "e%d",\n"summary": "%s",\n"metrics": {\n"bits": {"max": %d}\n}\n}\n' % (
                i, pad, i)
        else:
            pending += b'  {\n    "id": "e%d",\n    "summary": "%s",\n    "n": %d\n  }%s\n' % (
                i, pad, i, b"," if i < count - 1 else b"")
        if len(pending) >= chunk_size:
            yield bytes(pending)
            pending.clear()
    if shape == "array":
        pending += b"]\n"
    yield bytes(pending)


@pytest.mark.parametrize("shape, trace", [
    ("jsonl", True), ("array", True),
    ("pretty", False),  # same code path as "array" elements; tracing it only adds time
])
def test_memory_stays_flat_on_a_long_stream(shape, trace):
    count = 15_000  # about 10 MB of input
    decoder = Decoder("gen")
    seen = 0
    last_line = 0
    biggest_buffer = 0
    if trace:
        tracemalloc.start()
    try:
        for chunk in generated_chunks(count, shape):
            for item in decoder.feed(chunk):
                assert isinstance(item, Event)
                last_line = item.line
                seen += 1
            biggest_buffer = max(biggest_buffer, decoder.buffered_bytes)
        seen += len(decoder.finish())
        peak = tracemalloc.get_traced_memory()[1] if trace else 0
    finally:
        if trace:
            tracemalloc.stop()
    assert seen == count
    assert last_line >= count
    # Only a partial line (and a partial value) is ever held: never the stream, never
    # the whole array (which here is 15,000 elements, about 10 MB).
    assert biggest_buffer < 2048
    assert peak < 4 << 20, f"peak {peak} bytes"
