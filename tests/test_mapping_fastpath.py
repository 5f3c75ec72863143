"""The fast paths of a mapping give exactly what the general ones give.

A fields-mode mapping runs as generated code with plain paths written out as lookups,
and a template renders with the event itself as its variables when it names no Jinja
global. Both must agree with jsonpath-ng and with the general rendering on every shape of
data, including the odd ones (wrong types, nulls, negative and out-of-range indexes).
"""

from __future__ import annotations

import copy
import itertools
import random
import re
import warnings

import jsonpath_ng.ext
import pytest

from nwpipe.errors import EventError
from nwpipe.transform.jsonpaths import _fast_path_agrees
from nwpipe.transform.mapping import compile_mappings
from nwpipe.transform.templating import (
    compile_template_string,
    derive_environment,
    event_renderer,
    make_environment,
    render,
    template_variables,
)

PATHS = [
    "$", "$.a", "$.a.b", "$['a']", "$['x y']", "$.a[0]", "$.a[-1]", "$.a[2]", "$.a[-7]",
    "$.a[0].b", "$.a[1].b", "$.a[-2][0]", "$.a.b.a", "$.b[0].a", "$[0]", "$.a.0", "$.a['0']",
    "$.a[5].b", "$.b.a", "$.a.a.a.b",
]

EVENTS = [
    {"a": {"b": 1, "0": "zero", "a": {"a": {"b": "deep"}}}, "b": [1, 2, 3], "x y": 1},
    {"a": [{"b": 1}, {"b": [1, 2]}, 3, None, "str", [{"b": 2}], {}], "b": {"a": None}},
    {"a": "string", "b": 5},
    {"a": None, "b": None},
    {"a": [], "b": {}},
    {"a": {}, "b": ""},
    {},
    {"a": [[1, 2], [3, [4, 5]], []], "b": [{"a": 1}]},
    {"a": [None, None], "b": [False, True, 0]},
    {"a": 0, "b": False},
    {"a": [1, 2, 3, 4, 5, 6, 7], "b": ["s"]},
    {"a": ("tuple", "is", "a", "list")},
]


def jsonpath_ng_values(expr: str, data) -> list:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return [m.value for m in jsonpath_ng.ext.parse(expr).find(data)]


@pytest.fixture(scope="module")
def mapping():
    fields = {f"f{i}": {"path": expr, "default": "DEFAULT"} for i, expr in enumerate(PATHS)}
    fields.update({f"o{i}": expr for i, expr in enumerate(PATHS)})
    tables = {"m": {"keep": False, "omit_missing": True, "fields": fields}}
    # a field with a default is never omitted; the bare ones are, when nothing matches
    for table in fields.values():
        if isinstance(table, dict):
            table["omit_missing"] = False
    return compile_mappings(tables, make_environment())["m"]


@pytest.mark.skipif(not _fast_path_agrees(),
                    reason="the installed jsonpath-ng predates the fast path's semantics")
@pytest.mark.parametrize("index", range(len(EVENTS)))
def test_inlined_paths_match_jsonpath_ng(mapping, index):
    event = EVENTS[index]
    body = mapping.apply(event)
    for i, expr in enumerate(PATHS):
        expected = jsonpath_ng_values(expr, event)
        assert len(expected) <= 1, expr
        if expected:
            assert body[f"f{i}"] == expected[0], (expr, event)
            assert body[f"o{i}"] == expected[0], (expr, event)
        else:
            assert body[f"f{i}"] == "DEFAULT", (expr, event)
            assert f"o{i}" not in body, (expr, event)


def test_generated_code_keeps_field_order_and_later_fields_win():
    tables = {"m": {"fields": {"z": "$.a", "a": {"value": 1}, "alerttype": "$.b"}}}
    mapping = compile_mappings(tables, make_environment())["m"]
    body = mapping.apply({"alerttype": "start", "a": "x", "b": "y"})
    assert body == {"alerttype": "y", "a": 1, "b": "y", "z": "x"}
    assert list(body)[-1] == "z"


def test_names_and_keys_are_data_never_code():
    # Quotes, newlines and Python syntax in names, keys and constants stay plain data.
    name = "x'] + __import__('os') + ['\n"
    key = 'k" or __import__("os") or "'
    tables = {"m": {"keep": False, "fields": {
        name: {"path": f"$['{key}']", "default": name},
        "b": {"value": "\'\'\'\"\"\"\\"},
    }}}
    mapping = compile_mappings(tables, make_environment())["m"]
    assert mapping.apply({}) == {name: name, "b": "\'\'\'\"\"\"\\"}
    assert mapping.apply({key: 5}) == {name: 5, "b": "\'\'\'\"\"\"\\"}


# -- templates rendered with the event as their variables ------------------------------------

TEMPLATES = [
    "{{ algorithm | upper }} {{ alerttype }} for {{ customer }}",
    "{{ event.algorithm }} {{ event['odd-key'] }}",
    "{{ event }}",                                   # a field named "event" loses to the event
    "{% for i in range(2) %}{{ i }}{% endfor %}",     # names a global
    "{% set ns = namespace(n=0) %}{{ ns.n }}",        # names a global
    "{{ range }}",                                    # a field named like a global wins
    "{% set x = customer %}{{ x }}-{{ x | length }}",
    "{{ missing | default('n/a') }} {{ srcip | join_ips }}",
    "{% macro m(v) %}<{{ v }}>{% endmacro %}{{ m(customer) }}",
]

TEMPLATE_EVENTS = [
    {"algorithm": "knownbotnet", "alerttype": "start", "customer": "acme",
     "srcip": ["1.2.3.4"], "odd-key": 1},
    {"algorithm": "x", "alerttype": "end", "customer": "globex", "srcip": [], "odd-key": None,
     "event": "a field named event", "range": "a field named range"},
]


@pytest.mark.parametrize("source", TEMPLATES)
@pytest.mark.parametrize("undefined", ["strict", "lenient"])
@pytest.mark.parametrize("json_body", [False, True])
def test_event_renderer_matches_general_render(source, undefined, json_body):
    env = derive_environment(make_environment(), undefined=undefined, json_body=json_body)
    template = compile_template_string(env, source, key="k")
    fast = event_renderer(template, source)
    for event in TEMPLATE_EVENTS:
        try:
            expected = render(template, template_variables(event, env.globals))
        except Exception as exc:
            with pytest.raises(type(exc)):
                fast(event)
        else:
            assert fast(event) == expected


def test_event_renderer_keeps_globals_for_included_templates(tmp_path):
    (tmp_path / "part.j2").write_text("{% for i in range(2) %}{{ customer }}{% endfor %}")
    (tmp_path / "body.j2").write_text("[{% include 'part.j2' %}]")
    env = make_environment([tmp_path])
    template = env.get_template("body.j2")
    assert event_renderer(template)({"customer": "a"}) == "[aa]"


def test_strict_undefined_still_names_the_variable():
    tables = {"m": {"fields": {"t": "{{ sevrity }}"}}}
    mapping = compile_mappings(tables, make_environment())["m"]
    with pytest.raises(EventError, match="'sevrity' is undefined"):
        mapping.apply({"severity": "high"})


@pytest.mark.parametrize("a,b", list(itertools.product([0, 1], repeat=2)))
def test_typed_templates_and_defaults_in_generated_code(a, b):
    tables = {"m": {"keep": False, "fields": {
        "n": {"template": "{{ x }}", "type": "int"},
        "flag": {"template": "{{ y }}", "type": "bool"},
        "miss": {"path": "$.nothing", "default": [1]},
        "all": {"path": "$.list[*]", "list": True},
    }}}
    mapping = compile_mappings(tables, make_environment())["m"]
    body = mapping.apply({"x": a, "y": b, "list": [a] * b})
    assert body == {"n": a, "flag": bool(b), "miss": [1], "all": [a] * b}


# -- drop and rename written out as code, against a plain reference -----------------------

_GONE = object()


def _reference(event: dict, drops: list, renames: dict) -> dict:
    """Drop, then rename, on a deep copy: the obvious way, to compare with."""
    out = copy.deepcopy(event)

    def pop(parts):
        node = out
        for part in parts[:-1]:
            node = node.get(part, _GONE) if isinstance(node, dict) else _GONE
        if not isinstance(node, dict) or parts[-1] not in node:
            return _GONE
        return node.pop(parts[-1])

    for path in drops:
        pop(path.split("."))
    for old, new in renames.items():
        value = pop(old.split("."))
        if value is _GONE:
            continue
        node, parts = out, new.split(".")
        for depth, part in enumerate(parts[:-1]):
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise EventError(f"cannot set '{new}': '{'.'.join(parts[:depth + 1])}'")
            node = child
        node[parts[-1]] = value
    return out


def _nested_event(rng: random.Random, depth: int = 0) -> dict:
    event: dict = {}
    for key in rng.sample(["a", "b", "c", "d"], rng.randrange(0, 5)):
        roll = rng.random()
        if roll < 0.4 and depth < 3:
            event[key] = _nested_event(rng, depth + 1)
        elif roll < 0.5:
            event[key] = [rng.randrange(5), {"a": 1}]
        elif roll < 0.6:
            event[key] = None
        else:
            event[key] = rng.choice(["ü", 10**30, 0, "", True])
    return event


def _paths(rng: random.Random, count: int) -> list[str]:
    return [".".join(rng.choice("abcd") for _ in range(rng.randrange(1, 4)))
            for _ in range(count)]


@pytest.mark.parametrize("seed", range(300))
def test_drop_and_rename_code_matches_a_plain_reference(seed):
    rng = random.Random(seed)
    drops = _paths(rng, rng.randrange(0, 4))
    renames = dict(zip(_paths(rng, 3), _paths(rng, 3)))
    renames = dict(list(renames.items())[:rng.randrange(0, 4)])
    mapping = compile_mappings({"m": {"drop": drops, "rename": renames}},
                               make_environment())["m"]
    for _ in range(20):
        event = _nested_event(rng)
        before = copy.deepcopy(event)
        try:
            expected = _reference(event, drops, renames)
        except EventError as exc:
            with pytest.raises(EventError, match=re.escape(str(exc))):
                mapping.apply(event)
        else:
            body = mapping.apply(event)
            assert body == expected, (drops, renames, event)
            # what no drop or rename reaches is shared with the event, not copied
            touched = {path.split(".")[0] for path in (*drops, *renames, *renames.values())}
            for key, value in body.items():
                if key not in touched and isinstance(value, dict):
                    assert value is event[key]
        assert event == before, "the mapping changed the event"


def test_first_failing_field_is_reported_whatever_the_layout():
    # keep = false puts the leading fields into one dict display, computing the fields
    # that can fail first: the first of them in field order is still the one reported.
    tables = {"m": {"keep": False, "fields": {
        "a": "{{ x | upper }}", "b": "$.b", "c": {"template": "{{ y }}", "type": "int"},
        "d": "$.list[*]", "e": "{{ z }}",
    }}}
    mapping = compile_mappings(tables, make_environment())["m"]
    with pytest.raises(EventError, match=r"^mappings\.m\.fields\.a: 'x' is undefined"):
        mapping.apply({})
    with pytest.raises(EventError, match=r"^mappings\.m\.fields\.c: 'y' is undefined"):
        mapping.apply({"x": "1"})
    with pytest.raises(EventError, match=r"^mappings\.m\.fields\.c: cannot convert 'q'"):
        mapping.apply({"x": "1", "y": "q"})
    with pytest.raises(EventError, match=r"^mappings\.m\.fields\.e: 'z' is undefined"):
        mapping.apply({"x": "1", "y": "2"})
    assert mapping.apply({"x": "a", "y": "2", "z": 3, "list": [1, 2]}) == {
        "a": "A", "b": None, "c": 2, "d": [1, 2], "e": "3"}


@pytest.mark.parametrize("keep", [False, True])
def test_field_order_with_left_out_and_nested_fields(keep):
    tables = {"m": {"keep": keep, "fields": {
        "a": "$.a", "b": {"path": "$.b", "omit_missing": True}, "c": {"value": [1]},
        "n.x": "$.a", "d": "{{ a }}", "n.y": {"path": "$.none", "omit_missing": True},
    }}}
    mapping = compile_mappings(tables, make_environment())["m"]
    event = {"a": 1, "n": {"keep": True}}
    body = mapping.apply(event)
    expected = {"a": 1, "c": [1], "n": {"x": 1}, "d": "1"}
    if keep:
        expected = {"a": 1, "n": {"keep": True, "x": 1}, "c": [1], "d": "1"}
    assert body == expected and list(body) == list(expected)
    assert event == {"a": 1, "n": {"keep": True}}
    body = mapping.apply({"a": 1, "b": 2})
    assert list(body) == ["a", "b", "c", "n", "d"]


def test_an_event_that_is_not_an_object_is_refused_by_the_generated_code():
    for name in ("m", "odd {0} name"):
        mapping = compile_mappings({name: {"fields": {"a": "$.a"}}}, make_environment())[name]
        for event in ([1], "text", None, 5):
            with pytest.raises(EventError) as caught:
                mapping.apply(event)
            assert str(caught.value) == (f"mapping '{name}': the event is a "
                                         f"{type(event).__name__}, not a JSON object")
