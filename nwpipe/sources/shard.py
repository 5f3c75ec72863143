"""Split an input stream between worker processes by alert id, as frames of raw lines.

``nwpipe run --workers N`` reads the input in one process (the reader) and hands each
event to one of N worker processes, always the same one for the same alert ``id``, so
that each alert's events keep their input order. The reader does not parse JSON lines:
it finds the top-level ``"id"`` with a byte search where that is unambiguous and passes
the line on as it is; only the worker parses it. A line where the id cannot be found
that way is parsed here, once, to learn its id (the worker parses it again: rare).

Input that is not one object per line (pretty-printed objects, arrays, an over-long
line) is decoded here by the ordinary :class:`~nwpipe.sources.decode.Decoder`, from its
first such line to the end of that input, and its events are sent on as compact JSON
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
from zlib import crc32

import orjson

from nwpipe import jsonio
from nwpipe.sources.decode import (
    _BOM,
    _LONG_RUN,
    _MAX_DEPTH,
    _SHAPE,
    Decoder,
    Event,
    Reject,
    _loads,
)

HEADER = struct.Struct("<BII")
SOURCE, LINES, REJECTS, STOP = 1, 2, 3, 4
_COUNT = struct.Struct("<I")

#: a top-level-looking ``"id": "value"`` whose value has no escapes
_ID = re.compile(rb'[{,][ \t]*"id"[ \t]*:[ \t]*"([^"\\]*)"')
_ID_KEY = b'"id"'
_ESCAPED_CHAR = b"\\u"


def alert_bytes(value: object) -> bytes:
    """The bytes an alert id is sharded by: its text for a string (what the raw line
    holds between the quotes), else its Python repr (as the engine's ordering key)."""
    return value.encode("utf-8", "surrogatepass") if isinstance(value, str) else \
        repr(value).encode()


class Sharder:
    """Turn input chunks into per-worker frames (see the module docstring).

    Call :meth:`start` for each input, :meth:`feed` with its chunks, :meth:`finish` at
    its end; each returns ``frames[worker]``: bytes to write to that worker's pipe
    (possibly empty). :attr:`sent` counts the items handed to each worker.
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

    def start(self, source: int, name: str) -> list[bytes]:
        """Begin input ``name`` (numbered ``source``): every worker learns its name."""
        self._source = source
        self._name = name
        self._decoder = None
        self._partial = b""
        self._lineno = 0
        data = name.encode("utf-8", "surrogateescape")
        frame = HEADER.pack(SOURCE, source, len(data)) + data
        return [frame] * self.workers

    def feed(self, chunk: bytes) -> list[bytes]:
        """Shard the complete lines of ``chunk`` (the rest waits for the next one)."""
        if self._decoder is not None:
            self._decoded(self._decoder.feed(chunk))
            return self._frames()
        if self._partial:
            chunk = self._partial + chunk
        lines = chunk.split(b"\n")
        self._partial = lines.pop()
        if self._lineno == 0 and lines and lines[0].startswith(_BOM):
            lines[0] = lines[0][3:]
        n = self._lineno
        workers = self.workers
        max_len = self.max_line_bytes
        out_lines, out_numbers, sent = self._lines, self._numbers, self.sent
        search = _ID.search
        for k, line in enumerate(lines):
            n += 1
            if line[:1] == b"{" and len(line) <= max_len and (
                    line[-1:] == b"}" or line[-2:] == b"}\r"):
                match = search(line)
                if (match is not None and line.count(_ID_KEY) == 1
                        and _ESCAPED_CHAR not in line):
                    w = crc32(match.group(1)) % workers
                else:
                    w = self._parsed_shard(line, n)
                    if w < 0:
                        continue
                out_lines[w].append(line)
                out_numbers[w].append(n)
                sent[w] += 1
            elif line.strip():
                # Not one object per line: the decoder takes this input from here on.
                self._lineno = n - 1
                rest = b"\n".join(lines[k:])
                self._partial, partial = b"", self._partial
                self._fall_back(rest + b"\n" + partial)
                return self._frames()
        self._lineno = n
        if len(self._partial) > max_len:
            # An over-long line: the decoder bounds memory (and streams long arrays).
            partial, self._partial = self._partial, b""
            self._fall_back(partial)
        return self._frames()

    def finish(self) -> list[bytes]:
        """The input has ended: its last line (without a newline) and what is pending."""
        if self._decoder is None and self._partial:
            partial, self._partial = self._partial, b""
            if self._lineno == 0 and partial.startswith(_BOM):
                partial = partial[3:]
            self._fall_back(partial)
        if self._decoder is not None:
            self._decoded(self._decoder.finish())
            self._decoder = None
        return self._frames()

    def flush(self) -> list[bytes]:
        """The frames of what is sharded but not returned yet."""
        return self._frames()

    # -- internals -----------------------------------------------------------------------

    def _fall_back(self, data: bytes) -> None:
        decoder = Decoder(self._name, max_line_bytes=self.max_line_bytes)
        # The decoder numbers lines from where this input stopped being line-shaped.
        decoder._lineno = self._lineno
        self._decoder = decoder
        self._decoded(decoder.feed(data))

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
                self._rejects[w].append((item.line, item.raw, item.reason))
            self.sent[w] += 1

    def _frames(self) -> list[bytes]:
        frames = []
        source = self._source
        for w in range(self.workers):
            parts = []
            lines = self._lines[w]
            if lines:
                numbers = self._numbers[w]
                body = b"\n".join(lines)
                size = _COUNT.size + 4 * len(numbers) + len(body)
                parts += [HEADER.pack(LINES, source, size), _COUNT.pack(len(numbers)),
                          numbers.tobytes(), body]
                self._lines[w] = []
                self._numbers[w] = array("I")
            if self._rejects[w]:
                data = orjson.dumps(self._rejects[w])
                parts += [HEADER.pack(REJECTS, source, len(data)), data]
                self._rejects[w] = []
            frames.append(b"".join(parts))
        return frames


def decode_lines(payload: bytes, source: str, max_line_bytes: int) -> list[Event | Reject]:
    """The events of a :data:`LINES` frame's payload, as the decoder would give them."""
    (count,) = _COUNT.unpack_from(payload)
    numbers = array("I")
    start = _COUNT.size + 4 * count
    numbers.frombytes(payload[_COUNT.size:start])
    body = payload[start:]
    lines = body.split(b"\n")
    # the decoder's own choice: exact big integers only where a chunk may hold one
    loads = _loads if _LONG_RUN in body.translate(_SHAPE) else orjson.loads
    out: list[Event | Reject] = []
    append = out.append
    for n, line in zip(numbers, lines):
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
    return out


def decode_rejects(payload: bytes, source: str) -> list[Event | Reject]:
    """The rejects of a :data:`REJECTS` frame's payload."""
    return [Reject(raw, source, line, reason) for line, raw, reason in orjson.loads(payload)]
