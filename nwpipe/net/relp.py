"""A RELP client (Reliable Event Logging Protocol, as spoken by rsyslog's imrelp).

RELP frames syslog messages over TCP and has the collector acknowledge each one::

    TXNR SP COMMAND SP DATALEN [SP DATA] LF

The client opens a session (``open`` with its offers, answered by ``rsp`` ``200 OK``
and the server's offers), sends ``syslog`` frames with increasing transaction numbers,
and the collector answers each with ``rsp`` and the same number once it has taken the
message: ``200 OK``, or a status of 300 and more when it refuses it. Up to ``window``
messages may wait for their answer at once. ``close`` ends the session; a collector
that shuts down sends ``serverclose`` (transaction number 0). A message without an
answer when the connection ends was perhaps not taken, so it must be sent again on the
next connection: RELP delivers at least once.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
from dataclasses import dataclass
from typing import Callable

from nwpipe import __version__
from nwpipe.aio import within
from nwpipe.net.httputil import printable

#: transaction numbers run from 1 to this, then start again at 1
MAX_TXNR = 999_999_999
#: the longest header a peer may send before its data: number, command and length
_MAX_HEADER = 9 + 1 + 32 + 1 + 9 + 1
OFFERS = (f"relp_version=0\nrelp_software=nwpipe,{__version__},-\ncommands=syslog").encode()


class RelpError(Exception):
    """The collector broke the protocol or refused the session (not worth a quick retry
    only when ``permanent``)."""

    def __init__(self, message: str, permanent: bool = False):
        super().__init__(message)
        self.permanent = permanent


@dataclass(slots=True)
class Frame:
    """One RELP frame as read."""

    txnr: int
    command: str
    data: bytes

    @property
    def status(self) -> int:
        """The status code of a ``rsp`` (0 when it has none)."""
        head = self.data[:3]
        return int(head) if head.isdigit() else 0

    @property
    def text(self) -> str:
        """The first line of the data, for messages (control characters removed)."""
        line = self.data.split(b"\n", 1)[0].decode("utf-8", "replace")
        return printable(line)[:200]


def encode_frame(txnr: int, command: str, data: bytes = b"") -> bytes:
    """One frame: ``TXNR SP COMMAND SP DATALEN [SP DATA] LF``."""
    head = f"{txnr} {command} {len(data)}".encode()
    return head + b" " + data + b"\n" if data else head + b"\n"


class FrameReader:
    """Reads RELP frames from a stream, keeping what arrived beyond the last frame."""

    def __init__(self, reader: asyncio.StreamReader, max_data: int = 1 << 20):
        self._reader = reader
        self._buffer = bytearray()
        self._max_data = max_data
        #: called before each read (see RelpSession.connect)
        self.quickack: Callable[[], None] | None = None

    async def _fill(self) -> None:
        if self.quickack is not None:
            self.quickack()
        chunk = await self._reader.read(65536)
        if not chunk:
            raise ConnectionResetError("the collector closed the connection")
        self._buffer += chunk

    async def read(self) -> Frame:
        """The next frame; ConnectionError when the stream ends, RelpError when it is
        not RELP."""
        buffer = self._buffer
        while True:
            # the header ends at the third space, or at the line feed of an empty frame
            spaces, end = 0, -1
            for i in range(min(len(buffer), _MAX_HEADER)):
                if buffer[i] == 0x20:
                    spaces += 1
                    if spaces == 3:
                        end = i
                        break
                elif buffer[i] == 0x0A and spaces == 2:
                    end = i
                    break
            if end >= 0:
                break
            if len(buffer) >= _MAX_HEADER:
                raise RelpError(f"not a RELP frame: {bytes(buffer[:40])!r}")
            await self._fill()
        parts = bytes(buffer[:end]).split(b" ")
        if (len(parts) != 3 or not parts[0].isdigit() or not parts[2].isdigit()
                or not parts[1].isalpha()):
            raise RelpError(f"not a RELP frame: {bytes(buffer[:40])!r}")
        txnr, command, length = int(parts[0]), parts[1].decode(), int(parts[2])
        if length > self._max_data:
            raise RelpError(f"a RELP frame of {length} bytes is too large")
        if buffer[end] == 0x0A:  # no data
            if length:
                raise RelpError(f"RELP frame {txnr} {command}: data missing")
            del buffer[:end + 1]
            return Frame(txnr, command, b"")
        need = end + 1 + length + 1
        while len(buffer) < need:
            await self._fill()
        if buffer[need - 1] != 0x0A:
            raise RelpError(f"RELP frame {txnr} {command}: no line feed after its data")
        data = bytes(buffer[end + 1:need - 1])
        del buffer[:need]
        return Frame(txnr, command, data)


class RelpSession:
    """One RELP session over one connection. Not safe for concurrent ``send`` calls."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 window: int, timeout: float):
        self._frames = FrameReader(reader)
        self._writer = writer
        self._window = window
        self._timeout = timeout
        self._txnr = 0
        #: why the session cannot be used any more (None while it can)
        self.broken: str | None = None
        #: what the collector said about itself when the session opened
        self.server_offers: dict[str, str] = {}

    def _next_txnr(self) -> int:
        self._txnr = self._txnr % MAX_TXNR + 1
        return self._txnr

    @classmethod
    async def connect(cls, host: str, port: int, *, timeout: float, window: int = 128,
                      ssl_context: ssl.SSLContext | None = None) -> RelpSession:
        """Connect and open a session; OSError/TimeoutError when the collector cannot be
        reached, RelpError when it does not accept the session."""
        reader, writer = await within(
            asyncio.open_connection(host, port, ssl=ssl_context,
                                    server_hostname=host if ssl_context else None), timeout)
        session = cls(reader, writer, window, timeout)
        sock = writer.get_extra_info("socket")
        if sock is not None and hasattr(socket, "TCP_QUICKACK"):
            # The collector answers each message with a small frame. Linux delays the
            # ACK of what arrives (up to 40 ms) and the collector's Nagle algorithm holds
            # its next answer until that ACK: a stall at the end of every batch. Asking
            # for immediate ACKs before each read removes it (Linux resets the flag).
            def quickack() -> None:
                try:
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK, 1)
                except OSError:
                    pass
            session._frames.quickack = quickack
        try:
            await within(session._open(), timeout)
        except BaseException:
            writer.close()
            raise
        return session

    async def _open(self) -> None:
        txnr = self._next_txnr()
        self._writer.write(encode_frame(txnr, "open", OFFERS))
        await self._writer.drain()
        frame = await self._frames.read()
        if frame.command == "serverclose":
            raise ConnectionResetError("the collector closed the session")
        if frame.command != "rsp" or frame.txnr != txnr:
            raise RelpError(f"unexpected answer to open: {frame.txnr} {frame.command}")
        if frame.status != 200:
            raise RelpError(f"the collector refused the RELP session: {frame.text}",
                            permanent=True)
        for line in frame.data.split(b"\n")[1:]:
            key, _, value = line.decode("utf-8", "replace").partition("=")
            if key:
                self.server_offers[key.strip()] = value.strip()
        commands = self.server_offers.get("commands")
        if commands is not None and "syslog" not in commands.split(","):
            raise RelpError("the collector does not accept the RELP syslog command",
                            permanent=True)

    async def send(self, messages: list[bytes]) -> list[Frame | None]:
        """Send each message as a ``syslog`` command and wait for the answers.

        Returns, per message, the collector's ``rsp`` frame (``status`` 200 when taken),
        or None when no answer came because the session ended; then ``broken`` says why.
        Never raises for a lost connection.
        """
        answers: list[Frame | None] = [None] * len(messages)
        waiting: dict[int, int] = {}  # txnr -> index of the message
        loop = asyncio.get_running_loop()
        try:
            sent = 0
            while sent < len(messages) or waiting:
                while sent < len(messages) and len(waiting) < self._window:
                    txnr = self._next_txnr()
                    waiting[txnr] = sent
                    self._writer.write(encode_frame(txnr, "syslog", messages[sent]))
                    sent += 1
                await within(self._writer.drain(), self._timeout)
                deadline = loop.time() + self._timeout
                # read until the window has room again (or everything is answered)
                while waiting and (sent == len(messages) or len(waiting) >= self._window):
                    left = deadline - loop.time()
                    if left <= 0:
                        raise asyncio.TimeoutError
                    frame = await within(self._frames.read(), left)
                    if frame.command == "serverclose":
                        raise ConnectionResetError("the collector is shutting down "
                                                   "(serverclose)")
                    if frame.command != "rsp" or frame.txnr not in waiting:
                        raise RelpError(f"unexpected frame from the collector: "
                                        f"{frame.txnr} {frame.command}")
                    answers[waiting.pop(frame.txnr)] = frame
                    deadline = loop.time() + self._timeout
        except asyncio.TimeoutError:
            self.broken = f"no answer within {self._timeout:g} s"
        except RelpError as exc:
            self.broken = str(exc)
        except (OSError, ssl.SSLError) as exc:
            self.broken = (exc.strerror if isinstance(exc, OSError) and exc.strerror
                           else str(exc) or type(exc).__name__)
        return answers

    async def close(self) -> None:
        """End the session politely (``close``) and the connection."""
        writer = self._writer
        if self.broken is None and not writer.is_closing():
            try:
                txnr = self._next_txnr()
                writer.write(encode_frame(txnr, "close"))
                await within(writer.drain(), 1.0)
                await within(self._frames.read(), 1.0)
            except (OSError, ssl.SSLError, RelpError, asyncio.TimeoutError):
                pass  # closing anyway
        self.broken = self.broken or "closed"
        writer.close()
        try:
            await within(writer.wait_closed(), 1.0)
        except (OSError, ssl.SSLError, asyncio.TimeoutError):
            pass
