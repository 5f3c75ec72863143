"""``nwpipe work``: only deliver, from the queue that intake processes fill.

A worker reads the shards it owns, routes and maps each event with the config and
delivers it to the outputs, exactly as ``run`` does from its queue; it reads no input of
its own. With a Redis queue any number of workers, on any number of machines, share the
shards (see :mod:`nwpipe.queue.redis`); with the SQLite queue one process delivers at a
time. It runs until SIGTERM or SIGINT: deliveries in flight get ``shutdown_timeout``
seconds, what it did not deliver stays in the queue for the others, its shards are
handed back at once, and it exits 0.
"""

from __future__ import annotations

import signal

from nwpipe.config import Config
from nwpipe.engine.pipeline import (
    Pipeline,
    RunResult,
    build_outputs,
    event_loop_run,
    make_dead_letters,
    make_progress,
    make_queue,
    output_summary,
    tune_gc,
    with_metrics,
)
from nwpipe.transform.routing import Router


def work(config: Config, router: Router, *, dead_letter_path: str | None = None,
         shutdown_timeout: float | None = None, progress: bool = False,
         queue_path: str | None = None, reloader=None,
         metrics_listen: str | None = None) -> RunResult:
    """Deliver from the configured queue until a signal; returns what happened.

    ``reloader``: a :class:`nwpipe.engine.reload.Reloader`, to reload the config on SIGHUP.
    ``metrics_listen``: ``HOST:PORT`` where /healthz, /readyz and /metrics (with the
    queue's per-shard depth, lag and which shards this worker owns) answer meanwhile.
    """
    dead_letter = make_dead_letters(config, dead_letter_path)
    dead_letter.check()
    tune_gc()
    try:
        pipeline = Pipeline(config, router, build_outputs(config), dead_letter=dead_letter,
                            shutdown_timeout=shutdown_timeout, progress=make_progress(progress),
                            queue=make_queue(config, queue_path), durable=True)
        pipeline.reloader = reloader
        pipeline.command = "work"
        if metrics_listen is None:
            return event_loop_run(pipeline.work())
        return event_loop_run(with_metrics(pipeline, None, metrics_listen))
    finally:
        dead_letter.close()


def summary(result: RunResult) -> str:
    """One line: why the worker stopped and what each output did."""
    parts = [output_summary(name, stats, result.seconds) for name, stats in result.outputs.items()]
    line = "; ".join(parts) + f" ({result.seconds:.2f} s)"
    if result.dead_lettered:
        line += f"; dead letters in {result.dead_letter_path}"
    if result.signal is not None:
        line = f"work: stopped by {signal.Signals(result.signal).name}: " + line
    return line
