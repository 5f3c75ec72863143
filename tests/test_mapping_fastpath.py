"""The fast paths of a mapping give exactly what the general ones give.

A fields-mode mapping runs as generated code with plain paths written out as lookups,
and a template renders with the event itself as its variables when it names no Jinja
global. Both must agree with jsonpath-ng and with the general rendering on every shape of
data, including the odd ones (wrong types, nulls, negative and out-of-range indexes).
"""

from __future__ import annotations

import itertools
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
