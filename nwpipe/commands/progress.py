"""A live progress line on stderr while events flow, for a person watching a terminal.

Shown only when stderr is a terminal (never in a pipe or a log file) that is not also
where stdout goes (event lines would be mixed into it), not with ``--quiet`` or
``--log-format json``. When every input is a regular file (.gz too: compressed bytes
read), it shows how far through they are and an estimate of the time left. It is
redrawn in place (``\\r``) at most four times a second and cleared at the end, before
the summary. Log messages that arrive while it
is shown clear it first, so they never get mixed into it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import time
from typing import Any, TextIO

from nwpipe.numbers import count, rate

log = logging.getLogger("nwpipe")

#: seconds between redraws
INTERVAL = 0.25

_CLEAR = "\r\x1b[K"


def wanted(quiet: bool, log_format: str, stream: TextIO | None = None,
           out: TextIO | None = None) -> bool:
    """Whether to show the line: stderr is a terminal that stdout is not written to,
    and neither quiet nor JSON logs."""
    stream = sys.stderr if stream is None else stream
    out = sys.stdout if out is None else out
    if quiet or log_format != "text":
        return False
    try:
        return stream.isatty() and not _same_terminal(stream, out)
    except (AttributeError, ValueError):
        return False


def _same_terminal(a: TextIO, b: TextIO) -> bool:
    try:
        if not b.isatty():
            return False
        first, second = os.fstat(a.fileno()), os.fstat(b.fileno())
    except (AttributeError, ValueError, OSError):
        return False
    return (first.st_dev, first.st_ino, first.st_rdev) == \
        (second.st_dev, second.st_ino, second.st_rdev)


def _clock(seconds: float) -> str:
    """``0:42``, ``1:02:03``."""
    seconds = int(seconds + 0.5)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02}:{secs:02}" if hours else f"{minutes}:{secs:02}"


def position(source: Any, elapsed: float) -> str | None:
    """``42% ETA 0:13`` when the source knows its size in bytes, else None."""
    total = getattr(source, "bytes_total", None)
    done = getattr(source, "bytes_read", None)
    if not total or done is None:
        return None
    fraction = min(done / total, 1.0)
    text = f"{fraction * 100:.0f}%"
    if 0 < fraction < 1 and elapsed > 0:
        text += f" ETA {_clock(elapsed * (1 - fraction) / fraction)}"
    return text


class Progress:
    """Draws ``read N (R/s) | out: D delivered, Q queued, failing | B in the queue file
    | ...`` on ``stream``."""

    def __init__(self, stream: TextIO, interval: float = INTERVAL):
        self.stream = stream
        self.interval = interval
        self._pipeline: Any = None  # the Pipeline (typed loosely: it imports this module)
        self._task: asyncio.Task | None = None
        self._shown = ""
        self._started = 0.0
        self._filter = _ClearFirst(self)

    def start(self, pipeline) -> None:
        """Begin redrawing for ``pipeline`` (a running :class:`nwpipe.engine.pipeline.Pipeline`)."""
        self._pipeline = pipeline
        self._started = time.monotonic()
        for handler in log.handlers:
            handler.addFilter(self._filter)
        self._task = asyncio.ensure_future(self._loop())

    async def stop(self) -> None:
        """Stop redrawing and clear the line."""
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        for handler in log.handlers:
            handler.removeFilter(self._filter)
        self.clear()

    def clear(self) -> None:
        """Erase the line if it is shown."""
        if self._shown:
            self._write(_CLEAR)
            self._shown = ""

    def render(self) -> str:
        """The current line (not yet cut to the terminal width)."""
        pipeline = self._pipeline
        result = pipeline.result
        elapsed = time.monotonic() - self._started
        parts = [f"read {count(result.read)}"]
        if elapsed > 0:
            parts[0] += f" ({rate(result.read / elapsed)})"
        where = position(pipeline.source, elapsed)
        if where:
            parts[0] += f", {where}"
        for name, engine in pipeline.engines.items():
            text = f"{name}: {count(engine.stats.delivered)} delivered"
            if engine.backlog:
                text += f", {count(engine.backlog)} queued"
            if engine.failing:
                text += ", FAILING"
            parts.append(text)
        if pipeline.dispatcher is not None:
            depth = pipeline.queue.approx_depth()
            if depth is not None:
                parts.append(f"{depth:,} in the queue file")
        dead = pipeline.dead_letter.count
        if dead:
            parts.append(f"{count(dead)} dead-lettered")
        if pipeline.stopping and result.signal is not None:
            parts.append("shutting down")
        return " | ".join(parts)

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            self.draw()

    def draw(self) -> None:
        """Redraw the line now, cut to the terminal's width so that it never wraps."""
        line = "nwpipe: " + self.render()
        width = _width(self.stream)
        if len(line) >= width:
            line = line[: max(0, width - 2)] + "…"
        if line != self._shown:
            self._write("\r" + line + "\x1b[K")
            self._shown = line

    def _write(self, text: str) -> None:
        try:
            self.stream.write(text)
            self.stream.flush()
        except (OSError, ValueError):  # the terminal went away: nothing to show it on
            self._shown = ""


class _ClearFirst(logging.Filter):
    """Clears the progress line before a log message is written below it."""

    def __init__(self, progress: Progress):
        super().__init__()
        self.progress = progress

    def filter(self, record: logging.LogRecord) -> bool:
        self.progress.clear()
        return True


def _width(stream: TextIO) -> int:
    try:
        return os.get_terminal_size(stream.fileno()).columns or 80
    except (OSError, ValueError, AttributeError):
        return 80
