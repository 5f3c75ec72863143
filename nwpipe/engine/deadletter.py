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
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, Iterator

import orjson

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


def raw_record(raw: str, *, source: str, line: int, reason: str) -> dict[str, Any]:
    """A record for input that is not a usable event (the raw text is kept)."""
    return {
        "nwpipe_dead_letter": RECORD_VERSION,
        "time": utc_now(),
        "stage": "parse",
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
    """

    def __init__(self, path: str | os.PathLike, *, lock: bool = True):
        self.path = Path(path)
        #: records written through :meth:`write` (not :meth:`write_raw`)
        self.count = 0
        self._lock = lock and fcntl is not None
        self._fd: int | None = None
        self._pending: list[bytes] = []
        self._pending_bytes = 0
        self._handle: asyncio.Handle | asyncio.TimerHandle | None = None
        self._error: OSError | None = None
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
        data = b"".join(orjson.dumps(r, default=_fallback) + b"\n" for r in records)
        if data:
            self.count += data.count(b"\n")  # orjson never writes a raw newline
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
        if self._pending_bytes >= GROUP_BYTES:
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
            if self._error is None:
                log.error("cannot write the dead-letter file %s: %s (retrying)", self.path,
                          exc.strerror or exc)
            self._error = exc
            done = False
        if not done:
            self._handle = asyncio.get_running_loop().call_later(LOCKED_RETRY, self._try_flush)

    @property
    def written(self) -> bool:
        """True when every record handed to this file so far is on disk."""
        return not self._pending

    def flush(self) -> None:
        """Write everything pending now, waiting for a replay's lock if need be."""
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        if self._pending:
            self._flush(block=True)
            self._error = None

    def _flush(self, *, block: bool) -> bool:
        fd = self._locked_fd(block)
        if fd is None:
            return False
        try:
            data = b"".join(self._pending)
            view = memoryview(data)
            while view:
                written = os.write(fd, view)
                view = view[written:]
            os.fsync(fd)
            self._pending.clear()
            self._pending_bytes = 0
            return True
        finally:
            if self._lock:
                fcntl.flock(fd, fcntl.LOCK_UN)

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
            os.close(self._fd)  # also drops the lock
            self._fd = None

    def close(self) -> None:
        """Write what is pending and close the file.

        When the file cannot be written, the pending records are printed on stderr (so
        they are not lost) and NwpipeError is raised.
        """
        try:
            self.flush()
        except OSError as exc:
            data = b"".join(self._pending)
            self._pending.clear()
            self._pending_bytes = 0
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


def read_records(path: str | os.PathLike) -> Iterable[tuple[int, dict[str, Any]]]:
    """Yield ``(line_number, record)`` from a dead-letter file, skipping blank lines."""
    with open(path, "rb") as fh:
        for number, line in enumerate(fh, 1):
            if line.strip():
                yield number, orjson.loads(line)


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
