"""``nwpipe replay``: send the deliveries of a dead-letter file again.

Each record goes back through the current config:

* ``deliver`` records are mapped again from the original event, with the recorded
  output's current mapping, and sent to that output (its ``customers`` and ``when``
  filters already chose it and are not asked again);
* ``map`` records are mapped again the same way; one whose ``when`` failed (no output
  recorded) is routed like a new event;
* ``parse`` records are decoded again from the raw text (or the recorded event, which
  may have been fixed by hand): when that now gives valid events, they are routed like
  new events; otherwise the record stays as it was.

Delivery ids stay the same, so a receiver can tell a replayed delivery it already has.
What is delivered leaves the file; what fails again stays with the new reason and all
attempts; records for another output (``--output``), for an output no longer in the
config, or not replayable stay unchanged. The file is rewritten atomically (see
:class:`nwpipe.engine.deadletter.Rewrite`): at every moment each record is in the old file or
the new one, and a replay that is interrupted or fails leaves nothing half-done.
"""

from __future__ import annotations

import asyncio
import logging
import re
import signal
from dataclasses import dataclass, field

import orjson

from nwpipe import jsonio
from nwpipe.config import Config
from nwpipe.engine.deadletter import Rewrite, iter_lines
from nwpipe.engine.pipeline import (
    Pipeline,
    RunResult,
    build_outputs,
    event_loop_run,
    exit_code_for,
    make_progress,
    output_summary,
    tune_gc,
)
from nwpipe.errors import NwpipeError
from nwpipe.numbers import count, plural
from nwpipe.settings import did_you_mean
from nwpipe.sources.decode import Decoder, Event, Reject
from nwpipe.transform.route_map import check_event
from nwpipe.transform.routing import Router

#: the shape of a delivery id nwpipe made (outputs.delivery_id)
_DELIVERY_ID = re.compile(r"nwp_[0-9a-f]{32}")

log = logging.getLogger("nwpipe")

#: messages about records that cannot be replayed, before they are only counted
MAX_REPORTED = 20


@dataclass
class ReplayResult:
    """What a replay did, for the summary line and the exit code."""

    path: str
    output: str | None = None
    #: records found in the file
    records: int = 0
    #: records sent through the pipeline again
    replayed: int = 0
    #: records for another output than ``--output``: kept unchanged
    skipped: int = 0
    #: records that cannot be replayed (unknown output, still not an event): kept unchanged
    stuck: int = 0
    #: records not reached because the replay was interrupted: kept unchanged
    unprocessed: int = 0
    #: new records: replayed deliveries that failed again
    failed: int = 0
    #: the file was left exactly as it was
    unchanged: bool = False
    run: RunResult = field(default_factory=RunResult)

    @property
    def remaining(self) -> int:
        """Records in the dead-letter file after the replay."""
        if self.unchanged:
            return self.records
        return self.skipped + self.stuck + self.unprocessed + self.failed

    @property
    def exit_code(self) -> int:
        """As for ``run``: 0 all replayed delivered, 3 something still failing, 130/143."""
        return exit_code_for(self.run.signal, self.failed + self.stuck + self.unprocessed)

    def summary(self) -> str:
        run = self.run
        parts = [f"replayed {count(self.replayed)} of {plural(self.records, 'record')} "
                 f"from {self.path}"]
        parts.extend(output_summary(name, stats, run.seconds)
                     for name, stats in run.outputs.items())
        if run.map_failed:
            parts.append(f"mapping failed {count(run.map_failed)}")
        if self.skipped:
            parts.append(f"{count(self.skipped)} kept (not for output '{self.output}')")
        if self.stuck:
            parts.append(f"{count(self.stuck)} cannot be replayed")
        if self.unprocessed:
            parts.append(f"{count(self.unprocessed)} not reached")
        remaining = self.remaining
        if remaining:
            parts.append(f"{count(remaining)} record{' remains' if remaining == 1 else 's remain'} "
                         f"in {self.path}")
        elif not self.unchanged:
            parts.append(f"{self.path} removed: nothing remains")
        line = "; ".join(parts) + f" ({run.seconds:.2f} s)"
        if run.signal is not None:
            line = f"interrupted by {signal.Signals(run.signal).name}: " + line
        return line


class _Replayer:
    """Feeds the records of an open dead-letter file to a pipeline."""

    def __init__(self, pipeline: Pipeline, config: Config, file, rewrite: Rewrite,
                 result: ReplayResult):
        self.pipeline = pipeline
        self.config = config
        self.file = file
        assert rewrite.remaining is not None  # the file is open
        self.keep = rewrite.remaining
        self.result = result
        self._reported = 0
        self._unknown_outputs: dict[str, int] = {}

    async def feed(self) -> None:
        pipeline = self.pipeline
        result = self.result
        for number, line in iter_lines(self.file):
            result.records += 1
            if pipeline.stopping:
                # Interrupted: what was not reached stays exactly as it was.
                result.unprocessed += 1
                self.keep.write_raw(line)
                continue
            pipeline.result.read += 1
            await self._one(number, line)
            if result.records % 256 == 0:
                await asyncio.sleep(0)  # let signals and deliveries in on a long file
        for name, kept in self._unknown_outputs.items():
            known = ", ".join(self.config.outputs) or "none"
            log.warning("output '%s' is not in the config%s (outputs: %s): its %d record%s "
                        "stay in %s", name, did_you_mean(name, self.config.outputs), known,
                        kept, "" if kept == 1 else "s", result.path)

    def _stay(self, line: bytes, number: int, why: str | None) -> None:
        """Keep a record unchanged; say why when it could not be replayed."""
        self.keep.write_raw(line)
        if why is None:
            self.result.skipped += 1
            return
        self.result.stuck += 1
        self._reported += 1
        if self._reported <= MAX_REPORTED:
            log.warning("%s:%d: %s (kept)", self.result.path, number, why)
        elif self._reported == MAX_REPORTED + 1:
            log.warning("%s: further records that cannot be replayed are only counted",
                        self.result.path)

    async def _one(self, number: int, line: bytes) -> None:
        try:
            record = jsonio.loads(line)
        except orjson.JSONDecodeError:
            self._stay(line, number, "not a dead-letter record (not valid JSON)")
            return
        if not isinstance(record, dict) or "nwpipe_dead_letter" not in record:
            self._stay(line, number, "not a dead-letter record")
            return
        output = record.get("output")
        wanted = self.result.output
        if wanted is not None and output != wanted:
            self._stay(line, number, None)
            return
        stage = record.get("stage")
        source = record.get("source")
        if not isinstance(source, str):
            source = "<replay>"
        where = record.get("line")
        if not isinstance(where, int):
            where = 0
        pipeline = self.pipeline

        # an intake record is a piece of a request body that `nwpipe serve` refused
        if stage in ("parse", "intake"):
            events = self._parse_again(record, source, where)
            if isinstance(events, str):
                self._stay(line, number, f"still not a valid event: {events}")
                return
            self.result.replayed += 1
            for decoded in events:
                await pipeline.route(decoded, source, where)
            return

        if stage not in ("map", "deliver", "route"):
            self._stay(line, number, f"unknown stage {stage!r}")
            return
        event = record.get("event")
        if not isinstance(event, dict):
            self._stay(line, number, "the record has no event")
            return
        problem = check_event(event)
        if problem:
            self._stay(line, number, problem)
            return
        attempts = record.get("attempts")
        attempts = attempts if isinstance(attempts, list) else None
        # The id from the record keeps receivers' deduplication working; one that is not
        # nwpipe's own shape (an edited file) is rebuilt, since it goes into a header.
        did = record.get("delivery_id")
        if not (isinstance(did, str) and _DELIVERY_ID.fullmatch(did)):
            did = None
        if output is None:
            self.result.replayed += 1
            await pipeline.route(event, source, where, attempts=attempts, delivery_id=did)
            return
        if output not in pipeline.engines:
            self._unknown_outputs[output] = self._unknown_outputs.get(output, 0) + 1
            self.keep.write_raw(line)
            self.result.stuck += 1
            return
        self.result.replayed += 1
        await pipeline.send_to(output, event, source, where, delivery_id=did, attempts=attempts)

    def _parse_again(self, record: dict, source: str, line: int) -> list[dict] | str:
        """The valid events a parse-stage record holds now, or why there are none."""
        if isinstance(record.get("raw"), str):
            decoder = Decoder(source, max_line_bytes=self.config.max_line_bytes)
            items = decoder.feed(record["raw"].encode("utf-8", "surrogatepass"))
            items += decoder.finish()
        elif isinstance(record.get("event"), dict):
            items = [Event(record["event"], source, line)]
        else:
            return "the record has neither raw input nor an event"
        if not items:
            return "no input"
        for item in items:
            if isinstance(item, Reject):
                return item.reason
            problem = check_event(item.data)
            if problem:
                return problem
        return [item.data for item in items if isinstance(item, Event)]


def _rewrite_for(config: Config, path: str):
    """The dead-letter store at ``path``: a file, or a Redis URL (the stream
    ``PREFIX:dead`` with the prefix and CA file of the config's ``[queue]``)."""
    from nwpipe.queue.redisdead import RedisRewrite, is_redis_url

    if not is_redis_url(path):
        return Rewrite(path)
    queue = getattr(config, "queue", None)
    return RedisRewrite(path, getattr(queue, "prefix", None) or "nwpipe",
                        ca_file=getattr(queue, "ca_file", None))


def replay(config: Config, router: Router, path: str, *, output: str | None = None,
           shutdown_timeout: float | None = None, progress: bool = False) -> ReplayResult:
    """Replay the dead-letter file ``path`` through ``config`` (see the module docstring).

    ``path`` may also be a Redis URL (``redis://host:6379/0``): the records of the
    stream ``PREFIX:dead`` that workers sharing a Redis queue write are replayed the
    same way (see :mod:`nwpipe.queue.redisdead`).

    ``output``: replay only the records of that output; the others stay unchanged.
    """
    if output is not None and output not in config.outputs:
        known = ", ".join(config.outputs) or "none"
        raise NwpipeError(f"--output: no output named '{output}' in the config"
                          f"{did_you_mean(output, config.outputs)} (outputs: {known})")
    _check_holds_records(path)  # a Redis URL is no file: not checked here
    rewrite = _rewrite_for(config, path)
    file = rewrite.open()
    remaining = rewrite.remaining
    assert remaining is not None  # made by open()
    result = ReplayResult(path=str(rewrite.path), output=output)
    try:
        tune_gc()
        names = None if output is None else [output]
        pipeline = Pipeline(config, router, build_outputs(config, names),
                            dead_letter=remaining, shutdown_timeout=shutdown_timeout,
                            progress=make_progress(progress),
                            # a record that still matches no output stays in the file
                            strict_routing=True)
        result.run = pipeline.result
        replayer = _Replayer(pipeline, config, file, rewrite, result)
        event_loop_run(pipeline.execute(replayer.feed))
        result.failed = remaining.count
        closed = [name for name, engine in pipeline.engines.items() if engine.closed]
        if closed:
            # An output that went away for good (stdout closed by its reader) may have
            # taken deliveries with it: keep every record rather than guess.
            log.warning("output %s closed during the replay; %s is left unchanged",
                        ", ".join(closed), path)
            result.unchanged = True
        elif result.replayed == 0:
            result.unchanged = True  # nothing was sent: no reason to touch the file
    except BaseException:
        rewrite.abort()
        raise
    if result.unchanged:
        rewrite.abort()
    else:
        rewrite.commit()
    result.run.dead_lettered = result.remaining
    result.run.dead_letter_path = str(path)
    return result


def _is_record(line: bytes) -> bool:
    try:
        record = jsonio.loads(line)
    except orjson.JSONDecodeError:
        return False
    return isinstance(record, dict) and "nwpipe_dead_letter" in record


def _check_holds_records(path: str) -> None:
    """A file with lines but not one dead-letter record (an events file given by mistake)
    is one clear error, before anything is sent or rewritten."""
    try:
        with open(path, "rb") as file:
            lines = 0
            for _, line in iter_lines(file):
                if _is_record(line):
                    return
                lines += 1
    except OSError:
        return  # Rewrite.open() names the problem
    if lines:
        raise NwpipeError(f"{path}: holds no dead-letter record ({lines:,} line"
                          f"{'s' if lines != 1 else ''} of something else); a dead-letter file "
                          f"is written by `nwpipe run`; to send events, use `nwpipe run {path}`")
