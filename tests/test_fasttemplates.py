"""Simple templates compiled to plain functions give exactly what Jinja gives.

A differential test: every template of the corpus is rendered for every event both by
its compiled function (nwpipe.transform.fasttemplates) and by Jinja with a full context
(templating.render), in both undefined modes, as a text field and inside a JSON body;
the text, or the exception's type and the one-line message a user sees, must be equal.
"""

from __future__ import annotations

import threading
import time

import pytest

from nwpipe.errors import EventError
from nwpipe.transform.fasttemplates import compile_simple, compile_simple_expression
from nwpipe.transform.limits import RenderLimits
from nwpipe.transform.mapping import compile_mappings
from nwpipe.transform.templating import (
    compile_condition,
    compile_template_string,
    derive_environment,
    describe_render_error,
    make_environment,
    render,
    template_variables,
)

# Templates the compiler must take (each is checked to compile to a function).
SIMPLE = [
    "{{ algorithm | upper }} {{ alerttype }} for {{ customer }}",
    "plain text, no expression",
    "{{ algorithm }}",
    "{{ metrics.bits.max }}",
    "{{ metrics['bits']['max'] }}",
    "{{ metrics.items }}",
    "{{ metrics.keys }} {{ metrics['items'] }} {{ event[0] }} {{ metrics.bits['max'] }}",
    "{{ metrics.bits.max.real }} {{ metrics.items.__self__ }}",
    "{{ srcip[0] }} {{ srcip[-1] }} {{ srcip[5] }}",
    "{{ event['odd-key'] }} {{ event.algorithm }}",
    "{{ event }}",
    "{{ nothing }}",
    "{{ nothing.deeper }}",
    "{{ nothing | default('n/a') }} {{ nothing is defined }} {{ algorithm is defined }}",
    "{{ srcip | join_ips }} / {{ srcip | join_ips(' ') }}",
    "{{ severity | lookup({'high': 'critical', 'low': 'info'}) }}",
    "{{ severity | lookup({'high': 'critical'}, 'other') }}",
    "{{ start | isotime }} {{ start | isotime('%d %b %Y') }}",
    "{{ summary | clip(12, marker='...') }}",
    "{{ summary | clip(10, unit='bytes') }}",
    "{{ srcip | first }} {{ tags | join(',') }} {{ tags | length }}",
    "{{ summary | replace('a', 'A') }}",
    "{{ big }} {{ big | string }} {{ ratio }} {{ flag }} {{ nul }}",
    "{{ algorithm.__class__ }}",
    "{{ algorithm.__class__.__mro__ }}",
    "{{ metrics.__init__ }}",
    "{{ algorithm['__class__'] }}",
    "{{ algorithm.upper }}",
    "{{ algorithm ~ '-' ~ customer ~ nothing }}",
    "{{ severity == 'high' }} {{ 'a' in algorithm }} {{ big > 5 }} {{ 1 < big <= big }}",
    "{{ not flag }} {{ flag and severity }} {{ nul or 'x' }}",
    "{{ severity if flag else 'low' }}",
    "{{ [algorithm, customer] }} {{ (algorithm,) }} {{ {'k': customer} }}",
    "{{ tags | unique | list }}",
    "{{ event | tojson }}",
    "{{ srcip | tojson }}",
    "{{ big | int }} {{ ratio | round(1) }} {{ summary | wordcount }}",
    "line 1\n{{ algorithm | upper }}\nline 3 {{ nothing.x }}",
    "{{ unicode }} {{ unicode | upper }} {{ unicode | length }}",
    "{{ route }} {{ range }}",
    "{{ routing_key }} {{ customer }}",
    "{{ 'abc' ~ customer }}",
]

# Templates that keep Jinja's way (statements, calls, arithmetic, whole-context filters).
NOT_SIMPLE = [
    "{% for ip in srcip %}{{ ip }}{% endfor %}",
    "{% set x = 1 %}{{ x }}",
    "{{ algorithm.upper() }}",
    "{{ now() }}",
    "{{ big * 2 }}",
    "{{ 'abc' | upper }}",
    "{{ 1 }}",
    "{{ none }}",
    "{{ srcip | map('upper') | join }}",
    "{{ srcip[0:2] }}",
    "{{ severity if flag }}",
    "{{ x }}" * 40,
]

EVENTS = [
    {"algorithm": "knownbotnet", "alerttype": "start", "customer": "acme",
     "srcip": ["1.2.3.4", "", "5.6.7.8"], "odd-key": 1, "severity": "high",
     "metrics": {"bits": {"max": 10, "avg": 1.5}}, "start": 1689391131, "flag": True,
     "summary": "a long summary of an alert", "tags": ["a", "b", "a"], "big": 10**30,
     "ratio": 0.25, "nul": None, "unicode": "ünïcødé ☃ 日本"},
    {"algorithm": "x", "alerttype": "end", "customer": "globex", "srcip": [],
     "odd-key": None, "severity": "low", "metrics": {}, "start": 0, "flag": False,
     "summary": "", "tags": [], "big": -1, "ratio": -0.0, "nul": None, "unicode": "",
     "event": "a field named event", "range": "a field named range",
     "routing_key": "from the event"},
    {"algorithm": None, "alerttype": None, "customer": None, "srcip": None,
     "severity": None, "metrics": None, "start": None, "flag": None, "summary": None,
     "tags": None, "big": None, "ratio": None, "unicode": None},
    {"algorithm": 5, "customer": ["a", "b"], "srcip": "10.0.0.1", "metrics": [1, 2],
     "severity": {"k": "v"}, "start": "2023-07-15T03:18:51Z", "flag": 0, "summary": 17,
     "tags": "abc", "big": 2**64, "ratio": 1e300},
    {"metrics": {"items": 5, "bits": {"max": None}}, "odd-key": {"a": 1}},
    {},
]

VARS = {"routing_key": "R-KEY", "route": "configured"}


def outcome(function, event):
    try:
        return "ok", function(event)
    except Exception as exc:  # the type and the message a user sees must agree
        return type(exc).__name__, describe_render_error(exc)


def environment(undefined: str, json_body: bool):
    env = derive_environment(make_environment(), undefined=undefined, json_body=json_body)
    env = env.overlay()
    env.globals = {**env.globals, **VARS}  # a mapping's vars are globals there
    return env


@pytest.mark.parametrize("json_body", [False, True])
@pytest.mark.parametrize("undefined", ["strict", "lenient"])
@pytest.mark.parametrize("source", SIMPLE)
def test_compiled_template_matches_jinja(source, undefined, json_body):
    env = environment(undefined, json_body)
    if json_body:
        source = '{"t": {{ algorithm }}, "v": [' + source.replace("\n", " ") + "]}"
    template = compile_template_string(env, source, key="k")
    fast = compile_simple(template, source, env.globals, VARS, env.limits)
    assert fast is not None, "the compiler should take this template"
    for event in EVENTS:
        expected = outcome(lambda e: render(template, template_variables(e, env.globals,
                                                                         VARS)), event)
        assert outcome(fast, event) == expected, event


@pytest.mark.parametrize("source", NOT_SIMPLE)
def test_other_templates_keep_jinja(source):
    env = environment("strict", False)
    template = compile_template_string(env, source, key="k")
    assert compile_simple(template, source, env.globals, VARS, env.limits) is None


def test_filter_arguments_are_new_objects_at_every_rendering():
    # Jinja writes a constant list or dict argument as a literal: a filter that changes
    # it must not see its change at the next rendering.
    def grab(value, table):
        table["seen"] = table.get("seen", 0) + 1
        return table["seen"]

    env = make_environment(filters={"grab": grab})
    source = "{{ x | grab({'a': [1]}) }}"
    template = compile_template_string(env, source, key="k")
    fast = compile_simple(template, source, env.globals, {}, env.limits)
    assert fast is not None
    assert [fast({"x": 1}) for _ in range(3)] == ["1", "1", "1"]


def test_size_limit_applies_to_compiled_templates():
    env = make_environment(limits=RenderLimits(max_bytes=100))
    tables = {"m": {"fields": {"t": "{{ summary }}!"}}}
    mapping = compile_mappings(tables, env)["m"]
    assert mapping.apply({"summary": "x" * 99})["t"] == "x" * 99 + "!"
    with pytest.raises(EventError, match=r"^mappings\.m\.fields\.t: rendered text longer "
                                         r"than template_max_bytes \(100\)$"):
        mapping.apply({"summary": "x" * 100})


def test_time_limit_stops_a_slow_filter_in_a_compiled_template():
    def slow(value):
        while True:  # a registered filter that never ends
            pass

    env = make_environment(filters={"slow": slow}, limits=RenderLimits(time_limit=0.3))
    tables = {"m": {"fields": {"t": "{{ summary | slow }}", "u": "$.summary"}}}
    mapping = compile_mappings(tables, env)["m"]
    started = time.monotonic()
    with pytest.raises(EventError, match=r"^mappings\.m\.fields\.t: rendering took longer "
                                         r"than template_time_limit \(0\.3 s\)"):
        mapping.apply({"summary": "s"})
    assert time.monotonic() - started < 30
    # the guard is released: the next event renders normally
    env2 = make_environment(limits=RenderLimits(time_limit=0.3))
    other = compile_mappings({"m": {"fields": {"t": "{{ summary | upper }}"}}}, env2)["m"]
    assert other.apply({"summary": "s"})["t"] == "S"


def test_errors_name_the_template_line():
    tables = {"m": {"fields": {"t": "first {{ algorithm }}\nsecond\n{{ sevrity | upper }}"}}}
    mapping = compile_mappings(tables, make_environment())["m"]
    with pytest.raises(EventError) as caught:
        mapping.apply({"algorithm": "a", "severity": "high"})
    assert str(caught.value) == ("mappings.m.fields.t: 'sevrity' is undefined "
                                 "(line 3 of the template)")


def test_unsafe_attribute_is_an_error_not_a_blank():
    for undefined in ("strict", "lenient"):
        tables = {"m": {"undefined": undefined, "fields": {"t": "{{ algorithm.__class__ }}"}}}
        mapping = compile_mappings(tables, make_environment())["m"]
        with pytest.raises(EventError, match="access to attribute '__class__' of 'str' "
                                             "object is unsafe"):
            mapping.apply({"algorithm": "a"})


def test_compiled_template_on_another_thread_keeps_the_size_limit():
    # Only the main thread can be interrupted; elsewhere the size check still applies.
    env = make_environment(limits=RenderLimits(max_bytes=10))
    mapping = compile_mappings({"m": {"fields": {"t": "{{ s | upper }}"}}}, env)["m"]
    results: list = []

    def work():
        results.append(mapping.apply({"s": "short"})["t"])
        try:
            mapping.apply({"s": "much too long"})
        except EventError as exc:
            results.append(str(exc))

    thread = threading.Thread(target=work)
    thread.start()
    thread.join(60)
    assert results == ["SHORT", "mappings.m.fields.t: rendered text longer than "
                                "template_max_bytes (10)"]


# -- `when` conditions: simple expressions compiled the same way -------------------------

CONDITIONS = [
    "severity == 'high'",
    "severity in ['high', 'medium'] and alerttype != 'ongoing'",
    "event['odd-key'] == 1",
    "nothing",
    "nothing is defined",
    "not nothing",
    "nothing.attr",
    "srcip | length > 1",
    "metrics.bits.max > 5",
    "algorithm.__class__",
    "customer ~ 'x' == 'acmex'",
    "big > 10",
    "'a' in tags",
    "tags",
    "severity | lower == 'high'",
    "severity if flag else nothing",
    "range",
    "1 == 1",
    "[1, 2]",
    "(severity == 'high') or nul",
    "severity | lookup({'high': True}, False)",
]


@pytest.mark.parametrize("undefined", ["strict", "lenient"])
@pytest.mark.parametrize("expr", CONDITIONS)
def test_compiled_condition_matches_jinja(expr, undefined):
    env = make_environment()
    variant = derive_environment(env, undefined=undefined)
    assert compile_simple_expression(variant, expr, env.limits) is not None
    test = compile_condition(env, expr, key="outputs.o.when", undefined=undefined)
    jinja = variant.compile_expression(expr, undefined_to_none=False)

    def reference(event):
        try:
            return bool(jinja(template_variables(event)))
        except Exception as exc:
            raise EventError(f"outputs.o.when: {describe_render_error(exc)}") from None

    for event in EVENTS:
        assert outcome(test, event) == outcome(reference, event), event


@pytest.mark.parametrize("expr", ["range(3) | list", "algorithm.upper()", "big * 2",
                                  "srcip | map('upper') | list", "severity ==", "a b"])
def test_other_conditions_keep_jinja(expr):
    env = make_environment()
    assert compile_simple_expression(env, expr, env.limits) is None


def test_time_limit_stops_a_slow_filter_in_a_compiled_condition():
    def slow(value):
        while True:
            pass

    env = make_environment(filters={"slow": slow}, limits=RenderLimits(time_limit=0.3))
    test = compile_condition(env, "severity | slow", key="outputs.o.when")
    with pytest.raises(EventError, match=r"^outputs\.o\.when: rendering took longer than "
                                         r"template_time_limit \(0\.3 s\)"):
        test({"severity": "high"})


def test_template_file_errors_name_the_file_and_line(tmp_path):
    (tmp_path / "body.j2").write_text('{"a": {{ algorithm }},\n "b": {{ nothing.x }}}\n')
    env = derive_environment(make_environment([tmp_path]), json_body=True)
    template = env.get_template("body.j2")
    source = (tmp_path / "body.j2").read_text()
    fast = compile_simple(template, source, env.globals, {}, env.limits)
    assert fast is not None
    event = {"algorithm": "a"}
    expected = outcome(lambda e: render(template, template_variables(e, env.globals)), event)
    assert expected == ("UndefinedError", "'nothing' is undefined (template 'body.j2' line 2)")
    assert outcome(fast, event) == expected
