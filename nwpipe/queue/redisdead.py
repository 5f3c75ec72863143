"""Dead letters in a Redis stream (``PREFIX:dead``), for a fleet that shares a Redis queue.

Each stream entry holds one record in field ``r``: the same JSON object, byte for
byte, that a line of the dead-letter file holds (:mod:`nwpipe.engine.deadletter`), so
every tool that reads one reads the other, and any machine can replay them.

* :class:`RedisDeadLetters` is the writer a run or worker uses instead of the file. It
  has the file writer's interface and its durability rule: the records of one turn of
  the event loop are sent in one pipeline before the loop does anything else, so a
  queue entry is acknowledged only after its dead-letter record is in Redis.
* :class:`RedisRewrite` is what ``nwpipe replay redis://...`` uses instead of the file
  rewrite: it reads the records, and at the end removes the replayed ones and adds what
  remains in one MULTI/EXEC transaction. Records that workers add meanwhile are left
  alone (only the entries read are removed); two replays of one stream at once are
  refused by a lock key.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import sys
from typing import Any, Iterable

import orjson

from nwpipe.errors import NwpipeError
from nwpipe.queue.base import QueueUnavailable
from nwpipe.queue.redis import check_url, public_url

try:
    import redis
    from redis import exceptions as rexc
except ImportError:  # pragma: no cover - the queue reports the missing package first
    redis = None  # type: ignore[assignment]
    rexc = None  # type: ignore[assignment]

log = logging.getLogger("nwpipe")

#: while Redis cannot be reached, the writer tries again this often (seconds)
RETRY = 0.5
#: entries read per XRANGE call by a replay
READ_BATCH = 1000


def is_redis_url(text: str) -> bool:
    """Whether ``text`` names a Redis store rather than a file."""
    return text.startswith(("redis://", "rediss://"))


def _client(url: str, ca_file: str | None):
    if redis is None:
        raise NwpipeError("dead letters in Redis need the 'redis' package: "
                          "pip install 'nwpipe[redis]'")
    problem = check_url(url)
    if problem:
        raise NwpipeError(f"{public_url(url)!r} {problem}")
    kwargs: dict[str, Any] = {"socket_connect_timeout": 5, "socket_timeout": 10}
    if url.startswith("rediss://") and ca_file:
        kwargs["ssl_ca_certs"] = ca_file
    return redis.Redis.from_url(url, **kwargs)


def _fallback(value: Any) -> Any:
    return repr(value)


class RedisDeadLetters:
    """Append dead-letter records to ``PREFIX:dead`` (the file writer's interface)."""

    def __init__(self, url: str, prefix: str = "nwpipe", *, ca_file: str | None = None):
        self.key = f"{prefix}:dead"
        #: where the records go, for messages (no password)
        self.path = f"{public_url(url)} stream {self.key}"
        self.count = 0
        #: records printed on stderr because Redis could not take them (at close)
        self.spilled = 0
        #: why Redis could not take records, when it could not
        self.error: str | None = None
        self._redis = _client(url, ca_file)
        self._pending: list[bytes] = []
        self._handle: asyncio.Handle | asyncio.TimerHandle | None = None
        self._failing = False

    @property
    def pending(self) -> int:
        """Records not yet in Redis."""
        return len(self._pending)

    @property
    def written(self) -> bool:
        """True when every record handed over so far is in Redis."""
        return not self._pending

    def check(self) -> None:
        """Raise NwpipeError now when Redis cannot be reached (before reading events)."""
        try:
            self._redis.ping()
        except (rexc.RedisError, OSError) as exc:
            raise NwpipeError(f"dead letters {self.path}: cannot reach Redis: {exc}") from None

    def write(self, records: Iterable[dict[str, Any]]) -> None:
        """Add records; they reach Redis before the event loop's next turn."""
        lines = [orjson.dumps(r, default=_fallback) for r in records]
        self.count += len(lines)
        self._add(lines)

    def write_raw(self, data: bytes) -> None:
        """Add records given as JSON lines, unchanged."""
        self._add([line for line in data.splitlines() if line.strip()])

    def _add(self, lines: list[bytes]) -> None:
        if not lines:
            return
        self._pending.extend(lines)
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self.flush()
            return
        if self._handle is None:
            self._handle = loop.call_soon(self._try_flush)

    def _send(self) -> None:
        pipe = self._redis.pipeline(transaction=False)
        for line in self._pending:
            pipe.xadd(self.key, {"r": line})
        pipe.execute()
        self._pending.clear()

    def _try_flush(self) -> None:
        """From the event loop: send now; while Redis is away, try again later."""
        self._handle = None
        if not self._pending:
            return
        try:
            self._send()
            if self._failing:
                log.info("dead letters reach %s again", self.path)
            self._failing = False
        except (rexc.RedisError, OSError) as exc:
            if not self._failing:
                log.error("cannot write dead letters to %s: %s (retrying)", self.path, exc)
            self._failing = True
            self._handle = asyncio.get_running_loop().call_later(RETRY, self._try_flush)

    def flush(self) -> None:
        """Send everything pending now (QueueUnavailable when Redis cannot be reached)."""
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        if self._pending:
            try:
                self._send()
            except (rexc.RedisError, OSError) as exc:
                # a QueueError: nothing these records cover is acknowledged meanwhile
                raise QueueUnavailable(f"cannot write dead letters to {self.path}: {exc}") from None

    def close(self) -> None:
        """Send what is pending; when Redis is gone, print the records on stderr."""
        try:
            self.flush()
        except NwpipeError as exc:
            lost = len(self._pending)
            self.spilled += lost
            self.error = str(exc)
            sys.stderr.flush()
            sys.stderr.buffer.write(b"".join(line + b"\n" for line in self._pending))
            sys.stderr.flush()
            self._pending.clear()
            raise NwpipeError(f"{exc}; its {lost} unwritten record(s) are printed above "
                              "on stderr") from None
        finally:
            self._redis.close()


class _Remaining:
    """What stays after a replay, collected in memory until :meth:`RedisRewrite.commit`."""

    def __init__(self, path: str):
        self.path = path
        self.count = 0
        self.lines: list[bytes] = []

    #: kept in memory until the commit, which is what makes them durable
    written = True

    def check(self) -> None:
        """Nothing to check: written to Redis by the commit."""

    def write(self, records: Iterable[dict[str, Any]]) -> None:
        for r in records:
            self.lines.append(orjson.dumps(r, default=_fallback))
            self.count += 1

    def write_raw(self, data: bytes) -> None:
        self.lines.extend(line for line in data.splitlines() if line.strip())

    def flush(self) -> None:
        """Kept in memory until the commit."""

    def close(self) -> None:
        """Kept in memory until the commit."""


class RedisRewrite:
    """Replace the records of ``PREFIX:dead`` that a replay read with what remains of them.

    The interface of :class:`nwpipe.engine.deadletter.Rewrite`: :meth:`open` gives the
    records (as lines), ``remaining`` collects what stays, :meth:`commit` applies it
    atomically, :meth:`abort` leaves the stream as it was.
    """

    def __init__(self, url: str, prefix: str = "nwpipe", *, ca_file: str | None = None,
                 lock_seconds: int = 3600):
        self.key = f"{prefix}:dead"
        self.lock_key = f"{prefix}:dead:replay"
        self.path = f"{public_url(url)} stream {self.key}"
        self.lock_seconds = lock_seconds
        self._redis = _client(url, ca_file)
        self._token = f"{socket.gethostname()}:{os.getpid()}"
        self._ids: list[bytes] = []
        self.remaining = _Remaining(self.path)

    def _fail(self, exc: Exception, doing: str) -> NwpipeError:
        return NwpipeError(f"dead letters {self.path}: {doing}: {exc}")

    def open(self) -> list[bytes]:
        """Lock the stream for this replay and return its records as JSON lines."""
        try:
            if not self._redis.set(self.lock_key, self._token, nx=True, ex=self.lock_seconds):
                holder = self._redis.get(self.lock_key)
                holder = holder.decode("utf-8", "replace") if holder else "?"
                raise NwpipeError(f"dead letters {self.path}: another replay ({holder}) is "
                                  "running; try again when it has finished")
            lines: list[bytes] = []
            start = "-"
            while True:
                rows = self._redis.xrange(self.key, min=start, count=READ_BATCH)
                if not rows:
                    break
                for sid, fields in rows:
                    self._ids.append(sid)
                    lines.append(fields.get(b"r", b"") + b"\n")
                start = "(" + rows[-1][0].decode()
            return lines
        except NwpipeError:
            self._unlock()
            raise
        except (rexc.RedisError, OSError) as exc:
            self._unlock()
            raise self._fail(exc, "cannot read them") from None

    def commit(self) -> None:
        """Remove the records read and add what remains, in one transaction."""
        try:
            pipe = self._redis.pipeline(transaction=True)
            for line in self.remaining.lines:
                pipe.xadd(self.key, {"r": line})
            for i in range(0, len(self._ids), 1000):
                pipe.xdel(self.key, *self._ids[i:i + 1000])
            pipe.execute()
        except (rexc.RedisError, OSError) as exc:
            raise self._fail(exc, "cannot write the replay's outcome (the stream is unchanged; "
                                  "replaying again sends the same delivery ids)") from None
        finally:
            self._unlock()

    def abort(self) -> None:
        """Leave the stream as it was."""
        self._unlock()

    def _unlock(self) -> None:
        try:
            if self._redis.get(self.lock_key) == self._token.encode():
                self._redis.delete(self.lock_key)
        except (rexc.RedisError, OSError):
            pass  # the lock runs out by itself
        finally:
            self._redis.close()
