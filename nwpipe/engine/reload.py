"""Config reload: SIGHUP (or ``nwpipe reload``) swaps a running pipeline's mappings and
outputs for those of the config file as it is now, without a restart.

The new config must pass what ``nwpipe check`` checks (the file, every key, mapping,
template and output, the ``[[tests]]`` tables) and its changed outputs must open;
otherwise the reload is refused, each problem is one error line, and the running
config stays as it was.

A valid config is applied between two events, so each event is routed and mapped
either wholly by the old config or wholly by the new one:

- outputs whose settings (type, plugin settings, engine settings) are unchanged keep
  running as they are, with what they hold;
- a changed output gets a new output and engine: what waits in the old engine's queue
  is mapped again with the new config and goes to the new one; batches in flight
  finish on the old output (the same alert's later events wait for them, so order per
  alert is kept), then the old output is closed;
- a removed output finishes what it holds, then closes; an added one takes the events
  read from now on;
- mappings, ``customers`` and ``when`` apply to every event routed from now on.

In queue mode (:mod:`nwpipe.engine.dispatch`) events wait in the queue unmapped: each
output's feed routes and maps them with the config in force when it reads them.

Settings of the process itself (``[source]``, ``dead_letter``, ``max_line_bytes``,
``[queue]``, ``shutdown_timeout``, ``[serve]``) take effect at the next start; a reload
that changes them says so.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable

from nwpipe.config import Config, OutputConfig
from nwpipe.engine.delivery import DeliveryEngine
from nwpipe.errors import NwpipeError
from nwpipe.outputs import Delivery
from nwpipe.transform.route_map import MapFailed, map_for
from nwpipe.transform.routing import Router

if TYPE_CHECKING:  # pragma: no cover
    from nwpipe.engine.pipeline import Pipeline

log = logging.getLogger("nwpipe")

#: top-level settings a running process keeps until its next start
RESTART_ONLY = ("source", "dead_letter", "max_line_bytes", "queue", "shutdown_timeout", "serve")


@dataclass
class Plan:
    """What a new config changes in the outputs of a running one, by output name."""

    unchanged: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)
    added: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)

    def describe(self) -> str:
        """``outputs changed: soc; added: siem; unchanged: file`` for the log."""
        parts = [f"{what}: {', '.join(names)}" for what, names in
                 (("changed", self.changed), ("added", self.added),
                  ("removed", self.removed), ("unchanged", self.unchanged)) if names]
        return "outputs " + "; ".join(parts) if parts else "no outputs"


def same_output(old: OutputConfig, new: OutputConfig) -> bool:
    """Whether a running output can stay as it is under the new config: same type and
    plugin, same settings, same engine settings (mapping, customers and ``when`` are
    routing, applied without touching the output)."""
    return (old.type == new.type and old.cls is new.cls and old.settings == new.settings
            and old.engine == new.engine)


def plan(old: Config, new: Config) -> Plan:
    """Compare the outputs of ``old`` and ``new``."""
    result = Plan()
    for name, output in new.outputs.items():
        if name not in old.outputs:
            result.added.append(name)
        elif same_output(old.outputs[name], output):
            result.unchanged.append(name)
        else:
            result.changed.append(name)
    result.removed = [name for name in old.outputs if name not in new.outputs]
    return result


def restart_only_changes(old: Config, new: Config) -> list[str]:
    """The top-level settings that differ but take effect only at the next start."""
    return [key for key in RESTART_ONLY if getattr(old, key, None) != getattr(new, key, None)]


def problem_lines(exc: NwpipeError) -> list[str]:
    """One line per problem of a config error (which may list several)."""
    problems = getattr(exc, "problems", None)
    if problems:
        return [str(p) for p in problems]
    return [line for line in str(exc).splitlines() if line.strip()] or [str(exc)]


class Reloader:
    """Reloads the config of one running pipeline on request (the SIGHUP handler).

    ``load()`` reads and validates the config file as it is now and returns the config
    and its routes; it raises :class:`NwpipeError` for a config ``check`` would refuse.
    Requests are handled one at a time; one that comes while a reload runs is done
    right after it.
    """

    def __init__(self, load: Callable[[], tuple[Config, Router]]):
        self.load = load
        self.pipeline: Pipeline | None = None
        #: reloads applied / refused, for tests and the summary
        self.applied = 0
        self.refused = 0
        self._task: asyncio.Task | None = None
        self._again = False
        self._closed = False
        #: a SIGHUP that came before the event loop took the signal over
        self.early = False

    # -- the signal ------------------------------------------------------------------

    def before_start(self) -> None:
        """Catch SIGHUP until the pipeline's event loop handles it: a reload requested
        while nwpipe starts is done once it runs, instead of the signal ending it."""
        def note(_signum, _frame):
            self.early = True
        signal.signal(signal.SIGHUP, note)

    def install(self, pipeline: Pipeline, loop: asyncio.AbstractEventLoop) -> bool:
        """Handle SIGHUP on ``loop`` for ``pipeline``; False where signals cannot be
        handled (not the main thread, or Windows)."""
        self.pipeline = pipeline
        try:
            loop.add_signal_handler(signal.SIGHUP, self.request)
        except (NotImplementedError, RuntimeError, AttributeError):
            return False
        if self.early:
            self.early = False
            self.request()
        return True

    def uninstall(self, loop: asyncio.AbstractEventLoop) -> None:
        """The pipeline is finishing: a later SIGHUP is only logged, never fatal."""
        loop.remove_signal_handler(signal.SIGHUP)

        def ignored(_signum, _frame):
            log.warning("SIGHUP ignored: nwpipe is finishing")
        signal.signal(signal.SIGHUP, ignored)

    def request(self) -> None:
        """Reload now, or right after the reload under way."""
        if self._closed:
            log.warning("reload ignored: the input has ended and nwpipe is finishing")
            return
        if self._task is not None and not self._task.done():
            self._again = True
            return
        self._task = asyncio.ensure_future(self._loop())

    async def close(self) -> None:
        """No more reloads; waits for one under way."""
        self._closed = True
        if self._task is not None:
            await asyncio.gather(self._task, return_exceptions=True)

    async def _loop(self) -> None:
        while True:
            self._again = False
            try:
                await self.reload()
            except Exception as exc:  # never let a reload end the run
                self.refused += 1
                log.error("error: reload failed: %s: %s; the running config stays",
                          type(exc).__name__, exc)
            if not self._again or self._closed:
                return

    # -- the reload ------------------------------------------------------------------

    async def reload(self) -> bool:
        """Read, check and apply the config file; True when applied."""
        pipeline = self.pipeline
        assert pipeline is not None
        if pipeline.stopping:
            log.warning("reload ignored: nwpipe is stopping")
            return False
        try:
            config, router = self.load()
            where = config.file or "the built-in default config"
            changes = plan(pipeline.config, config)
            # validated like `check` does, started only where this process delivers
            outputs = {name: config.outputs[name].create()
                       for name in (*changes.changed, *changes.added)}
            check_tests(config, router)
            delivers = bool(pipeline.engines) or not pipeline.config.outputs
            if not delivers:  # intake only (--no-deliver): the outputs are not started
                outputs = {}
        except NwpipeError as exc:
            self.refused += 1
            for line in problem_lines(exc):
                log.error("error: %s", line)
            log.error("reload refused: the config has problems (above); the running config "
                      "stays")
            return False
        engines = await self._start(pipeline, config, outputs)
        if engines is None:
            self.refused += 1
            return False
        if pipeline.stopping or self._closed:
            for engine in engines.values():
                await engine.close()
            log.warning("reload not applied: nwpipe is finishing")
            return False
        if delivers:
            apply(pipeline, config, router, changes, engines)
        else:
            pipeline.router = router
        self.applied += 1
        for key in restart_only_changes(pipeline.config, config):
            log.warning("reload: '%s' changed; it takes effect at the next start", key)
        pipeline.config = config
        log.info("config reloaded from %s: %s", where, changes.describe() if delivers
                 else "this process starts no outputs (intake only)")
        return True

    async def _start(self, pipeline: Pipeline, config: Config,
                     outputs: dict) -> dict[str, DeliveryEngine] | None:
        """Open the new outputs; None (all closed again) when one cannot start."""
        engines: dict[str, DeliveryEngine] = {}
        for name, output in outputs.items():
            engine = DeliveryEngine(output, config.outputs[name].engine, pipeline.dead_letter,
                                    on_closed=pipeline._output_closed)
            try:
                await engine.start()
            except NwpipeError as exc:
                log.error("error: %s", exc)
                log.error("reload refused: an output of the new config cannot start; the "
                          "running config stays")
                for started in engines.values():
                    await started.close()
                return None
            engines[name] = engine
        return engines


def check_tests(config: Config, router: Router) -> None:
    """The ``[[tests]]`` tables must be valid, as ``nwpipe check`` requires."""
    from nwpipe.commands.mappingtests import check_tests as check

    check(config, router)


def apply(pipeline: Pipeline, config: Config, router: Router, changes: Plan,
          started: dict[str, DeliveryEngine]) -> None:
    """Swap ``pipeline`` over to ``config`` (no await: between two events).

    ``started`` holds the running engines of the changed and added outputs.
    """
    old = dict(pipeline.engines)
    settled = _settled_callback(pipeline)
    keep_queued = any(e.keep_queued for e in old.values())
    engines: dict[str, DeliveryEngine] = {}
    for name in config.outputs:
        engines[name] = old[name] if name in changes.unchanged else started[name]
        engines[name].on_settled = settled
        if keep_queued:  # delivering from the durable queue: a shutdown leaves it there
            engines[name].keep_queued = True
    # in place: whoever watches the pipeline's engines (metrics, progress) sees the new ones
    pipeline.engines.clear()
    pipeline.engines.update(engines)
    pipeline.router = router
    pipeline._by_name = {route.name: route for route in router.routes}
    pipeline._routes = [route for route in router.routes if route.name in engines]
    pipeline._first_output = next(iter(engines), None)
    for name in changes.changed:
        successor = engines[name]
        moved = old[name].hand_over(successor)  # the two engines share their counters
        successor.on_delivered = old[name].on_delivered  # its latency metric goes on
        successor.revoked = old[name].revoked  # a shared queue's check before each send
        successor.take(_map_again(pipeline, moved, pipeline._by_name[name], successor))
    _swap_feeds(pipeline, changes, engines)
    for name in changes.changed:
        pipeline.retire(old[name], engines[name])
    for name in changes.removed:
        pipeline.retire(old[name], None)
    for name, engine in engines.items():
        pipeline.result.outputs[name] = engine.stats


def _swap_feeds(pipeline: Pipeline, changes: Plan, engines: dict[str, DeliveryEngine]) -> None:
    """Queue mode: each output's feed reads the durable queue for the engine it now has.

    A changed output's feed goes on from where it was, for the new engine; an added
    output gets a feed (see :meth:`Dispatcher.add_feed`). A removed output's feed is
    stopped and dropped by :meth:`Pipeline.retire`, once its engine is done.
    """
    dispatcher = pipeline.dispatcher
    if dispatcher is None:
        return
    for name in changes.changed:
        dispatcher.feeds[name].engine = engines[name]
    for name in changes.added:
        dispatcher.add_feed(name, engines[name])


def _settled_callback(pipeline: Pipeline):
    """What the engines report settled deliveries to (the same for every engine)."""
    for engine in pipeline.engines.values():
        return engine.on_settled
    acks = pipeline._acks
    return acks.settled if acks.source is not None else None


def _map_again(pipeline: Pipeline, moved: list[Delivery], route,
               engine: DeliveryEngine) -> list[Delivery]:
    """Map the deliveries a changed output had waiting with its new mapping; one that
    no longer maps is dead-lettered (stage ``map``), like any event that does not."""
    again: list[Delivery] = []
    for old in moved:
        outcome = map_for(route, old.event, old.source, old.line, delivery_id=old.id,
                          attempts=old.attempts)
        if isinstance(outcome, MapFailed):
            pipeline._map_failed(outcome, old.event, old.source, old.line, old.id,
                                 old.attempts)
            if engine.on_settled is not None:
                engine.on_settled([old], True)
            continue
        outcome.ticket = old.ticket
        again.append(outcome)
    return again
