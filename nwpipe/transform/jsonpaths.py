"""Compile jsonpath expressions once, into functions that run fast on every event.

``compile_path("$.metrics.bits.max")`` returns a function ``f(data) -> list`` that gives
exactly ``[m.value for m in jsonpath_ng.ext.parse(expr).find(data)]``.

jsonpath-ng's ``find`` builds a ``DatumInContext`` object per step and costs a few
microseconds per expression. Most paths in a mapping are plain (``$.a.b``, ``$.a[0]``,
``$.a[-1]``, ``$.a[*].b``, ``$['x']``, ``$.a[1:3]``, ``$['a','b']``), and for those the
parsed expression is turned into direct dictionary and list lookups. Anything else
(filters, ``..``, named operators, arithmetic) runs through jsonpath-ng itself.

The fast path does not parse expressions itself: it walks the syntax tree that
jsonpath-ng's parser produced, so both always agree on what an expression means. The
first time a path is compiled, the fast path is also checked against the installed
jsonpath-ng on a set of edge cases (indexes on strings, wildcards on scalars, ...); if
a jsonpath-ng release ever changes those rules, every path falls back to jsonpath-ng and
results stay exact.
"""

from __future__ import annotations

import functools
import warnings
from typing import Any, Callable

import jsonpath_ng.ext
import jsonpath_ng.jsonpath as jp

__all__ = ["compile_path", "PathFunction", "MISSING"]

PathFunction = Callable[[Any], list]


class _Missing:
    __slots__ = ()

    def __repr__(self) -> str:
        return "MISSING"


#: What ``function.one(data)`` returns when a singular path matches nothing.
MISSING: Any = _Missing()
_MISSING = MISSING

# Absent from jsonpath-ng releases before 1.11 (their paths simply take the slow path).
_Wildcard = getattr(jp, "Wildcard", None)

# Step kinds of a plain path.
_FIELD = "field"        # one object member
_INDEX = "index"        # one array element
_FIELDS = "fields"      # several members: ['a','b']
_INDEXES = "indexes"    # several elements: [0,2]
_WILDCARD = "wildcard"  # * or [*]
_SLICE = "slice"        # [start:end:step]


def compile_path(expr: str) -> PathFunction:
    """Compile a jsonpath-ng (``jsonpath_ng.ext``) expression into a function.

    The function takes a JSON value and returns the list of matched values, exactly as
    ``[m.value for m in jsonpath_ng.ext.parse(expr).find(data)]`` would. It has the
    attributes ``expr`` (the expression), ``fast`` (True when it runs as direct lookups
    rather than through jsonpath-ng) and ``one``: for a path that can match at most one
    value (only names and single indexes), a function that returns that value or
    :data:`MISSING` without building a list; None for other paths. For those singular
    paths ``lookups`` is the tuple of their steps, each ``("field", name)`` for an object
    member or ``("index", number)`` for an array element, so that a caller may inline
    them; None for other paths.

    Raises ``ValueError`` with a readable message when the expression is not valid.
    """
    if not isinstance(expr, str):
        raise ValueError(f"a jsonpath must be a string, got {type(expr).__name__}")
    if not expr.strip():
        raise ValueError("empty jsonpath")
    try:
        with warnings.catch_warnings():
            # jsonpath-ng warns about syntax it will drop in 2.0; the expression still
            # works today and a warning per path at every start would only be noise.
            warnings.simplefilter("ignore")
            parsed = jsonpath_ng.ext.parse(expr)
    except Exception as exc:  # jsonpath-ng raises several unrelated exception types
        raise ValueError(f"invalid jsonpath {expr!r}: {_parse_message(exc)}") from None

    steps = _plain_steps(parsed) if _fast_path_agrees() else None
    if steps is not None:
        function = _build(steps)
        function.fast = True  # type: ignore[attr-defined]
        singular = all(kind in (_FIELD, _INDEX) for kind, _ in steps)
        one = _build_singular(steps, one=True) if singular else None
        function.one = one  # type: ignore[attr-defined]
        function.lookups = tuple(steps) if singular else None  # type: ignore[attr-defined]
    else:
        function = _fallback(parsed)
        function.fast = False  # type: ignore[attr-defined]
        function.one = None  # type: ignore[attr-defined]
        function.lookups = None  # type: ignore[attr-defined]
    function.expr = expr  # type: ignore[attr-defined]
    return function


def _parse_message(exc: Exception) -> str:
    message = str(exc).strip() or type(exc).__name__
    if message == "Parse error near the end of string!":
        return "unexpected end of the expression"
    return message


def _fallback(parsed: jp.JSONPath) -> PathFunction:
    find = parsed.find

    def run(data: Any) -> list:
        matches = find(data)
        # A few jsonpath-ng extensions (`sorted`) return one datum instead of a list.
        if isinstance(matches, jp.DatumInContext):
            return [matches.value]
        return [match.value for match in matches]

    return run


# -- turning jsonpath-ng's syntax tree into plain steps ---------------------------------

def _plain_steps(node: jp.JSONPath) -> list[tuple] | None:
    """The plain steps of a parsed expression, or None when it is not a plain path."""
    if jp.auto_id_field is not None:
        # Auto ids add pseudo-fields that only jsonpath-ng knows how to produce.
        return None
    flat: list[jp.JSONPath] = []
    if not _flatten(node, flat):
        return None
    steps: list[tuple] = []
    part: Any  # each node kind has its own attributes
    for position, part in enumerate(flat):
        kind = type(part)
        if kind is jp.Root:
            # `$` at the start is the data itself; anywhere else it jumps back to the
            # root, which plain steps cannot express.
            if position != 0:
                return None
        elif kind is jp.Fields:
            # Before jsonpath-ng 1.11 a field named "*" was a wildcard.
            if getattr(part, "_deprecated_wildcard_use", "*" in part.fields):
                return None
            fields = tuple(part.fields)
            steps.append((_FIELD, fields[0]) if len(fields) == 1 else (_FIELDS, fields))
        elif kind is jp.Index:
            indexes = tuple(part.indices)
            if not all(type(i) is int for i in indexes):
                return None
            steps.append((_INDEX, indexes[0]) if len(indexes) == 1 else (_INDEXES, indexes))
        elif kind is _Wildcard:
            steps.append((_WILDCARD, None))
        elif kind is jp.Slice:
            # Older releases had no Wildcard and used an empty Slice for `[*]`.
            if getattr(part, "_deprecated_wildcard_use", True):
                return None
            steps.append((_SLICE, slice(part.start, part.end, part.step)))
        else:
            return None
    return steps


def _flatten(node: jp.JSONPath, out: list) -> bool:
    # `a.(b.c)` and `(a.b).c` find the same values, so a tree of Child nodes is a chain.
    if type(node) is jp.Child:
        return _flatten(node.left, out) and _flatten(node.right, out)
    out.append(node)
    return True


# -- building the function ---------------------------------------------------------------

def _build(steps: list[tuple]) -> PathFunction:
    if all(kind in (_FIELD, _INDEX) for kind, _ in steps):
        return _build_singular(steps)
    if steps[-1][0] is _WILDCARD and all(kind in (_FIELD, _INDEX) for kind, _ in steps[:-1]):
        return _build_singular(steps[:-1], wildcard=True)
    return _build_general(steps)


def _build_singular(steps: list[tuple], one: bool = False,
                    wildcard: bool = False) -> Callable[[Any], Any]:
    """A path that matches at most one value, as straight-line generated code.

    Keys and indexes are passed in as constants, never pasted into the source, so no
    expression can inject code. With ``one``, the function returns the value itself or
    MISSING instead of a list. With ``wildcard``, the path ends with ``[*]`` after those
    steps (``$.tags[*]``): the function returns the items of the array, or the values of
    the object, found there.
    """
    if not steps and not wildcard:
        return (lambda data: data) if one else (lambda data: [data])
    none = "_MISSING" if one else "[]"
    namespace: dict[str, Any] = {"_MISSING": _MISSING, "_seq": (list, tuple)}
    lines = ["def path(v):"]
    for n, (kind, key) in enumerate(steps):
        name = f"k{n}"
        namespace[name] = key
        if kind is _FIELD:
            # jsonpath-ng looks a member up with `.get`: only objects have members.
            lines += [
                f"    if not isinstance(v, dict): return {none}",
                f"    v = v.get({name}, _MISSING)",
                f"    if v is _MISSING: return {none}",
            ]
        else:
            # jsonpath-ng: indexes apply to arrays only; -len <= i < len, else nothing.
            check = f"{name} < len(v)" if key >= 0 else f"-{name} <= len(v)"
            lines += [
                f"    if not isinstance(v, _seq): return {none}",
                f"    if not ({check}): return {none}",
                f"    v = v[{name}]",
            ]
    if wildcard:
        # as the general loop: array items, object values, nothing from a scalar
        lines += [
            "    if isinstance(v, _seq): return list(v)",
            "    if isinstance(v, dict): return list(v.values())",
            "    return []",
        ]
    else:
        lines.append("    return v" if one else "    return [v]")
    exec(compile("\n".join(lines), "<nwpipe jsonpath>", "exec"), namespace)  # noqa: S102
    return namespace["path"]


def _build_general(steps: list[tuple]) -> PathFunction:
    """A path with wildcards, slices or several selectors: one list of values per step."""
    compiled = tuple(steps)

    def path(data: Any) -> list:
        values = [data]
        for kind, arg in compiled:
            found: list = []
            append = found.append
            if kind is _FIELD:
                for v in values:
                    if isinstance(v, dict):
                        v = v.get(arg, _MISSING)
                        if v is not _MISSING:
                            append(v)
            elif kind is _WILDCARD:
                for v in values:
                    if isinstance(v, (list, tuple)):
                        found.extend(v)
                    elif isinstance(v, dict):
                        found.extend(v.values())
            elif kind is _INDEX:
                for v in values:
                    if isinstance(v, (list, tuple)) and -len(v) <= arg < len(v):
                        append(v[arg])
            elif kind is _SLICE:
                if arg.step != 0:
                    for v in values:
                        if isinstance(v, (list, tuple)):
                            found.extend(v[arg])
            elif kind is _FIELDS:
                for v in values:
                    if isinstance(v, dict):
                        for key in arg:
                            item = v.get(key, _MISSING)
                            if item is not _MISSING:
                                append(item)
            else:  # _INDEXES
                for v in values:
                    if isinstance(v, (list, tuple)):
                        size = len(v)
                        for i in arg:
                            if -size <= i < size:
                                append(v[i])
            if not found:
                return found
            values = found
        return values

    return path


# -- checking the fast path against the installed jsonpath-ng ----------------------------

_PROBE_PATHS = (
    "$", "$.a", "$.a.b", "$['a']", '$["a"]', "$.a[0]", "$.a[-1]", "$.a[5]", "$.a[-5]",
    "$[0]", "$.a[*]", "$.*", "$.a[*].b", "$.a[1:]", "$.a[:2]", "$.a[::2]", "$.a[::0]",
    "$['a','b']", "$.a[0,1]", "$.a[:]", "$.a.0",
)
_PROBE_DATA: tuple[Any, ...] = (
    {"a": {"b": 1, "0": 2}, "b": [1, 2]},
    {"a": [{"b": 1}, {"c": 2}, 3, None, "xy"], "b": None},
    {"a": "abc"},
    {"a": []},
    {"a": None},
    [1, {"a": 2}],
    "abc",
    5,
    None,
)


@functools.cache
def _fast_path_agrees() -> bool:
    """True when the fast path gives jsonpath-ng's results on edge cases.

    jsonpath-ng's rules for odd cases (an index on a string, a wildcard on a scalar)
    changed over its releases; this keeps results exact whatever version is installed.
    """
    try:
        return _probe()
    except Exception:  # an unexpected jsonpath-ng: exact results matter more than speed
        return False


def _probe() -> bool:
    for expr in _PROBE_PATHS:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            parsed = jsonpath_ng.ext.parse(expr)
        steps = _plain_steps(parsed)
        if steps is None:
            continue  # not plain with this jsonpath-ng: such paths always run through it
        fast = _build(steps)
        singular = all(kind in (_FIELD, _INDEX) for kind, _ in steps)
        one = _build_singular(steps, one=True) if singular else None
        slow = _fallback(parsed)
        for data in _PROBE_DATA:
            try:
                expected = slow(data)
            except Exception:
                return False
            if fast(data) != expected:
                return False
            if one is not None and [one(data)] != (expected or [MISSING]):
                return False
    return True
