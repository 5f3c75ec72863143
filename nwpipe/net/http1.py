"""A lean HTTP/1.1 client for one origin: the webhook output's direct-connection path.

A webhook delivery is one small request and one small answer, thousands of times a
second. A general client (aiohttp's) spends most of its time on what this traffic never
needs (cookies, redirects, proxies, decompression, tracing, streaming bodies), so for a
direct connection the webhook output uses this instead; proxies and followed redirects
still go through aiohttp.

- One request at a time per connection (no pipelining); keep-alive connections are
  pooled and reused most-recently-used first. At most ``limit`` requests are in flight,
  so at most ``limit`` connections are open.
- One deadline covers the whole request: connecting, the TLS handshake, sending and the
  complete answer.
- A kept-alive connection the server closed while it was idle (the server's keep-alive
  timeout) is noticed when the request gets no answer at all on it; the request is then
  sent once more on a new connection.
- Answers are framed per RFC 9112 section 6.3: no body for 1xx, 204 and 304;
  ``Transfer-Encoding: chunked``; ``Content-Length``; else until the server closes.
  Only the first ``keep`` bytes of a body are kept; the rest is read and dropped up to
  ``drain_limit`` bytes, after which the connection is closed instead of read to the end.
- The status line and headers are the answer. Once they have arrived, a body cut short
  (the connection reset or closed, or the deadline reached) gives the answer with the
  body received so far, and the connection is closed. A 2xx body without a length
  (delimited by the server closing) is not waited for at all, and a longer one only up
  to ``keep`` bytes: the caller needs the status, and the connection is closed anyway.
- Informational answers (``100 Continue``, ``103 Early Hints``) are skipped.
- A status line that is not HTTP/1.x (``HTTP/2.0 200``), or a NUL, CR or LF inside a
  header line, is a :class:`ProtocolError` (RFC 9110 section 5.5).

Errors are ordinary exceptions: :class:`ConnectError` (wrapping the ``OSError`` of a
failed connect), ``ssl.SSLError`` from the handshake, ``asyncio.TimeoutError``,
:class:`ServerDisconnected`, ``ConnectionResetError`` and :class:`ProtocolError`.
"""

from __future__ import annotations

import asyncio
import re
import ssl
from collections import deque
from typing import Optional

from nwpipe.aio import within

#: longest status line plus headers accepted from a server
MAX_HEAD = 64 * 1024
#: longest chunk-size or trailer line accepted
MAX_LINE = 8 * 1024
#: bodies up to this size are sent in the same write as the head (one syscall)
_JOIN_LIMIT = 64 * 1024

_CHUNK_SIZE = re.compile(rb"[0-9A-Fa-f]{1,16}")

# parser states
_IDLE, _HEAD, _LENGTH, _CHUNK_LINE, _CHUNK_DATA, _CHUNK_END, _TRAILERS, _UNTIL_CLOSE = range(8)


class ProtocolError(Exception):
    """The server's answer is not valid HTTP/1.x."""


class ServerDisconnected(ConnectionError):
    """The server closed the connection before a complete answer."""


class ConnectError(OSError):
    """Connecting failed; ``os_error`` is the reason (refused, unreachable, DNS...)."""

    def __init__(self, os_error: OSError):
        super().__init__(os_error.errno, os_error.strerror or str(os_error))
        self.os_error = os_error


class Response:
    """A complete answer: status, reason phrase, headers (names lower-cased; repeated
    headers joined with ", ") and the first bytes of the body."""

    __slots__ = ("status", "reason", "headers", "body")

    def __init__(self, status: int, reason: str, headers: dict[str, str], body: bytes):
        self.status = status
        self.reason = reason
        self.headers = headers
        self.body = body

    def __repr__(self) -> str:
        return f"<Response {self.status} {self.reason}>"


class _Connection(asyncio.Protocol):
    """One connection: writes a request, parses the answer, resolves a future."""

    def __init__(self, loop: asyncio.AbstractEventLoop, keep: int, drain_limit: int):
        self.loop = loop
        self.keep = keep
        self.drain_limit = drain_limit
        # set by connection_made, before anything else is called
        self.transport: asyncio.Transport = None  # type: ignore[assignment]
        self.closed = False
        self.received = False        # some bytes of the current answer arrived
        self.keep_alive = False
        self._waiter: Optional[asyncio.Future] = None
        self._buf = bytearray()
        self._state = _IDLE
        self._remaining = 0
        self._status = 0
        self._reason = ""
        self._headers: dict[str, str] = {}
        self._body = bytearray()
        self._seen = 0

    # -- asyncio.Protocol --

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if self._state == _IDLE:
            # bytes nobody asked for: the connection cannot be trusted any more
            self.closed = True
            self.transport.abort()
            return
        self.received = True
        self._buf += data
        try:
            self._parse()
        except ProtocolError as exc:
            self._fail(exc)

    def eof_received(self) -> bool:
        if self._state > _HEAD:
            self._complete(close=True)
        return False  # close our side too; connection_lost follows

    def connection_lost(self, exc: Optional[BaseException]) -> None:
        self.closed = True
        if self._state > _HEAD:
            # the head arrived: that is the answer, whatever became of the body
            self._complete(close=True)
        elif self._state != _IDLE:
            if isinstance(exc, OSError):
                self._fail(exc)
            else:
                self._fail(ServerDisconnected("closed the connection without a "
                                              + ("complete response" if self.received
                                                 else "response")))

    # -- one exchange --

    def start(self, head: bytes, body: bytes) -> asyncio.Future:
        """Send a request; the future resolves to its Response."""
        waiter = self.loop.create_future()
        self._waiter = waiter
        self._state = _HEAD
        self._headers = {}
        self._body = bytearray()
        self._seen = 0
        self.received = False
        self.keep_alive = False
        if len(body) <= _JOIN_LIMIT:
            self.transport.write(head + body)
        else:
            self.transport.write(head)
            self.transport.write(body)
        return waiter

    def timed_out(self) -> None:
        if self._state > _HEAD:
            self._complete(close=True)  # the head arrived in time: it is the answer
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(asyncio.TimeoutError())
        self.abort()

    def abort(self) -> None:
        self.closed = True
        self._state = _IDLE
        if self.transport is not None:
            self.transport.abort()

    def _fail(self, exc: BaseException) -> None:
        self._state = _IDLE
        self.closed = True
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc)
        if self.transport is not None:
            self.transport.abort()

    def _complete(self, close: bool = False) -> None:
        self._state = _IDLE
        if close or self._buf:
            # close-delimited, cut short, or followed by bytes that belong to nothing
            self.keep_alive = False
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(Response(self._status, self._reason, self._headers,
                                       bytes(self._body)))

    # -- parsing --

    def _parse(self) -> None:
        buf = self._buf
        while True:
            state = self._state
            if state == _HEAD:
                end = buf.find(b"\r\n\r\n")
                if end < 0:
                    if len(buf) > MAX_HEAD:
                        raise ProtocolError("response headers longer than 64 KiB")
                    return
                head = bytes(buf[:end])
                del buf[:end + 4]
                self._head(head)
            elif state == _LENGTH:
                if not buf:
                    return
                take = min(len(buf), self._remaining)
                self._data(buf, take)
                if self._state == _IDLE:  # over the drain limit
                    return
                self._remaining -= take
                if self._remaining == 0:
                    self._done_body()
                    return
            elif state == _CHUNK_LINE:
                end = buf.find(b"\r\n")
                if end < 0:
                    if len(buf) > MAX_LINE:
                        raise ProtocolError("chunk size line too long")
                    return
                size = bytes(buf[:end]).split(b";", 1)[0].strip(b" \t")
                del buf[:end + 2]
                if not _CHUNK_SIZE.fullmatch(size):
                    raise ProtocolError("invalid chunk size")
                self._remaining = int(size, 16)
                self._state = _CHUNK_DATA if self._remaining else _TRAILERS
            elif state == _CHUNK_DATA:
                if not buf:
                    return
                take = min(len(buf), self._remaining)
                self._data(buf, take)
                if self._state == _IDLE:  # over the drain limit
                    return
                self._remaining -= take
                if self._remaining:
                    return
                self._state = _CHUNK_END
            elif state == _CHUNK_END:
                if len(buf) < 2:
                    return
                if buf[:2] != b"\r\n":
                    raise ProtocolError("chunk not followed by CRLF")
                del buf[:2]
                self._state = _CHUNK_LINE
            elif state == _TRAILERS:
                end = buf.find(b"\r\n")
                if end < 0:
                    if len(buf) > MAX_LINE:
                        raise ProtocolError("trailer line too long")
                    return
                del buf[:end + 2]
                if end == 0:
                    self._done_body()
                    return
            elif state == _UNTIL_CLOSE:
                if buf:
                    self._data(buf, len(buf))
                    if self._state == _UNTIL_CLOSE and len(self._body) >= self.keep:
                        self._complete(close=True)  # all that is kept has arrived
                return
            else:
                return

    def _head(self, head: bytes) -> None:
        # one decode for the whole head (latin-1 maps every byte), then str work only
        lines = head.decode("latin-1").split("\r\n")
        line = lines[0]
        if (not line.startswith("HTTP/1.") or len(line) < 12 or line[8] != " "
                or not line[9:12].isdigit() or not line[9:12].isascii()
                or (len(line) > 12 and line[12] != " ")):
            raise ProtocolError(f"not an HTTP/1.x status line: {line[:40]!r}")
        status = int(line[9:12])
        if 100 <= status < 200:
            if status == 101:
                raise ProtocolError("unexpected 101 Switching Protocols")
            return  # informational: the real answer follows
        headers: dict[str, str] = {}
        for raw in lines[1:]:
            if "\0" in raw:
                raise ProtocolError("NUL in a response header")
            if "\r" in raw or "\n" in raw:
                raise ProtocolError("bare CR or LF in a response header")
            name, colon, value = raw.partition(":")
            if not colon or not name or name[0] in " \t" or name[-1] in " \t":
                if raw[:1] in (" ", "\t"):
                    raise ProtocolError("obsolete line folding in response headers")
                raise ProtocolError(f"invalid response header line: {raw[:40]!r}")
            key = name.lower()
            text = value.strip(" \t")
            if key in headers:
                if key == "content-length":
                    if headers[key] != text:
                        raise ProtocolError("conflicting Content-Length headers")
                    continue
                headers[key] = headers[key] + ", " + text
            else:
                headers[key] = text
        self._status = status
        self._reason = line[13:]
        self._headers = headers
        connection = headers.get("connection", "").lower()
        if line[7] == "1":
            self.keep_alive = "close" not in connection
        else:
            self.keep_alive = "keep-alive" in connection
        if status == 204 or status == 304:
            self._done_body()
            return
        coding = headers.get("transfer-encoding")
        if coding is not None:
            if coding.rsplit(",", 1)[-1].strip().lower() == "chunked":
                self._state = _CHUNK_LINE
                if "content-length" in headers:
                    self.keep_alive = False  # RFC 9112 6.3: both is a smuggling sign
            else:
                self.keep_alive = False
                if 200 <= status < 300:
                    self._complete(close=True)
                else:
                    self._state = _UNTIL_CLOSE
            return
        length = headers.get("content-length")
        if length is None:
            self.keep_alive = False
            if 200 <= status < 300:
                self._complete(close=True)  # not waited for: see the module docstring
            else:
                self._state = _UNTIL_CLOSE
            return
        if not (length.isascii() and length.isdigit()):
            raise ProtocolError("invalid Content-Length")
        self._remaining = int(length)
        if self._remaining == 0:
            self._done_body()
        else:
            self._state = _LENGTH

    def _data(self, buf: bytearray, take: int) -> None:
        room = self.keep - len(self._body)
        if room > 0:
            self._body += buf[:min(room, take)]
        del buf[:take]
        self._seen += take
        if self._seen > self.drain_limit:
            # enough: close the connection rather than read a huge answer to its end
            self._complete(close=True)

    def _done_body(self) -> None:
        self._complete()


class Pool:
    """Keep-alive connections to one origin, at most ``limit`` in use at once."""

    def __init__(self, host: str, port: int, *, ssl_context: Optional[ssl.SSLContext] = None,
                 server_hostname: Optional[str] = None, limit: int = 16,
                 keep: int = 1024, drain_limit: int = 64 * 1024):
        self.host = host
        self.port = port
        self.ssl_context = ssl_context
        self.server_hostname = server_hostname if ssl_context is not None else None
        self.limit = max(1, limit)
        self.keep = keep
        self.drain_limit = drain_limit
        self._idle: deque[_Connection] = deque()
        self._busy: set[_Connection] = set()
        self._slots: Optional[asyncio.Semaphore] = None
        self._closed = False

    async def request(self, head: bytes, body: bytes, timeout: float) -> Response:
        """Send ``head`` (request line and headers, ending with a blank line) and
        ``body``; return the complete answer within ``timeout`` seconds."""
        if self._closed:
            raise RuntimeError("the connection pool is closed")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        slots = self._slots
        if slots is None:
            slots = self._slots = asyncio.Semaphore(self.limit)
        if slots.locked():
            await within(slots.acquire(), deadline - loop.time())
        else:
            await slots.acquire()
        try:
            conn = self._take_idle()
            if conn is not None:
                try:
                    return await self._exchange(loop, conn, head, body, deadline)
                except (ServerDisconnected, ConnectionResetError, BrokenPipeError):
                    if conn.received:
                        raise
                    # closed by the server while idle: once more on a new connection
            conn = await self._connect(loop, deadline)
            return await self._exchange(loop, conn, head, body, deadline)
        finally:
            slots.release()

    def _take_idle(self) -> Optional[_Connection]:
        idle = self._idle
        while idle:
            conn = idle.pop()
            if not conn.closed and not conn.transport.is_closing():
                return conn
        return None

    async def _connect(self, loop: asyncio.AbstractEventLoop, deadline: float) -> _Connection:
        remaining = deadline - loop.time()
        if remaining <= 0:
            raise asyncio.TimeoutError()
        keep, drain = self.keep, self.drain_limit
        try:
            # not asyncio.wait_for: on Python 3.10/3.11 it turns a cancel that comes as
            # the connection is refused into the refusal, and the worker never stops
            _, conn = await within(
                loop.create_connection(lambda: _Connection(loop, keep, drain), self.host,
                                       self.port, ssl=self.ssl_context,
                                       server_hostname=self.server_hostname),
                remaining)
        except (ssl.SSLError, ssl.CertificateError, asyncio.TimeoutError):
            raise
        except OSError as exc:
            raise ConnectError(exc) from exc
        return conn

    async def _exchange(self, loop, conn: _Connection, head: bytes, body: bytes,
                        deadline: float) -> Response:
        self._busy.add(conn)
        timer = loop.call_at(deadline, conn.timed_out)
        try:
            response = await conn.start(head, body)
        except BaseException:
            # timed out, failed or cancelled mid-request: the connection is unusable
            conn.abort()
            raise
        finally:
            timer.cancel()
            self._busy.discard(conn)
        if conn.keep_alive and not conn.closed and not self._closed:
            self._idle.append(conn)
        else:
            conn.abort()
        return response

    async def close(self) -> None:
        """Close every connection."""
        self._closed = True
        while self._idle:
            conn = self._idle.pop()
            if conn.transport is not None:
                conn.transport.close()
        for conn in list(self._busy):
            conn.abort()
        # let the transports finish closing before the loop goes away
        await asyncio.sleep(0)
