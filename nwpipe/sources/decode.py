"""Read events from stdin or files as a stream.

Netography events arrive in several shapes, and a user may pipe in any of them, or a mix:

* JSON lines (one object per line), the common case;
* pretty-printed objects one after another (the vendor's documented sample);
* a JSON array of events, on one line or pretty-printed across many;
* any of the above gzip-compressed (detected by magic bytes, so stdin works too).

:class:`Decoder` is a push parser: it is fed bytes in chunks of any size and returns the
events (and rejects) completed so far. Memory stays flat however long the input is: only
the current line and, inside a multi-line value, that one value are buffered. A top-level
array is streamed element by element, never held whole.

Bad input never stops the stream: each piece that is not a usable event becomes a
:class:`Reject` naming the line where it starts and the reason.
"""

from __future__ import annotations

import asyncio
import os
import re
import stat
import sys
import zlib
from dataclasses import dataclass
from itertools import islice
from typing import AsyncGenerator, AsyncIterator, Callable, Iterable, Iterator

import orjson

from nwpipe import jsonio
from nwpipe.errors import NwpipeError

__all__ = [
    "Event",
    "Reject",
    "Decoder",
    "source_name",
    "iter_chunks",
    "aiter_chunks",
    "read_events",
]

#: Longest raw text kept in a :class:`Reject` (bytes of input).
RAW_LIMIT = 64 * 1024
_TRUNCATED = "…[truncated]"
_BOM = b"\xef\xbb\xbf"
_GZIP_MAGIC = b"\x1f\x8b"

_JSONDecodeError = orjson.JSONDecodeError
_orjson_loads = orjson.loads
_shape = jsonio.shape
_SHAPE = jsonio._SHAPE
_LONG_RUN = jsonio._LONG_RUN
_MAX_DEPTH = jsonio.MAX_DEPTH


class _TooDeep(_JSONDecodeError):
    """A value nested deeper than :data:`nwpipe.jsonio.MAX_DEPTH`: it could be read but
    not written again (to an output or the dead-letter file), so it is rejected here."""


def _too_deep_reason() -> str:
    return (f"JSON nested deeper than {_MAX_DEPTH} levels (objects and arrays inside each "
            "other); such an event could not be written to an output")


def _loads(data: bytes | bytearray):
    """orjson's parse, with integers beyond 64 bits kept exact and too-deep values refused.

    Both checks cost a few C-speed passes over the bytes for ordinary input.
    """
    value = _orjson_loads(data)
    big, deep = _shape(data)
    if big:
        value = jsonio.loads(data)
    if deep and jsonio.depth(value) > _MAX_DEPTH:
        raise _TooDeep(_too_deep_reason(), "", 0)
    return value

# A JSON string (running to the end of the line when unterminated: a string can never
# span lines in valid JSON, so that keeps one bad line from swallowing the structure of
# the ones after it) or a bracket. Everything else is irrelevant to nesting depth.
_STRUCTURE = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"?|[{}\[\]]')
_BRACKET = re.compile(rb"[{}\[\]]")
_BRACKET_OR_QUOTE = re.compile(rb'[{}\[\]"]')
_STRING_BODY = re.compile(rb'[^"\\]*(?:\\.[^"\\]*)*')  # up to a string's closing quote
_NON_SPACE = re.compile(rb"[^ \t\r\n\f\v]")
# One scalar array element (or a run of junk where an element should be).
_SCALAR = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"?|[^ \t\r\n\f\v,\]]+')

_OPEN_OBJECT, _CLOSE_OBJECT = ord("{"), ord("}")
_OPEN_ARRAY, _CLOSE_ARRAY = ord("["), ord("]")
_COMMA, _COLON, _QUOTE = ord(","), ord(":"), ord('"')

# Looking ahead for the last line of a pretty-printed object may examine at most this
# many lines per line of a chunk (plus a constant), so that odd input (many "{" lines
# and no matching "}" lines) stays linear: past the budget, lines go one by one.
_LOOKAHEAD_PER_LINE = 4
_LOOKAHEAD_TRIES = 64

# Where the decoder is, outside of a buffered value.
_TOP = 0  # expecting a top-level value
_ELEMENT = 1  # inside a top-level array, expecting an element (or "]")
_AFTER_ELEMENT = 2  # inside a top-level array, after an element: expecting "," or "]"


@dataclass(slots=True)
class Event:
    """A decoded JSON object and where it came from."""

    data: dict
    source: str  # file name, or "<stdin>"
    line: int  # 1-based line where the event starts

    @property
    def where(self) -> str:
        """``source:line``, for messages."""
        return f"{self.source}:{self.line}"


@dataclass(slots=True)
class Reject:
    """A piece of input that is not a usable event, with the reason.

    ``raw`` is the input as text (invalid UTF-8 shown as ``\\xNN`` escapes), capped at
    64 KiB with ``…[truncated]`` appended when longer.
    """

    raw: str
    source: str
    line: int
    reason: str

    @property
    def where(self) -> str:
        """``source:line``, for messages."""
        return f"{self.source}:{self.line}"


def _raw_text(data: bytes | bytearray, truncated: bool = False) -> str:
    """The raw input as text for a Reject: capped, and never split inside a character."""
    if len(data) > RAW_LIMIT:
        cut = RAW_LIMIT
        # Step back over UTF-8 continuation bytes so a character is not cut in half.
        while cut > RAW_LIMIT - 3 and (data[cut] & 0xC0) == 0x80:
            cut -= 1
        data = data[:cut]
        truncated = True
    text = bytes(data).decode("utf-8", errors="backslashreplace").rstrip()
    return text + _TRUNCATED if truncated else text


def _json_type(value: object) -> str:
    """The JSON name of a decoded value's type, for messages."""
    if isinstance(value, bool):
        return "boolean"
    if value is None:
        return "null"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def _invalid_reason(exc: _JSONDecodeError, data: bytes | bytearray, line: int,
                    column: int) -> str:
    """Why ``data`` (starting at ``line``/``column``) failed to parse, placed in the input."""
    if isinstance(exc, _TooDeep) or "depth limit" in exc.msg:
        return _too_deep_reason()
    try:
        bytes(data).decode("utf-8")
    except UnicodeDecodeError as bad:
        at = bad.start
        bad_line = line + data.count(b"\n", 0, at)
        line_start = data.rfind(b"\n", 0, at) + 1
        bad_column = at - line_start + (column if line_start == 0 else 1)
        return (f"invalid UTF-8: {bad.reason} (byte 0x{data[at]:02x} at line {bad_line}, "
                f"column {bad_column})")
    err_line = line + exc.lineno - 1
    err_column = exc.colno + (column - 1 if exc.lineno == 1 else 0)
    return f"not valid JSON: {exc.msg} (line {err_line}, column {err_column})"


def _whole_value(line: bytes, pos: int, closer: int):
    """The JSON value that fills ``line`` from ``pos`` on, or None when it does not.

    Only a line ending in the value's closing bracket can hold it whole: that spares
    the first line of each pretty-printed value a failing parse.
    """
    if line.rstrip()[-1] != closer:
        return None
    try:
        return _loads(line[pos:] if pos else line)
    except _JSONDecodeError:
        return None


@dataclass(slots=True)
class _LongLine:
    """Where the streaming of one over-long line of array elements stands."""

    line: int  # its line number
    pending: bytes = b""  # unscanned bytes, or the element in progress from its start
    scan: int = 0  # where scanning resumes in ``pending``
    start: int = -1  # where the element in progress starts in ``pending`` (-1: none)
    stack: list = None  # type: ignore[assignment]  # open brackets of that element
    skipping: bool = False  # that element was rejected as too large: only tracked
    after_element: bool = False  # an element ended and no "," followed yet
    in_string: bool = False  # inside a string of the element in progress
    escape: bool = False  # ... right after its backslash
    closed: bool = False  # the array's "]" was seen
    rest: bytes = b""  # what follows "]" on the line (bounded)
    rest_len: int = 0

    def __post_init__(self) -> None:
        self.stack = []


class Decoder:
    """Push parser turning a byte stream into :class:`Event` and :class:`Reject` items.

    Call :meth:`feed` with chunks of any size (the results do not depend on how the
    input is cut), then :meth:`finish` at the end of input. Each call returns the items
    completed so far, in input order.

    ``max_line_bytes`` bounds memory: a longer line, or a multi-line value larger than
    that, is rejected instead of buffered.
    """

    def __init__(self, source: str, *, max_line_bytes: int = 1 << 20):
        self.source = source
        self.max_line_bytes = max_line_bytes
        self._lineno = 0  # number of the last complete line seen
        self._pieces: list[bytes] = []  # the current, incomplete line
        self._pieces_len = 0
        self._skipping = False  # discarding the rest of an over-long line
        self._long: _LongLine | None = None  # streaming an over-long line of an array
        self._state = _TOP
        self._array_line = 0  # where the open top-level array started
        # The multi-line value being collected (a top-level object or an array element).
        self._stack: list[int] = []  # open brackets; empty when not inside a value
        self._buf: bytearray | None = None  # None: value already rejected, only tracked
        self._value_line = 0
        self._value_column = 1
        self._value_indent: int | None = None  # see _start_value
        self._last_byte = 0  # last non-space byte of a value no longer buffered
        self._lookahead = 0  # see _whole_object()

    # -- public API -------------------------------------------------------------------

    @property
    def buffered_bytes(self) -> int:
        """How many input bytes the decoder holds right now (partial line + value)."""
        return self._pieces_len + (len(self._buf) if self._buf is not None else 0)

    def feed(self, data: bytes) -> list[Event | Reject]:
        """Decode the next chunk of input; return the items it completed."""
        out: list[Event | Reject] = []
        if self._long is not None:
            newline = data.find(b"\n")
            self._long_feed(data if newline < 0 else data[:newline], out)
            if self._long is not None:  # else: it gave up, and _skipping takes the rest
                if newline < 0:
                    return out
                self._long_end(out)
                self._lineno += 1
                data = data[newline + 1:]
                if not data:
                    return out
        if self._skipping:
            newline = data.find(b"\n")
            if newline < 0:
                return out
            data = data[newline + 1:]
            self._skipping = False
            self._lineno += 1
        if data.find(b"\n") < 0:
            if data:
                self._pieces.append(data)
                self._pieces_len += len(data)
                if self._pieces_len > self.max_line_bytes:
                    self._check_partial(out)
            return out
        if self._pieces:
            self._pieces.append(data)
            data = b"".join(self._pieces)
            self._pieces.clear()
            self._pieces_len = 0
        lines = data.split(b"\n")
        partial = lines.pop()
        if self._lineno == 0 and lines[0].startswith(_BOM):
            lines[0] = lines[0][3:]

        # The hot loop. JSON lines are decoded here without leaving it. So are whole
        # pretty-printed objects found in this chunk, and the plain lines inside a
        # multi-line value (no bracket, not a possible new object at column 0), which
        # only need buffering. Everything else goes line by line through _line().
        append = out.append
        # Integers beyond 64 bits need the exact (slower) parse: one pass over the chunk
        # tells whether any line of it may hold one.
        loads = _loads if _LONG_RUN in data.translate(_SHAPE) else _orjson_loads
        source = self.source
        max_len = self.max_line_bytes
        no_bracket = _BRACKET.search
        plain = self._state == _TOP and not self._stack
        in_array = self._state != _TOP and not self._stack
        buf = self._buf if self._stack else None
        first = self._lineno + 1
        self._lookahead = _LOOKAHEAD_PER_LINE * len(lines) + 1000
        numbered = enumerate(lines, first)
        for n, line in numbered:
            if plain:
                if line[:1] == b"{" and len(line) <= max_len:
                    try:
                        value = loads(line)
                        if line.count(b"{") + line.count(b"[") > _MAX_DEPTH:
                            value = _loads(line)  # maybe too deep: checked in full
                        append(Event(value, source, n))
                        continue
                    except _JSONDecodeError:
                        if line == b"{" or line == b"{\r":
                            used = self._whole_object(lines, n - first, n, out)
                            if used:
                                next(islice(numbered, used - 2, used - 1), None)  # skip its lines
                                continue
            elif buf is not None:
                if (line[:1] != b"{" and no_bracket(line) is None
                        and len(buf) + len(line) <= max_len):
                    buf += line
                    buf += b"\n"
                    continue
            elif in_array and line.lstrip() in (b"{", b"{\r"):
                used = self._whole_object(lines, n - first, n, out)
                if used:
                    next(islice(numbered, used - 2, used - 1), None)  # skip its lines
                    in_array = self._state != _TOP
                    plain = not in_array
                    continue
            self._lineno = n
            self._line(line, n, out)
            plain = self._state == _TOP and not self._stack
            in_array = self._state != _TOP and not self._stack
            buf = self._buf if self._stack else None
        self._lineno = first - 1 + len(lines)  # n lags when the last lines were skipped

        if partial:
            self._pieces.append(partial)
            self._pieces_len = len(partial)
            if self._pieces_len > max_len:
                self._check_partial(out)
        return out

    def finish(self) -> list[Event | Reject]:
        """End of input: decode the last line and report anything left unfinished."""
        out: list[Event | Reject] = []
        if self._long is not None:
            self._long_end(out)
            self._lineno += 1
        elif self._skipping:
            self._skipping = False
            self._lineno += 1
        elif self._pieces:
            line = b"".join(self._pieces)
            self._pieces.clear()
            self._pieces_len = 0
            self._lineno += 1
            if self._lineno == 1 and line.startswith(_BOM):
                line = line[3:]
            self._line(line, self._lineno, out)
        if self._stack:
            kind = "object" if self._stack[0] == _OPEN_OBJECT else "array"
            if self._buf is not None:
                out.append(self._reject(self._buf, self._value_line,
                                        f"unexpected end of input inside a JSON {kind} "
                                        "started here"))
            self._end_value()
        if self._state != _TOP:
            out.append(self._reject(b"", self._array_line,
                                    "unexpected end of input inside a JSON array started here"))
            self._state = _TOP
        return out

    # -- line handling ----------------------------------------------------------------

    def _reject(self, raw: bytes | bytearray, line: int, reason: str,
                truncated: bool = False) -> Reject:
        return Reject(_raw_text(raw, truncated), self.source, line, reason)

    def _whole_object(self, lines: list[bytes], k: int, n: int,
                      out: list[Event | Reject]) -> int:
        """Decode a pretty-printed object in one go, if it is all in ``lines``.

        ``lines[k]`` (line ``n``) is just "{", maybe indented. Candidates for its last
        line are "}" at the same indentation ("}," too inside an array); braces are
        counted up to each to find the right one. Returns how many lines were used, or
        0 to let the line-by-line path decide: when the object is not complete in this
        chunk, too large, or does not parse. That path gives the same result for any
        object this one accepts, it is only slower.
        """
        if self._lookahead <= 0:
            return 0
        opening = lines[k]
        indent = opening[: len(opening) - len(opening.lstrip())]
        crlf = b"\r" if opening.endswith(b"\r") else b""
        closer = indent + b"}" + crlf
        closer_comma = indent + b"}," + crlf if self._state != _TOP else None
        stop = min(len(lines), k + 1 + self._lookahead)
        self._lookahead -= stop - k  # charged up front: what the searches may scan
        start = k  # the lines from here to a candidate have not been counted yet
        depth = 0
        for _ in range(_LOOKAHEAD_TRIES):
            end = stop
            search = max(start, k + 1)
            if closer_comma is not None:
                try:
                    end = lines.index(closer_comma, search, stop)
                except ValueError:
                    pass
            try:
                # Only up to a "}," found first, so a miss does not scan far.
                end = lines.index(closer, search, end)
            except ValueError:
                if end == stop:
                    return 0
            part = b"\n".join(lines[start:end + 1])
            depth += part.count(b"{") - part.count(b"}")
            if depth == 0:
                break
            if depth < 0:
                return 0
            start = end + 1
        else:
            return 0
        text = b"\n".join(lines[k:end + 1])
        if len(text) - len(indent) > self.max_line_bytes:
            return 0
        comma = closer_comma is not None and lines[end] == closer_comma
        try:
            value = _loads(text.rstrip()[:-1] if comma else text)
        except _JSONDecodeError:
            return 0
        out.append(Event(value, self.source, n))
        if self._state != _TOP:
            self._state = _ELEMENT if comma else _AFTER_ELEMENT
        self._lookahead += stop - end - 1  # refund what was not scanned
        return end - k + 1

    def _check_partial(self, out: list[Event | Reject]) -> None:
        """The line in progress may exceed the limit: if so reject it, skip the rest."""
        line = b"".join(self._pieces)
        if self._lineno == 0 and line.startswith(_BOM):
            # As for a complete first line, the BOM does not count.
            line = line[3:]
            if len(line) <= self.max_line_bytes:
                self._pieces[:] = [_BOM + line]
                return
        self._pieces.clear()
        self._pieces_len = 0
        if self._streams_long(line):
            self._long_start(line, self._lineno + 1, out)
            return
        head = line[: self.max_line_bytes]
        self._skipping = True
        self._too_long(head, self._lineno + 1, out)

    # -- a line longer than max_line_bytes that holds array elements ---------------------
    #
    # An array is a container: a long line of one (`[{...},{...},...]`, the whole input on
    # one line, or a line of elements inside a pretty-printed array) is streamed element by
    # element, and the limit applies to each element, never to the line.

    def _streams_long(self, line: bytes) -> bool:
        """Can this over-long line be streamed as array elements?"""
        if self._stack:
            return False  # inside a multi-line value: the value is too large
        if self._state != _TOP:
            return True
        match = _NON_SPACE.search(line)
        return match is not None and line[match.start()] == _OPEN_ARRAY

    def _long_start(self, line: bytes, n: int, out: list[Event | Reject]) -> None:
        long = self._long = _LongLine(n)
        if self._state == _TOP:
            pos = line.index(b"[") + 1  # _streams_long saw it first on the line
            self._state = _ELEMENT
            self._array_line = n
            line = line[pos:]
        long.after_element = self._state == _AFTER_ELEMENT
        self._long_feed(line, out)

    def _long_feed(self, data: bytes, out: list[Event | Reject], end: bool = False) -> None:
        """Scan the next piece of the long line; emit every element completed in it.

        Only the element in progress is kept (up to max_line_bytes); strings and brackets
        are followed across pieces, so each byte is scanned once.
        """
        long = self._long
        assert long is not None
        if long.closed:
            long.rest_len += len(data)
            if long.rest_len <= self.max_line_bytes:
                long.rest += data
            return
        buf = long.pending + data if long.pending else data
        pos = long.scan
        start = long.start  # where the element being collected starts in buf (-1: none)
        stack = long.stack
        max_len = self.max_line_bytes
        size = len(buf)
        while pos < size:
            if long.in_string:
                if long.escape:
                    long.escape = False
                    pos += 1
                    continue
                body = _STRING_BODY.match(buf, pos)
                assert body is not None  # the pattern matches the empty string too
                stop = body.end()
                if stop < size and buf[stop] == _QUOTE:
                    long.in_string = False
                    pos = stop + 1
                    continue
                long.escape = stop < size  # stopped at a backslash, the piece's last byte
                pos = size
                break
            if stack:
                match = _BRACKET_OR_QUOTE.search(buf, pos)
                if match is None:
                    pos = size
                    break
                char = buf[match.start()]
                pos = match.end()
                if char == _QUOTE:
                    long.in_string = True
                elif char == _OPEN_OBJECT or char == _OPEN_ARRAY:
                    stack.append(char)
                else:
                    stack.pop()
                    if not stack:
                        if not long.skipping:
                            self._long_element(buf[start:pos], out)
                        long.skipping = False
                        long.after_element = True
                        start = -1
                continue
            match = _NON_SPACE.search(buf, pos)
            if match is None:
                pos = size
                break
            pos = match.start()
            char = buf[pos]
            if char == _COMMA:
                long.after_element = False
                pos += 1
            elif char == _CLOSE_ARRAY:
                long.closed = True
                long.rest = bytes(buf[pos + 1:pos + 1 + max_len])
                long.rest_len = size - pos - 1
                long.pending, long.scan, long.start = b"", 0, -1
                self._state = _TOP
                return
            elif char == _OPEN_OBJECT or char == _OPEN_ARRAY:
                done = self._long_quick(buf, pos, out)
                if done:
                    long.after_element = True
                    pos = done
                    continue
                stack.append(char)
                start = pos
                pos += 1
            else:
                token = _SCALAR.match(buf, pos)
                assert token is not None  # a byte that is not space, "," or "]" starts one
                if token.end() == size and not end:
                    start = pos  # the scalar may go on in the next piece
                    break
                self._long_element(buf[pos:token.end()], out)
                long.after_element = True
                pos = token.end()
        if start >= 0 and not long.skipping:
            if size - start <= max_len:
                # Keep the element in progress: scanning resumes where it stopped.
                long.pending, long.scan, long.start = buf[start:], pos - start, 0
                return
            out.append(self._reject(buf[start:start + max_len], long.line,
                                    f"JSON array element larger than max_line_bytes "
                                    f"({max_len})", truncated=True))
            if not stack:
                # A scalar (or junk) that long: give up on the rest of the line.
                self._long = None
                self._skipping = True
                return
            long.skipping = True  # follow its brackets to its end, keeping nothing
        long.pending, long.scan, long.start = b"", 0, -1

    def _long_quick(self, buf: bytes, pos: int, out: list[Event | Reject]) -> int:
        """The usual compact layout in one go: an element at ``pos`` that ends where its
        closing bracket, followed by "," or "]", balances the brackets counted so far.
        Returns where it ends, or 0 to let the scan decide (it gives the same result)."""
        opener = buf[pos:pos + 1]
        closer = b"}" if opener == b"{" else b"]"
        limit = min(len(buf) - 1, pos + self.max_line_bytes)
        end = pos
        for _ in range(_LOOKAHEAD_TRIES):
            end = buf.find(closer, end + 1, limit)
            if end < 0:
                return 0
            if buf[end + 1] not in (_COMMA, _CLOSE_ARRAY):
                continue
            part = buf[pos:end + 1]
            if part.count(opener) != part.count(closer):
                continue
            try:
                value = _loads(part)
            except _JSONDecodeError:
                return 0
            self._emit(value, part, self._long.line, out)  # type: ignore[union-attr]
            return end + 1
        return 0

    def _long_element(self, data: bytes, out: list[Event | Reject]) -> None:
        long = self._long
        assert long is not None
        if len(data) > self.max_line_bytes:
            out.append(self._reject(data[:self.max_line_bytes], long.line,
                                    "JSON array element larger than max_line_bytes "
                                    f"({self.max_line_bytes})", truncated=True))
            return
        try:
            value = _loads(data)
        except _JSONDecodeError as exc:
            out.append(self._reject(data, long.line, _invalid_reason(exc, data, long.line, 1)))
        else:
            self._emit(value, data, long.line, out)

    def _long_end(self, out: list[Event | Reject]) -> None:
        """The long line ended: hand what is still open to the line-by-line decoder."""
        long = self._long
        assert long is not None
        if not long.closed and not long.stack and long.pending.strip():
            self._long_feed(b"", out, end=True)  # a scalar element at the end of the line
        self._long = None
        n = long.line
        if long.closed:
            self._state = _TOP
            if long.rest_len > self.max_line_bytes:
                out.append(self._reject(long.rest, n, "the rest of a line after a JSON array "
                                        f"is longer than max_line_bytes ({self.max_line_bytes})",
                                        truncated=True))
            elif long.rest.strip():
                self._rest_of_line(long.rest, 0, n, out)
            return
        if long.stack:
            # An element goes on in the next lines: continue it like any multi-line value.
            self._stack = long.stack
            self._value_line = n
            self._value_column = 1
            self._value_indent = None
            self._state = _ELEMENT
            if long.skipping:
                self._buf = None
                self._last_byte = _OPEN_OBJECT
            else:
                self._buf = bytearray(long.pending)
                self._buf += b"\n"
            return
        self._state = _AFTER_ELEMENT if long.after_element else _ELEMENT

    def _too_long(self, head: bytes, n: int, out: list[Event | Reject]) -> None:
        """Line ``n`` is longer than max_line_bytes; ``head`` is its first part."""
        if self._stack:
            # The line belongs to a multi-line value, which is therefore too large as
            # well. Reject the value once and keep tracking its brackets (assuming the
            # long line is balanced, as a long line inside a value nearly always is) so
            # the lines after it are not mistaken for new values.
            if self._buf is not None:
                self._buf += head
                out.append(self._reject(self._buf, self._value_line,
                                        self._too_large_reason(), truncated=True))
                self._buf = None
            return
        out.append(self._reject(head, n,
                                f"line longer than max_line_bytes ({self.max_line_bytes})",
                                truncated=True))

    def _too_large_reason(self) -> str:
        return f"multi-line JSON value larger than max_line_bytes ({self.max_line_bytes})"

    def _line(self, line: bytes, n: int, out: list[Event | Reject]) -> None:
        """Decode one complete line (without its newline) that the fast path did not take."""
        if len(line) > self.max_line_bytes:
            if self._streams_long(line):
                self._long_start(line, n, out)
                if self._long is not None:
                    self._long_end(out)
                else:
                    self._skipping = False  # the line is complete: nothing left to skip
            else:
                self._too_long(line[: self.max_line_bytes], n, out)
            return
        pos = 0
        if self._stack:
            pos = self._continue_value(line, n, out)
            if pos < 0:
                return
        self._rest_of_line(line, pos, n, out)

    def _continue_value(self, line: bytes, n: int, out: list[Event | Reject]) -> int:
        """Add line ``n`` to the open multi-line value.

        Returns where the rest of the line starts once the value is closed, or -1 when
        the whole line was used.
        """
        stripped = line.strip()
        if not stripped:
            if self._buf is not None:
                self._buf += line
                self._buf += b"\n"
            return -1
        indent = self._value_indent
        if (indent is not None and line[indent:indent + 1] in (b"{", b"[")
                and not line[:indent].strip() and self._interior_deeper(indent)):
            # A pretty-printed value indents everything inside it: a bracket back at the
            # value's own indentation starts the next value, so this one was cut short
            # (or was a stray "{" line). Reject it alone and carry on with the new one.
            self._cut_short(n, "value", out)
            return 0
        if (line[0] == _OPEN_OBJECT and stripped[-1] == _CLOSE_OBJECT
                and not self._may_continue_with_object()):
            # A complete object at column 0 cannot continue this value here: the value
            # was cut off (a writer died mid-object, say). Reject it, keep the new one.
            try:
                data = _loads(line)
            except _JSONDecodeError:
                pass
            else:
                self._cut_short(n, "object", out)
                out.append(Event(data, self.source, n))
                return -1
        buf = self._buf
        if buf is not None and len(buf) + len(line) > self.max_line_bytes:
            buf += line
            out.append(self._reject(buf, self._value_line, self._too_large_reason(),
                                    truncated=True))
            self._buf = buf = None
        end = self._scan(line, 0)
        if end < 0:
            if buf is not None:
                buf += line
                buf += b"\n"
            self._last_byte = stripped[-1]
            return -1
        if buf is not None:
            buf += line[:end]
            self._emit_value(buf, self._value_line, self._value_column, out)
        self._end_value()
        return end

    def _cut_short(self, n: int, new: str, out: list[Event | Reject]) -> None:
        """The open value was never closed: a new ``new`` starts at line ``n``. Reject
        the value (unless it was rejected already) and forget it."""
        if self._buf is not None:
            kind = "object" if self._stack[0] == _OPEN_OBJECT else "array"
            out.append(self._reject(self._buf, self._value_line,
                                    f"unfinished JSON {kind}: a new {new} starts at line {n} "
                                    "before it was closed"))
        self._end_value()

    def _interior_deeper(self, indent: int) -> bool:
        """Is the open value laid out pretty-printed: its inside indented past ``indent``?

        With nothing inside yet, an object cannot go on with a bracket at all.
        """
        buf = self._buf
        if buf is None:
            return False  # already rejected as too large: its layout is no longer known
        start = buf.find(b"\n") + 1
        while start < len(buf):
            end = buf.find(b"\n", start)
            end = len(buf) if end < 0 else end
            inner = buf[start:end]
            if inner.strip():
                return len(inner) - len(inner.lstrip()) > indent
            start = end + 1
        return self._stack[-1] == _OPEN_OBJECT

    def _may_continue_with_object(self) -> bool:
        """Could an object legitimately come next in the open value?"""
        # The fast path in feed() does not track the last byte: read it off the buffer.
        last = self._buf.rstrip()[-1] if self._buf is not None else self._last_byte
        if self._stack[-1] == _OPEN_ARRAY:
            return last in (_OPEN_ARRAY, _COMMA)
        return last == _COLON

    def _scan(self, line: bytes, pos: int) -> int:
        """Track brackets from ``pos``; return the end of the value if it closes, else -1."""
        if _BRACKET.search(line, pos) is None:
            return -1  # most lines of a pretty-printed object: "key": value,
        stack = self._stack
        for match in _STRUCTURE.finditer(line, pos):
            char = line[match.start()]
            if char == _QUOTE:
                continue
            if char == _OPEN_OBJECT or char == _OPEN_ARRAY:
                stack.append(char)
            else:
                stack.pop()
                if not stack:
                    return match.end()
        return -1

    def _start_value(self, line: bytes, pos: int, n: int, out: list[Event | Reject]) -> int:
        """A value starts at ``pos`` and does not parse alone: collect it (maybe across
        lines). Returns where the rest of the line starts, or -1 when it was all used."""
        self._value_line = n
        self._value_column = pos + 1
        # A value opened at the start of a line holding no member of it (pretty-printed):
        # remember its indentation, which tells a cut-off value from the next one
        # (_continue_value).
        alone = b'"' not in line[pos:] and not line[:pos].strip()
        self._value_indent = pos if alone else None
        end = self._scan(line, pos)
        if end < 0:
            self._buf = bytearray(line[pos:])
            self._buf += b"\n"
            self._last_byte = line.rstrip()[-1]
            return -1
        self._emit_value(line[pos:end], n, pos + 1, out)
        self._end_value()
        return end

    def _end_value(self) -> None:
        self._stack.clear()
        self._buf = None
        if self._state != _TOP:
            self._state = _AFTER_ELEMENT

    def _emit_value(self, data: bytes | bytearray, line: int, column: int,
                    out: list[Event | Reject]) -> None:
        """Parse a complete value (a top-level object or an array element) and emit it."""
        try:
            value = _loads(data)
        except _JSONDecodeError as exc:
            out.append(self._reject(data, line, _invalid_reason(exc, data, line, column)))
            return
        self._emit(value, data, line, out)

    def _emit(self, value: object, data: bytes | bytearray, line: int,
              out: list[Event | Reject]) -> None:
        if type(value) is dict:
            out.append(Event(value, self.source, line))
        elif self._state != _TOP:
            out.append(self._reject(data, line, "a JSON array element is not an object "
                                                f"(got {_json_type(value)})"))
        else:
            out.append(self._reject(data, line, "a top-level JSON value is not an object "
                                                f"(got {_json_type(value)})"))

    def _rest_of_line(self, line: bytes, pos: int, n: int, out: list[Event | Reject]) -> None:
        """Decode line ``n`` from ``pos`` on, outside of any multi-line value."""
        while True:
            match = _NON_SPACE.search(line, pos)
            if match is None:
                return
            pos = match.start()
            char = line[pos]
            if self._state == _TOP:
                if char == _COMMA:
                    # A separator between top-level values (a pasted array body without
                    # its brackets) carries no data: skip it rather than reject it.
                    pos += 1
                    continue
                if char == _OPEN_OBJECT:
                    value = _whole_value(line, pos, _CLOSE_OBJECT)
                    if value is None:
                        self._stack = []
                        pos = self._start_value(line, pos, n, out)
                        if pos < 0:
                            return
                        continue
                    out.append(Event(value, self.source, n))
                    return
                if char == _OPEN_ARRAY:
                    # A whole array on one line parses in one go; otherwise stream it.
                    value = _whole_value(line, pos, _CLOSE_ARRAY)
                    if value is None:
                        self._state = _ELEMENT
                        self._array_line = n
                        pos += 1
                        continue
                    if type(value) is list:
                        for element in value:
                            if type(element) is dict:
                                out.append(Event(element, self.source, n))
                            else:
                                out.append(self._reject(
                                    jsonio.dumps(element), n,
                                    "a JSON array element is not an object "
                                    f"(got {_json_type(element)})"))
                        return
                # A scalar or junk: the rest of the line is rejected as one piece.
                rest = line[pos:].rstrip()
                try:
                    value = _loads(rest)
                except _JSONDecodeError as exc:
                    out.append(self._reject(rest, n, _invalid_reason(exc, rest, n, pos + 1)))
                else:
                    self._emit(value, rest, n, out)
                return

            # Inside a top-level array.
            if char == _CLOSE_ARRAY:
                self._state = _TOP
                pos += 1
                continue
            if char == _COMMA:
                # Also after "[" or another ",": leniency costs nothing and loses nothing.
                self._state = _ELEMENT
                pos += 1
                continue
            # An element (after _AFTER_ELEMENT too: a missing comma is forgiven).
            self._state = _ELEMENT
            if char == _OPEN_OBJECT or char == _OPEN_ARRAY:
                pos = self._element(line, pos, n, out)
                if pos < 0:
                    return
                continue
            match = _SCALAR.match(line, pos)
            assert match is not None  # a byte that is not space, "," or "]" starts one
            token = match.group()
            try:
                value = _loads(token)
            except _JSONDecodeError as exc:
                out.append(self._reject(token, n, _invalid_reason(exc, token, n, pos + 1)))
            else:
                self._emit(value, token, n, out)
            self._state = _AFTER_ELEMENT
            pos = match.end()

    def _element(self, line: bytes, pos: int, n: int, out: list[Event | Reject]) -> int:
        """An array element starting with a bracket at ``pos``; like :meth:`_start_value`."""
        rest = line[pos:] if pos else line
        # Cheap tries first for the usual layouts: one element per line, with or
        # without a trailing "," (or the array's closing "]").
        trimmed = rest.rstrip()
        last = trimmed[-1]
        if last == _CLOSE_OBJECT or last == _CLOSE_ARRAY:
            try:
                value = _loads(trimmed)
            except _JSONDecodeError:
                pass
            else:
                self._emit(value, trimmed, n, out)
                self._state = _AFTER_ELEMENT
                return -1
        if last == _COMMA or last == _CLOSE_ARRAY:
            element = trimmed[:-1].rstrip()
            if element[-1:] in (b"}", b"]"):
                try:
                    value = _loads(element)
                except _JSONDecodeError:
                    pass
                else:
                    self._emit(value, element, n, out)
                    self._state = _ELEMENT if last == _COMMA else _TOP
                    return -1
        self._stack = []
        return self._start_value(line, pos, n, out)


def check_inputs(paths: Iterable[str]) -> None:
    """Raise NwpipeError, before anything is read, for an input that cannot be opened."""
    for path in paths:
        if path == "-":
            continue
        if not os.path.exists(path):
            raise NwpipeError(f"{path}: no such file")
        if os.path.isdir(path):
            raise NwpipeError(f"{path}: is a folder, not a file of events")
        if not os.access(path, os.R_OK):
            raise NwpipeError(f"{path}: permission denied")


def source_name(path: str) -> str:
    """The name events from ``path`` are reported under: ``"-"`` is ``"<stdin>"``."""
    return "<stdin>" if path == "-" else path


class _Gunzip:
    """Incremental gzip decoding, including multi-member files, in bounded pieces."""

    def __init__(self, name: str, chunk_size: int):
        self._name = name
        self._size = chunk_size
        self._inflate: zlib._Decompress | None = None  # None: between members

    def feed(self, data: bytes) -> Iterator[bytes]:
        while data:
            if self._inflate is None:
                # Like the gzip module, accept zero padding after the last member.
                data = data.lstrip(b"\0")
                if not data:
                    return
                self._inflate = zlib.decompressobj(wbits=47)  # 32 + 15: gzip header
            inflate = self._inflate
            try:
                # max_length keeps memory flat even for a "zip bomb".
                chunk = inflate.decompress(data, self._size)
            except zlib.error as exc:
                raise NwpipeError(f"{self._name}: not valid gzip data ({exc})") from None
            if chunk:
                yield chunk
            if inflate.eof:
                data = inflate.unused_data
                self._inflate = None
            else:
                data = inflate.unconsumed_tail
                # Output may still be pending inside zlib when it filled the limit.
                while not data and len(chunk) == self._size:
                    chunk = inflate.decompress(b"", self._size)
                    if chunk:
                        yield chunk
                    if inflate.eof:
                        data = inflate.unused_data
                        self._inflate = None
                        break

    def finish(self) -> None:
        if self._inflate is not None:
            raise NwpipeError(f"{self._name}: gzip data ends early (truncated file?)")


def _open(path: str):
    """Open ``path`` (``"-"``: a duplicate of stdin) unbuffered, with a clear error."""
    try:
        if path == "-":
            return os.fdopen(os.dup(sys.stdin.fileno()), "rb", buffering=0)
        return open(path, "rb", buffering=0)
    except OSError as exc:
        raise NwpipeError(f"{source_name(path)}: cannot read: {exc.strerror or exc}") from None


def _read_error(path: str, exc: OSError) -> NwpipeError:
    return NwpipeError(f"{source_name(path)}: cannot read: {exc.strerror or exc}")


def iter_chunks(path: str, chunk_size: int = 65536) -> Iterator[bytes]:
    """Yield the bytes of ``path`` (``"-"`` for stdin) in chunks, gunzipped if gzip.

    Each read returns what is available, so a slow pipe is passed on as it arrives.
    Raises :class:`NwpipeError` when the file cannot be read or the gzip data is bad.
    """
    if path == "-":
        file = sys.stdin.buffer
        read: Callable[[int], bytes] = getattr(file, "read1", file.read)
        close = None
    else:
        file = _open(path)
        read = file.read
        close = file.close
    try:
        def chunks() -> Iterator[bytes]:
            while True:
                try:
                    chunk = read(chunk_size)
                except OSError as exc:
                    raise _read_error(path, exc) from None
                if not chunk:
                    return
                yield chunk

        raw = chunks()
        first = b""
        for chunk in raw:
            first += chunk
            if len(first) >= 2:
                break
        if first[:2] != _GZIP_MAGIC:
            if first:
                yield first
            yield from raw
            return
        gunzip = _Gunzip(source_name(path), chunk_size)
        yield from gunzip.feed(first)
        for chunk in raw:
            yield from gunzip.feed(chunk)
        gunzip.finish()
    finally:
        if close is not None:
            close()


async def _aiter_raw(path: str, chunk_size: int,
                     on_read: Callable[[int], None] | None = None
                     ) -> AsyncGenerator[bytes, None]:
    """Raw chunks of ``path`` without blocking the event loop on a slow pipe.

    ``on_read`` is told the size of each chunk of a regular file as read (before any
    gunzipping): how far through the file the run is, for the progress line."""
    loop = asyncio.get_running_loop()
    # Opening a named pipe waits for its writer: do that off the loop.
    file = _open(path) if path == "-" else await loop.run_in_executor(None, _open, path)
    fd = file.fileno()
    mode = os.fstat(fd).st_mode
    transport = None
    try:
        if sys.platform != "win32" and (stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode)
                                        or (stat.S_ISCHR(mode) and os.isatty(fd))):
            # Pipes, sockets and terminals: wait for data with the event loop, so
            # `tail -f log | nwpipe run` keeps deliveries going between lines. (Other
            # character devices, /dev/null say, cannot be polled: they are read below.)
            was_blocking = os.get_blocking(fd)
            reader = asyncio.StreamReader(limit=max(chunk_size, 1 << 16), loop=loop)
            try:
                transport, _ = await loop.connect_read_pipe(
                    lambda: asyncio.StreamReaderProtocol(reader, loop=loop), file)
            except (OSError, ValueError, NotImplementedError):
                os.set_blocking(fd, was_blocking)
                transport = None
            if transport is not None:
                try:
                    while True:
                        try:
                            chunk = await reader.read(chunk_size)
                        except OSError as exc:
                            raise _read_error(path, exc) from None
                        if not chunk:
                            return
                        yield chunk
                finally:
                    # The transport owns the file now and closes its descriptor itself
                    # (uvloop by number, later): closing it here too could close a
                    # descriptor that a file opened next has been given meanwhile.
                    transport.close()
                    if path == "-":
                        # O_NONBLOCK is shared with the real stdin (and maybe a
                        # terminal the shell uses afterwards): put it back.
                        try:
                            os.set_blocking(sys.stdin.fileno(), was_blocking)
                        except (OSError, ValueError):
                            pass
                return
        if not stat.S_ISREG(mode):
            # Anything else that may block (a device, or pipes where the loop cannot
            # watch them): read in a worker thread.
            while True:
                try:
                    chunk = await loop.run_in_executor(None, file.read, chunk_size)
                except OSError as exc:
                    raise _read_error(path, exc) from None
                if not chunk:
                    return
                yield chunk
        # Regular files: reads from the page cache are quick, no need for threads.
        while True:
            try:
                chunk = file.read(chunk_size)
            except OSError as exc:
                raise _read_error(path, exc) from None
            if not chunk:
                return
            if on_read is not None:
                on_read(len(chunk))
            yield chunk
    finally:
        if transport is None:
            file.close()


async def aiter_chunks(path: str, chunk_size: int = 65536,
                       on_read: Callable[[int], None] | None = None) -> AsyncIterator[bytes]:
    """Async version of :func:`iter_chunks` that never blocks the loop on a slow pipe;
    ``on_read`` counts the bytes read from a regular file (compressed ones for .gz)."""
    raw = _aiter_raw(path, chunk_size, on_read)
    try:
        first = b""
        async for chunk in raw:
            first += chunk
            if len(first) >= 2:
                break
        if first[:2] != _GZIP_MAGIC:
            if first:
                yield first
            async for chunk in raw:
                yield chunk
            return
        gunzip = _Gunzip(source_name(path), chunk_size)
        for piece in gunzip.feed(first):
            yield piece
        async for chunk in raw:
            for piece in gunzip.feed(chunk):
                yield piece
        gunzip.finish()
    finally:
        await raw.aclose()


def read_events(path: str, *, max_line_bytes: int = 1 << 20) -> Iterator[Event | Reject]:
    """Decode ``path`` (``"-"`` for stdin) into events and rejects, as a stream."""
    decoder = Decoder(source_name(path), max_line_bytes=max_line_bytes)
    try:
        for chunk in iter_chunks(path):
            yield from decoder.feed(chunk)
    except NwpipeError:
        # Bad gzip data ends the input, but what was decoded so far still counts.
        yield from decoder.finish()
        raise
    yield from decoder.finish()
