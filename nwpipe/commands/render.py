"""``nwpipe render``: the exact body each output would receive, without sending anything.

This is how a mapping is developed: edit the config, render a few sample events, look.
Every event goes through the same steps as in ``nwpipe run`` (the same decoder, the same
checks, the output's ``customers`` and ``when``, the mapping chosen for the event's
customer), so what is shown is what the output would be handed. Nothing is opened,
sent or dead-lettered.

Two formats:

- for people, per event and output a header line and the body as indented JSON::

      # examples/events.jsonl:1 -> archive (mapping siem)
      {
        "src_ip": "1.2.3.4",
        ...
      }

  followed by lines for what does not produce a body (``ERROR: ...``, ``not sent``);
- with ``--json``, one JSON object per line and body:
  ``{"source", "line", "output", "mapping", "body"}``, or ``"error"`` in place of
  ``"body"``. Events that no output takes produce no line in this format.
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass
from typing import Any, Iterator, TextIO

import orjson

from nwpipe import jsonio
from nwpipe.config import Config
from nwpipe.engine.pipeline import EXIT_DEAD_LETTERED, EXIT_OK
from nwpipe.errors import ConfigError
from nwpipe.numbers import plural
from nwpipe.outputs import Delivery
from nwpipe.settings import did_you_mean
from nwpipe.sources.decode import Event, Reject, read_events
from nwpipe.transform.route_map import MapFailed, route_and_map
from nwpipe.transform.routing import Route, Router

__all__ = ["Rendered", "NotSent", "select_routes", "render_record", "render_event",
           "render_command"]

log = logging.getLogger("nwpipe")


@dataclass
class Rendered:
    """The body one output would receive for one event, or why the event fails there.

    ``output`` is None for an event that fails before any output is chosen (it does
    not parse, it has no ``id``). ``mapping`` is None when the output sends the event
    unchanged. ``body`` is the mapped body and ``body_json`` the very bytes the output is
    handed (``--json`` writes those). ``error`` is the reason ``nwpipe run`` would write
    to the dead-letter file.
    """

    source: str
    line: int
    output: str | None
    mapping: str | None
    body: Any = None
    error: str | None = None
    body_json: bytes | None = None

    def as_dict(self) -> dict[str, Any]:
        """The record written by ``--json``."""
        record: dict[str, Any] = {"source": self.source, "line": self.line,
                                  "output": self.output, "mapping": self.mapping}
        if self.error is None:
            record["body"] = (self.body if self.body_json is None
                              else orjson.Fragment(self.body_json))
        else:
            record["error"] = self.error
        return record


@dataclass
class NotSent:
    """An event that an output (or every output) does not take, and why."""

    source: str
    line: int
    output: str | None
    reason: str


def select_routes(router: Router, output: str | None, *, file: str | None = None) -> list[Route]:
    """Every route, or only the one of output ``output`` (a ConfigError if unknown)."""
    if output is None:
        return list(router.routes)
    for route in router.routes:
        if route.name == output:
            return [route]
    names = [route.name for route in router.routes]
    raise ConfigError(f"no output named '{output}'{did_you_mean(output, names)} "
                      f"(outputs: {', '.join(names) or 'none'})", file=file)


def render_record(record: Event | Reject, routes: list[Route], *,
                  customer: str | None = None) -> Iterator[Rendered | NotSent]:
    """Route and map one decoded record as ``nwpipe run`` would, yielding the results.

    ``customer`` replaces the event's ``customer`` field first (to preview another
    customer's routing and mapping).
    """
    if isinstance(record, Reject):
        yield Rendered(record.source, record.line, None, None, error=record.reason)
        return
    yield from render_event(record.data, routes, record.source, record.line, customer=customer)


def render_event(event: dict, routes: list[Route], source: str = "<event>", line: int = 0,
                 *, customer: str | None = None) -> Iterator[Rendered | NotSent]:
    """The results for one event: one per output that takes it, or why none does."""
    if customer is not None:
        event = {**event, "customer": customer}
    by_name = {route.name: route for route in routes}
    who = event.get("customer")
    for outcome in route_and_map(event, routes, source, line):
        if isinstance(outcome, Delivery):
            yield Rendered(source, line, outcome.output,
                           by_name[outcome.output].mapping_name(who), body=outcome.body,
                           body_json=outcome.body_json())
        elif isinstance(outcome, MapFailed):
            yield Rendered(source, line, outcome.output, outcome.mapping, error=outcome.reason)
        else:
            yield NotSent(source, line, outcome.output, outcome.reason)


# -- writing ----------------------------------------------------------------------------

def write_human(item: Rendered | NotSent, stream: TextIO) -> None:
    """One result for people: a ``#`` header line, then the indented body."""
    where = f"{item.source}:{item.line}"
    if isinstance(item, NotSent):
        to = f" -> {item.output}" if item.output else ""
        stream.write(f"# {where}{to}: not sent: {item.reason}\n")
        return
    head = f"# {where}"
    if item.output is not None:
        shape = f"mapping {item.mapping}" if item.mapping else "no mapping: event unchanged"
        head += f" -> {item.output} ({shape})"
    if item.error is not None:
        stream.write(f"{head}: ERROR: {item.error}\n")
    else:
        text = jsonio.dumps(item.body, option=orjson.OPT_INDENT_2).decode()
        stream.write(f"{head}\n{text}\n")


def write_json(item: Rendered | NotSent, stream: TextIO) -> None:
    """One result as a JSON line (events no output takes are left out)."""
    if isinstance(item, NotSent):
        return
    stream.write(orjson.dumps(item.as_dict()).decode() + "\n")


def render_command(config: Config, router: Router, paths: list[str], *,
                   output: str | None = None, customer: str | None = None,
                   as_json: bool = False, stream: TextIO | None = None) -> int:
    """Render the events of ``paths`` (``-`` is stdin) and print them; the exit code.

    0 when every event rendered, 3 when some failed (each failure is printed in its
    place and the others go on). An unknown ``output`` is a ConfigError.
    """
    stream = stream if stream is not None else sys.stdout
    routes = select_routes(router, output, file=config.file)
    write = write_json if as_json else write_human
    events = bodies = errors = 0
    if "-" in paths and sys.stdin.isatty():
        log.warning("reading events from the terminal (end with Ctrl-D)")
    try:
        for path in paths:
            for record in read_events(path, max_line_bytes=config.max_line_bytes):
                events += 1
                for item in render_record(record, routes, customer=customer):
                    write(item, stream)
                    if isinstance(item, Rendered):
                        if item.error is None:
                            bodies += 1
                        else:
                            errors += 1
        stream.flush()
    except BrokenPipeError:
        # The reader went away (`nwpipe render ... | head`): stop quietly, like a filter.
        from nwpipe.commands.cli import silence_stdout

        silence_stdout()
        return EXIT_DEAD_LETTERED if errors else EXIT_OK
    log.info("rendered %s: %s, %s", plural(events, "event"), plural(bodies, "body", "bodies"),
             plural(errors, "error"))
    return EXIT_DEAD_LETTERED if errors else EXIT_OK
