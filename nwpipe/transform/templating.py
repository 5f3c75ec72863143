"""Jinja for mappings, body templates and output conditions, always sandboxed.

Every template runs in ``jinja2.sandbox.ImmutableSandboxedEnvironment``: a template can
read the event but cannot reach Python internals (``__class__``, ``__globals__``, ...),
change data, or open files other than templates through the template loader. Reaching
for an unsafe attribute is an error, never a blank.

Variables: every top-level field of the event (``{{ severity }}``,
``{{ metrics.bits.max }}``), and ``event``, the whole event (``{{ event['odd-key'] }}``).

Undefined variables are errors naming the variable (``'sevrity' is undefined``) unless a
mapping sets ``undefined = "lenient"``, where they render blank (``null`` in a JSON body).
``x | default("n/a")`` and ``x is defined`` work in both modes.

Template files are looked up in the configured template directories, in order, then
among the templates shipped in the ``nwpipe.templates`` package. A file
``<dir>/<customer>/<name>`` overrides ``<name>`` for that customer's events.

Filters, besides Jinja's built-in ones (``upper``, ``first``, ``join``, ``unique``,
``default``, ``replace``, ``truncate``, ...):

``isotime``
    Epoch seconds to ISO 8601 UTC: ``1689391131 | isotime`` is
    ``"2023-07-15T03:18:51Z"``; fractions keep milliseconds (``...:51.250Z``). ``0``,
    ``None`` and ``""`` give ``""``: the vendor sends ``end = 0`` while an alert is open.
    Milliseconds, microseconds, numeric strings and ISO 8601 text are read too, rounded
    to the millisecond (``nwpipe.transform.timeutil``). ``isotime("%d %b %Y %H:%M")``
    formats with strftime instead.
``join_ips``
    An IP list (``srcip``, ``dstip``) as one string: ``", "`` between addresses (or
    ``join_ips(" ")``), empty entries skipped, a single string kept, ``None`` gives "".
``tojson``
    The value as JSON text (``tojson(indent=2)`` to indent).
``severity_number``
    ``low``/``medium``/``high``/``critical`` to 1/2/3/4 (any case); anything else gives
    the ``default`` argument, 0 unless given.
``lookup``
    Translate a value through a table: ``severity | lookup({"high": "critical"})``.
    Values not in the table pass through unchanged, or give the second argument.
``human_duration``
    Seconds as ``"1h 2m 5s"`` (``300`` is ``"5m"``, ``0`` is ``"0s"``).
``clip``
    Text cut to fit a receiver's limit, ending with a marker when cut:
    ``summary | clip(3000)`` (characters), ``clip(8000, unit="bytes")`` (UTF-8 bytes as
    a JSON string, escapes counted), ``clip(3000, escape={"<": "&lt;"})`` (escapes
    applied first and counted, never cut in half), ``clip(150, marker="...")``.
``valid_ips``
    Only the valid IPv4/IPv6 addresses of a list (or of a single string), written in
    their standard form: for fields a receiver types as ``ip``.
``valid_time``
    The first of a value or a list of candidates that is a time (as ``isotime`` reads
    it: epoch seconds, milliseconds or microseconds, numbers, numeric strings or ISO
    8601 text), as ISO 8601 UTC;
    ``none`` when none is. Never an error: ``[timestamp, start] | valid_time``.

Globals, besides Jinja's (``range``, ``namespace``, ...): ``now()``, the current time as
ISO 8601 UTC with milliseconds.

Plugins add filters with the ``register_jinja_filters`` hook; they reach
:func:`make_environment` as ``filters`` and may replace the ones above.
"""

from __future__ import annotations

import collections.abc
import importlib.resources
import ipaddress
import re
import time
import weakref
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import jinja2
import orjson
from jinja2 import nodes
from jinja2.exceptions import SecurityError, TemplateNotFound, TemplateSyntaxError
from jinja2.loaders import BaseLoader, FileSystemLoader, split_template_path
from jinja2.runtime import ChainableUndefined, StrictUndefined, Undefined
from jinja2.sandbox import ImmutableSandboxedEnvironment, SandboxedEnvironment

from nwpipe import jsonio
from nwpipe.errors import ConfigError, EventError
from nwpipe.transform.fasttemplates import compile_simple, compile_simple_expression
from nwpipe.transform.limits import (
    DEFAULT_LIMITS,
    RenderLimits,
    TemplateLimitError,
    begin,
    check_size,
    end,
    guarded_join,
)
from nwpipe.transform.timeutil import TimeValueError, epoch_millis, iso_utc, to_datetime

__all__ = [
    "JSONText",
    "TemplateLoader",
    "Sandbox",
    "make_environment",
    "output_environment",
    "use_filters",
    "registered_filters",
    "derive_environment",
    "compile_condition",
    "compile_template_string",
    "get_template",
    "customer_template",
    "template_variables",
    "render",
    "event_renderer",
    "describe_render_error",
    "BUILTIN_FILTERS",
    "UNDEFINED_MODES",
]

TEMPLATE_PACKAGE = "nwpipe.templates"
UNDEFINED_MODES = ("strict", "lenient")


class JSONText(str):
    """A string that already is JSON text (what ``tojson`` returns).

    A body template emits it unchanged instead of encoding it a second time, so
    ``{{ x }}`` and ``{{ x | tojson }}`` give the same body.
    """

    __slots__ = ()


# -- filters ------------------------------------------------------------------------------

def _blank_if_undefined(value: Any) -> str:
    # str() of a strict undefined raises "'x' is undefined"; a lenient one is "".
    return str(value)


# Whole epoch seconds below this are read as seconds (timeutil's first unit), and their
# times fall in the years 1970 to 5138, which time.gmtime gives on every platform nwpipe runs.
_SECONDS_BELOW = 10**11


def isotime(value: Any, fmt: str | None = None) -> str:
    """Any event time (see ``timeutil.epoch_millis``) as ISO 8601 UTC; 0/None/"" give ""."""
    if type(value) is int and 0 < value < _SECONDS_BELOW and fmt is None:
        # The vendor's times (start, timestamp) are whole seconds: the same text as the
        # general way below (Decimal arithmetic, datetime, then the same strftime), 4 times
        # faster.
        return _strftime("%Y-%m-%dT%H:%M:%SZ", _gmtime(value))
    if isinstance(value, Undefined):
        return _blank_if_undefined(value)
    try:
        millis = epoch_millis(value)
    except TimeValueError as exc:
        raise ValueError(f"isotime: {exc}") from None
    if millis is None:
        return ""
    if fmt is not None:
        return to_datetime(millis).strftime(str(fmt))
    return iso_utc(millis)


def join_ips(value: Any, sep: str = ", ") -> str:
    """An IP address list as one string; a single address is kept, None gives ""."""
    if isinstance(value, Undefined):
        return _blank_if_undefined(value)
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, collections.abc.Iterable) and not isinstance(
            value, collections.abc.Mapping):
        # Lists, and the generators that Jinja's unique/select/map filters give.
        return sep.join(str(ip) for ip in value if ip is not None and ip != "")
    raise ValueError(f"join_ips: expected a list of addresses, got {type(value).__name__}")


def _json_default(value: Any) -> Any:
    if isinstance(value, Undefined):
        _blank_if_undefined(value)  # raises when strict
        return None
    if isinstance(value, collections.abc.Iterable) and not isinstance(
            value, (collections.abc.Mapping, bytes)):
        # Jinja's map/select/unique filters give generators; JSON wants arrays.
        return list(value)
    raise TypeError(f"a {type(value).__name__} value cannot be written as JSON")


_JSON_OPTIONS = orjson.OPT_NON_STR_KEYS


def to_json_text(value: Any, indent: int | None = None) -> str:
    """``value`` as JSON text (orjson; ``indent`` gives two-space indentation)."""
    option = _JSON_OPTIONS | orjson.OPT_INDENT_2 if indent else _JSON_OPTIONS
    return jsonio.dumps(value, default=_json_default, option=option).decode()


def tojson(value: Any, indent: int | None = None) -> JSONText:
    """The value as JSON text."""
    if type(value) is JSONText:
        return value
    return JSONText(to_json_text(value, indent))


_gmtime = time.gmtime
_strftime = time.strftime

_SEVERITIES = {"low": 1, "medium": 2, "high": 3, "critical": 4}


def severity_number(value: Any, default: Any = 0) -> Any:
    """low/medium/high/critical to 1/2/3/4; anything else gives ``default``."""
    if isinstance(value, Undefined):
        _blank_if_undefined(value)
        return default
    if isinstance(value, str):
        return _SEVERITIES.get(value.strip().lower(), default)
    return default


_NOT_GIVEN = object()


def lookup(value: Any, table: Mapping, default: Any = _NOT_GIVEN) -> Any:
    """``table[value]``; otherwise ``default`` if given, else the value unchanged."""
    if not isinstance(table, collections.abc.Mapping):
        raise ValueError(f"lookup: expected a table like {{'high': 'critical'}}, "
                         f"got {type(table).__name__}")
    if isinstance(value, Undefined):
        _blank_if_undefined(value)
        return value if default is _NOT_GIVEN else default
    try:
        return table[value]
    except (KeyError, TypeError):
        return value if default is _NOT_GIVEN else default


def human_duration(value: Any) -> str:
    """Seconds as "1d 2h 3m 4s", zero parts left out; 0 is "0s", None is ""."""
    if isinstance(value, Undefined):
        return _blank_if_undefined(value)
    if value is None or value == "":
        return ""
    if isinstance(value, bool):
        raise ValueError(f"human_duration: expected seconds, got {value!r}")
    try:
        seconds = round(float(value))
    except (TypeError, ValueError, OverflowError):
        raise ValueError(f"human_duration: expected seconds, got {value!r}") from None
    sign = "-" if seconds < 0 else ""
    seconds = abs(seconds)
    parts = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        amount, seconds = divmod(seconds, size)
        if amount:
            parts.append(f"{amount}{unit}")
    return sign + " ".join(parts) if parts else "0s"


def clip(value: Any, limit: int, marker: str = "…", escape: Mapping | None = None,
         unit: str = "chars") -> str | None:
    """Text cut to at most ``limit`` characters (or ``unit="bytes"``: UTF-8 bytes as a
    JSON string), ``marker`` included when cut; ``escape`` replacements count, uncut.
    None stays None."""
    if isinstance(value, Undefined):
        return _blank_if_undefined(value)
    if unit not in ("chars", "bytes"):
        raise ValueError(f'clip: unit must be "chars" or "bytes", got {unit!r}')
    if value is None:
        return None
    text = str(value)
    table = str.maketrans(dict(escape)) if escape else None

    def size(piece: str) -> int:
        # A JSON string's bytes: UTF-8, with quotes, backslashes and controls escaped.
        return len(piece) if unit == "chars" else len(to_json_text(piece).encode()) - 2

    # Every character costs at least 1, so a text longer than the limit is cut without
    # escaping or encoding all of it (events may carry megabytes).
    if len(text) <= limit:
        whole = text.translate(table) if table else text
        if size(whole) <= limit:
            return whole
    budget, kept = limit - size(marker), []
    for char in text:  # each character costs at least 1, so this stops within `limit`
        piece = char.translate(table) if table else char
        budget -= size(piece)
        if budget < 0:
            break
        kept.append(piece)
    return "".join(kept) + marker


def valid_ips(value: Any) -> list[str]:
    """The valid IP addresses of a list (or a single string), in standard form."""
    if isinstance(value, Undefined):
        _blank_if_undefined(value)
        return []
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, collections.abc.Iterable) or isinstance(
            items, collections.abc.Mapping):
        return []
    found = []
    for item in items:
        try:  # a zone ("fe80::1%eth0") is not an address an ip-typed field takes
            if isinstance(item, str) and "%" not in item:
                found.append(str(ipaddress.ip_address(item.strip())))
        except ValueError:
            pass
    return found


def valid_time(value: Any) -> str | None:
    """ISO 8601 of the first candidate that ``isotime`` reads as a time, else None."""
    items = value if isinstance(value, (list, tuple)) else [value]
    for item in items:
        if isinstance(item, (Undefined, bool)) or item is None:
            continue
        try:
            text = isotime(item)
        except (ValueError, TypeError):
            continue
        if text:
            return text
    return None


def now() -> str:
    """The current time as ISO 8601 UTC with milliseconds."""
    moment = datetime.now(timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


BUILTIN_FILTERS: dict[str, Callable] = {
    "isotime": isotime,
    "join_ips": join_ips,
    "tojson": tojson,
    "severity_number": severity_number,
    "lookup": lookup,
    "human_duration": human_duration,
    "clip": clip,
    "valid_ips": valid_ips,
    "valid_time": valid_time,
}


# -- loading template files ---------------------------------------------------------------

class TemplateLoader(BaseLoader):
    """Template files from the configured directories, then from the package.

    The package lookup goes through ``importlib.resources``, so the shipped templates
    are found in any kind of install (editable, wheel, zip).
    """

    def __init__(self, dirs: Sequence[str | Path] = ()):
        self.dirs = tuple(Path(d) for d in dirs)
        self._files = FileSystemLoader([str(d) for d in self.dirs]) if self.dirs else None

    def get_source(self, environment: jinja2.Environment,
                   template: str) -> tuple[str, str | None, Callable[[], bool]]:
        if self._files is not None:
            try:
                return self._files.get_source(environment, template)
            except TemplateNotFound:
                pass
        resource = importlib.resources.files(TEMPLATE_PACKAGE)
        for piece in split_template_path(template):
            resource = resource.joinpath(piece)
        if not resource.is_file():
            raise TemplateNotFound(template)
        return resource.read_text(encoding="utf-8"), str(resource), lambda: True

    def list_templates(self) -> list[str]:
        names = set(self._files.list_templates()) if self._files is not None else set()
        for resource in importlib.resources.files(TEMPLATE_PACKAGE).iterdir():
            if resource.is_file() and resource.name.endswith(".j2"):
                names.add(resource.name)
        return sorted(names)

    def has_customer_file(self, customer: str, name: str) -> bool:
        """True when a directory holds ``<customer>/<name>``."""
        try:
            pieces = split_template_path(f"{customer}/{name}")
        except TemplateNotFound:
            return False
        return any(d.joinpath(*pieces).is_file() for d in self.dirs)

    def describe(self) -> str:
        """Where templates are looked up, for messages."""
        places = [str(d) for d in self.dirs] + ["the built-in templates"]
        return ", ".join(places)


# A customer name only selects a sub-directory when it is an ordinary name: event data
# must never steer the lookup outside the template directories.
_SAFE_CUSTOMER = re.compile(r"[\w@+-][\w.@+-]{0,199}")


# -- the environment ----------------------------------------------------------------------

# A width or precision in a format string ("%0999999999d", "{:>999999999}") asks for
# that many characters; other numbers in the text do not count.
_FORMAT_NUMBER = re.compile(r"%[-+ #0]*(\d{7,})|%[-+ #0]*\d*\.(\d{7,})|\{[^{}]*:[^{}]*?(\d{7,})")
# str methods whose integer arguments are output sizes.
_PADDING_METHODS = frozenset({"ljust", "rjust", "center", "zfill", "expandtabs"})


def _sized(value: Any) -> bool:
    return isinstance(value, (str, list, tuple, bytes))


class Sandbox(ImmutableSandboxedEnvironment):
    """The sandbox, with unsafe attribute access an error instead of a blank, and every
    operation whose numbers ask for more than ``limits.max_bytes`` (``'a' * 10**9``,
    ``2 ** 10**8``, ``x.ljust(10**9)``, ``"%0999999999d" % 1``) refused before it runs
    (see :mod:`nwpipe.transform.limits`)."""

    intercepted_binops = frozenset({"*", "**", "%"})
    limits: RenderLimits = DEFAULT_LIMITS

    def unsafe_undefined(self, obj: Any, attribute: str) -> Undefined:
        raise SecurityError(
            f"access to attribute {attribute!r} of {type(obj).__name__!r} object is unsafe")

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        limits = self.limits
        if operator == "*":
            if _sized(left) and isinstance(right, int):
                check_size(len(left) * right, limits, "the repeated value")
            elif _sized(right) and isinstance(left, int):
                check_size(len(right) * left, limits, "the repeated value")
        elif operator == "**":
            if (isinstance(left, int) and isinstance(right, int) and right > 0
                    and abs(left) > 1):
                # digits of the result: about bit_length * right / 3.3
                check_size(left.bit_length() * right // 3, limits, "the power")
        elif isinstance(left, str):  # "%": formatting
            _check_format(left, limits)
        return super().call_binop(context, operator, left, right)

    def call(__self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:
        target = getattr(__obj, "__self__", None)
        if isinstance(target, str):
            name = getattr(__obj, "__name__", "")
            if name in _PADDING_METHODS:
                for number in (*args, *kwargs.values()):
                    if isinstance(number, int):
                        size = number * (target.count("\t") or 1) if name == "expandtabs" \
                            else number
                        check_size(size, __self.limits, f"the result of {name}()")
            elif name == "replace" and len(args) >= 2:
                _check_replace(target, args[0], args[1], __self.limits)
        return super().call(__context, __obj, *args, **kwargs)

    def wrap_str_format(self, value: Any) -> Any:
        # str.format and str.format_map: the sandbox wraps them when they are looked up
        target = getattr(value, "__self__", None)
        if isinstance(target, str) and getattr(value, "__name__", "") in ("format",
                                                                         "format_map"):
            _check_format(target, self.limits)
        return super().wrap_str_format(value)


def _check_format(text: str, limits: RenderLimits) -> None:
    for groups in _FORMAT_NUMBER.findall(text):
        check_size(max(int(g or 0) for g in groups), limits, "a formatted value")


def _check_replace(text: Any, old: Any, new: Any, limits: RenderLimits) -> None:
    if isinstance(text, str) and isinstance(old, str) and isinstance(new, str):
        count = text.count(old) if old else len(text) + 1
        check_size(len(text) + count * (len(new) - len(old)), limits, "the replaced text")


def _bounded_filters(filters: Mapping[str, Callable], env: Sandbox) -> dict[str, Callable]:
    """Jinja's filters whose arguments are output sizes, checked against the limits."""
    wrapped: dict[str, Callable] = {}

    def sizes(name: str) -> Callable:
        original = filters[name]

        def checked(value: Any, *args: Any, **kwargs: Any) -> Any:
            for number in (*args, *kwargs.values()):
                if isinstance(number, int) and not isinstance(number, bool):
                    check_size(number, env.limits, f"the result of the {name} filter")
            return original(value, *args, **kwargs)
        if hasattr(original, "jinja_pass_arg"):  # e.g. wordwrap takes the environment
            checked.jinja_pass_arg = original.jinja_pass_arg  # type: ignore[attr-defined]
        return checked

    for name in ("center", "indent", "wordwrap"):
        if name in filters:
            wrapped[name] = sizes(name)
    original_format = filters.get("format")
    if original_format is not None:
        def formatting(value: Any, *args: Any, **kwargs: Any) -> Any:
            if isinstance(value, str):
                _check_format(value, env.limits)
            return original_format(value, *args, **kwargs)

        wrapped["format"] = formatting
    original_replace = filters.get("replace")
    if original_replace is not None:
        def replacing(*args: Any, **kwargs: Any) -> Any:
            # Jinja's replace takes the evaluation context first
            if len(args) >= 4:
                _check_replace(args[1], args[2], args[3], env.limits)
            return original_replace(*args, **kwargs)

        replacing.jinja_pass_arg = original_replace.jinja_pass_arg  # type: ignore[attr-defined]
        wrapped["replace"] = replacing
    return wrapped


# The filters registered through the `register_jinja_filters` hook (the built-in ones by
# the built-in plugin nwpipe_plugins.filters, like a user's), set when plugins load.
# Before that (nwpipe used as a library, without plugins) the built-in filters stand in.
_registered_filters: dict[str, Callable] | None = None
_output_environments: dict[Any, jinja2.Environment] = {}


def use_filters(filters: Mapping[str, Callable]) -> None:
    """Make ``filters`` (every plugin's, built-in ones included) the filters of every
    environment made from now on; called by the plugin manager once plugins are loaded."""
    global _registered_filters
    _registered_filters = dict(filters)
    _output_environments.clear()


def registered_filters() -> dict[str, Callable]:
    """The filters every template gets (see :func:`use_filters`)."""
    return dict(BUILTIN_FILTERS if _registered_filters is None else _registered_filters)


def make_environment(template_dirs: Sequence[str | Path] = (),
                     filters: Mapping[str, Callable] | None = None, *,
                     finalize: Callable[[Any], Any] | None = None,
                     limits: RenderLimits | None = None) -> jinja2.Environment:
    """The one factory of sandboxed Jinja environments: mappings, ``when`` conditions and
    outputs' templates (a webhook's URL and headers) all come from here.

    ``template_dirs`` are searched in order before the built-in templates. Every filter
    registered through ``register_jinja_filters`` is there; ``filters`` are added to, and
    may replace, them. ``finalize`` transforms every ``{{ }}`` value (a URL template
    percent-encodes it). ``limits`` bound every rendering (time and size, see
    :mod:`nwpipe.transform.limits`). Undefined variables are errors (see
    :func:`derive_environment` for the lenient variant).
    """
    options: dict[str, Any] = {"finalize": finalize} if finalize is not None else {}
    env = Sandbox(
        loader=TemplateLoader(template_dirs),
        undefined=StrictUndefined,
        autoescape=False,
        auto_reload=False,  # templates are compiled once, at load, never re-read
        **options,
    )
    env.limits = limits or DEFAULT_LIMITS
    env.filters.update(_bounded_filters(env.filters, env))
    env.filters.update(registered_filters())
    env.globals["now"] = now
    for name, function in (filters or {}).items():
        if not callable(function):
            raise TypeError(f"Jinja filter {name!r} is not callable")
        env.filters[name] = function
    return env


def output_environment(*, finalize: Callable[[Any], Any] | None = None) -> jinja2.Environment:
    """The environment for an output's own templates (a URL, a header value): every
    registered filter, no template files. Shared per ``finalize`` while the filters stay
    the same."""
    env = _output_environments.get(finalize)
    if env is None:
        env = _output_environments[finalize] = make_environment(finalize=finalize)
    return env


def _json_finalize(value: Any) -> Any:
    # Every {{ expression }} of a JSON body becomes a JSON value: strings are quoted and
    # escaped, so quotes, backslashes, newlines or control characters in event data
    # can never break the document.
    if type(value) is JSONText:
        return value
    if isinstance(value, Undefined):
        _blank_if_undefined(value)  # raises when strict
        return "null"
    return to_json_text(value)


_DERIVED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def derive_environment(env: jinja2.Environment, *, undefined: str = "strict",
                       json_body: bool = False) -> jinja2.Environment:
    """A variant of ``env`` (same loader and filters) for one kind of template.

    ``undefined``: "strict" (an undefined variable is an error) or "lenient" (blank).
    ``json_body``: every ``{{ }}`` output is written as a JSON value.
    """
    if not isinstance(env, SandboxedEnvironment):
        raise TypeError("templates must run in a sandboxed environment")
    if undefined not in UNDEFINED_MODES:
        raise ValueError(f"undefined must be one of {UNDEFINED_MODES}, got {undefined!r}")
    variants = _DERIVED.setdefault(env, {})
    key = (undefined, json_body)
    if key not in variants:
        options: dict[str, Any] = {
            "undefined": StrictUndefined if undefined == "strict" else ChainableUndefined,
        }
        if json_body:
            options["finalize"] = _json_finalize
        variants[key] = env.overlay(**options)
    return variants[key]


# -- compiling ----------------------------------------------------------------------------

def compile_template_string(env: jinja2.Environment, source: str, *, key: str,
                            file: str | None = None) -> jinja2.Template:
    """Compile a template written in the configuration.

    A syntax error is a ConfigError naming ``key`` (and the line inside the template).
    """
    try:
        return env.from_string(source)
    except TemplateSyntaxError as exc:
        raise ConfigError(f"Jinja syntax error on line {exc.lineno} of the template: "
                          f"{exc.message}", key=key, file=file) from None


def compile_condition(env: jinja2.Environment, expr: str, *, key: str,
                      file: str | None = None,
                      undefined: str = "strict") -> Callable[[dict], bool]:
    """Compile a Jinja expression (``severity in ['high'] and alerttype != 'ongoing'``).

    Returns ``test(event) -> bool``. A syntax error is a ConfigError naming ``key``; an
    error while testing an event (an undefined variable, by default) is an EventError.
    """
    if not isinstance(expr, str) or not expr.strip():
        raise ConfigError("must be a Jinja expression, like \"severity == 'high'\"",
                          key=key, file=file)
    variant = derive_environment(env, undefined=undefined)
    try:
        compiled = variant.compile_expression(expr, undefined_to_none=False)
    except TemplateSyntaxError as exc:
        raise ConfigError(f"invalid expression: {exc.message}", key=key, file=file) from None

    limits = _limits_of(env)
    simple = compile_simple_expression(variant, expr, limits)
    if simple is not None:
        def test_simple(event: dict) -> bool:
            try:
                return bool(simple(event))
            except Exception as exc:
                raise EventError(f"{key}: {describe_render_error(exc)}") from None

        test_simple.expr = expr  # type: ignore[attr-defined]
        return test_simple

    def test(event: dict) -> bool:
        token = begin(limits)
        try:
            # compile_expression adds Jinja's globals itself.
            return bool(compiled(template_variables(event)))
        except Exception as exc:
            raise EventError(f"{key}: {describe_render_error(exc)}") from None
        finally:
            end(token)

    test.expr = expr  # type: ignore[attr-defined]
    return test


def get_template(env: jinja2.Environment, name: str, *, key: str,
                 file: str | None = None) -> jinja2.Template:
    """Load and compile a template file at configuration load.

    A missing file or a syntax error is a ConfigError naming ``key`` and, for a syntax
    error, the template file and line.
    """
    try:
        return env.get_template(name)
    except TemplateNotFound as exc:
        where = env.loader.describe() if isinstance(env.loader, TemplateLoader) else \
            "the template directories"
        missing = exc.name if exc.name and exc.name != name else None
        detail = f" (it needs '{missing}')" if missing else ""
        raise ConfigError(f"template '{name}' not found{detail}; looked in {where}",
                          key=key, file=file) from None
    except TemplateSyntaxError as exc:
        raise ConfigError(f"Jinja syntax error in template '{name}': {exc.message}",
                          key=key, file=exc.filename or name, line=exc.lineno) from None


def customer_template(env: jinja2.Environment, name: str, customer: Any) -> jinja2.Template | None:
    """The customer's own version of template ``name``, or None when there is none.

    Only ``<dir>/<customer>/<name>`` in a configured directory counts; a customer value
    that is not a plain name (a path, an empty string, not a string) never matches.
    """
    loader = env.loader
    if not isinstance(loader, TemplateLoader) or not loader.dirs:
        return None
    if not isinstance(customer, str) or not _SAFE_CUSTOMER.fullmatch(customer):
        return None
    if not loader.has_customer_file(customer, name):
        return None
    return env.get_template(f"{customer}/{name}")


# -- rendering ----------------------------------------------------------------------------

def template_variables(event: Mapping, globals_: Mapping | None = None,
                       vars_: Mapping | None = None) -> dict:
    """The variables a template sees: Jinja's globals, the event's fields, then a
    mapping's ``vars`` (configured values win over event data of the same name), and
    ``event``."""
    variables = dict(globals_) if globals_ else {}
    variables.update(event)
    if vars_:
        variables.update(vars_)
    variables["event"] = event
    return variables


def render(template: jinja2.Template, variables: dict) -> str:
    """Render with prepared variables (see :func:`template_variables`).

    Exceptions propagate as they are (no traceback rewriting): the caller turns them
    into an EventError with :func:`describe_render_error`.
    """
    env = template.environment
    # Built directly rather than through Template.new_context, which also collects the
    # template's global names (only `{% import ... with context %}` uses them, and these
    # templates have no globals of their own): that alone was half the cost of a title.
    context = env.context_class(env, variables, template.name, template.blocks)
    return guarded_join(template.root_render_func(context), _limits_of(env))


def _limits_of(env: jinja2.Environment) -> RenderLimits:
    return getattr(env, "limits", DEFAULT_LIMITS)


# Nodes that hand the whole context to another template, which then needs Jinja's globals
# even when this template names none of them.
_CONTEXT_SHARING = (nodes.Include, nodes.Import, nodes.FromImport, nodes.Extends)


def _needs_full_variables(env: jinja2.Environment, source: str) -> bool | None:
    """Whether a template needs Jinja's globals among its variables.

    True when it names one (``range``, ``namespace``, ...) or shares its context with
    another template; None when its names cannot be told (it does not parse).
    """
    try:
        tree = env.parse(source)
    except TemplateSyntaxError:
        return None
    if any(True for _ in tree.find_all(_CONTEXT_SHARING)):
        return True
    names = {node.name for node in tree.find_all(nodes.Name)}
    return not names.isdisjoint(env.globals)


def event_renderer(template: jinja2.Template, source: str | None = None,
                   globals_: Mapping | None = None,
                   vars_: Mapping | None = None) -> Callable[[Mapping], str]:
    """A function ``render(event) -> str`` for ``template`` and one event.

    Gives exactly ``render(template, template_variables(event, globals_, vars_))``
    (``globals_`` defaults to the environment's; ``vars_`` must be among them, so that a
    template naming one takes the general way below). ``source`` is the template's text;
    without it the text is read through the environment's loader, for a template file.

    A simple template (text and expressions, no statements: see
    :mod:`nwpipe.transform.fasttemplates`) runs as one plain Python function. Other
    templates that name no Jinja global (``range``, ``namespace``, ...) render with the
    event itself as the variables, plus ``event`` when they name it, instead of a merged
    copy of globals and the event's fields built for every event.
    """
    env = template.environment
    if globals_ is None:
        globals_ = env.globals
    full = True
    if source is None and template.name is not None and env.loader is not None:
        try:
            source = env.loader.get_source(env, template.name)[0]
        except Exception:  # e.g. the file is gone since: keep the general way
            source = None
    if source is not None:
        simple = compile_simple(template, source, globals_, vars_ or {}, _limits_of(env))
        if simple is not None:
            return simple
        if _needs_full_variables(env, source) is False:
            full = False
    if full:
        def render_full(event: Mapping) -> str:
            return render(template, template_variables(event, globals_, vars_))

        return render_full

    root = template.root_render_func
    name = template.name
    blocks = template.blocks
    context_class = env.context_class
    assert source is not None  # only a template whose text is known gets here
    wants_event = "event" in {node.name for node in env.parse(source).find_all(nodes.Name)}
    limits = _limits_of(env)

    def render_event(event: Mapping) -> str:
        # The event is the context's read-only parent (templates run in the immutable
        # sandbox); `event` goes in the context's own variables, which win over the
        # parent, just as it wins over an event field of that name otherwise.
        # Jinja annotates the parent as a dict but only reads it as a mapping
        context = context_class(env, event, name, blocks)  # type: ignore[arg-type]
        if wants_event:
            context.vars["event"] = event
        return guarded_join(root(context), limits)

    return render_event


def _template_location(exc: BaseException) -> tuple[str | None, int] | None:
    """The (template name, line) where a rendering error happened, innermost first."""
    found = None
    tb = exc.__traceback__
    while tb is not None:
        template = tb.tb_frame.f_globals.get("__jinja_template__")
        if template is not None:
            found = (template.name, template.get_corresponding_lineno(tb.tb_lineno))
        tb = tb.tb_next
    return found


def describe_render_error(exc: BaseException) -> str:
    """A one-line reason for an exception raised while rendering a template."""
    if isinstance(exc, TemplateSyntaxError):
        return f"{exc.filename or exc.name or 'template'}:{exc.lineno}: {exc.message}"
    if isinstance(exc, TemplateNotFound):
        return f"template '{exc.name}' not found"
    message = str(exc).strip()
    if not isinstance(exc, (jinja2.UndefinedError, SecurityError, ValueError,
                            TemplateLimitError)) or not message:
        message = f"{type(exc).__name__}: {message}" if message else type(exc).__name__
    location = _template_location(exc)
    if location is not None:
        name, line = location
        where = f"template '{name}' line {line}" if name else f"line {line} of the template"
        message = f"{message} ({where})"
    return message

