"""``nwpipe run --workers N``: decode, map and deliver in N processes.

The process started by the user is the *reader*: it reads the inputs in large chunks
and splits them by alert id (:mod:`nwpipe.sources.shard`) into N *worker* processes,
forked from it once the config is loaded, so that all events of one alert go to one
worker, in input order. Each worker runs the ordinary pipeline
(:class:`nwpipe.engine.pipeline.Pipeline`) over its share, with outputs of its own
(batches, retries and connections are per worker). At the end the reader adds up what
the workers did and prints one summary, as one process would.

What the processes share, and how:

* the dead-letter file: each worker appends whole records under an exclusive lock on a
  lock file the reader made, and takes a record cut short by a full disk back out
  before it lets go (:class:`SharedDeadLetterFile`), so records never interleave;
* standard output and ``file`` outputs: each batch is written under the same lock, so
  lines never interleave either (a pipe splits writes longer than ``PIPE_BUF``);
* stderr: each message (and each dead-letter record printed there) is written under
  the same lock;
* signals: the reader passes each signal on to every worker (they have a process group
  of their own, so a terminal's Ctrl-C reaches them only that way), stops reading, and
  sends every worker what it read, then a stop frame; each worker stops exactly as one
  process would (what is not handed to an output yet is dead-lettered, batches in
  flight get ``shutdown_timeout``), reading its pipe to the end. A second signal cuts
  that wait short;
* a worker that dies (``kill -9``): the reader says so, stops reading and lets the other
  workers finish; the summary reports how many of the events sent to the dead worker
  may not have been delivered (each worker reports its counts every
  :data:`REPORT_EVERY` seconds), and the exit code is :data:`EXIT_WORKER_LOST`;
* the reader killed: the workers get SIGTERM from the kernel (``PR_SET_PDEATHSIG``) and
  the end of their pipe, so they do not linger.
"""

from __future__ import annotations

import asyncio
import ctypes
import fcntl
import logging
import mmap
import os
import shutil
import signal
import struct
import sys
import tempfile
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Generator, cast

import orjson

from nwpipe.config import Config
from nwpipe.engine.deadletter import DeadLetterFile
from nwpipe.engine.delivery import OutputStats
from nwpipe.engine.pipeline import (
    UNROUTED_NAMED,
    Pipeline,
    RejectCount,
    RunResult,
    build_outputs,
    event_loop_run,
    exit_code_for,
    make_dead_letters,
    report_hidden_rejects,
    tune_gc,
)
from nwpipe.errors import NwpipeError
from nwpipe.numbers import count
from nwpipe.sources.base import Source
from nwpipe.sources.decode import check_inputs, iter_chunks, source_name
from nwpipe.sources.shard import (
    HEADER,
    LINES,
    REJECTS,
    SOURCE,
    STOP,
    Sharder,
    decode_lines,
    decode_rejects,
)
from nwpipe.transform.routing import Router

log = logging.getLogger("nwpipe")

#: a worker process died before it finished (killed, or crashed)
EXIT_WORKER_LOST = 5

#: input read per chunk by the reader (bytes)
CHUNK_BYTES = 1 << 17

#: seconds between a worker's reports of its counts (for the accounting of a worker
#: that dies)
REPORT_EVERY = 0.2

#: output types whose writes go through the shared lock (their lines must stay whole)
LOCKED_OUTPUTS = ("stdout", "file")

_PR_SET_PDEATHSIG = 1
_F_SETPIPE_SZ = 1031
_PIPE_BYTES = 1 << 20


def refusal(*, durable: bool, resume: bool, keep_queue: bool, deliver: bool,
            metrics_listen: str | None, queue_path: str | None, config: Config,
            workers: int) -> str | None:
    """Why ``nwpipe run`` cannot use ``workers`` processes with these options (None: it
    can). Each message names the way out."""
    flag = f"--workers {workers}"
    options = [name for name, used in (("--durable", durable or config.queue.durable),
                                       ("--resume", resume), ("--keep-queue", keep_queue),
                                       ("--no-deliver", not deliver),
                                       ("--metrics-listen", metrics_listen is not None))
               if used]
    if options:
        what = options[0]
        if what == "--durable" and not durable:
            what = "[queue] durable = true"
        return (f"{what} cannot be combined with {flag} (more than one process): run with "
                f"--workers 1 (or workers = 1 in the config), or without {what}")
    if config.source.type != "files":
        return (f"[source] type = '{config.source.type}' cannot be combined with {flag}: "
                "only files and stdin are split between processes; use --workers 1")
    for name, output in config.outputs.items():
        if output.type == "file" and output.settings.get("rotate_bytes"):
            return (f"outputs.{name}.rotate_bytes: a rotated file output cannot be written "
                    f"by several processes; use --workers 1, or remove rotate_bytes")
    path = queue_path or config.queue.path
    if config.queue.url is None and os.path.exists(path):
        return (f"queue file {path} holds what an earlier run left: deliver it with "
                f"--workers 1 first (see `nwpipe queue status`)")
    return None


@dataclass
class _Lost:
    """A worker that died before it finished, and what it reported last."""

    index: int
    pid: int
    how: str
    sent: int
    reported: dict = field(default_factory=dict)

    def unaccounted(self, outputs: list[str]) -> int:
        """Events sent to it that its last report does not show as settled for every
        output (an upper bound: some may have been delivered after that report)."""
        done = self.reported.get("rejected", 0) + self.reported.get("unrouted", 0)
        stats = self.reported.get("outputs", {})
        settled = [stats.get(o, {}).get("delivered", 0) + stats.get(o, {}).get("dead_lettered", 0)
                   for o in outputs]
        return max(0, self.sent - done - (min(settled) if settled else 0))


@dataclass
class WorkersResult(RunResult):
    """The summed result of the workers, plus the workers that died."""

    workers: int = 1
    lost: list[_Lost] = field(default_factory=list)
    output_names: list[str] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        if self.lost and self.signal is None:
            return EXIT_WORKER_LOST
        return super().exit_code

    def summary(self) -> str:
        line = super().summary()
        for dead in self.lost:
            line += (f"; worker {dead.index + 1} (pid {dead.pid}) {dead.how}: up to "
                     f"{count(dead.unaccounted(self.output_names))} of the "
                     f"{count(dead.sent)} events sent to it may not have been delivered "
                     "(not dead-lettered either)")
        return line


# -- the reader ----------------------------------------------------------------------------


class _Interrupted(Exception):
    """Raised by the signal handlers while the reader waits for input."""


@dataclass
class _Worker:
    index: int
    pid: int
    pipe: int  # write end of its frames
    ready: int  # read end: one byte when its outputs run, then the end at its exit
    alive: bool = True
    status: int | None = None


class Reader:
    """The parent process of a run with workers (see the module docstring)."""

    def __init__(self, config: Config, router: Router, paths: list[str], workers: int, *,
                 dead_letter_path: str | None, shutdown_timeout: float | None,
                 strict_routing: bool | None):
        self.config = config
        self.router = router
        self.paths = list(paths) or ["-"]
        self.n = workers
        self.dead_letter_path = dead_letter_path
        self.shutdown_timeout = shutdown_timeout
        self.strict_routing = strict_routing
        self.workers: list[_Worker] = []
        self.signal: int | None = None
        self._waiting_for_input = False
        self._child_exited = False
        self.tmp = Path(tempfile.mkdtemp(prefix="nwpipe-workers-"))
        self.pid = os.getpid()
        self.unreadable = 0
        #: rejects shown on stderr by all workers together (a uint64 in memory the
        #: workers share): one process shows the first MAX_REPORTED_REJECTS, so do they
        self.rejects_shown = mmap.mmap(-1, _SHOWN.size)
        #: the signal each worker got (0: none yet), in memory they share: a signal sent
        #: to one worker rather than the reader stops the whole run, as with one process
        self.signalled = mmap.mmap(-1, workers)

    # signals -------------------------------------------------------------------------

    def _on_signal(self, signum: int, _frame: Any) -> None:
        if self.signal is None:
            self.signal = signum
        # Each worker stops as one process would; a second signal cuts its wait for the
        # deliveries in flight short. (The workers have a process group of their own:
        # Ctrl-C in a terminal reaches them only through here.)
        for worker in self.workers:
            if worker.alive:
                _kill(worker.pid, signum)
        if self._waiting_for_input:
            self._waiting_for_input = False
            raise _Interrupted

    def _on_child(self, _signum: int, _frame: Any) -> None:
        if self.signal is None:  # also while waiting for the workers to finish
            self._worker_signalled()
        if self.signal is None and not self._a_worker_ended():
            return  # a worker stopped (SIGSTOP) or continued: reading goes on
        self._child_exited = True
        if self._waiting_for_input:
            self._waiting_for_input = False
            raise _Interrupted

    def _a_worker_ended(self) -> bool:
        """Whether a worker has exited (it is not reaped here: _reap does that)."""
        for worker in self.workers:
            if worker.alive:
                try:
                    if os.waitid(os.P_PID, worker.pid,
                                 os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None:
                        return True
                except ChildProcessError:
                    return True
        return False

    @staticmethod
    def _on_hangup(_signum: int, _frame: Any) -> None:
        log.warning("SIGHUP: the config is not reloaded with --workers > 1; restart nwpipe "
                    "to apply a new config")

    # the run -------------------------------------------------------------------------

    def run(self) -> WorkersResult:
        """Start the workers, feed them the inputs, wait for them; the summed result."""
        started = time.perf_counter()
        previous = {s: signal.getsignal(s) for s in
                    (signal.SIGINT, signal.SIGTERM, signal.SIGCHLD, signal.SIGHUP)}
        signal.signal(signal.SIGINT, self._on_signal)
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGCHLD, self._on_child)
        signal.signal(signal.SIGHUP, self._on_hangup)
        try:
            try:
                self._start_workers()
            except OSError as exc:
                self._close_pipes()  # those started end at once: nothing was read
                self._wait_workers()
                raise NwpipeError(
                    f"cannot start {self.n} worker processes ({exc.strerror}, after "
                    f"{len(self.workers)}): use fewer --workers, or raise the limit "
                    "(ulimit -n for open files, ulimit -u for processes)") from None
            log.debug("%d worker processes: %s", self.n,
                      " ".join(str(worker.pid) for worker in self.workers))
            errors = self._wait_ready()
            if errors:
                self._close_pipes()
                self._wait_workers()
                raise NwpipeError(errors[0])
            sharder = Sharder(self.n, max_line_bytes=self.config.max_line_bytes)
            self._read(sharder)
            if self.signal is not None:
                stop = HEADER.pack(STOP, self.signal, 0)
                self._send([[stop] for _ in range(self.n)])
            self._close_pipes()
            self._wait_workers()
            result = self._result(sharder, time.perf_counter() - started)
            # said once, as one process says it, not once per worker
            report_hidden_rejects(_SHOWN.unpack_from(self.rejects_shown)[0],
                                  result.dead_letter_path)
            return result
        finally:
            for worker in self.workers:
                if worker.alive:  # only when the reader itself failed
                    _kill(worker.pid, signal.SIGTERM)
            for signum, handler in previous.items():
                signal.signal(signum, handler)
            shutil.rmtree(self.tmp, ignore_errors=True)

    def _start_workers(self) -> None:
        try:
            import uvloop  # noqa: F401 - loaded once here, shared by every worker
        except ImportError:
            pass
        tune_gc()  # what is loaded now is frozen: the collector never copies its pages
        sys.stdout.flush()
        sys.stderr.flush()
        lock = self.tmp / "write.lock"
        lock.touch()
        for index in range(self.n):
            opened: list[int] = []
            try:  # too many processes or open files for the limits: said in run()
                read_end, write_end = os.pipe()
                opened += [read_end, write_end]
                ready_read, ready_write = os.pipe()
                opened += [ready_read, ready_write]
                pid = os.fork()
            except OSError:
                for fd in opened:
                    os.close(fd)
                raise
            if pid == 0:  # the worker
                os.setpgid(0, 0)  # signals from a terminal go to the reader only
                os.close(write_end)
                os.close(ready_read)
                for other in self.workers:  # the others' pipes are not its business
                    os.close(other.pipe)
                    os.close(other.ready)
                code = _worker_main(index, read_end, ready_write, self)
                os._exit(code)
            os.close(read_end)
            os.close(ready_write)
            try:
                fcntl.fcntl(write_end, _F_SETPIPE_SZ, _PIPE_BYTES)
            except OSError:
                pass  # a smaller pipe only means more turns
            self.workers.append(_Worker(index, pid, write_end, ready_read))

    def _wait_ready(self) -> list[str]:
        """Wait until every worker's outputs run; the errors of those that could not."""
        errors = []
        for worker in self.workers:
            while True:
                try:
                    byte = os.read(worker.ready, 1)
                    break
                except InterruptedError:  # pragma: no cover - retried by Python itself
                    continue
            if not byte:
                self._reap(worker, block=True, quiet=True)
                report = self._report(worker.index)
                errors.append(report.get("error") or
                              f"worker {worker.index + 1} {_how(worker.status)} at start")
        return errors

    def _read(self, sharder: Sharder) -> None:
        for source_id, path in enumerate(self.paths):
            if self._stopping():
                break
            name = source_name(path)
            self._send(sharder.start(source_id, name))
            chunks = cast(Generator[bytes, None, None], iter_chunks(path, CHUNK_BYTES))
            try:
                while not self._stopping():
                    # A signal (or a worker's end) while the input keeps us waiting ends
                    # the wait (_Interrupted); one that came just before is seen here.
                    self._waiting_for_input = True
                    if self.signal is not None or self._child_exited:
                        self._waiting_for_input = False
                        continue
                    chunk = next(chunks, None)
                    self._waiting_for_input = False
                    if chunk is None:
                        break
                    self._send(sharder.feed(chunk))
            except _Interrupted:
                pass
            except NwpipeError as exc:
                self._waiting_for_input = False
                self.unreadable += 1
                log.error("error: %s", exc)
            finally:
                self._waiting_for_input = False
                chunks.close()
            # a partial event at the end (or where a signal stopped reading) is reported
            cut_short = None
            if self.signal is not None:
                cut_short = f"input cut short by {signal.Signals(self.signal).name}"
            elif any(not worker.alive for worker in self.workers):
                cut_short = "input cut short: a worker process died"
            self._send(sharder.finish(cut_short))

    def _stopping(self) -> bool:
        if self._child_exited:
            self._child_exited = False
            for worker in self.workers:
                if worker.alive:
                    self._reap(worker, block=False)
        if self.signal is None:
            self._worker_signalled()
        return self.signal is not None or any(not w.alive for w in self.workers)

    def _worker_signalled(self) -> None:
        """A worker that got a signal from elsewhere (`kill <worker pid>`): the run stops
        as if the reader got it; the other workers get it from here."""
        for worker in self.workers:
            signum = self.signalled[worker.index]
            if signum:
                self.signal = signum
                for other in self.workers:
                    if other.alive and not self.signalled[other.index]:
                        _kill(other.pid, signum)
                return

    def _send(self, frames: list[list[bytes]]) -> None:
        for worker, parts in zip(self.workers, frames):
            if not parts or not worker.alive:
                continue
            try:
                _write_all(worker.pipe, parts)
            except BrokenPipeError:
                self._reap(worker, block=True)

    def _reap(self, worker: _Worker, *, block: bool, quiet: bool = False) -> None:
        try:
            pid, status = os.waitpid(worker.pid, 0 if block else os.WNOHANG)
        except ChildProcessError:
            pid, status = worker.pid, 0
        if pid == 0:
            return
        worker.alive = False
        worker.status = status
        if not quiet and not (self.tmp / f"result.{worker.index}").exists():
            log.error("error: worker %d (pid %d) %s; stopping", worker.index + 1, worker.pid,
                      _how(status))

    def _close_pipes(self) -> None:
        for worker in self.workers:
            if worker.pipe >= 0:
                os.close(worker.pipe)
                worker.pipe = -1

    def _wait_workers(self) -> None:
        for worker in self.workers:
            if worker.alive:
                self._reap(worker, block=True)
            os.close(worker.ready)

    def _report(self, index: int) -> dict:
        """What worker ``index`` reported: its result, else its last counts, else the
        error it stopped on."""
        for name in (f"result.{index}", f"counts.{index}", f"error.{index}"):
            try:
                path = self.tmp / name
                return _Counts.read(path) if name.startswith("counts") else \
                    orjson.loads(path.read_bytes())
            except (OSError, ValueError, struct.error):
                continue
        return {}

    def _result(self, sharder: Sharder, seconds: float) -> WorkersResult:
        names = list(self.config.outputs)
        path = self.dead_letter_path or self.config.dead_letter
        result = WorkersResult(dead_letter_path=str(path), workers=self.n, output_names=names,
                               strict_routing=(self.config.strict_routing
                                               if self.strict_routing is None
                                               else self.strict_routing))
        result.outputs = {name: OutputStats() for name in names}
        for worker in self.workers:
            report = self._report(worker.index)
            if not (self.tmp / f"result.{worker.index}").exists():
                result.lost.append(_Lost(worker.index, worker.pid, _how(worker.status),
                                         sharder.sent[worker.index], report))
            _add(result, report)
        result.seconds = seconds
        if self.signal is not None:  # else a worker's own signal, if any (see _add)
            result.signal = self.signal
        result.unreadable += self.unreadable
        return result


def _write_all(fd: int, parts: list[bytes]) -> None:
    """Write ``parts`` in order, whole (a pipe may take less than asked at a time)."""
    views = [memoryview(part) for part in parts if part]
    while views:
        written = os.writev(fd, views)
        while views and written >= len(views[0]):
            written -= len(views[0])
            views.pop(0)
        if written:
            views[0] = views[0][written:]


def _add(total: RunResult, report: dict) -> None:
    """Add one worker's counts (a :func:`_counts` dict) to ``total``."""
    for key in ("read", "rejected", "map_failed", "dead_lettered", "dead_letters_on_stderr",
                "unrouted", "unreadable"):
        setattr(total, key, getattr(total, key) + report.get(key, 0))
    if report.get("dead_letter_error") and total.dead_letter_error is None:
        total.dead_letter_error = report["dead_letter_error"]
    for customer, n in report.get("unrouted_customers", {}).items():
        if customer in total.unrouted_customers or \
                len(total.unrouted_customers) < UNROUTED_NAMED:
            total.unrouted_customers[customer] = total.unrouted_customers.get(customer, 0) + n
    for name, values in report.get("outputs", {}).items():
        stats = total.outputs.setdefault(name, OutputStats())
        for key, value in values.items():
            setattr(stats, key, getattr(stats, key) + value)
    if report.get("signal") and total.signal is None:
        total.signal = report["signal"]


def _how(status: int | None) -> str:
    if status is None:
        return "stopped"
    if os.WIFSIGNALED(status):
        return f"was killed by {signal.Signals(os.WTERMSIG(status)).name}"
    return f"exited with status {os.WEXITSTATUS(status)}"


def _kill(pid: int, signum: int) -> None:
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        pass


def run_workers(config: Config, router: Router, paths: list[str], workers: int, *,
                dead_letter_path: str | None = None, shutdown_timeout: float | None = None,
                strict_routing: bool | None = None) -> WorkersResult:
    """Run the pipeline over ``paths`` in ``workers`` processes; the summed result."""
    check_inputs(paths)
    make_dead_letters(config, dead_letter_path).check()
    reader = Reader(config, router, paths, workers, dead_letter_path=dead_letter_path,
                    shutdown_timeout=shutdown_timeout, strict_routing=strict_routing)
    return reader.run()


# -- a worker ------------------------------------------------------------------------------


class WriteLock:
    """An exclusive lock shared by the workers of one run (``flock`` on a file each
    worker opens itself: a lock is per open file, and the kernel lets it go when a
    worker dies holding it)."""

    def __init__(self, path: Path):
        self.fd = os.open(path, os.O_RDWR)
        self._depth = 0  # held by this process: a nested use must not let go early

    def __enter__(self) -> WriteLock:
        if not self._depth:
            fcntl.flock(self.fd, fcntl.LOCK_EX)
        self._depth += 1
        return self

    def __exit__(self, *_exc: object) -> None:
        self._depth -= 1
        if not self._depth:
            fcntl.flock(self.fd, fcntl.LOCK_UN)


class SharedDeadLetterFile(DeadLetterFile):
    """The run's dead-letter file, appended to by several workers.

    Each write holds :class:`WriteLock`. A write cut short (disk full) is taken back out
    of the file before the lock is released, and written whole later: another worker's
    record must never follow half a record.
    """

    def __init__(self, path: str | os.PathLike, lock: WriteLock):
        super().__init__(path, spill=True)
        self._shared = lock

    def _flush(self, *, block: bool) -> bool:
        with self._shared:
            try:
                return super()._flush(block=block)
            except OSError:
                if self._head_written and self._fd is not None:
                    self._take_back_partial()
                    try:
                        size = os.fstat(self._fd).st_size
                    except OSError:
                        size = -1
                    if size == self._end_after_partial - self._head_written:
                        self._head_written = 0  # the record is written whole next time
                raise

    def _spill_pending(self) -> None:
        with self._shared:
            super()._spill_pending()


def _locked_messages(lock: WriteLock) -> None:
    """Each message on stderr holds ``lock``: a dead-letter record printed there (disk
    full) is long, and another worker's message must not land inside it."""
    for handler in log.handlers:
        emit = handler.emit

        def locked_emit(record: logging.LogRecord, emit=emit) -> None:
            with lock:
                emit(record)

        handler.emit = locked_emit  # type: ignore[method-assign]


_SHOWN = struct.Struct("<Q")


class SharedRejectCount(RejectCount):
    """The rejects shown on stderr by all workers together, counted in memory they
    share, so that together they show the first ``MAX_REPORTED_REJECTS`` as one process
    does (not that many each); the reader says how many more there were."""

    reports_hidden = False

    def __init__(self, shown: mmap.mmap, lock: WriteLock):
        self.shown = shown
        self.lock = lock

    def add(self) -> int:
        with self.lock:  # one worker at a time reads and writes the count
            count = _SHOWN.unpack_from(self.shown)[0] + 1
            _SHOWN.pack_into(self.shown, 0, count)
        return count

    def total(self) -> int:
        return int(_SHOWN.unpack_from(self.shown)[0])


def _locked_writes(output: Any, lock: WriteLock) -> None:
    """Make each ``send`` of ``output`` (a stdout or file output, whose send writes and
    flushes without waiting) hold ``lock``."""
    send = output.send

    async def locked_send(batch):
        with lock:
            return await send(batch)

    output.send = locked_send


class _FrameReader:
    """The frames on a pipe, read as they come, many per ``read``."""

    def __init__(self, fd: int):
        self.fd = fd
        os.set_blocking(fd, False)
        self._buf = b""
        self._pos = 0
        self._eof = False

    async def _more(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                data = os.read(self.fd, _PIPE_BYTES)
            except BlockingIOError:
                ready = loop.create_future()
                loop.add_reader(self.fd, ready.set_result, None)
                try:
                    await ready
                finally:
                    loop.remove_reader(self.fd)
                continue
            if not data:
                self._eof = True
            else:
                # what is left of the last read is at most one frame's beginning
                self._buf = self._buf[self._pos:] + data if self._pos < len(self._buf) \
                    else data
                self._pos = 0
            return

    async def next(self) -> tuple[int, int, bytes] | None:
        """The next frame (kind, argument, payload); None at the end of the pipe."""
        while len(self._buf) - self._pos < HEADER.size:
            if self._eof:
                return None
            await self._more()
        kind, arg, size = HEADER.unpack_from(self._buf, self._pos)
        start = self._pos + HEADER.size
        while len(self._buf) - self._pos < HEADER.size + size:
            if self._eof:
                return None  # a frame cut short: the reader died while writing it
            await self._more()
            start = self._pos + HEADER.size
        self._pos = start + size
        return kind, arg, self._buf[start:start + size]

    def close(self) -> None:
        os.close(self.fd)


class PipeSource(Source):
    """A worker's source: the frames the reader sends down its pipe."""

    def __init__(self, fd: int, ready: int, pipeline: Pipeline, max_line_bytes: int):
        super().__init__({}, max_line_bytes=max_line_bytes)
        self.fd = fd
        self.ready = ready
        self.pipeline = pipeline

    async def read(self):
        # Reading starts once the outputs run: the reader may start sending now.
        os.write(self.ready, b"R")
        frames = _FrameReader(self.fd)
        names: dict[int, str] = {}
        max_line_bytes = self.max_line_bytes
        try:
            # After a stop the reader still sends what it had read: read to the end
            # (the pipeline dead-letters what it cannot deliver any more).
            while True:
                if self.stopping and self.stop_reason is None:
                    return  # an output's reader went away (`| head`): read no more
                frame = await frames.next()
                if frame is None:
                    return
                kind, arg, payload = frame
                if kind == LINES:
                    for items in decode_lines(payload, names[arg], max_line_bytes):
                        yield items
                elif kind == REJECTS:
                    yield decode_rejects(payload, names[arg])
                elif kind == SOURCE:
                    names[arg] = payload.decode("utf-8", "surrogateescape")
                elif kind == STOP and self.pipeline.result.signal is None:
                    self.pipeline.stop(arg)
        finally:
            frames.close()

    def describe(self) -> str:
        return "the reader's pipe"


#: seconds within which the same signal twice counts once (see _once_per_signal)
SAME_SIGNAL = 0.2


def _once_per_signal(pipeline: Pipeline, signalled: mmap.mmap, index: int) -> None:
    """A worker may get a signal twice at once: from the reader, and from whoever sent
    it to the whole group of processes (systemd's default KillMode). Only a second
    signal that comes later is a second one (which cuts the shutdown wait short).

    The first signal is noted in ``signalled[index]`` and the reader woken (SIGCHLD),
    so that a signal sent to this worker alone stops the whole run."""
    stop = pipeline.stop
    last: dict[int, float] = {}

    def once(signum: int | None = None) -> None:
        if signum is not None:
            now = time.monotonic()
            if now - last.get(signum, -SAME_SIGNAL) < SAME_SIGNAL:
                return
            last[signum] = now
            if not signalled[index]:
                signalled[index] = signum
                _kill(os.getppid(), signal.SIGCHLD)  # the reader may wait for input
        stop(signum)

    pipeline.stop = once  # type: ignore[method-assign]


def _counts(result: RunResult, dead_letter: Any = None) -> dict:
    data = {key: getattr(result, key) for key in
            ("read", "rejected", "map_failed", "unrouted", "unrouted_customers", "signal")}
    data["outputs"] = {name: asdict(stats) for name, stats in result.outputs.items()}
    if dead_letter is not None:
        data["dead_lettered"] = getattr(dead_letter, "count", 0)
        data["dead_letters_on_stderr"] = getattr(dead_letter, "spilled", 0)
        data["dead_letter_error"] = getattr(dead_letter, "error", None)
    return data


def _write_report(path: Path, data: dict) -> None:
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_bytes(orjson.dumps(data))
    os.replace(temporary, path)


class _Counts:
    """A worker's running counts in a file of its own, overwritten in place (no new file
    or rename each time: that could block the event loop on a busy disk). The reader
    reads it only after the worker died, so a write is never read half done."""

    def __init__(self, path: Path):
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)

    def write(self, data: dict) -> None:
        blob = orjson.dumps(data)
        os.pwrite(self.fd, _LENGTH.pack(len(blob)) + blob, 0)

    @staticmethod
    def read(path: Path) -> dict:
        data = path.read_bytes()
        (size,) = _LENGTH.unpack_from(data)
        return orjson.loads(data[_LENGTH.size:_LENGTH.size + size])


_LENGTH = struct.Struct("<I")


async def _reporting(pipeline: Pipeline, source: PipeSource, path: Path) -> Any:
    """Run the pipeline, writing its counts to ``path`` meanwhile."""
    counts = _Counts(path)

    async def report() -> None:
        while True:
            await asyncio.sleep(REPORT_EVERY)
            counts.write(_counts(pipeline.result, pipeline.dead_letter))

    task = asyncio.ensure_future(report())
    try:
        return await pipeline.run(source)
    finally:
        task.cancel()


def _worker_main(index: int, fd: int, ready: int, reader: Reader) -> int:
    """The body of worker ``index`` (a forked child): returns its exit status."""
    code = 0
    dead_letter = None
    try:
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
        except (OSError, AttributeError):  # pragma: no cover - not Linux
            pass
        if os.getppid() != reader.pid:  # the reader died before the line above
            return 1
        for signum in (signal.SIGCHLD, signal.SIGTERM):
            signal.signal(signum, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGHUP, signal.SIG_IGN)  # the reader says why
        os.close(0)  # the input is the reader's
        os.open(os.devnull, os.O_RDONLY)
        config = reader.config
        lock = WriteLock(reader.tmp / "write.lock")
        _locked_messages(lock)
        dead_letter = make_dead_letters(config, reader.dead_letter_path)
        if type(dead_letter) is DeadLetterFile:
            dead_letter = SharedDeadLetterFile(dead_letter.path, lock)
        outputs = build_outputs(config)
        for name, output in outputs.items():
            if config.outputs[name].type in LOCKED_OUTPUTS:
                _locked_writes(output, lock)
        tune_gc()
        pipeline = Pipeline(config, reader.router, outputs, dead_letter=dead_letter,
                            shutdown_timeout=reader.shutdown_timeout,
                            strict_routing=reader.strict_routing)
        _once_per_signal(pipeline, reader.signalled, index)
        pipeline.rejects_shown = SharedRejectCount(reader.rejects_shown, lock)
        source = PipeSource(fd, ready, pipeline, config.max_line_bytes)
        result = event_loop_run(_reporting(pipeline, source, reader.tmp / f"counts.{index}"))
        dead_letter.close()
        _write_report(reader.tmp / f"result.{index}", _counts(result, dead_letter))
    except NwpipeError as exc:
        code = 1
        try:
            _write_report(reader.tmp / f"error.{index}", {"error": str(exc)})
        except OSError:
            log.error("error: %s", exc)
    except KeyboardInterrupt:
        code = exit_code_for(signal.SIGINT, 0)
    except BaseException:  # a bug: shown, and the reader reports the worker as lost
        traceback.print_exc()
        code = 70
    finally:
        try:
            sys.stdout.flush()
        except (OSError, ValueError):
            pass
        try:
            sys.stderr.flush()
        except (OSError, ValueError):
            pass
    return code


__all__ = ["EXIT_WORKER_LOST", "Reader", "WorkersResult", "refusal", "run_workers"]
