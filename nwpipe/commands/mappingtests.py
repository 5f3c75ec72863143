"""``nwpipe test``: mapping tests declared in the config, as contract tests.

A receiver expects certain fields; a ``[[tests]]`` table pins that down next to the
mapping that produces them, so a change to the mapping that breaks the contract fails
``nwpipe test`` (in CI, say) before it reaches the receiver::

    [[tests]]
    name   = "the SOC's SIEM gets the first source IP and a title"
    output = "soc"                        # or: mapping = "siem"
    event_file = "events/sample.json"     # or: event = { id = "a1", customer = "acme", ... }
    customer = "acme"                     # optional: replaces the event's customer
    expect_subset = { src_ip = "1.2.3.4", title = "KNOWNBOTNET start for acme" }

Keys of a test:

``name``
    shown in the report (default ``tests[N]``).
``event`` / ``event_file``
    the input event, inline, or the first event of a file (any input format nwpipe
    reads; the path is relative to the config file). One of them.
``output`` / ``mapping``
    what shapes the event: an output (its ``customers`` and ``when`` apply, and its
    mapping for the event's customer, exactly as in ``nwpipe run``) or a mapping by
    name. One of them.
``customer``
    replaces the event's ``customer`` field first.
``expect`` / ``expect_subset`` / ``expect_file``
    the whole expected body, or only some of it: objects must contain the keys given
    (recursively), lists must have the same length and match item by item, other
    values must be equal (numbers by value: ``1`` equals ``1.0``; ``true`` is not
    ``1``). TOML has no null: a whole body with nulls goes in a JSON file,
    ``expect_file`` (relative to the config file), for instance one saved from
    ``nwpipe render --json``. One of them, unless:
``expect_sent = false``
    (with ``output`` only) the output must *not* take the event (its ``customers`` or
    ``when`` leave it out, or its mapping table has no entry for the customer).
"""

from __future__ import annotations

import datetime as _dt
import difflib
import json
import logging
import math
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, TextIO

import orjson

from nwpipe.config import Config
from nwpipe.errors import ConfigError, EventError, NwpipeError
from nwpipe.outputs import Delivery
from nwpipe.settings import Setting, did_you_mean, validate_settings
from nwpipe.sources.decode import Reject, read_events
from nwpipe.transform.mapping import json_kind
from nwpipe.transform.route_map import MapFailed, route_and_map
from nwpipe.transform.routing import Route, Router

log = logging.getLogger("nwpipe")

__all__ = ["MappingTest", "TestResult", "TEST_SETTINGS", "load_tests", "run_test",
           "compare", "unified_diff", "format_result", "run_tests"]

_JSON = (dict, list, str, int, float, bool)

TEST_SETTINGS: dict[str, Setting] = {
    "name": Setting(str, help="shown in the report"),
    "event": Setting(dict, help="the input event, inline"),
    "event_file": Setting(str, help="a file whose first event is the input, relative to the "
                                    "config file"),
    "output": Setting(str, help="an output: its filters and its mapping for the customer"),
    "mapping": Setting(str, help="a mapping by name"),
    "customer": Setting(str, help="replaces the event's customer"),
    "expect": Setting(_JSON, help="the whole expected body"),
    "expect_subset": Setting((dict, list), help="the keys (and items) the body must have"),
    "expect_file": Setting(str, help="a JSON file holding the whole expected body, relative to "
                                     "the config file"),
    "expect_sent": Setting(bool, help="false: the output must not take the event"),
}


@dataclass
class MappingTest:
    """One validated ``[[tests]]`` table."""

    index: int
    name: str
    event: dict
    output: str | None = None
    mapping: str | None = None
    expect: Any = None
    subset: bool = False
    expect_sent: bool = True

    @property
    def key(self) -> str:
        """Where it is in the config: ``tests[2]``."""
        return f"tests[{self.index}]"


@dataclass
class TestResult:
    """How one test went: ``problems`` is empty when it passed."""

    __test__ = False  # not a pytest test class, whatever its name

    test: MappingTest
    problems: list[str] = field(default_factory=list)
    diff: list[str] = field(default_factory=list)
    shaped_by: str = ""   # "output soc, mapping siem": what produced the body

    @property
    def passed(self) -> bool:
        return not self.problems


# -- loading -------------------------------------------------------------------------------

def _json_value(value: Any, key: str, file: str | None) -> Any:
    """A TOML value as the JSON value it stands for (dates become ISO 8601 strings)."""
    if isinstance(value, (_dt.datetime, _dt.date, _dt.time)):
        return value.isoformat()
    if isinstance(value, dict):
        return {k: _json_value(v, f"{key}.{k}", file) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_value(v, f"{key}[{i}]", file) for i, v in enumerate(value)]
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError("nan and inf are not JSON values", key=key, file=file)
    return value


def _first_event(path: Path, shown: str, key: str, file: str | None,
                 max_line_bytes: int) -> dict:
    try:
        for record in read_events(str(path), max_line_bytes=max_line_bytes):
            if isinstance(record, Reject):
                raise ConfigError(f"{shown}:{record.line}: {record.reason}", key=key, file=file)
            return record.data
    except ConfigError:
        raise
    except NwpipeError as exc:  # cannot read it, bad gzip
        message = str(exc)
        if message.startswith(f"{path}: "):  # named as the config names it
            message = f"{shown}: {message[len(str(path)) + 2:]}"
        raise ConfigError(message, key=key, file=file) from None
    raise ConfigError(f"{shown}: no event in the file", key=key, file=file)


def _one_of(settings: dict, names: tuple[str, ...], key: str, file: str | None,
            need: str) -> str:
    """The one setting of ``names`` that is given; a ConfigError if none or several are."""
    given = [n for n in names if settings[n] is not None]
    if len(given) > 1:
        quoted = [f"'{n}'" for n in names]
        choices = ", ".join(quoted[:-1]) + f" and {quoted[-1]}"
        raise ConfigError(f"set only one of {choices} (both '{given[0]}' and '{given[1]}' "
                          "are set)", key=f"{key}.{given[1]}", file=file)
    if not given:
        raise ConfigError(f"needs {need}", key=key, file=file)
    return given[0]


def _relative(config: Config, given: str) -> Path:
    """A path from a test, relative to the config file's folder."""
    path = Path(given)
    return path if path.is_absolute() else config.base_dir / path


def _json_file(config: Config, given: str, key: str) -> Any:
    try:
        data = _relative(config, given).read_bytes()
    except OSError as exc:
        raise ConfigError(f"{given}: cannot read: {exc.strerror or exc}", key=key,
                          file=config.file) from None
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise ConfigError(f"{given}:{exc.lineno}: not valid JSON: {exc.msg} (column {exc.colno})",
                          key=key, file=config.file) from None


def load_tests(config: Config, routes: dict[str, Route],
               mappings: dict[str, Callable]) -> list[MappingTest]:
    """Validate every ``[[tests]]`` table; a ConfigError names the key path
    (``tests[2].expect``)."""
    file = config.file
    tests = []
    for index, table in enumerate(config.tests):
        key = f"tests[{index}]"
        if not isinstance(table, dict):
            raise ConfigError("must be a table ([[tests]])", key=key, file=file)
        settings = validate_settings(table, TEST_SETTINGS, key=key, file=file)

        source = _one_of(settings, ("event", "event_file"), key, file,
                         "an input event: 'event' (a table) or 'event_file' (a path)")
        if source == "event":
            event = _json_value(settings["event"], f"{key}.event", file)
        else:
            given = settings["event_file"]
            event = _first_event(_relative(config, given), given, f"{key}.event_file", file,
                                 config.max_line_bytes)
        if settings["customer"] is not None:
            if not settings["customer"]:
                raise ConfigError("must be a customer name", key=f"{key}.customer", file=file)
            event = {**event, "customer": settings["customer"]}

        target = _one_of(settings, ("output", "mapping"), key, file,
                         "'output' (an output's name) or 'mapping' (a mapping's name)")
        known = routes if target == "output" else mappings
        name = settings[target]
        if name not in known:
            listed = ", ".join(known) or "none"
            raise ConfigError(f"no {target} named '{name}'{did_you_mean(name, known)} "
                              f"({target}s: {listed})", key=f"{key}.{target}", file=file)

        expect_sent = settings["expect_sent"]
        if expect_sent is not None and target != "output":
            raise ConfigError("only a test of an 'output' can expect it not to be sent",
                              key=f"{key}.expect_sent", file=file)
        if expect_sent is False:
            for unused in ("expect", "expect_subset", "expect_file"):
                if settings[unused] is not None:
                    raise ConfigError(f"expect_sent = false: nothing is sent, so '{unused}' "
                                      "cannot apply", key=f"{key}.{unused}", file=file)
            expected, subset = None, False
        else:
            which = _one_of(settings, ("expect", "expect_subset", "expect_file"), key, file,
                            "'expect' (the whole body), 'expect_subset' (some of its keys) or "
                            "'expect_file' (the whole body in a JSON file)")
            if which == "expect_file":
                expected = _json_file(config, settings["expect_file"], f"{key}.expect_file")
            else:
                expected = _json_value(settings[which], f"{key}.{which}", file)
            subset = which == "expect_subset"
        tests.append(MappingTest(
            index=index, name=settings["name"] or key, event=event,
            output=name if target == "output" else None,
            mapping=name if target == "mapping" else None,
            expect=expected, subset=subset, expect_sent=expect_sent is not False))
    return tests


# -- comparing -----------------------------------------------------------------------------

_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


def _child(path: str, key: str) -> str:
    if _IDENTIFIER.match(key):
        return f"{path}.{key}"
    return f"{path}[{json.dumps(key, ensure_ascii=False)}]"


def _show(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False, default=str)
    return text if len(text) <= 100 else text[:97] + "..."


def _same(expected: Any, actual: Any) -> bool:
    """Scalar equality as JSON sees it: numbers by value, booleans only equal booleans."""
    kind = json_kind(expected)
    return kind == json_kind(actual) and expected == actual


def compare(expected: Any, actual: Any, *, subset: bool = False, path: str = "$") -> list[str]:
    """The differences between an expected and an actual body, one line per path.

    With ``subset``, objects in ``actual`` may have keys that ``expected`` does not name.
    """
    out: list[str] = []
    _compare(expected, actual, subset, path, out)
    return out


def _compare(expected: Any, actual: Any, subset: bool, path: str, out: list[str]) -> None:
    if isinstance(expected, dict):
        if not isinstance(actual, dict):
            out.append(f"{path}: expected an object, got {json_kind(actual)} {_show(actual)}")
            return
        for key, value in expected.items():
            where = _child(path, key)
            if key not in actual:
                out.append(f"{where}: expected {_show(value)}, got nothing (missing)")
            else:
                _compare(value, actual[key], subset, where, out)
        if not subset:
            for key, value in actual.items():
                if key not in expected:
                    out.append(f"{_child(path, key)}: not expected, got {_show(value)}")
        return
    if isinstance(expected, list):
        if not isinstance(actual, list):
            out.append(f"{path}: expected a list, got {json_kind(actual)} {_show(actual)}")
            return
        if len(expected) != len(actual):
            out.append(f"{path}: expected {len(expected)} item{'s' if len(expected) != 1 else ''}"
                       f", got {len(actual)}")
        for i, (e, a) in enumerate(zip(expected, actual)):
            _compare(e, a, subset, f"{path}[{i}]", out)
        return
    if not _same(expected, actual):
        got = _show(actual)
        if json_kind(expected) != json_kind(actual) and expected == actual:
            got += f" (a {json_kind(actual)}, not a {json_kind(expected)})"
        out.append(f"{path}: expected {_show(expected)}, got {got}")


def _pruned(expected: Any, actual: Any) -> Any:
    """``actual`` cut down to the shape of ``expected``, for a readable subset diff."""
    if isinstance(expected, dict) and isinstance(actual, dict):
        return {k: _pruned(expected[k], actual[k]) for k in expected if k in actual}
    if isinstance(expected, list) and isinstance(actual, list):
        return [_pruned(e, a) for e, a in zip(expected, actual)] + actual[len(expected):]
    return actual


def _pretty(value: Any) -> list[str]:
    return json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False,
                      default=str).splitlines()


def unified_diff(expected: Any, actual: Any, *, subset: bool = False) -> list[str]:
    """A unified diff of the pretty JSON of both bodies (keys sorted)."""
    shown = _pruned(expected, actual) if subset else actual
    return list(difflib.unified_diff(_pretty(expected), _pretty(shown), "expected",
                                     "actual (only the keys expected)" if subset else "actual",
                                     lineterm=""))


# -- running -------------------------------------------------------------------------------

def run_test(test: MappingTest, routes: dict[str, Route],
             mappings: dict[str, Callable]) -> TestResult:
    """Map the test's event and compare the body with what it expects."""
    result = TestResult(test)
    event = test.event
    if test.mapping is not None:
        result.shaped_by = f"mapping {test.mapping}"
        try:
            body = mappings[test.mapping](event)
        except EventError as exc:
            result.problems.append(f"mapping '{test.mapping}' failed: {exc}")
            return result
        try:
            body = orjson.loads(orjson.dumps(body))  # exactly what an output would be sent
        except orjson.JSONEncodeError as exc:
            result.problems.append(f"the body cannot be written as JSON: {exc}")
            return result
    else:
        assert test.output is not None  # a test names a mapping or an output
        route = routes[test.output]
        # the output's filters and mapping, exactly as `nwpipe run` applies them
        outcome = route_and_map(event, [route])[0]
        if isinstance(outcome, MapFailed) and outcome.stage == "parse":
            result.problems.append(f"nwpipe run would reject this event: {outcome.reason}")
            return result
        if isinstance(outcome, MapFailed) and outcome.whole_event:  # its `when` failed
            result.problems.append(outcome.reason)
            return result
        name = route.mapping_name(event.get("customer"))
        result.shaped_by = f"output {test.output}, " + (f"mapping {name}" if name else
                                                        "no mapping")
        if isinstance(outcome, MapFailed):
            result.problems.append(outcome.reason)
            return result
        if not isinstance(outcome, Delivery):
            if test.expect_sent:
                result.problems.append(f"output '{test.output}' does not take this event: "
                                       f"{outcome.reason}")
            return result
        body = orjson.loads(outcome.body_json())  # exactly what the output is sent
        if not test.expect_sent:
            result.problems.append(f"expected output '{test.output}' not to take this event, "
                                   f"but it does ({result.shaped_by})")
            result.diff = ["body it would receive:", *_pretty(body)]
            return result
    result.problems = compare(test.expect, body, subset=test.subset)
    if result.problems:
        result.diff = unified_diff(test.expect, body, subset=test.subset)
    return result


def format_result(result: TestResult) -> list[str]:
    """The report lines of one test: ``ok``/``FAIL`` and, for a failure, why."""
    test = result.test
    label = test.name if test.name == test.key else f"{test.name} ({test.key})"
    if result.passed:
        return [f"ok    {label}"]
    lines = [f"FAIL  {label}" + (f": {result.shaped_by}" if result.shaped_by else "")]
    lines += [f"      {problem}" for problem in result.problems]
    lines += [f"      {line}" for line in result.diff]
    return lines


def _compiled(router: Router) -> tuple[dict[str, Route], dict[str, Callable]]:
    routes = {route.name: route for route in router.routes}
    mappings = {name: mapping.apply for name, mapping in router.mappings.items()}
    return routes, mappings


def check_tests(config: Config, router: Router) -> int:
    """Validate the ``[[tests]]`` tables without running them; returns how many there are."""
    return len(load_tests(config, *_compiled(router)))


def run_tests(config: Config, router: Router, stream: TextIO | None = None) -> int:
    """Run every test of ``config`` and print the report; the exit code (0 all passed, 1 not)."""
    stream = stream if stream is not None else sys.stdout
    where = config.file or "the built-in default config"
    if not config.tests:
        # the hint is an error of the user's: stderr, with the prefix every error has
        log.error("error: no tests in %s: add [[tests]] tables (see the README)", where)
        return 1
    routes, mappings = _compiled(router)
    tests = load_tests(config, routes, mappings)
    failed = 0
    for test in tests:
        result = run_test(test, routes, mappings)
        failed += not result.passed
        stream.write("\n".join(format_result(result)) + "\n")
    passed = len(tests) - failed
    stream.write(f"{len(tests)} test{'s' if len(tests) != 1 else ''}: {passed} passed, "
                 f"{failed} failed\n")
    return 1 if failed else 0
