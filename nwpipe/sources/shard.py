"""Split an input stream between worker processes by alert id, as frames of raw lines.

``nwpipe run --workers N`` reads the input in one process (the reader) and hands each
event to one of N worker processes, always the same one for the same alert ``id``, so
that each alert's events keep their input order. The reader does not parse JSON lines:
it finds the top-level ``"id"`` with a byte search where that is unambiguous and passes
the line on as it is; only the worker parses it. A line where the id cannot be found
that way is parsed here, once, to learn its id (the worker parses it again: rare).

Input that is not one object per line (pretty-printed objects, arrays, an over-long
line, a line with an unclosed brace) is decoded here by the ordinary
:class:`~nwpipe.sources.decode.Decoder`, from its first such line to the end of a chunk
where the decoder holds no unfinished value, and its events are sent on as compact JSON
lines with their original line numbers; its rejects are sent as they are. So the
events, rejects, messages and line numbers are those of one process.

Frames (:data:`HEADER`: kind, argument, payload length; little-endian):

* :data:`SOURCE`: argument = source id, payload = the input's name (UTF-8);
* :data:`LINES`: argument = source id, payload = line count, line numbers (uint32
  each), then the lines joined by ``\\n``;
* :data:`REJECTS`: argument = source id, payload = JSON ``[[line, raw, reason], ...]``;
* :data:`STOP`: argument = the signal that stopped the reader.
"""

from __future__ import annotations

import re
import struct
from array import array
from typing import Iterator
from zlib import crc32

import orjson

from nwpipe import jsonio
from nwpipe.sources.decode import (
    _BOM,
    _LONG_RUN,
    _MAX_DEPTH,
    _SHAPE,
    _TOP,
    Decoder,
    Event,
    Reject,
    _loads,
)

HEADER = struct.Struct("<BII")
SOURCE, LINES, REJECTS, STOP = 1, 2, 3, 4
_COUNT = struct.Struct("<I")

_ID_KEY = b'"id"'
#: what follows the key ``"id"`` when its value is a string without escapes
_ID_VALUE = re.compile(rb'[ \t]*:[ \t]*"([^"\\]*)"')
_ESCAPED_CHAR = b"\\u"
_BEFORE_KEY = re.compile(rb"[{,][ \t]*$")
_OPEN_OR_COMMA = (b"{", b",")


def line_key(line: bytes) -> bytes | None:
    """The alert id of a JSON-lines line, found without parsing it, when that is safe:
    ``"id"`` occurs once in the line, as a key (after ``{`` or ``,``), its value is a
    string without escapes, and no ``\\u`` escape could spell another ``"id"`` key.
    None when it cannot be told that way (then the line is parsed).

    A single ``"id"`` key nested deeper means the event has no top-level id at all: it
    is rejected whichever worker gets it, so the answer is still safe.
    """
    at = line.find(_ID_KEY)
    if at <= 0 or line.find(_ID_KEY, at + 4) >= 0:
        return None
    if line.find(b"\\") >= 0 and _ESCAPED_CHAR in line:  # one memchr for most lines
        return None
    after = at + 4
    if line[after:after + 2] == b':"' and line[at - 1:at] in _OPEN_OR_COMMA:
        end = line.find(b'"', after + 2)  # compact JSON, the common case
        if end > 0:
            value = line[after + 2:end]
            return value if b"\\" not in value else None
        return None
    match = _ID_VALUE.match(line, after)
    if match is None or _BEFORE_KEY.search(line, max(0, at - 64), at) is None:
        return None
    return match.group(1)


def alert_bytes(value: object) -> bytes:
    """The bytes an alert id is sharded by: its text for a string (what the raw line
    holds between the quotes), else its Python repr (as the engine's ordering key)."""
    return value.encode("utf-8", "surrogatepass") if isinstance(value, str) else \
        repr(value).encode()


class Sharder:
    """Turn input chunks into per-worker frames (see the module docstring).

    Call :meth:`start` for each input, :meth:`feed` with its chunks, :meth:`finish` at
    its end; each returns ``frames[worker]``: the pieces of bytes to write to that
    worker's pipe, in order (possibly none). :attr:`sent` counts the items handed to each worker.
    """

    def __init__(self, workers: int, *, max_line_bytes: int = 1 << 20):
        self.workers = workers
        self.max_line_bytes = max_line_bytes
        self.sent = [0] * workers
        self._source = 0
        self._name = ""
        self._decoder: Decoder | None = None
        self._partial = b""
        self._lineno = 0
        self._lines: list[list[bytes]] = [[] for _ in range(workers)]
        self._numbers: list[array] = [array("I") for _ in range(workers)]
        self._rejects: list[list] = [[] for _ in range(workers)]
        self._next_reject = 0
        self._cut_short: str | None = None

    def start(self, source: int, name: str) -> list[list[bytes]]:
        """Begin input ``name`` (numbered ``source``): every worker learns its name."""
        self._source = source
        self._name = name
        self._decoder = None
        self._partial = b""
        self._lineno = 0
        data = name.encode("utf-8", "surrogateescape")
        frame = HEADER.pack(SOURCE, source, len(data)) + data
        return [[frame] for _ in range(self.workers)]

    def feed(self, chunk: bytes) -> list[list[bytes]]:
        """Shard the complete lines of ``chunk`` (the rest waits for the next one)."""
        if self._decoder is not None:
            rest = self._feed_decoder(chunk)
            if rest:  # the decoder is done with what it held: line by line again
                return self.feed(rest)
            return self._frames()
        lines = chunk.split(b"\n")
        if self._partial:
            lines[0] = self._partial + lines[0]  # not partial + chunk: a copy of it all
        self._partial = lines.pop()
        if self._lineno == 0 and lines and lines[0].startswith(_BOM):
            lines[0] = lines[0][3:]
        n = self._lineno
        workers = self.workers
        max_len = self.max_line_bytes
        out_lines, out_numbers, sent = self._lines, self._numbers, self.sent
        for k, line in enumerate(lines):
            n += 1
            # One object per line, its braces balanced: a broken line with an open brace
            # makes the decoder look at the next lines too (the decoder takes it below).
            if line[:1] == b"{" and len(line) <= max_len and (
                    line[-1:] == b"}" or line[-2:] == b"}\r") and \
                    line.count(b"{") == line.count(b"}"):
                key = line_key(line)
                if key is not None:
                    w = crc32(key) % workers
                else:
                    w = self._parsed_shard(line, n)
                    if w < 0:
                        continue
                out_lines[w].append(line)
                out_numbers[w].append(n)
                sent[w] += 1
            elif line.strip():
                # Not one object per line: the decoder takes this input from here, at
                # least to the end of the chunk (see _feed_decoder).
                self._lineno = n - 1
                self._start_decoder()
                self._feed_decoder(b"\n".join(lines[k:]) + b"\n", whole=True)
                return self._frames()
        self._lineno = n
        if len(self._partial) > max_len:
            # An over-long line: the decoder bounds memory (and streams long arrays).
            self._start_decoder()
            partial, self._partial = self._partial, b""
            self._feed_decoder(partial, whole=True)
        return self._frames()

    def finish(self, cut_short: str | None = None) -> list[list[bytes]]:
        """The input has ended: its last line (without a newline) and what is pending.

        ``cut_short``: reading stopped on a signal ("input cut short by SIGTERM"): a
        partial event is rejected with that reason first, as the files source does.
        """
        self._cut_short = cut_short
        if self._partial:
            partial, self._partial = self._partial, b""
            if self._decoder is None:
                if self._lineno == 0 and partial.startswith(_BOM):
                    partial = partial[3:]
                self._start_decoder()
            self._decoded(self._decoder.feed(partial))  # type: ignore[union-attr]
        if self._decoder is not None:
            self._decoded(self._decoder.finish())
            self._decoder = None
        self._cut_short = None
        return self._frames()

    def flush(self) -> list[list[bytes]]:
        """The frames of what is sharded but not returned yet."""
        return self._frames()

    # -- internals -----------------------------------------------------------------------

    def _start_decoder(self) -> None:
        decoder = Decoder(self._name, max_line_bytes=self.max_line_bytes)
        # The decoder numbers lines from where this input stopped being line-shaped.
        decoder._lineno = self._lineno
        self._decoder = decoder

    def _feed_decoder(self, data: bytes, whole: bool = False) -> bytes:
        """Decode ``data`` here. At the end of complete lines, once the decoder holds no
        unfinished value, the next chunk is sharded line by line again: a broken line
        or one pretty-printed object does not cost the rest of a large input.

        Returns what is left of ``data`` when the decoder finished an over-long line in
        it and then held nothing more: that goes line by line at once."""
        decoder = self._decoder
        assert decoder is not None
        rest = b""
        if whole:
            self._decoded(decoder.feed(data))
        elif decoder._pieces or decoder._long is not None or decoder._skipping:
            # in the middle of a (long) line: the decoder takes it to its end
            newline = data.find(b"\n")
            if newline < 0:
                self._decoded(decoder.feed(data))
            else:
                self._decoded(decoder.feed(data[:newline + 1]))
                rest = data[newline + 1:]
                if not self._idle(decoder):
                    self._decoded(decoder.feed(rest))
                    rest = b""
        else:
            cut = data.rfind(b"\n") + 1
            if not cut:  # no line ends in it
                self._partial += data
            else:
                complete = data[:cut]
                if self._partial:
                    complete = self._partial + complete
                self._partial = data[cut:]
                self._decoded(decoder.feed(complete))
            if len(self._partial) > self.max_line_bytes:
                partial, self._partial = self._partial, b""
                self._decoded(decoder.feed(partial))
        if self._idle(decoder):
            self._lineno = decoder._lineno
            self._decoder = None
        return rest

    @staticmethod
    def _idle(decoder: Decoder) -> bool:
        """The decoder holds nothing: no value, line or array left open."""
        return (not decoder._stack and decoder._state == _TOP and not decoder._pieces
                and decoder._long is None and not decoder._skipping)

    def _parsed_shard(self, line: bytes, n: int) -> int:
        """The worker of a line whose id a byte search cannot find safely; -1 when the
        line is not one usable object (then it went through a decoder of its own, as
        the worker would have done, so that each of its values goes to its alert's
        worker)."""
        try:
            value = _loads(line)
        except orjson.JSONDecodeError:
            value = None
        if type(value) is dict:
            return crc32(alert_bytes(value.get("id"))) % self.workers
        decoder = Decoder(self._name, max_line_bytes=self.max_line_bytes)
        decoder._lineno = n - 1
        self._decoded(decoder.feed(line + b"\n") + decoder.finish())
        return -1

    def _decoded(self, items: list[Event | Reject]) -> None:
        workers = self.workers
        for item in items:
            if type(item) is Event:
                w = crc32(alert_bytes(item.data.get("id"))) % workers
                self._lines[w].append(jsonio.dumps(item.data))
                self._numbers[w].append(item.line)
            else:
                # rejects have no alert: spread them so no worker takes them all
                w = self._next_reject
                self._next_reject = (w + 1) % workers
                assert isinstance(item, Reject)
                reason = item.reason
                if self._cut_short is not None:
                    reason = f"{self._cut_short}: {reason}"
                self._rejects[w].append((item.line, item.raw, reason))
            self.sent[w] += 1

    def _frames(self) -> list[list[bytes]]:
        frames = []
        source = self._source
        for w in range(self.workers):
            parts: list[bytes] = []
            lines = self._lines[w]
            if lines:
                numbers = self._numbers[w]
                body = b"\n".join(lines)
                size = _COUNT.size + 4 * len(numbers) + len(body)
                parts += [HEADER.pack(LINES, source, size) + _COUNT.pack(len(numbers)),
                          numbers.tobytes(), body]
                self._lines[w] = []
                self._numbers[w] = array("I")
            if self._rejects[w]:
                data = orjson.dumps(self._rejects[w])
                parts += [HEADER.pack(REJECTS, source, len(data)), data]
                self._rejects[w] = []
            frames.append(parts)
        return frames


#: events per list :func:`decode_lines` yields: about what the files source decodes from
#: one 64 KiB read, so that the pipeline's quick path (room in the output's queue) holds
SLICE = 64


def decode_lines(payload: bytes, source: str, max_line_bytes: int,
                 per: int = SLICE) -> Iterator[list[Event | Reject]]:
    """The events of a :data:`LINES` frame's payload, as the decoder would give them, in
    lists of ``per`` lines (decoded only as they are taken)."""
    (count,) = _COUNT.unpack_from(payload)
    numbers = array("I")
    start = _COUNT.size + 4 * count
    numbers.frombytes(payload[_COUNT.size:start])
    body = payload[start:]
    lines = body.split(b"\n")
    # the decoder's own choice: exact big integers only where a chunk may hold one
    loads = _loads if _LONG_RUN in body.translate(_SHAPE) else orjson.loads
    for first in range(0, count, per):
        out: list[Event | Reject] = []
        append = out.append
        for n, line in zip(numbers[first:first + per], lines[first:first + per]):
            try:
                value = loads(line)
                if line.count(b"{") + line.count(b"[") > _MAX_DEPTH:
                    value = _loads(line)  # maybe too deep: checked in full
                if type(value) is dict:
                    append(Event(value, source, n))
                    continue
            except orjson.JSONDecodeError:
                pass
            # Not an object: the decoder says why, numbered as in the input.
            decoder = Decoder(source, max_line_bytes=max_line_bytes)
            decoder._lineno = n - 1
            out += decoder.feed(line + b"\n")
            out += decoder.finish()
        yield out


def decode_rejects(payload: bytes, source: str) -> list[Event | Reject]:
    """The rejects of a :data:`REJECTS` frame's payload."""
    return [Reject(raw, source, line, reason) for line, raw, reason in orjson.loads(payload)]
