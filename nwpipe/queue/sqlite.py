"""The embedded queue engine: one SQLite file (stdlib ``sqlite3``, WAL journal).

Every write (put, ack, marks, notes) goes through ONE writer thread that groups what
has piled up into one transaction: many ``put`` calls from many tasks share one
commit (group commit), and the event loop only hands over a list and waits on a
future, never on the disk. Reads run on a second thread with their own connection
(WAL lets them run beside the writer).

``sync = "normal"`` (``PRAGMA synchronous=NORMAL``) keeps every committed entry through
a crash of the process (kill -9, the OOM killer); a power cut may lose the last
commits. ``sync = "full"`` fsyncs each commit, so a committed entry also survives a
power cut, at the cost of one fsync per group commit.

One process delivers from a file at a time: :meth:`SqliteQueue.open` takes an
exclusive ``flock`` on ``PATH.lock`` (``nwpipe queue status`` reads without it).
Positions are ``(rowid, 0)``; rowids come from ``AUTOINCREMENT``, so they are never
reused, also after every entry was removed (a saved mark must not cover new entries).
"""

from __future__ import annotations

import asyncio
import fcntl
import os
import queue as thread_queue
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

from nwpipe.lazymodule import LazyModule
from nwpipe.queue.base import (
    SYNC_MODES,
    Entry,
    OutputBacklog,
    Pos,
    Queue,
    QueueError,
    QueueFull,
    QueueSettings,
    QueueStatus,
    ShardStatus,
    shard_of,
    wait_event,
)

if TYPE_CHECKING:
    import sqlite3
else:
    # imported when a queue is first opened: a run that never opens one (nothing
    # durable, nothing to spill) starts without it
    sqlite3 = LazyModule("sqlite3")

SCHEMA_VERSION = "1"
#: SQLite keeps one ordered log: every alert shares the rowid order, which is the
#: input order (what a ``concurrency = 1`` output promises to keep)
SQLITE_SHARDS = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS entries (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    shard INTEGER NOT NULL,
    data BLOB NOT NULL,
    origin TEXT NOT NULL,
    at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS entries_by_shard ON entries (shard, id);
CREATE TABLE IF NOT EXISTS marks (
    shard INTEGER NOT NULL, output TEXT NOT NULL, pos INTEGER NOT NULL,
    PRIMARY KEY (shard, output)
);
CREATE TABLE IF NOT EXISTS notes (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


def _describe(path: Path, exc: BaseException) -> str:
    text = str(exc)
    if isinstance(exc, sqlite3.DatabaseError) and ("not a database" in text or "malformed" in text
                                                   or "corrupt" in text):
        return (f"queue file {path} is damaged ({text}); `nwpipe queue recover --queue {path}` "
                f"keeps every entry that can still be read and sets the damaged file aside")
    return f"queue file {path}: {type(exc).__name__}: {text}"


class _Writer(threading.Thread):
    """The one thread that writes: groups every pending operation into one transaction."""

    def __init__(self, conn: sqlite3.Connection, path: Path):
        super().__init__(name="nwpipe-queue-writer", daemon=True)
        self.conn = conn
        self.path = path
        self.ops: thread_queue.SimpleQueue = thread_queue.SimpleQueue()

    def run(self) -> None:
        conn = self.conn
        while True:
            first = self.ops.get()
            if first is None:
                break
            batch = [first]
            stop = False
            while True:  # everything that piled up during the last commit: one transaction
                try:
                    op = self.ops.get_nowait()
                except thread_queue.Empty:
                    break
                if op is None:
                    stop = True
                    break
                batch.append(op)
            results = []
            try:
                conn.execute("BEGIN IMMEDIATE")
                for fn, args, _fut, _loop in batch:
                    results.append(fn(conn, *args))
                conn.execute("COMMIT")
            except BaseException as exc:  # noqa: BLE001 - reported to every caller
                try:
                    conn.execute("ROLLBACK")
                except sqlite3.Error:
                    pass
                if len(batch) > 1 and isinstance(exc, _Refused):
                    # one put over the budget must not fail the others: redo them alone
                    for op in batch:
                        self._alone(op)
                    continue
                error = (exc if isinstance(exc, QueueError)
                         else QueueError(_describe(self.path, exc)))
                for _fn, _args, fut, loop in batch:
                    loop.call_soon_threadsafe(_settle, fut, None, error)
            else:
                for (_fn, _args, fut, loop), result in zip(batch, results):
                    loop.call_soon_threadsafe(_settle, fut, result, None)
            if stop:
                break
        conn.close()

    def _alone(self, op) -> None:
        fn, args, fut, loop = op
        try:
            self.conn.execute("BEGIN IMMEDIATE")
            result = fn(self.conn, *args)
            self.conn.execute("COMMIT")
        except BaseException as exc:  # noqa: BLE001
            try:
                self.conn.execute("ROLLBACK")
            except sqlite3.Error:
                pass
            error = exc if isinstance(exc, QueueError) else QueueError(_describe(self.path, exc))
            loop.call_soon_threadsafe(_settle, fut, None, error)
        else:
            loop.call_soon_threadsafe(_settle, fut, result, None)


class _Refused(QueueFull):
    """A put over the budget, inside the writer (rolled back, retried alone)."""


def _settle(fut: asyncio.Future, result, error) -> None:
    if fut.done():
        return
    if error is not None:
        fut.set_exception(error)
    else:
        fut.set_result(result)


class SqliteQueue(Queue):
    """The queue contract on one SQLite file; see the module docstring."""

    def __init__(self, settings: QueueSettings, *, lock: bool = True, readonly: bool = False):
        if settings.sync not in SYNC_MODES:
            raise QueueError(f"queue.sync must be one of {', '.join(SYNC_MODES)}, "
                             f"not {settings.sync!r}")
        self.settings = settings
        self.path = Path(settings.path)
        self.max_bytes = settings.max_bytes
        self.shards = SQLITE_SHARDS
        self._lock = lock and not readonly
        self._readonly = readonly
        self._lock_fd: int | None = None
        self._writer: _Writer | None = None
        self._reader: ThreadPoolExecutor | None = None
        self._rconn: sqlite3.Connection | None = None
        self._bytes = 0  # bytes of the entries stored (data + origin), kept by the writer
        self._count = 0  # entries stored, kept by the writer
        self._new = asyncio.Event()

    # -- opening ------------------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        if self._readonly:
            conn = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, isolation_level=None,
                                   check_same_thread=False)
        else:
            conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA busy_timeout = 10000")
        return conn

    def _open_sync(self) -> None:
        if self._readonly and not self.path.exists():
            raise QueueError(f"queue file {self.path} does not exist")
        if self._lock:
            self._take_lock()
        conn = self._connect()
        try:
            if not self._readonly:
                mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
                if mode.lower() != "wal":
                    raise QueueError(f"queue file {self.path}: cannot use the WAL journal "
                                     f"(got {mode})")
                conn.execute(f"PRAGMA synchronous = {self.settings.sync.upper()}")
                conn.executescript(_SCHEMA)
                row = conn.execute("SELECT value FROM meta WHERE key = 'version'").fetchone()
                if row is None:
                    conn.execute("INSERT INTO meta VALUES ('version', ?), ('shards', ?)",
                                 (SCHEMA_VERSION, str(self.shards)))
            row = conn.execute("SELECT value FROM meta WHERE key = 'version'").fetchone()
            if row is None or row[0] != SCHEMA_VERSION:
                raise QueueError(f"queue file {self.path} was written by another version of "
                                 f"nwpipe (schema {row[0] if row else 'unknown'}, this one "
                                 f"reads {SCHEMA_VERSION})")
            check = conn.execute("PRAGMA quick_check").fetchone()[0]
            if check != "ok":
                raise sqlite3.DatabaseError(f"database disk image is malformed: {check}")
            self._bytes, self._count = conn.execute(
                "SELECT COALESCE(SUM(LENGTH(data) + LENGTH(origin)), 0), COUNT(*) "
                "FROM entries").fetchone()
        except QueueError:
            conn.close()
            self._release_lock()
            raise
        except (sqlite3.Error, OSError) as exc:
            conn.close()
            self._release_lock()
            raise QueueError(_describe(self.path, exc)) from None
        self._rconn = self._connect() if not self._readonly else conn
        if not self._readonly:
            conn.execute(f"PRAGMA synchronous = {self.settings.sync.upper()}")
            self._writer = _Writer(conn, self.path)
            self._writer.start()

    def _take_lock(self) -> None:
        lock_path = f"{self.path}.lock"
        try:
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise QueueError(f"queue file {self.path}: cannot create {lock_path}: "
                             f"{exc.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            try:
                holder = os.read(fd, 32).decode(errors="replace").strip()
            finally:
                os.close(fd)
            who = f" (pid {holder})" if holder.isdigit() else ""
            raise QueueError(f"queue file {self.path} is in use by another nwpipe process{who}; "
                             f"one process delivers from a queue file at a time") from None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self._lock_fd = fd

    def _release_lock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # closing releases the flock
            self._lock_fd = None

    async def open(self) -> None:
        """Create the file or check it (version, integrity); take the delivery lock."""
        import sqlite3  # noqa: F401  # the first import here, not in a worker thread

        self._reader = ThreadPoolExecutor(1, thread_name_prefix="nwpipe-queue-reader")
        try:
            await self._read(self._open_sync)
        except BaseException:
            self._reader.shutdown(wait=False)
            self._reader = None
            raise

    async def close(self) -> None:
        """Let the writer finish what it was given, then release the file and the lock."""
        if self._writer is not None:
            self._writer.ops.put(None)
            await asyncio.get_running_loop().run_in_executor(None, self._writer.join)
            self._writer = None
        if self._reader is not None:
            if self._rconn is not None:
                await self._read(self._rconn.close)
                self._rconn = None
            self._reader.shutdown(wait=True)
            self._reader = None
        self._release_lock()

    # -- plumbing ---------------------------------------------------------------------

    async def _write(self, fn, *args):
        if self._writer is None:
            raise QueueError(f"queue file {self.path} is not open for writing")
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        self._writer.ops.put((fn, args, fut, loop))
        return await fut

    async def _read(self, fn, *args):
        if self._reader is None:
            raise QueueError(f"queue file {self.path} is not open")
        try:
            return await asyncio.get_running_loop().run_in_executor(self._reader, fn, *args)
        except sqlite3.Error as exc:
            raise QueueError(_describe(self.path, exc)) from None

    # -- the contract ---------------------------------------------------------------

    async def put(self, items: Sequence[tuple[str, bytes, str]]) -> list[Pos]:
        """Append items in one transaction (shared with other callers); their positions."""
        if not items:
            return []
        now = time.time()
        rows = [(shard_of(alert, self.shards), data, origin, now) for alert, data, origin in items]
        size = sum(len(data) + len(origin.encode()) for _s, data, origin, _a in rows)
        if self._bytes + size > self.max_bytes and self._bytes > 0:
            raise QueueFull(self._full_message())
        positions = await self._write(self._put_rows, rows, size)
        self._new.set()
        return positions

    def _full_message(self) -> str:
        return (f"queue file {self.path} holds {self._bytes:,} bytes, its budget "
                f"(queue.max_bytes = {self.max_bytes:,}) is reached")

    def _put_rows(self, conn: sqlite3.Connection, rows, size: int) -> list[Pos]:
        # checked again here: other puts may have been committed since the caller looked
        if self._bytes + size > self.max_bytes and self._bytes > 0:
            raise _Refused(self._full_message())
        cursor = conn.cursor()
        positions: list[Pos] = []
        for row in rows:
            cursor.execute("INSERT INTO entries (shard, data, origin, at) VALUES (?, ?, ?, ?)", row)
            positions.append((cursor.lastrowid or 0, 0))
        self._bytes += size
        self._count += len(rows)
        return positions

    async def owned(self) -> frozenset[int]:
        """Every shard: the file lock makes this the only delivering process."""
        return frozenset(range(self.shards))

    async def read(self, shard: int, after: Pos | None, limit: int) -> list[Entry]:
        """Up to ``limit`` entries of ``shard`` after ``after`` (or from the oldest)."""
        return await self._read(self._read_rows, shard, after[0] if after else 0, limit)

    async def read_many(self, wanted: Sequence[tuple[int, Pos | None]],
                        limit: int) -> dict[int, list[Entry]]:
        """:meth:`read` of several shards in one trip to the reader thread (a trip per
        shard costs more than the rows when a feed keeps up with the puts)."""
        if not wanted:
            return {}
        return await self._read(self._read_many_rows, list(wanted), limit)

    def _read_many_rows(self, wanted: list[tuple[int, Pos | None]],
                        limit: int) -> dict[int, list[Entry]]:
        return {shard: self._read_rows(shard, after[0] if after else 0, limit)
                for shard, after in wanted}

    @property
    def _reader_conn(self) -> sqlite3.Connection:
        if self._rconn is None:
            raise QueueError(f"queue file {self.path} is not open")
        return self._rconn

    def _read_rows(self, shard: int, after: int, limit: int) -> list[Entry]:
        rows = self._reader_conn.execute(
            "SELECT id, data, origin, at FROM entries WHERE shard = ? AND id > ? "
            "ORDER BY id LIMIT ?", (shard, after, limit)).fetchall()
        return [Entry(shard, (rowid, 0), bytes(data), origin, at)
                for rowid, data, origin, at in rows]

    async def wait(self, timeout: float) -> None:
        """Until a put of this process committed, or ``timeout`` seconds."""
        await wait_event(self._new, timeout)
        self._new.clear()

    async def ack(self, shard: int, upto: Pos) -> None:
        """Remove the entries of ``shard`` at or before ``upto``."""
        await self._write(self._delete, shard, upto[0])

    def _delete(self, conn: sqlite3.Connection, shard: int, upto: int) -> None:
        size = conn.execute("SELECT COALESCE(SUM(LENGTH(data) + LENGTH(origin)), 0) FROM entries "
                            "WHERE shard = ? AND id <= ?", (shard, upto)).fetchone()[0]
        removed = conn.execute("DELETE FROM entries WHERE shard = ? AND id <= ?",
                               (shard, upto)).rowcount
        self._bytes -= size
        self._count -= removed

    async def save_marks(self, shard: int, marks: dict[str, Pos]) -> None:
        """Store per-output marks of ``shard``."""
        await self._write(self._save_marks, shard, dict(marks))

    @staticmethod
    def _save_marks(conn: sqlite3.Connection, shard: int, marks: dict[str, Pos]) -> None:
        conn.executemany("INSERT OR REPLACE INTO marks VALUES (?, ?, ?)",
                         [(shard, name, pos[0]) for name, pos in marks.items()])

    async def load_marks(self, shard: int) -> dict[str, Pos]:
        """The per-output marks of ``shard``."""
        rows = await self._read(lambda: self._reader_conn.execute(
            "SELECT output, pos FROM marks WHERE shard = ?", (shard,)).fetchall())
        return {name: (pos, 0) for name, pos in rows}

    async def forget_marks(self, output: str) -> None:
        """Remove an output's marks (it left the configuration)."""
        await self._write(lambda conn: conn.execute("DELETE FROM marks WHERE output = ?",
                                                    (output,)))

    async def set_note(self, key: str, value: str | None) -> None:
        """Keep (or with ``None`` remove) a note beside the queue."""
        if value is None:
            await self._write(lambda conn: conn.execute("DELETE FROM notes WHERE key = ?", (key,)))
        else:
            await self._write(lambda conn: conn.execute(
                "INSERT OR REPLACE INTO notes VALUES (?, ?)", (key, value)))

    async def notes(self) -> dict[str, str]:
        """Every note."""
        rows = await self._read(lambda: self._reader_conn.execute(
            "SELECT key, value FROM notes").fetchall())
        return dict(rows)

    def approx_depth(self) -> int:
        """Entries stored now (kept by the writer; no I/O)."""
        return self._count

    @property
    def stored_bytes(self) -> int:
        """Bytes of the entries stored now (what ``max_bytes`` limits)."""
        return self._bytes

    async def status(self) -> QueueStatus:
        """Depth, bytes and the oldest entry per shard; the backlog after each mark."""
        return await self._read(self._status)

    def _status(self) -> QueueStatus:
        conn = self._reader_conn
        marks: dict[int, dict[str, int]] = {}
        for shard, name, pos in conn.execute("SELECT shard, output, pos FROM marks"):
            marks.setdefault(shard, {})[name] = pos
        shards = []
        for shard in range(self.shards):
            depth, size, oldest = conn.execute(
                "SELECT COUNT(*), COALESCE(SUM(LENGTH(data) + LENGTH(origin)), 0), MIN(at) "
                "FROM entries WHERE shard = ?", (shard,)).fetchone()
            outputs = {}
            for name, pos in marks.get(shard, {}).items():
                n, b, o = conn.execute(
                    "SELECT COUNT(*), COALESCE(SUM(LENGTH(data) + LENGTH(origin)), 0), MIN(at) "
                    "FROM entries WHERE shard = ? AND id > ?", (shard, pos)).fetchone()
                outputs[name] = OutputBacklog(n, b, o)
            shards.append(ShardStatus(shard, depth, size, oldest, outputs))
        notes = dict(conn.execute("SELECT key, value FROM notes").fetchall())
        return QueueStatus(str(self.path), self.max_bytes, tuple(shards), notes)


def recover(path: str | Path) -> tuple[int, int, Path | None]:
    """Copy every entry, mark and note of a damaged queue file that can still be read
    into a new file at ``path``; the damaged file (and its -wal/-shm) is set aside as
    ``PATH.damaged-<time>``. Returns (entries recovered, entries lost (known gaps),
    where the damaged file went, or None when there was no file).

    Entries are read one position at a time, so a damaged page costs the entries on it,
    not the rest. Positions are kept, so saved marks stay valid.
    """
    path = Path(path)
    if not path.exists():
        return 0, 0, None
    rows: list[tuple] = []
    marks: list[tuple] = []
    notes: list[tuple] = []
    lost = 0
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    except sqlite3.Error:
        conn = None
    if conn is not None:
        lowest, highest = _bounds(conn)
        for rowid in range(lowest, highest + 1) if highest else ():
            try:
                row = conn.execute("SELECT id, shard, data, origin, at FROM entries WHERE id = ?",
                                   (rowid,)).fetchone()
            except sqlite3.Error:
                lost += 1
                continue
            if row is not None:
                rows.append(row)
        for table, into in (("marks", marks), ("notes", notes)):
            try:
                into.extend(conn.execute(f"SELECT * FROM {table}").fetchall())
            except sqlite3.Error:
                pass
        conn.close()
    stamp = time.strftime("%Y%m%dT%H%M%S")
    aside = path.with_name(f"{path.name}.damaged-{stamp}")
    for suffix in ("", "-wal", "-shm"):
        src = Path(f"{path}{suffix}")
        if src.exists():
            os.replace(src, f"{aside}{suffix}")
    fresh = sqlite3.connect(path, isolation_level=None)
    try:
        fresh.execute("PRAGMA journal_mode = WAL")
        fresh.executescript(_SCHEMA)
        fresh.execute("BEGIN")
        fresh.execute("INSERT INTO meta VALUES ('version', ?), ('shards', ?)",
                      (SCHEMA_VERSION, str(SQLITE_SHARDS)))
        fresh.executemany("INSERT INTO entries VALUES (?, ?, ?, ?, ?)", rows)
        fresh.executemany("INSERT OR REPLACE INTO marks VALUES (?, ?, ?)", marks)
        fresh.executemany("INSERT OR REPLACE INTO notes VALUES (?, ?)", notes)
        top = max([r[0] for r in rows] + [m[2] for m in marks], default=0)
        if top:
            # the next entry must come after every position a saved mark may name
            fresh.execute("INSERT OR REPLACE INTO sqlite_sequence (name, seq) VALUES "
                          "('entries', ?)", (top,))
        fresh.execute("COMMIT")
    finally:
        fresh.close()
    return len(rows), lost, aside


def _bounds(conn: sqlite3.Connection) -> tuple[int, int]:
    """The range of positions to look at: from the table, else from its sequence."""
    for query in ("SELECT MIN(id), MAX(id) FROM entries",
                  "SELECT 1, seq FROM sqlite_sequence WHERE name = 'entries'"):
        try:
            row = conn.execute(query).fetchone()
        except sqlite3.Error:
            continue
        if row and row[1]:
            return int(row[0] or 1), int(row[1])
    return 0, 0
