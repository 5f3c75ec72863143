"""The ``nwpipe`` command. Thin: parse arguments, call the library, map errors to exit codes."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time

from nwpipe import __version__
from nwpipe.errors import NwpipeError

log = logging.getLogger("nwpipe")

EPILOG = """\
exit codes:
  0    every event was delivered to each of its outputs
  1    configuration or usage error; nothing was read
  3    finished, but some events were rejected or dead-lettered, or an input
       could not be read to the end
  130  interrupted by Ctrl-C (SIGINT), after the dead-letter file is complete
  143  terminated by SIGTERM, after the dead-letter file is complete

config: -c FILE, else $NWPIPE_CONFIG, else ./nwpipe.toml, else the built-in default
(every event unchanged to stdout as one JSON line).
"""


SERVE_EPILOG = """\
exit codes:
  0    stopped by SIGTERM/SIGINT; every acknowledged event is delivered,
       dead-lettered, or still in the queue for the next start
  1    configuration or usage error, the address cannot be bound, or the queue
       cannot be opened

A 2xx answer means the events are committed to the durable queue.
"""


class _Parser(argparse.ArgumentParser):
    """Usage errors exit with 1, like every other error that reads nothing."""

    def error(self, message):
        self.print_usage(sys.stderr)
        self.exit(1, f"nwpipe: error: {message}\n")


def _common(parser: argparse.ArgumentParser, suppress: bool) -> None:
    parser.add_argument("--plugins-dir", metavar="DIR", action="append",
                        default=argparse.SUPPRESS if suppress else [],
                        help="also load every *.py file in DIR as a plugin (repeatable)")
    parser.add_argument("-v", "--verbose", action="store_true",
                        default=argparse.SUPPRESS if suppress else False,
                        help="log more: each retry with its reason")
    parser.add_argument("-q", "--quiet", action="store_true",
                        default=argparse.SUPPRESS if suppress else False,
                        help="only warnings and errors: no summary line")
    parser.add_argument("--log-format", choices=("text", "json"),
                        default=argparse.SUPPRESS if suppress else "text",
                        help="format of messages on stderr (default: text)")


def _queue_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--queue", metavar="PATH",
                        help="the queue file (default: the config's [queue] path, else "
                             "./nwpipe-queue.db)")


def _config_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-c", "--config", metavar="FILE",
                        help="TOML config (default: $NWPIPE_CONFIG, else ./nwpipe.toml, "
                             "else built-in: events unchanged to stdout)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="nwpipe",
        description="Forward Netography Fusion alert events to webhooks and other outputs, "
                    "reshaped per customer with jsonpath and Jinja mappings.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"nwpipe {__version__}")
    _common(parser, suppress=False)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    run = sub.add_parser(
        "run", help="read events and deliver them to the configured outputs",
        description="Read events from FILEs (or stdin) and deliver each one, mapped, to every "
                    "output whose filters match it. Input: JSON lines, pretty-printed JSON "
                    "objects one after another, or JSON arrays; .gz files are decompressed. "
                    "Events that cannot be read, mapped or delivered go to the dead-letter "
                    "file with the reason.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    _config_option(run)
    run.add_argument("files", nargs="*", metavar="FILE",
                     help="event files to read in order; '-' is stdin (default: stdin)")
    run.add_argument("--dead-letter", metavar="PATH",
                     help="dead-letter file (default: with a Redis queue its stream "
                          "PREFIX:dead, else the config's dead_letter, else "
                          "./nwpipe-dead-letter.jsonl)")
    run.add_argument("--shutdown-timeout", metavar="SECONDS", type=float,
                     help="on Ctrl-C/SIGTERM, seconds to finish in-flight deliveries "
                          "(default: the config's shutdown_timeout, else 10)")
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
    _common(run, suppress=True)
    run.set_defaults(func=cmd_run)

    work = sub.add_parser(
        "work", help="only deliver, from the queue that intake processes fill",
        description="Deliver events from the queue ([queue] in the config) to the outputs, "
                    "routed and mapped as `run` does, reading no input of its own. With a "
                    "Redis queue ([queue] url) any number of workers on any number of "
                    "machines share the shards, each shard delivered by one worker at a "
                    "time. Runs until SIGTERM/SIGINT: what it did not deliver stays in the "
                    "queue for the others; exit 0.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    _config_option(work)
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
    _common(work, suppress=True)
    work.set_defaults(func=cmd_work)

    serve = sub.add_parser(
        "serve", help="receive events over HTTP (Netography's webhook) and deliver them",
        description="Listen for POSTed events (one JSON event as Netography sends it, a JSON "
                    "array of events, or JSON lines), commit them to the durable queue, "
                    "answer 2xx only then, and deliver them from the queue to every output "
                    "whose filters match. Settings: the [serve] and [queue] tables. "
                    "GET /healthz, /readyz and /metrics need no credentials. SIGTERM/SIGINT: "
                    "new posts get 503, deliveries in flight get shutdown_timeout seconds, "
                    "the rest stays queued for the next start; exit 0.",
        epilog=SERVE_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    _config_option(serve)
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
    serve.add_argument("--no-deliver", action="store_true",
                       help="only receive and queue events; another process delivers them")
    _common(serve, suppress=True)
    serve.set_defaults(func=cmd_serve)

    replay = sub.add_parser(
        "replay", help="send the deliveries in a dead-letter file again",
        description="Send the records of DEAD_LETTER again through the config: failed "
                    "deliveries are mapped again from the original event and sent to their "
                    "output; failed mappings are mapped again; input that did not parse is "
                    "decoded again. Delivery ids stay the same, so receivers can "
                    "deduplicate. What is delivered leaves the file, what fails again stays "
                    "(with the new reason); the file is replaced atomically, so a record is "
                    "never lost, also on Ctrl-C. DEAD_LETTER may be a Redis URL "
                    "(redis://host:6379/0): the records that workers sharing a Redis queue "
                    "wrote to the stream PREFIX:dead (--queue: the config's [queue] url).",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    replay.add_argument("dead_letter", metavar="DEAD_LETTER", nargs="?",
                        help="the dead-letter file, or a Redis URL")
    replay.add_argument("--queue", action="store_true",
                        help="the dead letters of the config's Redis queue ([queue] url)")
    _config_option(replay)
    replay.add_argument("--output", metavar="NAME",
                        help="only the records of this output (the others stay unchanged)")
    replay.add_argument("--shutdown-timeout", metavar="SECONDS", type=float,
                        help="on Ctrl-C/SIGTERM, seconds to finish in-flight deliveries "
                             "(default: the config's shutdown_timeout, else 10)")
    _common(replay, suppress=True)
    replay.set_defaults(func=cmd_replay)

    check = sub.add_parser(
        "check", help="validate the config without reading any event",
        description="Load and validate the config: every key, type, output type, mapping, "
                    "jsonpath and template. Prints one line per output; exit 0 when valid, "
                    "1 with a message naming the file, key and problem when not.")
    _config_option(check)
    check.add_argument("--probe", action="store_true",
                       help="also send one test event to each webhook and syslog output and "
                            "report reachability, TLS and authentication problems; exit 1 if "
                            "any fails")
    _common(check, suppress=True)
    check.set_defaults(func=cmd_check)

    init = sub.add_parser(
        "init", help="write a commented starter nwpipe.toml",
        description="Write a commented starter config: a webhook output with the Netography "
                    "portal's fields and a mapping showing each kind of field. It passes "
                    "`nwpipe check` as written. An existing file is kept unless --force.")
    init.add_argument("path", nargs="?", default="nwpipe.toml", metavar="PATH",
                      help="file (or folder) to write (default: ./nwpipe.toml)")
    init.add_argument("--force", action="store_true", help="overwrite an existing file")
    init.add_argument("--serve", action="store_true",
                      help="also a [serve] section: receive Netography's webhook with "
                           "`nwpipe serve` (and a [queue] with sync = \"full\")")
    _common(init, suppress=True)
    init.set_defaults(func=cmd_init)

    plugins = sub.add_parser(
        "plugins", help="list loaded plugins and the output and source types they register",
        description="List every loaded plugin (built-in, installed through the 'nwpipe' "
                    "entry-point group, or from --plugins-dir), where it came from, the hooks "
                    "it implements and the output and source types it registers.")
    plugins.add_argument("--json", action="store_true", help="print JSON instead of text")
    _common(plugins, suppress=True)
    plugins.set_defaults(func=cmd_plugins)
    _add_render_and_test(sub)
    _add_queue(sub)
    return parser


# -- queue: the durable queue's backlog ---------------------------------------------


def _add_queue(sub) -> None:
    queue = sub.add_parser(
        "queue", help="show or act on the durable queue's backlog (status, drain, recover)",
        description="The durable queue holds what outputs could not take yet (an outage "
                    "waits there) and, with --durable, every event read. See the README's "
                    "durability section.")
    _common(queue, suppress=True)
    actions = queue.add_subparsers(dest="action", metavar="ACTION", parser_class=_Parser)
    queue.set_defaults(func=lambda args: (queue.print_help(), 1)[1])

    status = actions.add_parser(
        "status", help="events waiting per output, their bytes and age, failing outputs",
        description="Per output: the events waiting in the queue, their bytes, the oldest "
                    "one's age and since when the output is failing; per input file, how far "
                    "a durable run committed it. Works while a run delivers from the queue.")
    _config_option(status)
    _queue_option(status)
    status.add_argument("--json", action="store_true", help="print JSON, for scripts")
    _common(status, suppress=True)
    status.set_defaults(func=cmd_queue_status)

    drain = actions.add_parser(
        "drain", help="deliver one output's backlog now, or move it to the dead-letter file",
        description="Deliver what waits in the queue for one output now (its retry budget "
                    "applies), or with --dead-letter move it to the dead-letter file without "
                    "sending it (replay it later with `nwpipe replay`). Other outputs' "
                    "backlogs stay as they are. Exit 0 when everything was delivered, 3 when "
                    "something was dead-lettered.", epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    _config_option(drain)
    _queue_option(drain)
    drain.add_argument("--output", metavar="NAME", required=True, help="the output to drain")
    drain.add_argument("--dead-letter", action="store_true",
                       help="move the backlog to the dead-letter file instead of sending it")
    drain.add_argument("--dead-letter-file", metavar="PATH", dest="dead_letter_path",
                       help="dead-letter file (default: the config's dead_letter, else "
                            "./nwpipe-dead-letter.jsonl)")
    drain.add_argument("--shutdown-timeout", metavar="SECONDS", type=float,
                       help="on Ctrl-C/SIGTERM, seconds to finish in-flight deliveries")
    _common(drain, suppress=True)
    drain.set_defaults(func=cmd_queue_drain)

    recover = actions.add_parser(
        "recover", help="rebuild a damaged queue file from the entries that can be read",
        description="When `nwpipe run` reports the queue file damaged: copy every entry, "
                    "mark and note that can still be read into a new file at the same path "
                    "and keep the damaged file beside it (PATH.damaged-TIME). Exit 0 when "
                    "nothing was unreadable, 3 when some entries were lost.")
    _config_option(recover)
    _queue_option(recover)
    _common(recover, suppress=True)
    recover.set_defaults(func=cmd_queue_recover)


def cmd_queue_status(args) -> int:
    """Show the queue's backlog."""
    from nwpipe.commands.queuecmd import status_command

    _, config, _router = load(args)
    return status_command(config, args.queue, args.json)


def cmd_queue_drain(args) -> int:
    """Deliver or dead-letter one output's backlog."""
    from nwpipe.commands.progress import wanted
    from nwpipe.commands.queuecmd import drain_command

    _, config, router = load(args)
    result = drain_command(config, router, args.output, path=args.queue,
                           dead_letter=args.dead_letter, dead_letter_path=args.dead_letter_path,
                           shutdown_timeout=args.shutdown_timeout,
                           progress=wanted(args.quiet, args.log_format))
    log.info("%s", result.summary())
    return result.exit_code


def cmd_queue_recover(args) -> int:
    """Rebuild a damaged queue file."""
    from nwpipe.commands.queuecmd import recover_command

    _, config, _router = load(args)
    return recover_command(config, args.queue)


# -- render and test: develop and check mappings -----------------------------------


def _add_render_and_test(sub) -> None:
    render = sub.add_parser(
        "render", help="show the body each output would receive for each event; send nothing",
        description="Read events from FILEs (or stdin) and print, per event and output, the "
                    "exact body that output would receive: the same routing (customers, when) "
                    "and the mapping chosen for the event's customer. Nothing is sent and "
                    "nothing is dead-lettered. An event that fails prints its error in place "
                    "and the others go on; exit 3 if any failed, 0 if none.")
    _config_option(render)
    render.add_argument("files", nargs="*", metavar="FILE",
                        help="event files to read in order; '-' is stdin (default: stdin)")
    render.add_argument("--output", metavar="NAME", help="only this output")
    render.add_argument("--customer", metavar="NAME",
                        help="treat every event as this customer's (preview its mapping)")
    render.add_argument("--json", action="store_true",
                        help="one JSON object per line: {source, line, output, mapping, body} "
                             "or {..., error}")
    _common(render, suppress=True)
    render.set_defaults(func=cmd_render)

    test = sub.add_parser(
        "test", help="run the mapping tests ([[tests]]) of the config",
        description="Run every [[tests]] table of the config: map its event with its output "
                    "or mapping and compare the body with 'expect' (the whole body) or "
                    "'expect_subset' (only the keys given). Prints one line per test and a "
                    "diff for each failure; exit 1 if any failed (or none is defined), 0 if "
                    "all passed.")
    _config_option(test)
    _common(test, suppress=True)
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


def load(args, *, lean: bool = False):
    """Plugins, the validated config and its compiled routes, from the command line.

    ``lean``: load only the built-in plugins whose types the config names (a faster
    start for `run`; commands that list or probe plugins load them all)."""
    from nwpipe.config import build_config, default_config, find_config_file, read_toml
    from nwpipe.plugins import Plugins, types_named
    from nwpipe.transform.routing import Router

    path = find_config_file(getattr(args, "config", None))
    data = read_toml(path) if path else default_config()
    plugins = Plugins(args.plugins_dir, only_types=types_named(data) if lean else None)
    config = build_config(data, plugins.output_types, file=path,
                          source_types=plugins.source_types)
    router = Router(config, plugins.jinja_filters)
    return plugins, config, router


def cmd_run(args) -> int:
    """Read events and deliver them."""
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
    result = run(config, router, args.files, dead_letter_path=args.dead_letter,
                 shutdown_timeout=args.shutdown_timeout,
                 progress=wanted(args.quiet, args.log_format), queue_path=args.queue,
                 durable=args.durable, keep_queue=args.keep_queue, resume=args.resume,
                 deliver=not args.no_deliver, metrics_listen=args.metrics_listen)
    log.info("%s", result.summary())
    return result.exit_code


def cmd_work(args) -> int:
    """Deliver from the queue until a signal."""
    from nwpipe.commands.progress import wanted
    from nwpipe.commands.work import summary, work
    from nwpipe.sources.serve_settings import check_listen

    _, config, router = load(args)
    if args.metrics_listen is not None:
        check_listen("--metrics-listen", args.metrics_listen)
    result = work(config, router, dead_letter_path=args.dead_letter,
                  shutdown_timeout=args.shutdown_timeout,
                  progress=wanted(args.quiet, args.log_format), queue_path=args.queue,
                  metrics_listen=args.metrics_listen)
    log.info("%s", summary(result))
    return 0  # SIGTERM/SIGINT is how a worker ends; what it left stays queued


def cmd_serve(args) -> int:
    """Receive events over HTTP and deliver them."""
    import dataclasses

    from nwpipe.commands.serve import serve

    _, config, router = load(args)
    queue_settings = config.queue
    if args.queue:
        queue_settings = dataclasses.replace(queue_settings, path=args.queue)
    return serve(config, router, queue_settings, listen=args.listen,
                 metrics_listen=args.metrics_listen, dead_letter_path=args.dead_letter,
                 shutdown_timeout=args.shutdown_timeout, deliver=not args.no_deliver)


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

    _, config, router = load(args)
    outputs = {name: oc.create() for name, oc in config.outputs.items()}
    tests = check_tests(config, router)
    where = config.file or "built-in default config"
    print(f"{where}: OK, {len(outputs)} output{'s' if len(outputs) != 1 else ''}, "
          f"{len(config.mappings)} mapping{'s' if len(config.mappings) != 1 else ''}, "
          f"{tests} test{'s' if tests != 1 else ''}")
    for route in router.routes:
        oc = route.output
        parts = [f"type {oc.type}", outputs[oc.name].describe()]
        if oc.mapping:
            shown = oc.mapping if isinstance(oc.mapping, str) else dict(oc.mapping)
            parts.append(f"mapping {shown}")
        if oc.customers:
            parts.append(f"customers {sorted(oc.customers)}")
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


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    setup_logging(args.verbose, args.quiet, args.log_format)
    if args.command is None:
        parser.print_help()
        return 1
    try:
        return args.func(args)
    except NwpipeError as exc:
        log.error("error: %s", exc)
        return 1
    except KeyboardInterrupt:
        return 130
