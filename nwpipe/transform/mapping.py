"""Mappings: reshape one event into the body a receiver expects.

A mapping is a ``[mappings.NAME]`` table, compiled once when the configuration loads
(:func:`compile_mappings`) and then applied to every event (:meth:`Mapping.apply`).
Applied in this order:

1. Start from the whole event (``keep = true``, the default) or from ``{}``
   (``keep = false``).
2. ``drop = ["beta", "metrics.clockahead"]`` removes fields; dotted paths reach nested
   keys; paths that are not there are fine.
3. ``rename = { alerttype = "state", "metrics.bits" = "bits" }`` moves values, creating
   nested objects as needed.
4. ``[mappings.NAME.fields]`` sets output fields, in the order written; a dotted name
   (``"alert.title"``, or a sub-table ``[mappings.NAME.fields.alert]``) makes nested
   objects. Fields are computed from the *original* event, whatever drop and rename did.
   A field's value is:

   - ``"$.srcip[0]"``: a string starting with ``$`` is a jsonpath (jsonpath-ng syntax,
     filters such as ``$.ipinfo[?(@.asn > 1000)].ip`` included). One match gives the
     value, several give a list, none give null, or nothing at all with
     ``omit_missing = true`` (per mapping, or per field in the table form);
   - ``"{{ algorithm | upper }} on {{ srcip | join_ips }}"``: a string containing
     ``{{`` or ``{%`` is a Jinja template rendered with the event's fields as variables;
     the result is a string;
   - a table: ``{ path = "$...", default = 0, omit_missing = true, list = true }``
     (``list = true``: always a list of the matches),
     ``{ template = "...", type = "int" | "float" | "bool" | "json" | "string" }``
     (the rendered text converted; a failed conversion fails that event), or
     ``{ value = <any TOML value> }`` for a constant;
   - any other string is a constant string (``"netography"``); write
     ``{ value = "$5" }`` for a constant that starts with ``$``. Numbers, booleans,
     arrays and dates are constants too (dates become ISO 8601 strings).

   A table containing ``path``, ``template``, ``value``, ``default``, ``type``,
   ``list`` or ``omit_missing`` is a field definition; any other table groups nested
   fields. To name a nested output field ``type`` or ``value``, quote the dotted name:
   ``"event.type" = "alert"``.
5. Or, instead of 1-4, a whole body: ``template = "slack.json.j2"`` (a template file) or
   ``body = '''{"text": {{ summary }}}'''``. In a body, every ``{{ expression }}``
   is written as a JSON value: strings quoted and escaped, numbers as numbers, lists
   and objects as JSON, undefined as ``null`` when lenient. So write
   ``{"text": {{ summary }}}``, not ``{"text": "{{ summary }}"}``, and build longer
   strings inside the expression: ``{{ algorithm ~ " on " ~ (srcip | join_ips) }}``.
   Quotes, backslashes, newlines or control characters in event data cannot break the
   document. The rendered text must be valid JSON, else the event fails with the
   template name and the line of the rendered text. ``<dir>/<customer>/<name>``
   overrides a template file for one customer.
6. ``extends = "other"`` starts from another mapping: ``fields`` and ``rename`` are
   merged (same names replaced), ``drop`` lists are joined, ``keep``,
   ``omit_missing``, ``undefined``, ``template`` and ``body`` are replaced.

``undefined = "strict"`` (default) makes an undefined variable an error naming it;
``"lenient"`` renders it blank.

``vars = { routing_key = "${PD_ROUTING_KEY}" }`` names constants that every template of
the mapping (fields, body, template file) can use like event fields. A configured value
wins over an event field of the same name, so event data can never replace it (the
field stays reachable as ``event.routing_key``). ``extends`` merges them.

Bodies share unchanged nested values with the event (copy on write): nothing here
modifies an event, and a body must be treated as read-only.
"""

from __future__ import annotations

import datetime as _dt
import math
from dataclasses import dataclass
from typing import Any, Callable

import jinja2
import orjson

from nwpipe import jsonio
from nwpipe.errors import ConfigError, EventError, Problems
from nwpipe.settings import Setting, did_you_mean, validate_settings
from nwpipe.transform.jsonpaths import MISSING as _MISSING
from nwpipe.transform.jsonpaths import compile_path
from nwpipe.transform.templating import (
    UNDEFINED_MODES,
    compile_template_string,
    customer_template,
    derive_environment,
    describe_render_error,
    event_renderer,
    get_template,
)

__all__ = ["Mapping", "compile_mappings", "IDENTITY", "MAPPING_SETTINGS"]

MAPPING_SETTINGS: dict[str, Setting] = {
    "extends": Setting(str, help="inherit another mapping and override parts of it"),
    "keep": Setting(bool, help="start from the whole event (true) or from {} (false)"),
    "drop": Setting(list, help="dotted paths of fields to remove"),
    "rename": Setting(dict, help='{ "old.path" = "new.path" }'),
    "fields": Setting(dict, help="output fields: jsonpath, Jinja or constants"),
    "omit_missing": Setting(bool, help="leave out fields whose jsonpath matches nothing"),
    "undefined": Setting(str, choices=UNDEFINED_MODES,
                         help="an undefined template variable is an error or blank"),
    "template": Setting(str, help="a whole-body Jinja template file"),
    "body": Setting(str, help="an inline whole-body Jinja template"),
    "vars": Setting(dict, help="named constants every template of this mapping can use"),
}

_FIELD_KEYS = ("path", "template", "value", "default", "omit_missing", "list", "type")
_FIELD_SOURCES = ("path", "template", "value")
_TYPES = ("string", "int", "float", "bool", "json")
_BODY_EXCLUDES = ("keep", "drop", "rename", "fields", "omit_missing")

_CUSTOMER_CACHE_LIMIT = 4096


# -- the compiled mapping ---------------------------------------------------------------

@dataclass(frozen=True)
class _Field:
    """One compiled output field."""

    name: str
    parts: tuple[str, ...]
    where: str               # the key path named in messages
    key: str                 # the key path where the field is written
    kind: str                # "path", "template" or "value"
    get: Any                 # path function, template, or the constant
    default: Any = None
    omit_missing: bool = False
    as_list: bool = False
    convert: Callable[[str], Any] | None = None
    source: str | None = None  # a template field's text


# Kinds of field step, compared by identity in the hot loop.
_ONE = "one"            # a path matching at most one value: its `one` function
_PATH = "path"          # any other path: a list of matches
_LIST = "list"          # a path whose matches are always given as a list
_TEMPLATE = "template"
_VALUE = "value"


def _step(field: _Field) -> tuple:
    """A field as the plain tuple that Mapping.apply loops over."""
    parts = field.parts if len(field.parts) > 1 else None
    if field.kind == "path":
        one = getattr(field.get, "one", None)
        if field.as_list:
            kind, get = _LIST, field.get
        elif one is not None:
            kind, get = _ONE, one
        else:
            kind, get = _PATH, field.get
    elif field.kind == "template":
        kind, get = _TEMPLATE, field.get
    else:
        kind, get = _VALUE, field.get
    return (kind, field.name, parts, get, field.default, field.omit_missing, field.convert,
            field.where)


class _Broken:
    """A customer template that failed to load; its message is reused per event."""

    def __init__(self, message: str):
        self.message = message


class Mapping:
    """A compiled mapping. :meth:`apply` turns one event into the body to send.

    Built by :func:`compile_mappings` (or :data:`IDENTITY`), not by hand.
    """

    name: str

    def __init__(self, name: str, *, keep: bool = True,
                 drops: tuple[tuple[str, ...], ...] = (),
                 renames: tuple[tuple[tuple[str, ...], tuple[str, ...], str], ...] = (),
                 fields: tuple[_Field, ...] = (),
                 body: jinja2.Template | None = None, body_where: str = "",
                 template_name: str | None = None, body_env: jinja2.Environment | None = None,
                 globals_: dict | None = None, vars_: dict | None = None,
                 identity: bool = False,
                 body_source: str | None = None):
        self.name = name
        self.keep = keep
        self.template_name = template_name
        self._identity = identity
        self._drops = drops
        self._renames = renames
        self._fields = fields
        self._body = body
        self._body_where = body_where
        self._body_env = body_env
        self._globals = globals_ or {}
        self._vars = vars_ or {}  # also in _globals; they win over event fields
        self._steps = tuple(_step(f) for f in fields)
        self._by_customer: dict[str, Any] = {}
        self._body_render = (event_renderer(body, body_source, self._globals, self._vars)
                             if body is not None else None)
        self._apply_fields = _generate(self) if body is None and not identity else None
        if self._apply_fields is not None:
            # The generated function checks the event itself: callers that take
            # `mapping.apply` call it directly, without the dispatch below.
            self.apply = self._apply_fields  # type: ignore[method-assign,assignment]

    def __repr__(self) -> str:
        return f"<Mapping {self.name!r}>"

    @classmethod
    def identity(cls) -> Mapping:
        """The pass-through mapping: the body is the event itself."""
        return cls("(pass-through)", identity=True)

    def apply(self, event: dict) -> Any:
        """The body for ``event`` (a JSON value). Raises EventError with the reason."""
        if self._identity:
            return event
        if not isinstance(event, dict):
            raise EventError(f"mapping '{self.name}': the event is a "
                             f"{type(event).__name__}, not a JSON object")
        if self._body is not None:
            return self._apply_body(event)
        assert self._apply_fields is not None  # set for every fields-mode mapping
        return self._apply_fields(event)

    # -- body mode --

    def _apply_body(self, event: dict) -> Any:
        render_event: Callable[[dict], str] | None
        template, render_event = self._body, self._body_render
        if self.template_name is not None and self._body_env is not None:
            customer = event.get("customer")
            if type(customer) is str and customer:
                template, render_event = self._customer_body(customer)
        assert template is not None and render_event is not None  # set in body mode
        try:
            text = render_event(event)
        except Exception as exc:
            raise EventError(f"{self._body_where}: {describe_render_error(exc)}") from None
        try:
            body = jsonio.loads(text)
        except orjson.JSONDecodeError as exc:
            reason = _describe_json_error(template, text, exc)
            raise EventError(f"{self._body_where}: {reason}") from None
        if jsonio.too_deep(text, body):
            # It could not be written to the output (nor to the dead-letter file).
            raise EventError(f"{self._body_where}: the rendered body is nested deeper than "
                             f"{jsonio.MAX_DEPTH} levels")
        return body

    def _customer_body(self, customer: str
                       ) -> tuple[jinja2.Template | None, Callable[[dict], str] | None]:
        found = self._by_customer.get(customer)
        if found is None:
            # _apply_body checks both before it calls here
            assert self._body_env is not None and self.template_name is not None
            try:
                template = customer_template(self._body_env, self.template_name, customer)
                if template is None:
                    found = (self._body, self._body_render)
                else:
                    found = (template, event_renderer(template, globals_=self._globals,
                                                      vars_=self._vars))
            except Exception as exc:  # a broken customer file fails that customer's events
                if isinstance(exc, jinja2.TemplateSyntaxError):
                    reason = (f"{exc.filename or exc.name}:{exc.lineno}: "
                              f"Jinja syntax error: {exc.message}")
                else:
                    reason = describe_render_error(exc)
                found = _Broken(reason)
            if len(self._by_customer) >= _CUSTOMER_CACHE_LIMIT:
                self._by_customer.clear()
            self._by_customer[customer] = found
        if isinstance(found, _Broken):
            raise EventError(f"{self._body_where}: {found.message}")
        return found


# -- fields mode: one generated function per mapping ----------------------------------------

def _generate(mapping: Mapping) -> Callable[[dict], dict]:
    """The fields-mode body function of ``mapping``, as straight-line generated code.

    It checks that the event is an object, then runs drop, rename and every field in
    order, with no loop and no dispatch on the kind of field; a plain path that matches
    at most one value (``$.a.b``, ``$.a[0]``) is written out as its dictionary and list
    lookups, with jsonpath-ng's rules (members of objects only, indexes of arrays only,
    ``-len <= i < len``). With ``keep = false`` the leading fields that are always set
    and not nested make one dict display: fields that can fail (templates, general
    paths) are computed first, in order, so the first failure is still the one reported.
    Names, keys, defaults and functions are passed in as constants, never pasted into
    the source, so nothing from a configuration can inject code.
    """
    namespace: dict[str, Any] = {
        "_M": _MISSING, "_seq": (list, tuple), "_set_path": _set_path,
        "_EventError": EventError, "_describe": describe_render_error,
        "_not_object": f"mapping '{mapping.name}': the event is a ",
    }
    lines = ["def apply_fields(event):",
             "    if not isinstance(event, dict):",
             "        raise _EventError(_not_object + type(event).__name__ + "
             "', not a JSON object')"]
    add = lines.append

    def const(prefix: str, i: int, value: Any) -> str:
        name = f"{prefix}{i}"
        namespace[name] = value
        return name

    fields = []
    for i, (field, step) in enumerate(zip(mapping._fields, mapping._steps)):
        fields.append(_field_code(i, field, step, const, mapping))
    # keep = false: the leading fields that are always set, flat, make one dict display
    display = 0
    if not mapping.keep:
        while display < len(fields) and fields[display][1] is not None \
                and mapping._steps[display][2] is None:
            display += 1
    # Only dotted renames and fields need to know, at run time, which nested objects
    # the body has copied already (drops are grouped, and copy each object once).
    owned = (any(len(o) > 1 or len(n) > 1 for o, n, _ in mapping._renames)
             or any(len(f.parts) > 1 for f in mapping._fields))
    if mapping.keep or not display:
        add("    out = dict(event)" if mapping.keep else "    out = {}")
        if owned:
            add("    owned = {id(out)}")  # the objects this body may change in place
    tree: dict = {}
    for parts in mapping._drops:
        node = tree
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if node is None:
                break  # a shorter drop path takes all of it
        else:
            node[parts[-1]] = None
    _write_drops(add, lambda value: const("dk", len(namespace), value), tree, "out",
                 "    ", 0, owned)
    for i, (old, new, where) in enumerate(mapping._renames):
        if len(old) == 1:
            add(f"    v = out.pop({const(f'r{i}_', 0, old[0])}, _M)")
        else:
            add("    v = _M")
            _write_nested_pop(add, const, f"r{i}_", old, "v")
        if len(new) == 1:
            add(f"    if v is not _M: out[{const('rn', i, new[0])}] = v")
        else:
            add("    if v is not _M:")
            add(f"        _set_path(out, {const('rp', i, new)}, v, owned, "
                f"{const('rw', i, where)})")
    if display:
        for before, _value, _store in fields[:display]:
            lines.extend(before)
        items = ", ".join(f"n{i}: {value}" for i, (_b, value, _s) in
                          enumerate(fields[:display]))
        add(f"    out = {{{items}}}")
        if owned:
            add("    owned = {id(out)}")
    for before, _value, store in fields[display:]:
        lines.extend(before)
        lines.extend(store)
    add("    return out")
    code = compile("\n".join(lines),
                   f"<nwpipe mapping {mapping.name!r}>", "exec")
    exec(code, namespace)  # noqa: S102 - only constants by name, see the docstring
    return namespace["apply_fields"]


def _field_code(i: int, field: _Field, step: tuple, const: Callable[[str, int, Any], str],
                mapping: Mapping) -> tuple[list[str], str | None, list[str]]:
    """The generated code of field ``i``: statements to run first (those that can fail),
    the expression of its value (None when the field may be left out), and the
    statements that compute and set it."""
    kind, name, parts, get, default, omit, convert, where = step
    n = const("n", i, name)
    w = const("w", i, where)
    before: list[str] = []
    value: str | None

    def store(expression: str) -> str:
        if parts is None:
            return f"out[{n}] = {expression}"
        return f"_set_path(out, {const('p', i, parts)}, {expression}, owned, {w})"

    if kind is _VALUE:
        value = const("c", i, get)
    elif kind is _ONE:
        missing = "_M" if omit else const("d", i, default)
        lookups = getattr(field.get, "lookups", None)
        if lookups is None:
            value = f"(v if (v := {const('g', i, get)}(event)) is not _M else {missing})"
        else:
            value = _lookup_expression(lookups, missing, lambda j, key: const(f"k{i}_", j, key))
        if omit:
            return [], None, [f"    v = {value}", f"    if v is not _M: {store('v')}"]
    elif kind is _TEMPLATE:
        render_event = event_renderer(get, field.source, mapping._globals, mapping._vars)
        before += ["    try:", f"        res{i} = {const('t', i, render_event)}(event)"]
        if convert is not None:
            before.append(f"        res{i} = {const('cv', i, convert)}(res{i})")
        before += ["    except Exception as exc:",
                   f"        raise _EventError({w} + ': ' + _describe(exc)) from None"]
        value = f"res{i}"
    else:
        before += ["    try:", f"        mat{i} = {const('g', i, get)}(event)",
                   "    except Exception as exc:",
                   f"        raise _EventError(f'{{{w}}}: jsonpath failed on this event: "
                   f"{{type(exc).__name__}}: {{exc}}') from None"]
        found = f"mat{i}" if kind is _LIST else f"(mat{i}[0] if len(mat{i}) == 1 else mat{i})"
        if omit:
            return before, None, [f"    if mat{i}: {store(found)}"]
        if kind is _LIST and default is None:
            value = f"mat{i}"  # no match: the empty list
        else:
            value = f"({found} if mat{i} else {const('d', i, default)})"
    return before, value, [f"    {store(value)}"]


def _lookup_expression(lookups: tuple, missing: str, key_name: Callable[[int, Any], str]) -> str:
    """One expression for a singular path's lookups: the value, or ``missing``.

    Each step tests the kind of the value before it (members of objects only, indexes
    of arrays only, in range); the event itself is known to be an object.
    """
    expression = "event"
    last = len(lookups) - 1
    for j, (step_kind, key) in enumerate(lookups):
        k = key_name(j, key)
        miss = missing if j == last else "_M"
        if step_kind == "field" and j == 0:
            expression = f"event.get({k}, {miss})"
        elif step_kind == "field":
            expression = f"(v.get({k}, {miss}) if isinstance(v := {expression}, dict) else {miss})"
        else:
            bound = f"{k} < len(v)" if key >= 0 else f"-{k} <= len(v)"
            expression = f"(v[{k}] if isinstance(v := {expression}, _seq) and {bound} else {miss})"
    return expression


def _write_drops(add: Callable[[str], None], const: Callable[[Any], str], tree: dict,
                 parent: str, indent: str, depth: int, owned: bool) -> None:
    """Generated code for the drops under ``parent``: ``tree`` maps a key to None (drop
    it) or to the drops inside it.

    A nested object is copied (copy on write), once, and only when one of the paths
    to drop inside it is there; what no drop reaches stays shared with the event.
    """
    for key, subtree in tree.items():
        k = const(key)
        if subtree is None:
            add(f"{indent}{parent}.pop({k}, None)")
            continue
        node = f"node{depth}"
        add(f"{indent}{node} = {parent}.get({k}, _M)")
        add(f"{indent}if isinstance({node}, dict) and {_any_present(const, subtree, node, depth)}:")
        inner = indent + "    "
        add(f"{inner}{node} = dict({node}); {parent}[{k}] = {node}")
        if owned:
            add(f"{inner}owned.add(id({node}))")
        _write_drops(add, const, subtree, node, inner, depth + 1, owned)


def _any_present(const: Callable[[Any], str], tree: dict, node: str, depth: int) -> str:
    """An expression: is any path of ``tree`` there in the object ``node``?"""
    tests = []
    for key, subtree in tree.items():
        k = const(key)
        if subtree is None:
            tests.append(f"{k} in {node}")
        else:
            child = f"seen{depth}"
            tests.append(f"(isinstance({child} := {node}.get({k}), dict) and "
                         f"{_any_present(const, subtree, child, depth + 1)})")
    return "(" + " or ".join(tests) + ")"


def _write_nested_pop(add: Callable[[str], None], const: Callable[[str, int, Any], str],
                      prefix: str, parts: tuple[str, ...], target: str | None) -> None:
    """Generated code that removes a dotted path of ``out`` (into ``target`` if given).

    The path is looked up first, so a path that is not there copies nothing; then each
    object on the way that the body does not own yet is copied (copy on write) and the
    copy put in its place, so the event never changes.
    """
    keys = [const(prefix, j, part) for j, part in enumerate(parts)]
    indent = "    "
    parent = "out"
    for j, key in enumerate(keys[:-1]):
        node = f"node{j}"
        add(f"{indent}{node} = {parent}.get({key}, _M)")
        if j < len(keys) - 2:
            add(f"{indent}if isinstance({node}, dict):")
        else:
            add(f"{indent}if isinstance({node}, dict) and {keys[-1]} in {node}:")
        indent += "    "
        parent = node
    parent = "out"
    for j, key in enumerate(keys[:-1]):
        node = f"node{j}"
        add(f"{indent}if id({node}) not in owned:")
        add(f"{indent}    {node} = dict({node}); owned.add(id({node})); {parent}[{key}] = {node}")
        parent = node
    if target is None:
        add(f"{indent}del {parent}[{keys[-1]}]")
    else:
        add(f"{indent}{target} = {parent}.pop({keys[-1]})")


def _describe_json_error(template: jinja2.Template, text: str,
                         exc: orjson.JSONDecodeError) -> str:
    name = f"template '{template.name}'" if template.name else "the body template"
    lines = text.split("\n")  # orjson counts lines by "\n" only
    line = min(max(exc.lineno, 1), len(lines))
    snippet = lines[line - 1].strip()
    if len(snippet) > 120:
        snippet = snippet[:117] + "..."
    return (f"{name} did not render valid JSON: {exc.msg} at line {exc.lineno} "
            f"column {exc.colno} of the rendered body: {snippet}")


IDENTITY = Mapping.identity()


# -- copy-on-write path helpers ------------------------------------------------------------

def _owned_child(node: dict, part: str, child: dict, owned: set[int]) -> dict:
    """``child`` made safe to modify: copied (and recorded) unless this body owns it."""
    if id(child) not in owned:
        child = dict(child)
        owned.add(id(child))
        node[part] = child
    return child


def _set_path(out: dict, parts: tuple[str, ...], value: Any, owned: set[int],
              where: str) -> None:
    """Set a dotted path of ``out``, creating (or copying) the objects on the way."""
    node = out
    for depth, part in enumerate(parts[:-1]):
        child = node.get(part, _MISSING)
        if child is _MISSING:
            child = {}
            owned.add(id(child))
            node[part] = child
        elif isinstance(child, dict):
            child = _owned_child(node, part, child, owned)
        else:
            at = ".".join(parts[:depth + 1])
            raise EventError(f"{where}: cannot set '{'.'.join(parts)}': '{at}' is a "
                             f"{json_kind(child)}, not an object")
        node = child
    node[parts[-1]] = value


def json_kind(value: Any) -> str:
    """The kind of a JSON value in words, for messages: null, boolean, number, string,
    list or object."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "list"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


# -- conversions for typed template fields ----------------------------------------------------

def _snippet(text: str) -> str:
    return repr(text if len(text) <= 60 else text[:57] + "...")


def _to_int(text: str) -> int:
    stripped = text.strip()
    try:
        return int(stripped)
    except ValueError:
        pass
    try:
        number = float(stripped)
    except ValueError:
        number = math.nan
    if math.isfinite(number) and number.is_integer():
        return int(number)
    raise ValueError(f"cannot convert {_snippet(text)} to int")


def _to_float(text: str) -> float:
    try:
        number = float(text.strip())
    except ValueError:
        number = math.nan
    if not math.isfinite(number):
        raise ValueError(f"cannot convert {_snippet(text)} to float")
    return number


_BOOLS = {"true": True, "false": False, "1": True, "0": False, "yes": True, "no": False,
          "on": True, "off": False}


def _to_bool(text: str) -> bool:
    try:
        return _BOOLS[text.strip().lower()]
    except KeyError:
        raise ValueError(f"cannot convert {_snippet(text)} to bool "
                         "(true/false, yes/no, on/off, 1/0)") from None


def _to_json(text: str) -> Any:
    try:
        value = jsonio.loads(text)
    except orjson.JSONDecodeError as exc:
        raise ValueError(f"the template did not render valid JSON ({exc.msg}): "
                         f"{_snippet(text)}") from None
    if jsonio.too_deep(text, value):
        raise ValueError(f"the rendered JSON is nested deeper than {jsonio.MAX_DEPTH} levels")
    return value


_CONVERTERS: dict[str, Callable[[str], Any] | None] = {
    "string": None, "int": _to_int, "float": _to_float, "bool": _to_bool, "json": _to_json,
}


# -- compiling ------------------------------------------------------------------------------

def _is_template(text: str) -> bool:
    return "{{" in text or "{%" in text


def _constant(value: Any, where: str, file: str | None) -> Any:
    """A TOML value as a JSON value: dates and times become ISO 8601 strings."""
    if isinstance(value, (_dt.datetime, _dt.date, _dt.time)):
        return value.isoformat()
    if isinstance(value, list):
        return [_constant(v, where, file) for v in value]
    if isinstance(value, dict):
        return {k: _constant(v, where, file) for k, v in value.items()}
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError("nan and inf cannot be sent as JSON", key=where, file=file)
    return value


def _split_path(text: Any, where: str, file: str | None, what: str) -> tuple[str, ...]:
    if not isinstance(text, str):
        raise ConfigError(f"{what} must be a string, got {type(text).__name__}",
                          key=where, file=file)
    parts = tuple(text.split("."))
    if not text or any(not p for p in parts):
        raise ConfigError(f"{what} {text!r} is not a valid dotted path (like \"metrics.bits\")",
                          key=where, file=file)
    return parts


def _flatten_fields(table: dict, prefix: str, where: str, out: dict[str, tuple[Any, str]],
                    file: str | None) -> None:
    """Field definitions by dotted output name, nested groups flattened."""
    for name, value in table.items():
        full = f"{prefix}.{name}" if prefix else name
        key = f"{where}.{name}"
        if isinstance(value, dict) and not any(k in value for k in _FIELD_KEYS):
            if not value:
                raise ConfigError("empty table: give a value, or a table with 'path', "
                                  "'template' or 'value'", key=key, file=file)
            _flatten_fields(value, full, key, out, file)
        else:
            out[full] = (value, key)


def _flatten_rename(table: dict, prefix: str, where: str, out: dict[str, tuple[str, str]],
                    file: str | None) -> None:
    # `rename = { metrics.bits = "bits" }` (dotted key without quotes) reaches us as
    # nested tables; it means the same as `"metrics.bits" = "bits"`.
    for old, new in table.items():
        full = f"{prefix}.{old}" if prefix else old
        key = f"{where}.{old}"
        if isinstance(new, dict):
            _flatten_rename(new, full, key, out, file)
        elif isinstance(new, str):
            out[full] = (new, key)
        else:
            raise ConfigError(f"the new name must be a string, got {type(new).__name__}",
                              key=key, file=file)


class _Compiler:
    """Compiles the mappings of one configuration, sharing what can be shared."""

    def __init__(self, tables: dict, env: jinja2.Environment, file: str | None):
        self.tables = tables
        self.env = env
        self.file = file
        self.settings: dict[str, dict[str, Any]] = {}
        self.merged: dict[str, dict[str, Any]] = {}
        self.paths: dict[str, Any] = {}
        self.templates: dict[tuple[int, str], jinja2.Template] = {}

    # -- validation and inheritance --

    def validate(self, name: str) -> dict[str, Any]:
        if name not in self.settings:
            table = self.tables[name]
            key = f"mappings.{name}"
            if not isinstance(table, dict):
                raise ConfigError(f"must be a table, got {type(table).__name__}",
                                  key=key, file=self.file)
            settings = validate_settings(table, MAPPING_SETTINGS, key=key, file=self.file)
            if settings["template"] is not None and settings["body"] is not None:
                raise ConfigError("set 'template' or 'body', not both", key=f"{key}.body",
                                  file=self.file)
            if settings["keep"] is False:
                for unused in ("drop", "rename"):
                    if settings[unused]:
                        raise ConfigError(f"'{unused}' has nothing to act on with keep = false",
                                          key=f"{key}.{unused}", file=self.file)
            self.settings[name] = settings
        return self.settings[name]

    def merge(self, name: str, chain: tuple[str, ...] = ()) -> dict[str, Any]:
        """The settings of mapping ``name`` with everything it extends folded in."""
        if name in self.merged:
            return self.merged[name]
        settings = self.validate(name)
        key = f"mappings.{name}"
        parent_name = settings["extends"]
        if parent_name is not None:
            if parent_name in chain or parent_name == name:
                cycle = " -> ".join((*chain, name, parent_name))
                raise ConfigError(f"'extends' makes a cycle: {cycle}", key=f"{key}.extends",
                                  file=self.file)
            if parent_name not in self.tables:
                raise ConfigError(
                    f"no mapping named '{parent_name}'{did_you_mean(parent_name, self.tables)}",
                    key=f"{key}.extends", file=self.file)
            parent = self.merge(parent_name, (*chain, name))
        else:
            parent = {"fields": {}, "drop": {}, "rename": {}, "keep": None,
                      "omit_missing": None, "undefined": None, "template": None, "body": None,
                      "explicit": set(), "vars": {}}
        merged: dict[str, Any] = {
            "vars": {**parent["vars"], **self.vars(settings["vars"], f"{key}.vars")},
            "fields": dict(parent["fields"]),
            "drop": dict(parent["drop"]),
            "rename": dict(parent["rename"]),
            "explicit": set(parent["explicit"]),
        }
        for scalar in ("keep", "omit_missing", "undefined"):
            merged[scalar] = settings[scalar] if settings[scalar] is not None else parent[scalar]
        if settings["template"] is not None or settings["body"] is not None:
            merged["template"], merged["body"] = settings["template"], settings["body"]
            merged["body_key"] = f"{key}.{'template' if settings['template'] else 'body'}"
        else:
            merged["template"], merged["body"] = parent["template"], parent["body"]
            merged["body_key"] = parent.get("body_key")
        for setting in _BODY_EXCLUDES:
            if settings[setting] is not None:
                merged["explicit"].add((setting, key))
        if settings["drop"] is not None:
            for i, path in enumerate(settings["drop"]):
                where = f"{key}.drop[{i}]"
                merged["drop"][_split_path(path, where, self.file, "a drop path")] = where
        if settings["rename"] is not None:
            renames: dict[str, tuple[str, str]] = {}
            _flatten_rename(settings["rename"], "", f"{key}.rename", renames, self.file)
            for old, (new, where) in renames.items():
                merged["rename"][old] = (new, where)
        if settings["fields"] is not None:
            fields: dict[str, tuple[Any, str]] = {}
            _flatten_fields(settings["fields"], "", f"{key}.fields", fields, self.file)
            merged["fields"].update(fields)
        self.merged[name] = merged
        return merged

    def vars(self, table: dict | None, key: str) -> dict[str, Any]:
        """Validate a mapping's ``vars``: names usable in templates, constant values."""
        result = {}
        for var, value in (table or {}).items():
            if not var.isidentifier():
                raise ConfigError("a template variable name must be a plain name "
                                  "(letters, digits, _)", key=f"{key}.{var}", file=self.file)
            if var == "event":
                raise ConfigError("'event' is the whole event in every template; give this "
                                  "variable another name", key=f"{key}.{var}", file=self.file)
            result[var] = _constant(value, f"{key}.{var}", self.file)
        return result

    # -- compiling --

    def environment(self, merged: dict, undefined: str, json_body: bool = False):
        """The Jinja environment for one mapping: its ``vars`` are globals there."""
        env = derive_environment(self.env, undefined=undefined, json_body=json_body)
        if merged["vars"]:
            env = env.overlay()
            # a new dict: the overlay would otherwise share (and change) its parent's
            env.globals = {**env.globals, **merged["vars"]}
        return env

    def compile(self, name: str) -> Mapping:
        merged = self.merge(name)
        undefined = merged["undefined"] or "strict"
        if merged["template"] is not None or merged["body"] is not None:
            return self.compile_body(name, merged, undefined)
        text_env = self.environment(merged, undefined)
        fields = tuple(self.compile_field(field_name, value, where, merged, text_env, name)
                       for field_name, (value, where) in merged["fields"].items())
        _check_field_overlaps(fields, self.file)
        renames = []
        for old, (new, where) in merged["rename"].items():
            old_parts = _split_path(old, where, self.file, "a rename source")
            new_parts = _split_path(new, where, self.file, "a rename target")
            renames.append((old_parts, new_parts, self._where(where, name)))
        keep = True if merged["keep"] is None else merged["keep"]
        return Mapping(name, keep=keep, drops=tuple(merged["drop"]),
                       renames=tuple(renames) if keep else (), fields=fields,
                       globals_=text_env.globals, vars_=merged["vars"])

    def compile_body(self, name: str, merged: dict, undefined: str) -> Mapping:
        key = f"mappings.{name}"
        for setting, where in sorted(merged["explicit"]):
            what = "template" if merged["template"] is not None else "body"
            raise ConfigError(f"'{what}' gives the whole body, so '{setting}' (set in "
                              f"{where}) has no effect; remove one of them",
                              key=key, file=self.file)
        body_env = self.environment(merged, undefined, json_body=True)
        body_key = merged["body_key"]
        if merged["template"] is not None:
            template_name = merged["template"]
            template = get_template(body_env, template_name, key=body_key, file=self.file)
            return Mapping(name, body=template, body_where=self._where(body_key, name),
                           template_name=template_name, body_env=body_env,
                           globals_=body_env.globals, vars_=merged["vars"])
        template = self.template(body_env, merged["body"], body_key)
        return Mapping(name, body=template, body_where=self._where(body_key, name),
                       globals_=body_env.globals, vars_=merged["vars"],
                       body_source=merged["body"])

    def compile_field(self, field_name: str, value: Any, where: str, merged: dict,
                      env: jinja2.Environment, mapping_name: str) -> _Field:
        parts = _split_path(field_name, where, self.file, "an output field name")
        omit_missing = bool(merged["omit_missing"])
        shown = self._where(where, mapping_name)
        if isinstance(value, str):
            if _is_template(value):
                return _Field(field_name, parts, shown, where, "template",
                              self.template(env, value, where), source=value)
            if value.startswith("$"):
                return _Field(field_name, parts, shown, where, "path", self.path(value, where),
                              omit_missing=omit_missing)
            return _Field(field_name, parts, shown, where, "value", value)
        if not isinstance(value, dict):
            return _Field(field_name, parts, shown, where, "value",
                          _constant(value, where, self.file))
        for option in value:
            if option not in _FIELD_KEYS:
                raise ConfigError(f"unknown field option '{option}'"
                                  f"{did_you_mean(option, _FIELD_KEYS)}; a field table takes "
                                  f"{', '.join(_FIELD_KEYS)}", key=f"{where}.{option}",
                                  file=self.file)
        sources = [s for s in _FIELD_SOURCES if s in value]
        if len(sources) != 1:
            problem = "needs one of" if not sources else "takes only one of"
            hint = ""
            if not sources:
                hint = (f"; to nest output fields under '{field_name}', quote the dotted "
                        f"name instead: \"{field_name}.{next(iter(value))}\" = ...")
            raise ConfigError(f"a field table {problem} 'path', 'template' or 'value'{hint}",
                              key=where, file=self.file)
        source = sources[0]
        allowed = {"path": ("path", "default", "omit_missing", "list"),
                   "template": ("template", "type"), "value": ("value",)}[source]
        for option in value:
            if option not in allowed:
                raise ConfigError(f"'{option}' does not apply to a '{source}' field "
                                  f"(it takes {', '.join(allowed)})", key=f"{where}.{option}",
                                  file=self.file)
        if source == "value":
            return _Field(field_name, parts, shown, where, "value",
                          _constant(value["value"], f"{where}.value", self.file))
        if source == "template":
            text = value["template"]
            if not isinstance(text, str):
                raise ConfigError("must be a string", key=f"{where}.template", file=self.file)
            kind = value.get("type", "string")
            if kind not in _CONVERTERS:
                raise ConfigError(f"{kind!r} is not one of {', '.join(map(repr, _TYPES))}",
                                  key=f"{where}.type", file=self.file)
            return _Field(field_name, parts, shown, where, "template",
                          self.template(env, text, f"{where}.template"),
                          convert=_CONVERTERS[kind], source=text)
        expr = value["path"]
        if not isinstance(expr, str) or not expr.startswith("$"):
            raise ConfigError("must be a jsonpath starting with '$'", key=f"{where}.path",
                              file=self.file)
        for flag in ("omit_missing", "list"):
            if flag in value and not isinstance(value[flag], bool):
                raise ConfigError("must be true or false", key=f"{where}.{flag}", file=self.file)
        if "default" in value:
            # A field's own default wins over the mapping's omit_missing.
            if value.get("omit_missing"):
                raise ConfigError("a field with a 'default' is never missing; remove one "
                                  "of them", key=f"{where}.omit_missing", file=self.file)
            omit_missing = False
        return _Field(field_name, parts, shown, where, "path", self.path(expr, f"{where}.path"),
                      default=_constant(value.get("default"), f"{where}.default", self.file),
                      omit_missing=value.get("omit_missing", omit_missing),
                      as_list=value.get("list", False))

    def path(self, expr: str, where: str) -> Any:
        if expr not in self.paths:
            try:
                self.paths[expr] = compile_path(expr)
            except ValueError as exc:
                raise ConfigError(str(exc), key=where, file=self.file) from None
        return self.paths[expr]

    def template(self, env: jinja2.Environment, source: str, where: str) -> jinja2.Template:
        cache_key = (id(env), source)
        if cache_key not in self.templates:
            self.templates[cache_key] = compile_template_string(env, source, key=where,
                                                                file=self.file)
        return self.templates[cache_key]

    @staticmethod
    def _where(where: str, mapping_name: str) -> str:
        # An inherited field is named where it is written, and the mapping that used it.
        if where.startswith(f"mappings.{mapping_name}."):
            return where
        return f"{where} (in mapping '{mapping_name}')"


def _check_field_overlaps(fields: tuple[_Field, ...], file: str | None) -> None:
    names = {f.name: f for f in fields}
    for field in fields:
        for depth in range(1, len(field.parts)):
            prefix = ".".join(field.parts[:depth])
            if prefix in names:
                raise ConfigError(f"field '{field.name}' would go inside field '{prefix}'; "
                                  "set one or the other", key=field.key, file=file)


def compile_mappings(tables: dict[str, dict], env: jinja2.Environment, *,
                     file: str | None = None) -> dict[str, Mapping]:
    """Compile every ``[mappings.NAME]`` table once, at configuration load.

    ``env`` comes from :func:`nwpipe.transform.templating.make_environment`. Every key is checked
    (an unknown one is a ConfigError with a "did you mean"), and every jsonpath and
    template is compiled now: an invalid one is a ConfigError naming the key path
    (``mappings.siem.fields.src_ip``) and, for a template file, the file and line.
    """
    if not isinstance(tables, dict):
        raise ConfigError(f"must be a table, got {type(tables).__name__}", key="mappings",
                          file=file)
    compiler = _Compiler(tables, env, file)
    # every mapping is compiled even when one fails: `nwpipe check` reports them all
    problems = Problems()
    compiled = {}
    for name in tables:
        with problems.collect():
            compiled[name] = compiler.compile(name)
    problems.raise_if_any()
    return compiled
