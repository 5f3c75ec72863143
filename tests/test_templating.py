"""The sandboxed Jinja environment: filters, undefined variables, files, conditions."""

from __future__ import annotations

import random
import re
import sys

import jinja2
import pytest

from nwpipe.errors import ConfigError, EventError
from nwpipe.transform import templating
from nwpipe.transform.templating import (
    JSONText,
    compile_condition,
    compile_template_string,
    customer_template,
    derive_environment,
    describe_render_error,
    get_template,
    make_environment,
    render,
    template_variables,
)

EVENT = {
    "alerttype": "start", "algorithm": "knownbotnet", "customer": "acme",
    "severity": "medium", "srcip": ["1.2.3.4", "5.6.7.8"], "dstip": [],
    "start": 1689391131, "end": 0, "duration": 3725, "rules": None,
    "metrics": {"bits": {"max": 12}, "count": {"flow": 1}}, "weird-key": "w",
}


def run(source: str, event: dict = EVENT, *, env=None, undefined: str = "strict",
        json_body: bool = False) -> str:
    env = derive_environment(env or make_environment(), undefined=undefined,
                             json_body=json_body)
    template = compile_template_string(env, source, key="test")
    return render(template, template_variables(event, env.globals))


# -- variables ------------------------------------------------------------------------------

def test_event_fields_are_variables():
    assert run("{{ algorithm | upper }} {{ alerttype }} for {{ customer }}") == \
        "KNOWNBOTNET start for acme"
    assert run("{{ metrics.bits.max }} {{ metrics['count'].flow }}") == "12 1"


def test_event_is_the_whole_event():
    assert run("{{ event['weird-key'] }} {{ event.severity }}") == "w medium"


def test_jinja_globals_still_work():
    assert run("{% for i in range(3) %}{{ i }}{% endfor %}") == "012"


# -- undefined variables -----------------------------------------------------------------------

def test_strict_undefined_names_the_variable():
    with pytest.raises(jinja2.UndefinedError) as info:
        run("{{ sevrity }}")
    assert "'sevrity' is undefined" in describe_render_error(info.value)


def test_strict_undefined_attribute_of_missing_variable():
    with pytest.raises(jinja2.UndefinedError, match="'nope' is undefined"):
        run("{{ nope.deeper }}")


def test_lenient_undefined_is_blank():
    assert run("[{{ nope }}][{{ nope.deeper }}]", undefined="lenient") == "[][]"


def test_default_and_is_defined_work_when_strict():
    assert run("{{ nope | default('n/a') }} {{ nope is defined }}") == "n/a False"


# -- the sandbox ----------------------------------------------------------------------------

ESCAPES = [
    "{{ ''.__class__.__mro__ }}",
    "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "{{ cycler.__init__.__globals__ }}",
    "{{ joiner.__init__.__globals__.os }}",
    "{{ lipsum.__globals__ }}",
    "{{ namespace.__init__ }}",
    "{{ event.__class__ }}",
    "{{ self._TemplateReference__context }}",
    "{{ ''.format.__globals__ }}",
    "{{ '{0.__class__}'.format(srcip) }}",
    "{% for c in ().__class__.__base__.__subclasses__() %}{{ c }}{% endfor %}",
    "{{ srcip.append('6.6.6.6') }}",
    "{{ metrics.update({'x': 1}) }}",
    "{{ metrics.pop('bits') }}",
]


@pytest.mark.parametrize("undefined", ["strict", "lenient"])
@pytest.mark.parametrize("json_body", [False, True])
@pytest.mark.parametrize("source", ESCAPES)
def test_sandbox_escapes_are_errors_not_data(source, undefined, json_body):
    event = {**EVENT, "srcip": list(EVENT["srcip"]), "metrics": dict(EVENT["metrics"])}
    with pytest.raises(jinja2.exceptions.SecurityError) as info:
        run(source, event, undefined=undefined, json_body=json_body)
    assert "unsafe" in describe_render_error(info.value)
    assert event["srcip"] == EVENT["srcip"] and event["metrics"] == EVENT["metrics"]


def test_templates_cannot_read_files_outside_template_dirs(tmp_path):
    (tmp_path / "t").mkdir()
    (tmp_path / "secret.txt").write_text("secret")
    env = make_environment([tmp_path / "t"])
    with pytest.raises(jinja2.TemplateNotFound):
        run('{% include "../secret.txt" %}', env=env)
    with pytest.raises(jinja2.TemplateNotFound):
        run('{% include "/etc/passwd" %}', env=env)


def test_make_environment_is_sandboxed():
    env = make_environment()
    assert isinstance(env, jinja2.sandbox.ImmutableSandboxedEnvironment)
    with pytest.raises(TypeError, match="sandboxed"):
        derive_environment(jinja2.Environment())


# -- filters --------------------------------------------------------------------------------

@pytest.mark.parametrize("value, expected", [
    (1689391131, "2023-07-15T03:18:51Z"),
    (1689391131.25, "2023-07-15T03:18:51.250Z"),
    ("1689391131", "2023-07-15T03:18:51Z"),
    (1689391131250, "2023-07-15T03:18:51.250Z"),  # milliseconds
    (0, ""),
    (0.0, ""),
    (None, ""),
    ("", ""),
])
def test_isotime(value, expected):
    assert run("{{ t | isotime }}", {"t": value}) == expected


def test_isotime_with_format():
    assert run("{{ start | isotime('%d %b %Y %H:%M') }}") == "15 Jul 2023 03:18"


@pytest.mark.parametrize("value", ["yesterday", True, [1], float("nan"), 1e30])
def test_isotime_rejects_what_is_not_a_time(value):
    with pytest.raises(ValueError, match="isotime"):
        run("{{ t | isotime }}", {"t": value})


def test_isotime_of_undefined():
    with pytest.raises(jinja2.UndefinedError):
        run("{{ nope | isotime }}")
    assert run("{{ nope | isotime }}", undefined="lenient") == ""


@pytest.mark.parametrize("value, expected", [
    (["1.2.3.4", "5.6.7.8"], "1.2.3.4, 5.6.7.8"),
    (["1.2.3.4", "", None], "1.2.3.4"),
    ([], ""),
    ("1.2.3.4", "1.2.3.4"),
    (None, ""),
])
def test_join_ips(value, expected):
    assert run("{{ ips | join_ips }}", {"ips": value}) == expected


def test_join_ips_separator_and_unique():
    assert run("{{ ips | unique | join_ips(' ') }}", {"ips": ["a", "b", "a"]}) == "a b"


def test_join_ips_rejects_objects():
    with pytest.raises(ValueError, match="join_ips"):
        run("{{ ips | join_ips }}", {"ips": {"a": 1}})


def test_tojson():
    text = run("{{ metrics | tojson }}|{{ 'a\"b' | tojson }}|{{ srcip | tojson(indent=2) }}")
    assert text == '{"bits":{"max":12},"count":{"flow":1}}|"a\\"b"|[\n  "1.2.3.4",\n  "5.6.7.8"\n]'
    assert type(templating.tojson([1])) is JSONText


@pytest.mark.parametrize("value, expected", [
    ("low", "1"), ("medium", "2"), ("HIGH", "3"), ("critical", "4"), ("bogus", "0"),
    (None, "0"),
])
def test_severity_number(value, expected):
    assert run("{{ s | severity_number }}", {"s": value}) == expected


def test_severity_number_default():
    assert run("{{ 'bogus' | severity_number(-1) }}") == "-1"


def test_lookup():
    table = "{'high': 'critical', 'medium': 'warning'}"
    assert run(f"{{{{ severity | lookup({table}) }}}}") == "warning"
    assert run(f"{{{{ 'low' | lookup({table}) }}}}") == "low"
    assert run(f"{{{{ 'low' | lookup({table}, 'info') }}}}") == "info"
    with pytest.raises(ValueError, match="lookup"):
        run("{{ 'low' | lookup('high') }}")


@pytest.mark.parametrize("value, expected", [
    (0, "0s"), (59, "59s"), (300, "5m"), (3725, "1h 2m 5s"), (90061, "1d 1h 1m 1s"),
    (299.6, "5m"), (None, ""), (-60, "-1m"),
])
def test_human_duration(value, expected):
    assert run("{{ d | human_duration }}", {"d": value}) == expected


def test_builtin_jinja_filters_a_user_reaches_for():
    assert run("{{ srcip | first }} {{ srcip | length }} {{ severity | title }} "
               "{{ srcip | join(';') }} {{ summary | default('none') }}") == \
        "1.2.3.4 2 Medium 1.2.3.4;5.6.7.8 none"


def test_plugin_filters_are_added_and_may_replace_builtins():
    env = make_environment(filters={"shout": lambda s: s.upper() + "!",
                                    "isotime": lambda v: "custom"})
    assert run("{{ algorithm | shout }} {{ start | isotime }}", env=env) == \
        "KNOWNBOTNET! custom"
    with pytest.raises(TypeError, match="not callable"):
        make_environment(filters={"bad": "not a function"})


# -- JSON bodies ----------------------------------------------------------------------------

def test_json_body_writes_every_expression_as_a_json_value():
    text = run('{"a": {{ algorithm }}, "n": {{ metrics.bits.max }}, "ips": {{ srcip }}, '
               '"none": {{ rules }}, "t": {{ true }}, "m": {{ metrics }}, '
               '"u": {{ srcip | unique }}, "j": {{ srcip | tojson }}}', json_body=True)
    assert text == ('{"a": "knownbotnet", "n": 12, "ips": ["1.2.3.4","5.6.7.8"], '
                    '"none": null, "t": true, "m": {"bits":{"max":12},"count":{"flow":1}}, '
                    '"u": ["1.2.3.4","5.6.7.8"], "j": ["1.2.3.4","5.6.7.8"]}')


def test_json_body_undefined():
    with pytest.raises(jinja2.UndefinedError):
        run('{"a": {{ nope }}}', json_body=True)
    assert run('{"a": {{ nope }}}', json_body=True, undefined="lenient") == '{"a": null}'


# -- compiling ------------------------------------------------------------------------------

def test_compile_template_string_syntax_error_names_key_and_line():
    env = make_environment()
    with pytest.raises(ConfigError) as info:
        compile_template_string(env, "ok\n{{ algorithm | }}", key="mappings.m.fields.title",
                                file="nwpipe.toml")
    error = info.value
    assert error.key == "mappings.m.fields.title" and error.file == "nwpipe.toml"
    assert "line 2 of the template" in str(error)
    assert str(error).startswith("nwpipe.toml: mappings.m.fields.title: Jinja syntax error")


def test_runtime_error_names_the_line():
    with pytest.raises(jinja2.UndefinedError) as info:
        run("line one\nline two\n{{ nope }}")
    assert describe_render_error(info.value) == "'nope' is undefined (line 3 of the template)"


def test_runtime_error_other_types_are_named():
    with pytest.raises(TypeError) as info:
        run("{{ algorithm + 1 }}")
    assert describe_render_error(info.value).startswith("TypeError: ")


# -- conditions -----------------------------------------------------------------------------

def test_condition():
    env = make_environment()
    test = compile_condition(env, "severity in ['high', 'medium'] and alerttype != 'ongoing'",
                             key="outputs.soc.when")
    assert test(EVENT) is True
    assert test({**EVENT, "alerttype": "ongoing"}) is False
    assert test({**EVENT, "severity": "low"}) is False
    assert compile_condition(env, "event['weird-key'] == 'w'", key="k")(EVENT) is True


def test_condition_syntax_error_is_config_error():
    with pytest.raises(ConfigError) as info:
        compile_condition(make_environment(), "severity ==", key="outputs.soc.when",
                          file="c.toml")
    assert info.value.key == "outputs.soc.when" and info.value.file == "c.toml"
    with pytest.raises(ConfigError):
        compile_condition(make_environment(), "  ", key="outputs.soc.when")


def test_condition_undefined_is_event_error_naming_variable():
    test = compile_condition(make_environment(), "sevrity == 'high'", key="outputs.soc.when")
    with pytest.raises(EventError) as info:
        test(EVENT)
    assert str(info.value).startswith("outputs.soc.when: 'sevrity' is undefined")
    lenient = compile_condition(make_environment(), "sevrity == 'high'", key="k",
                                undefined="lenient")
    assert lenient(EVENT) is False


def test_condition_sandboxed():
    test = compile_condition(make_environment(), "''.__class__", key="k")
    with pytest.raises(EventError, match="unsafe"):
        test(EVENT)


# -- template files ----------------------------------------------------------------------------

def test_template_dirs_are_searched_in_order(tmp_path):
    first, second = tmp_path / "first", tmp_path / "second"
    first.mkdir(), second.mkdir()
    (first / "a.j2").write_text("first a")
    (second / "a.j2").write_text("second a")
    (second / "b.j2").write_text("second b")
    env = make_environment([first, second])
    assert get_template(env, "a.j2", key="k").render() == "first a"
    assert get_template(env, "b.j2", key="k").render() == "second b"


def test_missing_template_file_is_config_error(tmp_path):
    env = make_environment([tmp_path])
    with pytest.raises(ConfigError) as info:
        get_template(env, "nope.json.j2", key="mappings.slack.template", file="c.toml")
    message = str(info.value)
    assert message.startswith("c.toml: mappings.slack.template: template 'nope.json.j2' "
                              "not found")
    assert str(tmp_path) in message and "built-in templates" in message


def test_template_file_syntax_error_names_file_and_line(tmp_path):
    (tmp_path / "bad.j2").write_text('{\n  "a": {{ x }},\n  "b": {% if %}\n}')
    env = make_environment([tmp_path])
    with pytest.raises(ConfigError) as info:
        get_template(env, "bad.j2", key="mappings.m.template", file="c.toml")
    error = info.value
    assert error.file == str(tmp_path / "bad.j2") and error.line == 3
    assert str(error).startswith(f"{tmp_path / 'bad.j2'}:3: mappings.m.template: ")


def test_runtime_error_in_file_names_template_and_line(tmp_path):
    (tmp_path / "t.j2").write_text("a\nb\n{{ nope }}\n")
    template = get_template(make_environment([tmp_path]), "t.j2", key="k")
    with pytest.raises(jinja2.UndefinedError) as info:
        render(template, template_variables(EVENT))
    assert describe_render_error(info.value) == "'nope' is undefined (template 't.j2' line 3)"


def test_builtin_templates_come_from_the_package(tmp_path, monkeypatch):
    # A stand-in package: the lookup goes through importlib.resources, not a path.
    package = tmp_path / "fakepkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "shipped.json.j2").write_text('{"from": "package"}')
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(templating, "TEMPLATE_PACKAGE", "fakepkg")
    user = tmp_path / "user"
    user.mkdir()
    env = make_environment([user])
    assert get_template(env, "shipped.json.j2", key="k").render() == '{"from": "package"}'
    assert "shipped.json.j2" in env.loader.list_templates()
    (user / "shipped.json.j2").write_text('{"from": "user"}')
    env = make_environment([user])  # a user's file wins over a shipped one
    assert get_template(env, "shipped.json.j2", key="k").render() == '{"from": "user"}'
    sys.modules.pop("fakepkg", None)


def test_real_package_is_reachable():
    assert isinstance(make_environment().loader.list_templates(), list)


def test_customer_template(tmp_path):
    first, second = tmp_path / "first", tmp_path / "second"
    (first / "acme").mkdir(parents=True)
    (second / "globex").mkdir(parents=True)
    (first / "t.j2").write_text("generic")
    (first / "acme" / "t.j2").write_text("acme")
    (second / "globex" / "t.j2").write_text("globex")
    env = make_environment([first, second])
    assert customer_template(env, "t.j2", "acme").render() == "acme"
    assert customer_template(env, "t.j2", "globex").render() == "globex"
    assert customer_template(env, "t.j2", "initech") is None
    for hostile in ["..", ".", "", "../first", "acme/../acme", "/etc", "a\\b", None, 5,
                    "x" * 500]:
        assert customer_template(env, "t.j2", hostile) is None
    assert customer_template(make_environment(), "t.j2", "acme") is None


def test_isotime_of_whole_seconds_matches_the_general_conversion():
    # Whole epoch seconds take a shorter way; it must give the general way's text.
    from nwpipe.transform.timeutil import epoch_millis, iso_utc

    rng = random.Random(15)
    values = [1, 59, 86399, 86400, 951782400, 951868799, 1689391131, 4102444800,
              10**11 - 1, 10**11, 10**11 + 1, 253402300799, 0, -1, 2**70, True]
    values += [rng.randrange(1, 10**11) for _ in range(20000)]
    for value in values:
        try:
            millis = epoch_millis(value)
        except Exception as exc:
            with pytest.raises(ValueError, match=re.escape(str(exc))):
                templating.isotime(value)
            continue
        assert templating.isotime(value) == ("" if millis is None else iso_utc(millis)), value
