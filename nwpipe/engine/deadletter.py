"""The dead-letter file: every event that could not reach an output, with the reason.

One JSON object per line. Each record carries the original event (or the raw input when
it did not parse), where it came from (source and line), the output, the stage that
failed (``parse``, ``map`` or ``deliver``), the reason, the HTTP status and response
snippet when there was one, every delivery attempt and the stable delivery id.

Durability: records are written, flushed and fsynced before the event loop does
anything else (a group of records costs one fsync, so a receiver that is down, with
thousands of events failing at once, does not stall the run on one fsync per event),
and at the latest when the file is closed. A crash right after loses nothing written.

Concurrency: ``nwpipe replay`` rewrites the file while a ``nwpipe run`` may be appending
to it. Both use advisory locks (``flock``): a run holds a shared lock only while it
appends and, once it has the lock, reopens the path if a replay replaced the file
meanwhile; a replay holds an exclusive lock from reading to replacing. So a record is
never appended to a file that is about to be replaced.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import reprlib
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, Iterator

from nwpipe import jsonio
from nwpipe.errors import NwpipeError
from nwpipe.outputs import Delivery

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: no advisory locks
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger("nwpipe")

#: format version of a record; bumped if a field changes meaning
RECORD_VERSION = 1

#: records are written at once (not at the end of the loop turn) past this many bytes
GROUP_BYTES = 1 << 20

#: how often a run retries appending while a replay holds the file (seconds)
LOCKED_RETRY = 0.05

#: waits before each retry of a write that failed (disk full, read-only file system);
#: after the last one the waiting records are printed on stderr (``spill``)
RETRY_DELAYS = (0.1, 0.5)

#: most bytes of records waiting in memory for a file that cannot be written
PENDING_LIMIT = 8 << 20


def utc_now() -> str:
    """The current time as ISO 8601 UTC with milliseconds."""
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def delivery_record(delivery: Delivery, *, stage: str, reason: str, status: int | None = None,
                    response: str | None = None) -> dict[str, Any]:
    """A record for one delivery (or mapping) that failed for one output."""
    record = {
        "nwpipe_dead_letter": RECORD_VERSION,
        "time": utc_now(),
        "stage": stage,
        "output": delivery.output,
        "source": delivery.source,
        "line": delivery.line,
        "reason": reason,
        "delivery_id": delivery.id,
        "attempts": delivery.attempts,
        "event": delivery.event,
    }
    if status is not None:
        record["status"] = status
    if response is not None:
        record["response"] = response
    return record


def event_record(event: dict, *, stage: str, output: str | None, source: str, line: int,
                 reason: str, delivery_id: str | None = None,
                 attempts: list | None = None) -> dict[str, Any]:
    """A record for an event that failed before delivery (validation or mapping)."""
    return {
        "nwpipe_dead_letter": RECORD_VERSION,
        "time": utc_now(),
        "stage": stage,
        "output": output,
        "source": source,
        "line": line,
        "reason": reason,
        "delivery_id": delivery_id,
        "attempts": attempts if attempts is not None else [],
        "event": event,
    }


def raw_record(raw: str, *, source: str, line: int, reason: str,
               stage: str = "parse") -> dict[str, Any]:
    """A record for input that is not a usable event (the raw text is kept); ``stage``
    is ``intake`` for a piece of a request body that ``nwpipe serve`` refused."""
    return {
        "nwpipe_dead_letter": RECORD_VERSION,
        "time": utc_now(),
        "stage": stage,
        "output": None,
        "source": source,
        "line": line,
        "reason": reason,
        "attempts": [],
        "raw": raw,
    }


class DeadLetterFile:
    """Append-only, durable writer; the file is created on the first record only.

    ``lock=False`` skips the advisory lock (for a private file nobody else opens).

    When the file cannot be written (disk full, a read-only file system), records wait in
    memory while the write is retried a few times (:data:`RETRY_DELAYS`), never more than
    one retry at a time, each going on exactly where the last write stopped, so no record
    is written twice or cut. Then, with ``spill=True`` (what ``nwpipe run`` uses), the
    waiting records are printed on stderr, once, and counted in :attr:`spilled`; the
    next records try the file again. Without ``spill`` they keep waiting and
    :meth:`close` prints them and raises NwpipeError. Memory stays bounded either way:
    past :data:`PENDING_LIMIT` bytes, records waiting are spilled (or the write raises).
    """

    def __init__(self, path: str | os.PathLike, *, lock: bool = True, spill: bool = False):
        self.path = Path(path)
        #: records written through :meth:`write` (not :meth:`write_raw`)
        self.count = 0
        #: records that could not be written to the file and were printed on stderr
        self.spilled = 0
        #: why the file could not be written, when it could not (for the summary)
        self.error: str | None = None
        self._lock = lock and fcntl is not None
        self._spill = spill
        self._fd: int | None = None
        # Waiting records as one buffer; its first ``_head_written`` bytes (part of its
        # first record) are already in the file, after a write that stopped midway.
        self._pending: list[bytes] = []
        self._pending_bytes = 0
        self._head_written = 0
        self._end_after_partial = -1  # file size right after that partial write
        self._handle: asyncio.Handle | asyncio.TimerHandle | None = None
        self._failures = 0  # failed attempts in a row
        self._outage = False  # the file could not be written, and not since
        self._waiting_reported = False

    def check(self) -> None:
        """Raise NwpipeError now, before anything is read, when the file cannot be written."""
        path = self.path
        if path.is_dir():
            raise NwpipeError(f"dead-letter file {path}: is a folder")
        if path.exists():
            ok = os.access(path, os.W_OK)
        else:
            folder = path.absolute().parent
            while not folder.exists() and folder != folder.parent:
                folder = folder.parent
            ok = folder.is_dir() and os.access(folder, os.W_OK | os.X_OK)
        if not ok:
            raise NwpipeError(f"dead-letter file {path}: permission denied "
                              "(set another with --dead-letter or dead_letter in the config)")

    # -- writing -----------------------------------------------------------------

    def write(self, records: Iterable[dict[str, Any]]) -> None:
        """Append records durably (see the module docstring for when exactly)."""
        data = b"".join(encode_record(r) + b"\n" for r in records)
        if data:
            self.count += data.count(b"\n")  # compact JSON never holds a raw newline
            self._add(data)

    def write_raw(self, data: bytes) -> None:
        """Append lines exactly as given (records kept unchanged by a replay)."""
        if data:
            self._add(data if data.endswith(b"\n") else data + b"\n")

    def _add(self, data: bytes) -> None:
        self._pending.append(data)
        self._pending_bytes += len(data)
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self.flush()
            return
        if self._failures:
            # A retry is already scheduled: wait for it, within the memory bound.
            if self._pending_bytes > PENDING_LIMIT:
                if self._spill:
                    self._spill_pending()
                else:
                    raise OSError(errno.ENOSPC, f"{self.error} ({self._pending_bytes} bytes "
                                                "of dead letters waiting)")
            return
        if self._pending_bytes >= GROUP_BYTES:
            if self._handle is not None:
                self._handle.cancel()
            self._try_flush()
        elif self._handle is None:
            # Everything written during this turn of the loop shares one fsync.
            self._handle = loop.call_soon(self._try_flush)

    def _try_flush(self) -> None:
        """Flush from the event loop: never block on a replay's lock, never raise."""
        self._handle = None
        if not self._pending:
            return
        try:
            done = self._flush(block=False)
        except OSError as exc:
            self._failed(exc)
            if self._failures > len(RETRY_DELAYS):
                if self._spill:
                    self._spill_pending()
                self._failures = 0 if self._spill else len(RETRY_DELAYS)
                if self._spill:
                    return
            delay = RETRY_DELAYS[min(self._failures, len(RETRY_DELAYS)) - 1]
            self._handle = asyncio.get_running_loop().call_later(delay, self._try_flush)
            return
        if done:
            self._recovered()
        else:  # a replay holds the file
            self._handle = asyncio.get_running_loop().call_later(LOCKED_RETRY, self._try_flush)

    @property
    def written(self) -> bool:
        """True when every record handed to this file so far is on disk."""
        return not self._pending

    def _failed(self, exc: OSError) -> None:
        reason = exc.strerror or str(exc)
        if not self._outage:  # one message per outage, not one per attempt
            self._outage = True
            what = ("retrying, then printing records on stderr" if self._spill
                    else "retrying")
            log.error("cannot write the dead-letter file %s: %s (%s)", self.path, reason, what)
        self.error = reason
        self._failures += 1

    def _recovered(self) -> None:
        if self._outage:
            self._outage = False
            log.info("the dead-letter file %s can be written again", self.path)
        self._failures = 0

    def flush(self) -> None:
        """Write everything pending now, waiting for a replay's lock if need be.

        With ``spill``, what cannot be written is printed on stderr instead (never
        raises); otherwise the OSError propagates and the records keep waiting.
        """
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        if not self._pending:
            return
        try:
            self._flush(block=True)
        except OSError as exc:
            self._failed(exc)
            if not self._spill:
                raise
            self._spill_pending()
        else:
            self._recovered()
        self._failures = 0

    def _flush(self, *, block: bool) -> bool:
        fd = self._locked_fd(block)
        if fd is None:
            return False
        try:
            data = self._pending[0] if len(self._pending) == 1 else b"".join(self._pending)
            self._pending[:] = [data]
            done = self._head_written
            try:
                while done < len(data):
                    done += os.write(fd, memoryview(data)[done:])
            except OSError:
                # Keep exactly what is not in the file yet: whole records written now
                # are dropped from the buffer, the record cut midway is completed by the
                # next write (never written twice).
                start = data.rfind(b"\n", 0, done) + 1
                if start:
                    data = data[start:]
                    self._pending[:] = [data]
                    self._pending_bytes = len(data)
                self._head_written = done - start
                if self._head_written:
                    self._end_after_partial = os.fstat(fd).st_size
                raise
            self._pending.clear()
            self._pending_bytes = 0
            self._head_written = 0
            try:
                os.fsync(fd)
            except OSError as exc:
                # The records are in the file; only their flush to disk is in doubt.
                log.warning("cannot sync the dead-letter file %s: %s", self.path,
                            exc.strerror or exc)
            return True
        finally:
            if self._lock:
                fcntl.flock(fd, fcntl.LOCK_UN)

    def _spill_pending(self) -> None:
        """Print every waiting record on stderr, once, and forget it."""
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        data = b"".join(self._pending)
        self._pending.clear()
        self._pending_bytes = 0
        if self._head_written:
            # Part of the first record is in the file: take it back out when the file
            # still ends there, so the record is printed whole and the file holds no
            # cut line. (A file system that refuses even that keeps the fragment.)
            self._take_back_partial()
        self._head_written = 0
        if not data:
            return
        self.spilled += data.count(b"\n")
        try:
            sys.stderr.flush()
            sys.stderr.buffer.write(data)
            sys.stderr.flush()
        except (OSError, ValueError):
            pass  # stderr is gone too: nothing left to tell

    def _take_back_partial(self) -> None:
        fd = self._fd
        if fd is None:
            return
        try:
            size = os.fstat(fd).st_size
            if size == self._end_after_partial:
                os.ftruncate(fd, size - self._head_written)
        except OSError:
            pass

    def _locked_fd(self, block: bool) -> int | None:
        """The open file, locked (shared) and still the one at ``path``; None if busy."""
        while True:
            if self._fd is None:
                if self.path.parent != Path(""):
                    self.path.parent.mkdir(parents=True, exist_ok=True)
                self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            if not self._lock:
                return self._fd
            try:
                fcntl.flock(self._fd, fcntl.LOCK_SH | (0 if block else fcntl.LOCK_NB))
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                    raise
                if not self._waiting_reported:
                    self._waiting_reported = True
                    log.info("%s is being replayed; new dead letters wait for it", self.path)
                return None
            # A replay may have replaced (or removed) the file while we waited.
            try:
                same = os.path.samestat(os.fstat(self._fd), os.stat(self.path))
            except FileNotFoundError:
                same = False
            if same:
                return self._fd
            if self._head_written:
                return self._fd  # finish the cut record where it started
            os.close(self._fd)  # also drops the lock
            self._fd = None

    def close(self) -> None:
        """Write what is pending and close the file.

        When the file cannot be written, the pending records are printed on stderr (so
        they are not lost); without ``spill``, NwpipeError is raised then too.
        """
        try:
            self.flush()
        except OSError as exc:
            data = b"".join(self._pending)
            self._pending.clear()
            self._pending_bytes = 0
            self._take_back_partial()
            self._head_written = 0
            lost = data.count(b"\n")
            sys.stderr.flush()
            sys.stderr.buffer.write(data)
            sys.stderr.flush()
            raise NwpipeError(f"cannot write the dead-letter file {self.path}: "
                              f"{exc.strerror or exc}; its {lost} unwritten record(s) "
                              "are printed above on stderr") from None
        finally:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None


def _fallback(value: Any) -> Any:
    # Events come from JSON, so only exotic values from plugins land here.
    return repr(value)


#: longest text kept of a value that could not be written as JSON (see encode_record)
UNENCODABLE_TEXT = 64 * 1024


def encode_record(record: dict[str, Any]) -> bytes:
    """One record as a line of JSON (without the newline); never raises.

    A record whose event or raw text cannot be written as JSON (nested too deeply, say)
    keeps every other field; the value is replaced by a bounded text of it under
    ``event_text`` (or ``raw``), and ``encode_error`` says why, so the record is still
    written once, whole, and can be read back.
    """
    try:
        return jsonio.dumps(record, default=_fallback)
    except Exception as exc:  # any value at all: this is the writer of last resort
        problem = f"{type(exc).__name__}: {exc}"
    safe: dict[str, Any] = {}
    for key, value in record.items():
        try:
            jsonio.dumps(value, default=_fallback)
        except Exception:
            safe[key] = None if key == "event" else _bounded_text(value)
            if key == "event":
                safe["event_text"] = _bounded_text(value)
        else:
            safe[key] = value
    safe["encode_error"] = f"could not be written as JSON ({problem})"
    try:
        return jsonio.dumps(safe, default=_fallback)
    except Exception:
        return jsonio.dumps({"nwpipe_dead_letter": RECORD_VERSION, "time": utc_now(),
                             "reason": str(record.get("reason", ""))[:UNENCODABLE_TEXT],
                             "encode_error": f"could not be written as JSON ({problem})"})


def _bounded_text(value: Any) -> str:
    """A short text of any value, safe for any depth or size."""
    short = reprlib.Repr()
    short.maxlevel, short.maxstring, short.maxother = 12, UNENCODABLE_TEXT, 200
    try:
        text = short.repr(value)
    except Exception as exc:
        text = f"<{type(value).__name__}: {type(exc).__name__}>"
    return text[:UNENCODABLE_TEXT]


def read_records(path: str | os.PathLike) -> Iterable[tuple[int, dict[str, Any]]]:
    """Yield ``(line_number, record)`` from a dead-letter file, skipping blank lines."""
    with open(path, "rb") as fh:
        for number, line in enumerate(fh, 1):
            if line.strip():
                yield number, jsonio.loads(line)


# -- rewriting (nwpipe replay) ---------------------------------------------------------


class Rewrite:
    """Replace a dead-letter file atomically with what remains of it.

    Holds the file's exclusive lock from :meth:`open` until :meth:`commit` or
    :meth:`abort`, so no run appends to it meanwhile. ``remaining`` is a private
    DeadLetterFile in the same folder that collects what stays: records kept as they
    were and the new failures. :meth:`commit` fsyncs it and renames it over the
    original (so each record is in one file or the other at every moment), or removes
    the original when nothing remains.
    """

    def __init__(self, path: str | os.PathLike, *, lock_timeout: float = 5.0):
        self.path = Path(path)
        self.lock_timeout = lock_timeout
        self._file = None
        self.remaining: DeadLetterFile | None = None

    def open(self):
        """Lock the file and return it opened for reading (binary)."""
        try:
            self._file = open(self.path, "rb")
        except FileNotFoundError:
            raise NwpipeError(f"{self.path}: no such dead-letter file") from None
        except IsADirectoryError:
            raise NwpipeError(f"{self.path}: is a folder, not a dead-letter file") from None
        except PermissionError:
            raise NwpipeError(f"{self.path}: permission denied") from None
        if fcntl is not None:
            deadline = time.monotonic() + self.lock_timeout
            while True:
                try:
                    fcntl.flock(self._file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except OSError as exc:
                    if exc.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                        raise
                    if time.monotonic() > deadline:
                        self._file.close()
                        raise NwpipeError(f"{self.path}: locked by another nwpipe "
                                          "(a replay of the same file?); try again later") \
                            from None
                    time.sleep(0.05)
            # A replay that held the lock before may have replaced or removed the file
            # meanwhile: this lock is then on the old file, and a run appends to the new one.
            try:
                current = os.stat(self.path)
            except FileNotFoundError:
                current = None
            if current is None or not os.path.samestat(os.fstat(self._file.fileno()), current):
                self._file.close()
                if current is None:
                    raise NwpipeError(f"{self.path}: no such dead-letter file (another replay "
                                      "delivered everything in it)")
                return self.open()
        folder = self.path.absolute().parent
        if not os.access(folder, os.W_OK | os.X_OK):
            self._file.close()
            raise NwpipeError(f"{self.path}: cannot replay: no permission to write in "
                              f"{folder} (the file is replaced as a whole)")
        temp = folder / f".{self.path.name}.replay-{os.getpid()}.tmp"
        self.remaining = DeadLetterFile(temp, lock=False)
        return self._file

    def commit(self) -> None:
        """Make what remains the dead-letter file (or remove it when nothing remains)."""
        remaining = self.remaining
        assert remaining is not None and self._file is not None
        remaining.close()  # flushes and fsyncs
        if remaining.path.exists():
            os.replace(remaining.path, self.path)
        else:
            os.unlink(self.path)
        _fsync_folder(self.path.absolute().parent)
        self._file.close()  # releases the lock: a waiting run now sees the new file
        self._file = None

    def abort(self) -> None:
        """Leave the original file as it was; remove the partial rewrite."""
        if self.remaining is not None:
            try:
                self.remaining.close()
            except NwpipeError:
                pass
            try:
                os.unlink(self.remaining.path)
            except FileNotFoundError:
                pass
        if self._file is not None:
            self._file.close()
            self._file = None


def _fsync_folder(folder: Path) -> None:
    """Make a rename durable (POSIX); a no-op where folders cannot be opened."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def iter_lines(file) -> Iterator[tuple[int, bytes]]:
    """``(line_number, line)`` of an open binary file, blank lines skipped."""
    for number, line in enumerate(file, 1):
        if line.strip():
            yield number, line
