"""``nwpipe queue``: look at and act on the durable queue's backlog.

* ``status [--json]``: per output, the events waiting (after its mark), their bytes,
  the oldest one's age and since when the output is failing; per input file, how far
  a durable run committed it. Reads without the delivery lock, so it works while a
  run delivers from the queue.
* ``drain --output NAME [--dead-letter]``: deliver what waits for one output now (its
  retry budget applies), or move it to the dead-letter file without sending it. Other
  outputs' backlogs are left as they are.
* ``recover``: after ``nwpipe run`` reported the queue file damaged, keep every entry
  that can still be read in a new file and set the damaged one aside.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import replace

from nwpipe.config import Config
from nwpipe.errors import NwpipeError
from nwpipe.queue.base import QueueError, QueueStatus
from nwpipe.settings import did_you_mean

log = logging.getLogger("nwpipe")

#: why `queue drain --dead-letter` dead-lettered an event
DRAINED = "moved to the dead-letter file by `nwpipe queue drain --dead-letter`"


def _settings(config: Config, path: str | None):
    return config.queue if path is None else replace(config.queue, path=path)


def _size(n: int) -> str:
    if n < 1024:
        return f"{n:,} bytes"
    size = float(n)
    for unit in ("KiB", "MiB", "GiB"):
        size /= 1024
        if size < 1024 or unit == "GiB":
            break
    return f"{size:,.1f} {unit}"


def _age(seconds: float) -> str:
    seconds = int(seconds)
    if seconds < 120:
        return f"{seconds} s"
    if seconds < 7200:
        return f"{seconds // 60} min"
    if seconds < 172800:
        return f"{seconds // 3600} h {seconds % 3600 // 60} min"
    return f"{seconds // 86400} days"


def _utc(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


def read_status(config: Config, path: str | None = None) -> QueueStatus | None:
    """The queue's status, or None when the queue file does not exist (nothing queued)."""
    from nwpipe.engine.pipeline import event_loop_run
    from nwpipe.queue.sqlite import SqliteQueue

    settings = _settings(config, path)
    if settings.url:
        from nwpipe.queue import create_queue

        queue = create_queue(settings)
    else:
        if not os.path.exists(settings.path):
            return None
        queue = SqliteQueue(settings, readonly=True)

    async def look():
        await queue.open()
        try:
            return await queue.status()
        finally:
            await queue.close()

    return event_loop_run(look())


def status_report(config: Config, status: QueueStatus | None, location: str) -> dict:
    """The status as a JSON-ready dict (the ``--json`` output)."""
    now = time.time()
    if status is None:
        return {"queue": location, "exists": False, "events": 0, "bytes": 0,
                "max_bytes": config.queue.max_bytes, "oldest_age": None, "outputs": {},
                "inputs": {}}
    names = list(config.outputs)
    for shard in status.shards:
        names.extend(n for n in shard.outputs if n not in names)
    outputs = {}
    for name in names:
        backlog = status.backlog(name)
        failing = status.notes.get(f"failing:{name}")
        outputs[name] = {
            "events": backlog.events,
            "bytes": backlog.bytes,
            "oldest_age": None if backlog.oldest_at is None else round(now - backlog.oldest_at, 3),
            "failing_since": None if failing is None else _utc(float(failing)),
            "configured": name in config.outputs,
        }
    inputs = {}
    for key, value in status.notes.items():
        if key.startswith("input:"):
            try:
                inputs[key[len("input:"):]] = json.loads(value)["line"]
            except (ValueError, KeyError, TypeError):
                continue
    oldest = status.oldest_at
    report = {"queue": location, "exists": True, "events": status.depth, "bytes": status.bytes,
              "max_bytes": status.max_bytes,
              "oldest_age": None if oldest is None else round(now - oldest, 3),
              "outputs": outputs, "inputs": inputs}
    if any(s.pending is not None for s in status.shards):
        # a shared queue (Redis): who delivers each shard and how far behind it is
        report["shards"] = [
            {"shard": s.shard, "length": s.depth, "pending": s.pending, "owner": s.owner,
             "lag": None if s.oldest_at is None else round(now - s.oldest_at, 3)}
            for s in status.shards]
        report["workers"] = status.notes.get("workers", "").split()
    return report


def status_command(config: Config, path: str | None, as_json: bool) -> int:
    """``nwpipe queue status``: print the report; exit 0."""
    from nwpipe.queue import location

    where = location(_settings(config, path))
    report = status_report(config, read_status(config, path), where)
    if as_json:
        print(json.dumps(report, indent=2))
        return 0
    if not report["exists"]:
        print(f"queue {where}: no queue file, nothing is queued")
        return 0
    line = (f"queue {where}: {report['events']:,} event{'s' if report['events'] != 1 else ''}, "
            f"{_size(report['bytes'])} of {_size(report['max_bytes'])} (queue.max_bytes)")
    if report["oldest_age"] is not None:
        line += f", oldest {_age(report['oldest_age'])} old"
    print(line)
    for name, out in report["outputs"].items():
        text = f"  {name}: {out['events']:,} waiting"
        if out["events"]:
            text += f" ({_size(out['bytes'])}, oldest {_age(out['oldest_age'])} old)"
        if out["failing_since"]:
            text += f"; failing since {out['failing_since']}"
        if not out["configured"]:
            text += "; not in the config any more"
        print(text)
    for name, line_no in report["inputs"].items():
        print(f"  input {name}: committed up to line {line_no:,}")
    if "shards" in report:
        workers = report["workers"]
        print(f"  {len(workers)} live worker{'s' if len(workers) != 1 else ''}"
              + (": " + ", ".join(workers) if workers else ""))
        print(f"  {'shard':>5}  {'length':>8}  {'pending':>8}  {'lag':>9}  owner")
        for shard in report["shards"]:
            lag = "-" if shard["lag"] is None else _age(shard["lag"])
            print(f"  {shard['shard']:>5}  {shard['length']:>8,}  {shard['pending']:>8,}  "
                  f"{lag:>9}  {shard['owner'] or '(none)'}")
    return 0


def drain_command(config: Config, router, output: str, *, path: str | None = None,
                  dead_letter: bool = False, dead_letter_path: str | None = None,
                  shutdown_timeout: float | None = None, progress: bool = False):
    """``nwpipe queue drain``: deliver (or dead-letter) what waits for ``output``."""
    from nwpipe.engine.pipeline import (
        Pipeline,
        build_outputs,
        event_loop_run,
        make_dead_letters,
        make_progress,
        make_queue,
        tune_gc,
    )

    if output not in config.outputs:
        known = ", ".join(config.outputs) or "none"
        raise NwpipeError(f"--output: no output named '{output}' in the config"
                          f"{did_you_mean(output, config.outputs)} (outputs: {known})")
    queue = make_queue(config, path)
    if not queue.settings.url and not os.path.exists(queue.settings.path):
        raise QueueError(f"queue file {queue.settings.path} does not exist: nothing to drain")
    dead = make_dead_letters(config, dead_letter_path)
    dead.check()
    tune_gc()
    try:
        pipeline = Pipeline(config, router, build_outputs(config, [output]), dead_letter=dead,
                            shutdown_timeout=shutdown_timeout, progress=make_progress(progress),
                            queue=queue, durable=True, refuse=DRAINED if dead_letter else None)

        async def nothing() -> None:
            return None

        return event_loop_run(pipeline.execute(nothing))
    finally:
        dead.close()


def recover_command(config: Config, path: str | None) -> int:
    """``nwpipe queue recover``: rebuild a damaged queue file from what can be read."""
    from nwpipe.queue.sqlite import recover

    settings = _settings(config, path)
    if settings.url:
        raise NwpipeError("queue recover works on a SQLite queue file, not on Redis")
    recovered, unreadable, aside = recover(settings.path)
    if aside is None:
        raise QueueError(f"queue file {settings.path} does not exist: nothing to recover")
    print(f"queue {settings.path}: {recovered:,} entr{'y' if recovered == 1 else 'ies'} "
          f"recovered, {unreadable:,} could not be read; the damaged file is kept as {aside}")
    return 0 if not unreadable else 3
