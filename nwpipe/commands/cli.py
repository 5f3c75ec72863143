"""The ``nwpipe`` command. Thin: parse arguments, call the library, map errors to exit codes."""

from __future__ import annotations

import argparse
import logging
import os
import re
import shutil
import sys
import textwrap
import time
from typing import Collection

from nwpipe import __version__
from nwpipe.errors import ConfigErrors, NwpipeError
from nwpipe.settings import did_you_mean

log = logging.getLogger("nwpipe")

EPILOG = """\
exit codes:
  0    every event was delivered to each of its outputs
  1    configuration or usage error; nothing was read
  3    finished, but some events were rejected or dead-lettered, or an input
       could not be read to the end
  5    --workers: a worker process died; the summary says what it may not have
       delivered
  130  interrupted by Ctrl-C (SIGINT), after the dead-letter file is complete
  143  terminated by SIGTERM, after the dead-letter file is complete

config: -c FILE, else $NWPIPE_CONFIG, else ./nwpipe.toml, else the built-in default
(every event unchanged to stdout as one JSON line).
"""


_INVALID_CHOICE = re.compile(r"argument (COMMAND|ACTION): invalid choice: '([^']*)'")

#: said once at the end of every command's help, instead of repeating the options
GLOBAL_NOTE = ("global options, before or after the command: -c FILE, -v, -q, "
               "--log-format {text,json}, --plugins-dir DIR (see `nwpipe --help`)")

SERVE_EPILOG = """\
exit codes:
  0    stopped by SIGTERM/SIGINT; every acknowledged event is delivered,
       dead-lettered, or still in the queue for the next start
  1    configuration or usage error, the address cannot be bound, or the queue
       cannot be opened

A 2xx answer means the events are committed to the durable queue.
"""


class _Parser(argparse.ArgumentParser):
    """Usage errors exit with 1, like every other error that reads nothing.

    The usage shown is the one of the command that was typed (``nwpipe run --bogus``
    shows ``nwpipe run``'s); an unknown command gets a "did you mean".
    """

    def error(self, message):
        m = _INVALID_CHOICE.match(message)
        if m:
            commands = list(_subparsers(self))
            what = m[1].lower()
            message = (f"unknown {what} '{m[2]}'{did_you_mean(m[2], commands)}; "
                       f"{what}s: {', '.join(commands)}")
        self.print_usage(sys.stderr)
        self.exit(1, f"nwpipe: error: {message}\n")


def _common(parser: argparse.ArgumentParser, suppress: bool) -> None:
    """The global options: on the top level described, on each command accepted quietly.

    A command's copies default to SUPPRESS, so that an option given before the command
    is not reset by the command's parser.
    """
    def described(text: str) -> str:
        return argparse.SUPPRESS if suppress else text

    if "--config" not in parser._option_string_actions:
        _add_config(parser, suppress, described)
    parser.add_argument("--plugins-dir", metavar="DIR", action="append",
                        default=argparse.SUPPRESS if suppress else [],
                        help=described("also load every *.py file in DIR as a plugin "
                                       "(repeatable)"))
    parser.add_argument("-v", "--verbose", action="store_true",
                        default=argparse.SUPPRESS if suppress else False,
                        help=described("log more: each retry with its reason"))
    parser.add_argument("-q", "--quiet", action="store_true",
                        default=argparse.SUPPRESS if suppress else False,
                        help=described("only warnings and errors: no summary line"))
    parser.add_argument("--log-format", choices=("text", "json"),
                        default=argparse.SUPPRESS if suppress else "text",
                        help=described("format of messages on stderr (default: text)"))


def _add_config(parser: argparse.ArgumentParser, suppress: bool, described) -> None:
    parser.add_argument("-c", "--config", metavar="FILE",
                        default=argparse.SUPPRESS if suppress else None,
                        help=described("TOML config (default: $NWPIPE_CONFIG, else "
                                       "./nwpipe.toml, else built-in: events unchanged "
                                       "to stdout)"))


def _queue_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--queue", metavar="PATH",
                        help="the queue file (default: the config's [queue] path, else "
                             "./nwpipe-queue.db)")


def _strict_routing_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--strict-routing", action="store_true", default=None,
                        help="an event that matches no output goes to the dead-letter file "
                             "(stage 'route') instead of being counted and skipped; also the "
                             "config's strict_routing = true")


def _config_option(parser: argparse.ArgumentParser) -> None:
    """``-c`` on a command's parser: the global option, accepted after the command too
    (what :func:`_common` adds; a parser given both gets it once)."""
    _add_config(parser, True, lambda text: argparse.SUPPRESS)


def _command(sub, name: str, *, help: str, description: str, example: str,
             epilog: str = "") -> argparse.ArgumentParser:
    """A command's parser: its help ends with an example and the global-options note."""
    text = f"example:\n  {example}\n\n{GLOBAL_NOTE}\n"
    if epilog:
        text += "\n" + epilog
    description = textwrap.fill(description, width=min(shutil.get_terminal_size().columns, 100) - 2)
    parser = sub.add_parser(name, help=help, description=description, epilog=text,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    _common(parser, suppress=True)
    return parser


def command_names() -> list[str]:
    """Every command, in the order ``nwpipe --help`` lists them."""
    return list(_subparsers(build_parser()))


def _workers_arg(value: str) -> int:
    from nwpipe.config import workers_value

    try:
        return workers_value(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _pid_file_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--pid-file", metavar="PATH",
                        help="write the process id to PATH while running (removed at exit), "
                             "for `nwpipe reload --pid-file PATH`; SIGHUP reloads the config")


def build_parser() -> argparse.ArgumentParser:
    """The whole command line: global options, then one sub-parser per command."""
    parser = _Parser(
        prog="nwpipe",
        description="Forward Netography Fusion alert events to webhooks and other outputs, "
                    "reshaped per customer with jsonpath and Jinja mappings.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("-V", "--version", action="version", version=f"nwpipe {__version__}")
    _common(parser, suppress=False)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    run = _command(
        sub, "run", help="read events and deliver them to the configured outputs",
        description="Read events from FILEs (or stdin) and deliver each one, mapped, to every "
                    "output whose filters match it. Input: JSON lines, pretty-printed JSON "
                    "objects one after another, or JSON arrays; .gz files are decompressed. "
                    "Events that cannot be read, mapped or delivered go to the dead-letter "
                    "file with the reason.",
        example="nwpipe run -c nwpipe.toml events.jsonl.gz", epilog=EPILOG)
    run.add_argument("files", nargs="*", metavar="FILE",
                     help="event files to read in order; '-' is stdin (default: stdin)")
    run.add_argument("--dead-letter", metavar="PATH",
                     help="dead-letter file (default: with a Redis queue its stream "
                          "PREFIX:dead, else the config's dead_letter, else "
                          "./nwpipe-dead-letter.jsonl)")
    run.add_argument("--shutdown-timeout", metavar="SECONDS", type=float,
                     help="on Ctrl-C/SIGTERM, seconds to finish in-flight deliveries "
                          "(default: the config's shutdown_timeout, else 10)")
    _strict_routing_option(run)
    run.add_argument("--metrics-listen", metavar="HOST:PORT",
                     help="serve /healthz, /readyz and /metrics (Prometheus) on this address "
                          "while the run lasts")
    _queue_option(run)
    run.add_argument("--durable", action="store_true",
                     help="commit every event read to the queue before delivering it: after a "
                          "crash (kill -9), the next run delivers what was committed (also: "
                          "[queue] durable = true)")
    run.add_argument("--resume", action="store_true",
                     help="skip what an earlier --durable run committed of each input file "
                          "(continue where reading had reached)")
    run.add_argument("--keep-queue", action="store_true",
                     help="when the input has ended and only failing outputs hold events, "
                          "leave them in the queue for the next run instead of waiting for "
                          "their retry budget (retry.max_elapsed)")
    run.add_argument("--no-deliver", action="store_true",
                     help="intake only: commit every event to the queue and deliver none "
                          "(`nwpipe work` processes deliver them)")
    run.add_argument("--workers", metavar="N", type=_workers_arg,
                     help="decode, map and deliver in N processes (\"auto\": one per CPU); "
                          "each alert's events stay in order in one process, and each "
                          "process has its own connections and batches (default: the "
                          "config's workers, else 1: one process)")
    _pid_file_option(run)
    run.set_defaults(func=cmd_run)

    work = _command(
        sub, "work", help="only deliver, from the queue that intake processes fill",
        description="Deliver events from the queue ([queue] in the config) to the outputs, "
                    "routed and mapped as `run` does, reading no input of its own. With a "
                    "Redis queue ([queue] url) any number of workers on any number of "
                    "machines share the shards, each shard delivered by one worker at a "
                    "time. Runs until SIGTERM/SIGINT: what it did not deliver stays in the "
                    "queue for the others; exit 0.",
        example="nwpipe work -c nwpipe.toml   (with [queue] url = \"redis://...\")",
        epilog=EPILOG)
    work.add_argument("--dead-letter", metavar="PATH",
                      help="dead-letter file (default: with a Redis queue its stream "
                           "PREFIX:dead, else the config's dead_letter)")
    work.add_argument("--shutdown-timeout", metavar="SECONDS", type=float,
                      help="on SIGTERM/SIGINT, seconds to finish in-flight deliveries "
                           "(default: the config's shutdown_timeout, else 10)")
    work.add_argument("--metrics-listen", metavar="HOST:PORT",
                      help="serve /healthz, /readyz and /metrics (Prometheus, with per-shard "
                           "queue depth, lag and ownership) on this address")
    _queue_option(work)
    _strict_routing_option(work)
    _pid_file_option(work)
    work.set_defaults(func=cmd_work)

    reload = _command(
        sub, "reload", help="make a running nwpipe re-read its config",
        description="Send SIGHUP to the nwpipe process named in PATH (started with "
                    "--pid-file PATH): it re-reads its config file. A config that fails "
                    "`nwpipe check` is refused (its errors are in that process's log) and "
                    "the running one stays; a valid one replaces mappings and outputs "
                    "without losing or repeating an event. Exit 1 when the PID file is "
                    "missing or names no running nwpipe.",
        example="nwpipe reload --pid-file /run/nwpipe/nwpipe.pid")
    reload.add_argument("--pid-file", metavar="PATH", required=True,
                        help="the PID file the running nwpipe was started with")
    reload.set_defaults(func=cmd_reload)

    serve = _command(
        sub, "serve", help="receive events over HTTP (Netography's webhook) and deliver them",
        description="Listen for POSTed events (one JSON event as Netography sends it, a JSON "
                    "array of events, or JSON lines), commit them to the durable queue, "
                    "answer 2xx only then, and deliver them from the queue to every output "
                    "whose filters match. Settings: the [serve] and [queue] tables. "
                    "GET /healthz, /readyz and /metrics need no credentials. SIGTERM/SIGINT: "
                    "new posts get 503, deliveries in flight get shutdown_timeout seconds, "
                    "the rest stays queued for the next start; exit 0.",
        example="nwpipe serve -c nwpipe.toml --listen 0.0.0.0:8443", epilog=SERVE_EPILOG)
    serve.add_argument("--listen", metavar="HOST:PORT",
                       help="address to listen on (default: [serve] listen, else 127.0.0.1:8080)")
    serve.add_argument("--metrics-listen", metavar="HOST:PORT",
                       help="serve /healthz, /readyz and /metrics on this address instead")
    _queue_option(serve)
    serve.add_argument("--dead-letter", metavar="PATH",
                       help="dead-letter file (default: the config's dead_letter, else "
                            "./nwpipe-dead-letter.jsonl)")
    serve.add_argument("--shutdown-timeout", metavar="SECONDS", type=float,
                       help="on SIGTERM/SIGINT, seconds to finish in-flight deliveries "
                            "(default: the config's shutdown_timeout, else 10)")
    _strict_routing_option(serve)
    serve.add_argument("--no-deliver", action="store_true",
                       help="only receive and queue events; another process delivers them")
    _pid_file_option(serve)
    serve.set_defaults(func=cmd_serve)

    replay = _command(
        sub, "replay", help="send the deliveries in a dead-letter file again",
        description="Send the records of DEAD_LETTER again through the config: failed "
                    "deliveries are mapped again from the original event and sent to their "
                    "output; failed mappings are mapped again; input that did not parse is "
                    "decoded again. Delivery ids stay the same, so receivers can "
                    "deduplicate. What is delivered leaves the file, what fails again stays "
                    "(with the new reason); the file is replaced atomically, so a record is "
                    "never lost, also on Ctrl-C. DEAD_LETTER may be a Redis URL "
                    "(redis://host:6379/0): the records that workers sharing a Redis queue "
                    "wrote to the stream PREFIX:dead (--queue: the config's [queue] url).",
        example="nwpipe replay -c nwpipe.toml nwpipe-dead-letter.jsonl --output soc",
        epilog=EPILOG)
    replay.add_argument("dead_letter", metavar="DEAD_LETTER", nargs="?",
                        help="the dead-letter file, or a Redis URL")
    replay.add_argument("--queue", action="store_true",
                        help="the dead letters of the config's Redis queue ([queue] url)")
    replay.add_argument("--output", metavar="NAME",
                        help="only the records of this output (the others stay unchanged)")
    replay.add_argument("--shutdown-timeout", metavar="SECONDS", type=float,
                        help="on Ctrl-C/SIGTERM, seconds to finish in-flight deliveries "
                             "(default: the config's shutdown_timeout, else 10)")
    replay.set_defaults(func=cmd_replay)

    check = _command(
        sub, "check", help="validate the config without reading any event",
        description="Load and validate the config: every key, type, output type, mapping, "
                    "jsonpath and template. Prints one line per output; exit 0 when valid. "
                    "When not, every problem found is printed on stderr, one line each "
                    "naming the file, key and problem, and the exit code is 1. Template "
                    "variables that are neither vars, Jinja names nor fields of "
                    "Netography's event are warnings.",
        example="nwpipe check -c nwpipe.toml --probe")
    check.add_argument("--probe", action="store_true",
                       help="also send one test event to each webhook and syslog output and "
                            "report reachability, TLS and authentication problems; exit 1 if "
                            "any fails")
    check.set_defaults(func=cmd_check)

    init = _command(
        sub, "init", help="write a commented starter nwpipe.toml",
        description="Write a commented starter config: a webhook output with the Netography "
                    "portal's fields and a mapping showing each kind of field. It passes "
                    "`nwpipe check` as written. An existing file is kept unless --force.",
        example="nwpipe init deploy/   (writes deploy/nwpipe.toml)")
    init.add_argument("path", nargs="?", default="nwpipe.toml", metavar="PATH",
                      help="file to write, or a folder (an existing one, or a new one written "
                           "with a trailing /) to write nwpipe.toml in (default: "
                           "./nwpipe.toml)")
    init.add_argument("--force", action="store_true", help="overwrite an existing file")
    init.add_argument("--serve", action="store_true",
                      help="also a [serve] section: receive Netography's webhook with "
                           "`nwpipe serve` (and a [queue] with sync = \"full\")")
    init.set_defaults(func=cmd_init)

    plugins = _command(
        sub, "plugins", help="list loaded plugins and the output and source types they register",
        description="List every loaded plugin (built-in, installed through the 'nwpipe' "
                    "entry-point group, or from --plugins-dir), where it came from, the hooks "
                    "it implements and the output and source types it registers.",
        example="nwpipe plugins --plugins-dir ./my-plugins --json")
    plugins.add_argument("--json", action="store_true", help="print JSON instead of text")
    plugins.set_defaults(func=cmd_plugins)
    _add_render_and_test(sub)
    _add_queue(sub)
    return parser


# -- queue: the durable queue's backlog ---------------------------------------------


def _add_queue(sub) -> None:
    queue = _command(
        sub, "queue", help="show or act on the durable queue's backlog (status, drain, recover)",
        description="The durable queue holds what outputs could not take yet (an outage "
                    "waits there) and, with --durable, every event read. See docs/queue.md, "
                    "'Durability: the queue'.",
        example="nwpipe queue status -c nwpipe.toml")
    actions = queue.add_subparsers(dest="action", metavar="ACTION", parser_class=_Parser)

    def show_help(args) -> int:
        queue.print_help()
        return 1

    queue.set_defaults(func=show_help)

    status = _command(
        actions, "status", help="events waiting per output, their bytes and age, failing outputs",
        description="Per output: the events waiting in the queue, their bytes, the oldest "
                    "one's age and since when the output is failing; per input file, how far "
                    "a durable run committed it. Works while a run delivers from the queue.",
        example="nwpipe queue status -c nwpipe.toml --json")
    _queue_option(status)
    status.add_argument("--json", action="store_true", help="print JSON, for scripts")
    status.set_defaults(func=cmd_queue_status)

    drain = _command(
        actions, "drain",
        help="deliver one output's backlog now, or move it to the dead-letter file",
        description="Deliver what waits in the queue for one output now (its retry budget "
                    "applies), or with --dead-letter move it to the dead-letter file without "
                    "sending it (replay it later with `nwpipe replay`). Other outputs' "
                    "backlogs stay as they are. Exit 0 when everything was delivered, 3 when "
                    "something was dead-lettered.",
        example="nwpipe queue drain -c nwpipe.toml --output soc --dead-letter", epilog=EPILOG)
    _queue_option(drain)
    drain.add_argument("--output", metavar="NAME", required=True, help="the output to drain")
    drain.add_argument("--dead-letter", action="store_true",
                       help="move the backlog to the dead-letter file instead of sending it")
    drain.add_argument("--dead-letter-file", metavar="PATH", dest="dead_letter_path",
                       help="dead-letter file (default: the config's dead_letter, else "
                            "./nwpipe-dead-letter.jsonl)")
    drain.add_argument("--shutdown-timeout", metavar="SECONDS", type=float,
                       help="on Ctrl-C/SIGTERM, seconds to finish in-flight deliveries")
    drain.set_defaults(func=cmd_queue_drain)

    recover = _command(
        actions, "recover", help="rebuild a damaged queue file from the entries that can be read",
        description="When `nwpipe run` reports the queue file damaged: copy every entry, "
                    "mark and note that can still be read into a new file at the same path "
                    "and keep the damaged file beside it (PATH.damaged-TIME). Exit 0 when "
                    "nothing was unreadable, 3 when some entries were lost.",
        example="nwpipe queue recover -c nwpipe.toml")
    _queue_option(recover)
    recover.set_defaults(func=cmd_queue_recover)


def cmd_queue_status(args) -> int:
    """Show the queue's backlog."""
    from nwpipe.commands.queuecmd import status_command

    # only reads the queue: no output's secrets are needed
    _, config, _router = load(args, deliver_to=())
    return status_command(config, args.queue, args.json)


def cmd_queue_drain(args) -> int:
    """Deliver or dead-letter one output's backlog."""
    from nwpipe.commands.progress import wanted
    from nwpipe.commands.queuecmd import drain_command

    _, config, router = load(args, deliver_to=(args.output,))
    result = drain_command(config, router, args.output, path=args.queue,
                           dead_letter=args.dead_letter, dead_letter_path=args.dead_letter_path,
                           shutdown_timeout=args.shutdown_timeout,
                           progress=wanted(args.quiet, args.log_format))
    log.info("%s", result.summary())
    return result.exit_code


def cmd_queue_recover(args) -> int:
    """Rebuild a damaged queue file."""
    from nwpipe.commands.queuecmd import recover_command

    _, config, _router = load(args, deliver_to=())
    return recover_command(config, args.queue)


# -- render and test: develop and check mappings -----------------------------------


def _add_render_and_test(sub) -> None:
    render = _command(
        sub, "render", help="show the body each output would receive for each event; send nothing",
        description="Read events from FILEs (or stdin) and print, per event and output, the "
                    "exact body that output would receive: the same routing (customers, when) "
                    "and the mapping chosen for the event's customer. Nothing is sent and "
                    "nothing is dead-lettered. An event that fails prints its error in place "
                    "and the others go on; exit 3 if any failed, 0 if none.",
        example="nwpipe render -c nwpipe.toml examples/events.jsonl --output soc")
    render.add_argument("files", nargs="*", metavar="FILE",
                        help="event files to read in order; '-' is stdin (default: stdin)")
    render.add_argument("--output", metavar="NAME", help="only this output")
    render.add_argument("--customer", metavar="NAME",
                        help="treat every event as this customer's (preview its mapping)")
    render.add_argument("--json", action="store_true",
                        help="one JSON object per line: {source, line, output, mapping, body} "
                             "or {..., error}")
    render.set_defaults(func=cmd_render)

    test = _command(
        sub, "test", help="run the mapping tests ([[tests]]) of the config",
        description="Run every [[tests]] table of the config: map its event with its output "
                    "or mapping and compare the body with 'expect' (the whole body) or "
                    "'expect_subset' (only the keys given). Prints one line per test and a "
                    "diff for each failure; exit 1 if any failed (or none is defined), 0 if "
                    "all passed.",
        example="nwpipe test -c nwpipe.toml")
    test.set_defaults(func=cmd_test)


def cmd_render(args) -> int:
    """Print what each output would receive."""
    from nwpipe.commands.render import render_command
    from nwpipe.sources.decode import check_inputs

    _, config, router = load(args)
    check_inputs(args.files)
    return render_command(config, router, args.files or ["-"], output=args.output,
                          customer=args.customer, as_json=args.json)


def cmd_test(args) -> int:
    """Run the config's mapping tests."""
    from nwpipe.commands.mappingtests import run_tests

    _, config, router = load(args)
    return run_tests(config, router)


# -- logging ----------------------------------------------------------------------


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        import json  # imported by the run anyway; --version and the like skip it

        return json.dumps({
            "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(record.created)),
            "level": record.levelname.lower(),
            "message": record.getMessage(),
        })


def setup_logging(verbose: bool, quiet: bool, log_format: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if log_format == "json":
        handler.setFormatter(_JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("nwpipe: %(message)s"))
    log.handlers[:] = [handler]
    log.propagate = False
    log.setLevel(logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO)


# -- commands ---------------------------------------------------------------------


def load(args, *, lean: bool = False, deliver_to: Collection[str] | None = None):
    """Plugins, the validated config and its compiled routes, from the command line.

    ``lean``: load only the built-in plugins whose types the config names (a faster
    start for `run`; commands that list or probe plugins load them all).
    ``deliver_to``: the only outputs the command delivers to, so the only ones whose
    ``${VAR}`` secrets must be set (see :func:`nwpipe.config.build_config`)."""
    from nwpipe.config import build_config, default_config, find_config_file, read_toml
    from nwpipe.plugins import Plugins, types_named
    from nwpipe.transform.routing import Router
    from nwpipe.transform.template_vars import check_required_vars

    path = find_config_file(getattr(args, "config", None))
    data = read_toml(path) if path else default_config()
    plugins = Plugins(args.plugins_dir, only_types=types_named(data) if lean else None)
    config = build_config(data, plugins.output_types, file=path,
                          source_types=plugins.source_types, deliver_to=deliver_to)
    router = Router(config, plugins.jinja_filters)
    check_required_vars(config, router)
    return plugins, config, router


def cmd_run(args) -> int:
    """Read events and deliver them."""
    from nwpipe.commands.pidfile import pid_file
    from nwpipe.commands.progress import wanted
    from nwpipe.engine.pipeline import run
    from nwpipe.sources.decode import check_inputs
    from nwpipe.sources.serve_settings import check_listen

    _, config, router = load(args, lean=True)
    source = config.source
    if source.cls is not None and not source.cls.takes_inputs and args.files:
        raise NwpipeError(f"source type '{source.type}' reads no files: remove the file "
                          f"arguments, or remove the [source] table to read files")
    check_inputs(args.files)
    if args.metrics_listen is not None:
        check_listen("--metrics-listen", args.metrics_listen)
    if (source.cls is None or source.cls.takes_inputs) and "-" in (args.files or ["-"]) \
            and sys.stdin.isatty():
        log.warning("reading events from the terminal (end with Ctrl-D)")
    workers = config.workers if args.workers is None else args.workers
    if workers > 1:
        return run_with_workers(args, config, router, workers)
    reloader = make_reloader(args)
    with pid_file(args.pid_file):
        result = run(config, router, args.files, dead_letter_path=args.dead_letter,
                     shutdown_timeout=args.shutdown_timeout,
                     progress=wanted(args.quiet, args.log_format), queue_path=args.queue,
                     durable=args.durable, keep_queue=args.keep_queue, resume=args.resume,
                     deliver=not args.no_deliver, metrics_listen=args.metrics_listen,
                     strict_routing=args.strict_routing, reloader=reloader)
    log.info("%s", result.summary())
    return result.exit_code


def run_with_workers(args, config, router, workers: int) -> int:
    """``nwpipe run`` in ``workers`` processes (:mod:`nwpipe.engine.workers`)."""
    from nwpipe.commands.pidfile import pid_file
    from nwpipe.engine.workers import refusal, run_workers

    why = refusal(durable=args.durable, resume=args.resume, keep_queue=args.keep_queue,
                  deliver=not args.no_deliver, metrics_listen=args.metrics_listen,
                  queue_path=args.queue, config=config, workers=workers)
    if why is not None:
        raise NwpipeError(why)
    with pid_file(args.pid_file):
        result = run_workers(config, router, args.files, workers,
                             dead_letter_path=args.dead_letter,
                             shutdown_timeout=args.shutdown_timeout,
                             strict_routing=args.strict_routing)
    log.info("%s", result.summary())
    return result.exit_code


def make_reloader(args):
    """What reloads the config on SIGHUP: the same file, plugins and checks as at start
    (plugins loaded for the types the new config names)."""
    from nwpipe.engine.reload import Reloader

    reloader = Reloader(lambda: load(args, lean=True)[1:])
    reloader.before_start()
    return reloader


def cmd_reload(args) -> int:
    """Signal a running nwpipe to reload its config."""
    from nwpipe.commands.pidfile import signal_reload

    pid = signal_reload(args.pid_file)
    log.info("sent SIGHUP to nwpipe (process %d): it reloads its config; its log says "
             "whether the new one was taken", pid)
    return 0


def cmd_work(args) -> int:
    """Deliver from the queue until a signal."""
    from nwpipe.commands.pidfile import pid_file
    from nwpipe.commands.progress import wanted
    from nwpipe.commands.work import summary, work
    from nwpipe.sources.serve_settings import check_listen

    _, config, router = load(args)
    if args.strict_routing:
        config.strict_routing = True
    if args.metrics_listen is not None:
        check_listen("--metrics-listen", args.metrics_listen)
    reloader = make_reloader(args)
    with pid_file(args.pid_file):
        result = work(config, router, dead_letter_path=args.dead_letter,
                      shutdown_timeout=args.shutdown_timeout,
                      progress=wanted(args.quiet, args.log_format), queue_path=args.queue,
                      reloader=reloader, metrics_listen=args.metrics_listen)
    log.info("%s", summary(result))
    return 0  # SIGTERM/SIGINT is how a worker ends; what it left stays queued


def cmd_serve(args) -> int:
    """Receive events over HTTP and deliver them."""
    import dataclasses

    from nwpipe.commands.pidfile import pid_file
    from nwpipe.commands.serve import serve

    _, config, router = load(args)
    if args.strict_routing:
        config.strict_routing = True
    queue_settings = config.queue
    if args.queue:
        queue_settings = dataclasses.replace(queue_settings, path=args.queue)
    reloader = make_reloader(args)
    with pid_file(args.pid_file):
        return serve(config, router, queue_settings, listen=args.listen,
                     metrics_listen=args.metrics_listen, dead_letter_path=args.dead_letter,
                     shutdown_timeout=args.shutdown_timeout, deliver=not args.no_deliver,
                     reloader=reloader)


def cmd_replay(args) -> int:
    """Send the deliveries of a dead-letter file again."""
    from nwpipe.commands.progress import wanted
    from nwpipe.commands.replay import replay

    _, config, router = load(args)
    result = replay(config, router, _replay_source(args, config), output=args.output,
                    shutdown_timeout=args.shutdown_timeout,
                    progress=wanted(args.quiet, args.log_format))
    log.info("%s", result.summary())
    return result.exit_code


def _replay_source(args, config) -> str:
    """The dead-letter file or Redis URL that ``nwpipe replay`` works on."""
    if args.queue:
        if args.dead_letter:
            raise NwpipeError("replay: give either DEAD_LETTER or --queue, not both")
        url = getattr(getattr(config, "queue", None), "url", None)
        if not url:
            raise NwpipeError("replay --queue: the config has no [queue] url; dead letters "
                              "go to a Redis stream only with a Redis queue (otherwise: "
                              "nwpipe replay DEAD_LETTER_FILE)")
        return url
    if not args.dead_letter:
        raise NwpipeError("replay: which dead letters? give a dead-letter file, a Redis URL, "
                          "or --queue")
    return args.dead_letter


def cmd_check(args) -> int:
    """Validate the config and describe it."""
    from nwpipe.commands.mappingtests import check_tests
    from nwpipe.transform.template_vars import unknown_variables

    _, config, router = load(args)
    outputs = {name: oc.create() for name, oc in config.outputs.items()}
    tests = check_tests(config, router)
    for unknown in unknown_variables(config, router):
        log.warning("warning: %s", unknown.line(config.file))
    where = config.file or "built-in default config"
    print(f"{where}: OK, {len(outputs)} output{'s' if len(outputs) != 1 else ''}, "
          f"{len(config.mappings)} mapping{'s' if len(config.mappings) != 1 else ''}, "
          f"{tests} test{'s' if tests != 1 else ''}")
    for route in router.routes:
        oc = route.output
        parts = [f"type {oc.type}", outputs[oc.name].describe()]
        if isinstance(oc.mapping, str):
            parts.append(f"mapping {oc.mapping}")
        elif oc.mapping:
            # per customer: "mapping acme -> siem-acme, default -> siem"
            pairs = sorted(oc.mapping.items(), key=lambda kv: (kv[0] == "default", kv[0]))
            parts.append("mapping " + ", ".join(f"{c} -> {m}" for c, m in pairs))
        if oc.customers:
            parts.append(f"customers {', '.join(sorted(oc.customers))}")
        if oc.when:
            parts.append(f"when {oc.when!r}")
        print(f"  {oc.name}: " + "; ".join(parts))
    if config.serve.configured:
        print(f"  [serve]: {config.serve.describe()}")
    if getattr(args, "probe", False):
        return probe(config, router)
    return 0


def probe(config, router) -> int:
    """``check --probe``: one test event per receiving output, one line each."""
    from nwpipe.commands.probe import run_probes

    print("probe: one test event (alerttype 'end', algorithm 'nwpipe_probe') per output:")
    results = run_probes(config, router)
    for result in results:
        print(f"  {result.line()}")
    ok = all(r.ok for r in results)
    if config.queue.url:
        import asyncio

        from nwpipe.queue.redis import probe as probe_redis

        queue_ok, message = asyncio.run(probe_redis(config.queue))
        print(f"  queue: {message}")
        ok = ok and queue_ok
    return 0 if ok else 1


def cmd_init(args) -> int:
    """Write a starter config."""
    from nwpipe.commands.init import write_starter_config

    path = write_starter_config(args.path, force=args.force, serve=args.serve)
    print(f"wrote {path}")
    print(f"next: set SOC_URL (or edit the url), then `nwpipe check --probe -c {path}`")
    if args.serve:
        print(f"then: set SERVE_PASSWORD, `nwpipe serve -c {path}`, and point the portal's "
              "webhook at it")
    return 0


def cmd_plugins(args) -> int:
    """List loaded plugins."""
    from nwpipe.plugins import Plugins

    plugins = Plugins(args.plugins_dir)
    infos = plugins.info()
    if args.json:
        import json

        print(json.dumps([vars(i) for i in infos], indent=2))
        return 0
    for info in infos:
        print(f"{info.name}  ({info.origin})")
        if info.output_types:
            print(f"    output types: {', '.join(info.output_types)}")
        if info.source_types:
            print(f"    source types: {', '.join(info.source_types)}")
        if info.jinja_filters:
            print(f"    Jinja filters: {', '.join(info.jinja_filters)}")
        print(f"    hooks: {', '.join(info.hooks) or 'none'}")
    return 0


class _TolerantStdout:
    """stdout for report commands: when the reader goes away (``nwpipe test | head -1``),
    the rest of the report is dropped quietly and the command still ends with its own
    exit code, instead of a BrokenPipeError traceback."""

    def __init__(self, stream):
        self._stream = stream
        self._closed = False

    def write(self, text: str) -> int:
        if not self._closed:
            try:
                return self._stream.write(text)
            except BrokenPipeError:
                self._gone()
        return len(text)

    def flush(self) -> None:
        if not self._closed:
            try:
                self._stream.flush()
            except BrokenPipeError:
                self._gone()

    def _gone(self) -> None:
        self._closed = True
        silence_stdout()

    def __getattr__(self, name):
        return getattr(self._stream, name)


def silence_stdout() -> None:
    """Point file descriptor 1 at /dev/null, so that Python's flush at exit cannot print
    a second BrokenPipeError once the reader has gone."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):
        pass


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _typed(parser: argparse.ArgumentParser, args) -> argparse.ArgumentParser:
    """The parser of the (sub-)command the user typed (``nwpipe queue status``'s)."""
    while True:
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                chosen = action.choices.get(getattr(args, action.dest, None) or "")
                if chosen is not None:
                    parser = chosen
                    break
        else:
            return parser


#: commands that write events to stdout themselves and handle a closed pipe there
_STREAMING = {"run", "render"}


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``nwpipe`` command; returns the exit code."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:
        # the usage shown is the one of the command typed, not the top level's
        _typed(parser, args).error(f"unrecognized arguments: {' '.join(extra)}")
    setup_logging(args.verbose, args.quiet, args.log_format)
    if args.command is None:
        # no command is a usage error: the help goes where errors go
        parser.print_help(sys.stderr)
        return 1
    if args.command not in _STREAMING:
        sys.stdout = _TolerantStdout(sys.stdout)
    try:
        return args.func(args)
    except ConfigErrors as exc:
        for problem in exc.problems:
            log.error("error: %s", problem)
        log.error("%d problems in the config", len(exc.problems))
        return 1
    except NwpipeError as exc:
        log.error("error: %s", exc)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        silence_stdout()
        return 0
