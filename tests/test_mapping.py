"""Mappings: keep, drop, rename, fields, whole bodies, extends, per-customer templates."""

from __future__ import annotations

import copy
import sys

import orjson
import pytest

from nwpipe.errors import ConfigError, EventError
from nwpipe.transform.mapping import IDENTITY, Mapping, compile_mappings
from nwpipe.transform.templating import make_environment

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

EVENT = {
    "alerttype": "start", "algorithm": "knownbotnet", "beta": False, "bypassdisplay": False,
    "categories": ["iprep"], "customer": "acme", "dstip": ["7.8.9.10"], "end": 0,
    "id": "00edee24-bc66-4b37-803c-123456789012",
    "ipinfo": [{"ip": "1.2.3.4", "asn": 64500}, {"ip": "7.8.9.10", "asn": 3},
               {"ip": "9.9.9.9", "asn": 13335}],
    "metrics": {"bits": {"avg": 0.5, "max": 12}, "clockahead": {"avg": 0.0, "max": 0},
                "count": {"flow": 1}},
    "rules": None, "severity": "medium", "srcip": ["1.2.3.4", "5.6.7.8"],
    "start": 1689391131, "summary": "Knownbotnet alert has started", "tags": ["t1", "t2"],
    "updatecount": 1,
}


def load(text: str, env=None, file: str = "nwpipe.toml") -> dict[str, Mapping]:
    """Compile the [mappings] of a TOML text, as the configuration loader would."""
    return compile_mappings(tomllib.loads(text)["mappings"], env or make_environment(),
                            file=file)


def apply(text: str, event: dict = EVENT, name: str | None = None, env=None):
    mappings = load(text, env)
    mapping = mappings[name] if name else next(iter(mappings.values()))
    before = copy.deepcopy(event)
    body = mapping.apply(event)
    assert event == before, "a mapping must never modify the event"
    return body


def config_error(text: str, env=None) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load(text, env)
    return info.value


def event_error(text: str, event: dict = EVENT, env=None) -> str:
    mapping = next(iter(load(text, env).values()))
    with pytest.raises(EventError) as info:
        mapping.apply(event)
    return str(info.value)


# -- keep, drop, rename ------------------------------------------------------------------

def test_empty_mapping_is_a_copy_of_the_event():
    body = apply("[mappings.m]")
    assert body == EVENT and body is not EVENT


def test_keep_false_starts_empty():
    assert apply('[mappings.m]\nkeep = false\nfields = { a = "$.id" }') == {"a": EVENT["id"]}


def test_drop_top_level_and_nested_and_missing():
    body = apply('[mappings.m]\ndrop = ["beta", "metrics.clockahead", "nope", "nope.deeper",'
                 ' "severity.deeper", "metrics.bits.nope"]')
    assert "beta" not in body and "clockahead" not in body["metrics"]
    assert body["metrics"]["bits"] == EVENT["metrics"]["bits"]
    assert body["severity"] == "medium"
    assert set(body) == set(EVENT) - {"beta"}


def test_rename_top_level_and_nested():
    body = apply('[mappings.m]\nrename = { alerttype = "state", "metrics.bits" = "bits", '
                 '"id" = "event.id", "metrics.count.flow" = "flows.count", nope = "x" }')
    assert body["state"] == "start" and "alerttype" not in body
    assert body["bits"] == EVENT["metrics"]["bits"] and "bits" not in body["metrics"]
    assert body["event"] == {"id": EVENT["id"]}
    assert body["flows"] == {"count": 1} and body["metrics"]["count"] == {}
    assert "x" not in body


def test_rename_with_unquoted_dotted_key():
    # TOML reads `metrics.bits = "bits"` as a nested table; it means the same thing.
    body = apply('[mappings.m]\nrename = { metrics.bits = "bits" }')
    assert body["bits"] == EVENT["metrics"]["bits"]


def test_drop_happens_before_rename():
    body = apply('[mappings.m]\ndrop = ["severity"]\nrename = { severity = "sev" }')
    assert "sev" not in body and "severity" not in body


def test_rename_into_a_non_object_is_event_error():
    message = event_error('[mappings.m]\nrename = { id = "severity.id" }')
    assert message == ("mappings.m.rename.id: cannot set 'severity.id': 'severity' is a "
                       "string, not an object")


def test_keep_false_with_drop_is_config_error():
    error = config_error('[mappings.m]\nkeep = false\ndrop = ["beta"]')
    assert error.key == "mappings.m.drop" and "nothing to act on" in str(error)


# -- fields -------------------------------------------------------------------------------------

def test_jsonpath_fields_one_several_none():
    body = apply('''
[mappings.m]
keep = false
[mappings.m.fields]
one = "$.srcip[0]"
several = "$.srcip[*]"
none = "$.nope"
null = "$.rules"
big_asns = "$.ipinfo[?(@.asn > 1000)].ip"
object = "$.metrics.bits"
''')
    assert body == {"one": "1.2.3.4", "several": ["1.2.3.4", "5.6.7.8"], "none": None,
                    "null": None, "big_asns": ["1.2.3.4", "9.9.9.9"],
                    "object": {"avg": 0.5, "max": 12}}


def test_default_and_omit_missing():
    body = apply('''
[mappings.m]
keep = false
omit_missing = true
[mappings.m.fields]
gone = "$.nope"
bits = { path = "$.metrics.bits.nope", default = 0 }
kept = { path = "$.nope", omit_missing = false }
here = "$.severity"
''')
    # An explicit default wins over the mapping's omit_missing.
    assert body == {"bits": 0, "kept": None, "here": "medium"}


def test_omit_missing_per_field():
    body = apply('[mappings.m]\nkeep = false\n[mappings.m.fields]\n'
                 'a = { path = "$.nope", omit_missing = true }\nb = "$.nope"')
    assert body == {"b": None}


def test_list_option_always_gives_a_list():
    body = apply('''
[mappings.m]
keep = false
[mappings.m.fields]
one = { path = "$.srcip[0]", list = true }
many = { path = "$.srcip[*]", list = true }
none = { path = "$.nope[*]", list = true }
none_default = { path = "$.nope", list = true, default = "n/a" }
none_omitted = { path = "$.nope", list = true, omit_missing = true }
''')
    assert body == {"one": ["1.2.3.4"], "many": ["1.2.3.4", "5.6.7.8"], "none": [],
                    "none_default": "n/a"}


def test_template_fields():
    body = apply('''
[mappings.m]
keep = false
[mappings.m.fields]
title = "{{ algorithm | upper }} {{ alerttype }} for {{ customer }}"
when = "{{ start | isotime }}"
ips = "{{ srcip | join_ips }}"
block = "{% if severity == 'medium' %}warn{% else %}ok{% endif %}"
''')
    assert body == {"title": "KNOWNBOTNET start for acme", "when": "2023-07-15T03:18:51Z",
                    "ips": "1.2.3.4, 5.6.7.8", "block": "warn"}


def test_typed_template_fields():
    body = apply('''
[mappings.m]
keep = false
[mappings.m.fields]
count = { template = "{{ srcip | length }}", type = "int" }
ratio = { template = "{{ metrics.bits.avg * 2 }}", type = "float" }
is_start = { template = "{{ alerttype == 'start' }}", type = "bool" }
ips = { template = "{{ srcip | tojson }}", type = "json" }
text = { template = "{{ updatecount }}", type = "string" }
''')
    assert body == {"count": 2, "ratio": 1.0, "is_start": True,
                    "ips": ["1.2.3.4", "5.6.7.8"], "text": "1"}


@pytest.mark.parametrize("kind, source", [
    ("int", "{{ algorithm }}"), ("float", "{{ algorithm }}"), ("bool", "{{ algorithm }}"),
    ("json", "{{ algorithm }}"), ("int", "{{ metrics.bits.avg }}"),
])
def test_failed_conversion_is_event_error_naming_the_field(kind, source):
    message = event_error(f'[mappings.m.fields]\nx = {{ template = "{source}", type = "{kind}" }}')
    assert message.startswith("mappings.m.fields.x: ")
    assert kind in message or "JSON" in message


def test_constants():
    body = apply('''
[mappings.m]
keep = false
[mappings.m.fields]
vendor = "netography"
dollar = { value = "$5" }
braces = { value = "{{ not a template }}" }
number = 3
flag = true
list = [1, "two"]
table = { value = { a = 1 } }
date = 2024-05-01T10:00:00Z
''')
    assert body == {"vendor": "netography", "dollar": "$5", "braces": "{{ not a template }}",
                    "number": 3, "flag": True, "list": [1, "two"], "table": {"a": 1},
                    "date": "2024-05-01T10:00:00+00:00"}


def test_dotted_output_names_and_sub_tables():
    body = apply('''
[mappings.m]
keep = false
[mappings.m.fields]
"alert.id" = "$.id"
"alert.severity" = "$.severity"
[mappings.m.fields.source]
ip = "$.srcip[0]"
port = { path = "$.nope", default = 0 }
''')
    assert body == {"alert": {"id": EVENT["id"], "severity": "medium"},
                    "source": {"ip": "1.2.3.4", "port": 0}}


def test_fields_are_computed_from_the_original_event():
    body = apply('[mappings.m]\ndrop = ["srcip"]\nrename = { id = "event_id" }\n'
                 '[mappings.m.fields]\nsrc = "$.srcip[0]"\nid2 = "$.id"')
    assert body["src"] == "1.2.3.4" and body["id2"] == EVENT["id"]
    assert "srcip" not in body and "id" not in body


def test_fields_into_kept_nested_objects_copy_on_write():
    event = copy.deepcopy(EVENT)
    body = apply('[mappings.m.fields]\n"metrics.bits.label" = "big"', event)
    assert body["metrics"]["bits"] == {"avg": 0.5, "max": 12, "label": "big"}
    assert body["metrics"]["count"] is event["metrics"]["count"]  # untouched: shared
    assert "label" not in event["metrics"]["bits"]


def test_field_order_follows_the_configuration():
    body = apply('[mappings.m]\nkeep = false\n[mappings.m.fields]\nz = 1\na = 2\nm = 3')
    assert list(body) == ["z", "a", "m"]


def test_field_inside_a_field_is_config_error():
    error = config_error('[mappings.m.fields]\nalert = "$.id"\n"alert.title" = "x"')
    assert error.key == "mappings.m.fields.alert.title"
    assert "inside field 'alert'" in str(error)


def test_setting_into_a_value_that_is_not_an_object_is_event_error():
    message = event_error('[mappings.m.fields]\n"severity.level" = 1')
    assert message.startswith("mappings.m.fields.severity.level: cannot set")


def test_mapping_never_modifies_the_event_whatever_it_does():
    event = copy.deepcopy(EVENT)
    frozen = orjson.dumps(event)
    mappings = load('''
[mappings.m]
drop = ["metrics.clockahead", "metrics.bits.avg", "tags"]
rename = { "metrics.count" = "counts.all", "ipinfo" = "info.ips" }
[mappings.m.fields]
"metrics.bits.extra" = 1
"counts.all.more" = 2
whole = "$.metrics"
"whole_copy.bits" = "$.metrics.bits"
"info.extra" = 3
''')
    mappings["m"].apply(event)
    body = mappings["m"].apply(event)
    assert orjson.dumps(event) == frozen
    assert body["metrics"] == {"bits": {"max": 12, "extra": 1}}
    assert body["counts"] == {"all": {"flow": 1, "more": 2}}
    assert body["info"] == {"ips": EVENT["ipinfo"], "extra": 3}


# -- whole bodies -----------------------------------------------------------------------------

HOSTILE = [
    'quote " and "}, "injected": {"',
    "back\\slash \\\" \\u0041",
    "new\nline\r\ttab",
    "control \x00 \x01 \x07 \x1b \x1f",
    "</script><script>alert(1)</script>",
    "line\u2028separator\u2029",
    "emoji 😀 and ünïcödé",
    "{{ algorithm }} {% raw %}",
    "",
]


@pytest.mark.parametrize("hostile", HOSTILE)
def test_hostile_strings_cannot_break_a_json_body(hostile):
    event = {**EVENT, "summary": hostile, "srcip": [hostile, "1.2.3.4"],
             "metrics": {"note": hostile}, "customer": hostile}
    body = apply('''
[mappings.m]
body = """
{"text": {{ summary }},
 "title": {{ algorithm ~ ": " ~ summary }},
 "ips": {{ srcip }},
 "joined": {{ srcip | join_ips }},
 "metrics": {{ metrics }},
 "json": {{ summary | tojson }},
 "who": {{ customer }}}
"""
''', event)
    joined = f"{hostile}, 1.2.3.4" if hostile else "1.2.3.4"
    assert body == {"text": hostile, "title": f"knownbotnet: {hostile}",
                    "ips": [hostile, "1.2.3.4"], "joined": joined,
                    "metrics": {"note": hostile}, "json": hostile, "who": hostile}


def test_body_values_keep_their_types():
    body = apply('''
[mappings.m]
body = \'\'\'{"n": {{ metrics.bits.max }}, "f": {{ metrics.bits.avg }}, "b": {{ beta }},
"none": {{ rules }}, "sev": {{ severity | severity_number }}, "start": {{ start | isotime }},
"list": [{% for ip in srcip %}{{ ip }}{% if not loop.last %}, {% endif %}{% endfor %}]}\'\'\'
''')
    assert body == {"n": 12, "f": 0.5, "b": False, "none": None, "sev": 2,
                    "start": "2023-07-15T03:18:51Z", "list": ["1.2.3.4", "5.6.7.8"]}


def test_body_may_be_any_json_value():
    assert apply('[mappings.m]\nbody = "{{ srcip }}"') == ["1.2.3.4", "5.6.7.8"]


def test_invalid_json_body_is_event_error_with_line():
    message = event_error('[mappings.m]\nbody = """{\n  "a": {{ algorithm }},\n'
                          '  "text": "{{ summary }}"\n}"""')
    assert message.startswith("mappings.m.body: the body template did not render valid JSON")
    assert "at line 3" in message and '"text": ""Knownbotnet' in message


def test_invalid_json_from_template_file_names_the_template(tmp_path):
    (tmp_path / "bad.json.j2").write_text('{\n"a": {{ id }}\n"b": 1}')
    message = event_error('[mappings.m]\ntemplate = "bad.json.j2"',
                          env=make_environment([tmp_path]))
    assert message.startswith("mappings.m.template: template 'bad.json.j2' did not render "
                              "valid JSON")
    assert "line 3" in message


def test_undefined_in_body_strict_and_lenient():
    message = event_error('[mappings.m]\nbody = """{"a": {{ nope }}}"""')
    assert message == "mappings.m.body: 'nope' is undefined (line 1 of the template)"
    assert apply('[mappings.m]\nundefined = "lenient"\nbody = """{"a": {{ nope }}}"""') == \
        {"a": None}


def test_undefined_in_fields_strict_and_lenient():
    message = event_error('[mappings.m.fields]\ntitle = "{{ algoritm }}"')
    assert message == "mappings.m.fields.title: 'algoritm' is undefined (line 1 of the template)"
    body = apply('[mappings.m]\nundefined = "lenient"\nkeep = false\n'
                 '[mappings.m.fields]\ntitle = "[{{ algoritm }}]"')
    assert body == {"title": "[]"}


def test_template_file_body(tmp_path):
    (tmp_path / "slack.json.j2").write_text('{"text": {{ summary }}}\n')
    body = apply('[mappings.slack]\ntemplate = "slack.json.j2"', env=make_environment([tmp_path]))
    assert body == {"text": EVENT["summary"]}


def test_runtime_error_in_template_file_names_file_line(tmp_path):
    (tmp_path / "t.json.j2").write_text('{\n"a": 1,\n"b": {{ nope }}\n}')
    message = event_error('[mappings.m]\ntemplate = "t.json.j2"', env=make_environment([tmp_path]))
    assert message == "mappings.m.template: 'nope' is undefined (template 't.json.j2' line 3)"


def test_sandbox_escape_in_a_mapping_is_event_error():
    message = event_error('[mappings.m.fields]\nx = "{{ summary.__class__.__mro__ }}"')
    assert message.startswith("mappings.m.fields.x: access to attribute '__class__'")


# -- per-customer template files ----------------------------------------------------------------

@pytest.fixture
def customer_dirs(tmp_path):
    first, second = tmp_path / "first", tmp_path / "second"
    (first / "acme").mkdir(parents=True)
    (second / "globex").mkdir(parents=True)
    (second / "broken").mkdir(parents=True)
    (first / "alert.json.j2").write_text('{"who": "generic", "c": {{ customer | default(none) }}}')
    (first / "acme" / "alert.json.j2").write_text('{"who": "acme only"}')
    (second / "globex" / "alert.json.j2").write_text('{"who": "globex only"}')
    (second / "broken" / "alert.json.j2").write_text('{"who": {% if %}}')
    return make_environment([first, second])


def test_customer_file_overrides_for_that_customer(customer_dirs):
    mapping = load('[mappings.m]\ntemplate = "alert.json.j2"', customer_dirs)["m"]
    assert mapping.apply({**EVENT, "customer": "acme"}) == {"who": "acme only"}
    assert mapping.apply({**EVENT, "customer": "globex"}) == {"who": "globex only"}
    assert mapping.apply({**EVENT, "customer": "initech"}) == {"who": "generic", "c": "initech"}
    event = {k: v for k, v in EVENT.items() if k != "customer"}
    assert mapping.apply(event)["who"] == "generic"
    # Cached per customer: a second event of the same customer gives the same.
    assert mapping.apply({**EVENT, "customer": "acme"}) == {"who": "acme only"}


@pytest.mark.parametrize("customer", ["../first/acme", "..", "acme/../acme", "/etc", 7, None])
def test_customer_values_never_leave_the_template_dirs(customer_dirs, customer):
    mapping = load('[mappings.m]\ntemplate = "alert.json.j2"', customer_dirs)["m"]
    assert mapping.apply({**EVENT, "customer": customer})["who"] == "generic"


def test_broken_customer_file_fails_only_that_customers_events(customer_dirs):
    mapping = load('[mappings.m]\ntemplate = "alert.json.j2"', customer_dirs)["m"]
    for _ in range(2):
        with pytest.raises(EventError) as info:
            mapping.apply({**EVENT, "customer": "broken"})
        assert "broken/alert.json.j2:1: Jinja syntax error" in str(info.value)
    assert mapping.apply({**EVENT, "customer": "acme"}) == {"who": "acme only"}


def test_missing_template_file_is_config_error(tmp_path):
    error = config_error('[mappings.slack]\ntemplate = "nope.json.j2"',
                         make_environment([tmp_path]))
    assert error.key == "mappings.slack.template" and error.file == "nwpipe.toml"
    assert "template 'nope.json.j2' not found" in str(error)


def test_template_file_syntax_error_is_config_error_with_file_line(tmp_path):
    (tmp_path / "bad.json.j2").write_text('{\n"a": {{ id }\n}')
    error = config_error('[mappings.m]\ntemplate = "bad.json.j2"', make_environment([tmp_path]))
    assert error.file == str(tmp_path / "bad.json.j2") and error.line == 2
    assert error.key == "mappings.m.template"


# -- extends --------------------------------------------------------------------------------------

BASE = '''
[mappings.siem]
drop = ["beta", "bypassdisplay"]
rename = { alerttype = "state", id = "event_id" }
[mappings.siem.fields]
src_ip = "$.srcip[0]"
bits_max = { path = "$.metrics.bits.max", default = 0 }
title = "{{ algorithm | upper }} {{ alerttype }} for {{ customer }}"
'''


def test_extends_merges_fields_drop_rename():
    mappings = load(BASE + '''
[mappings.siem-acme]
extends = "siem"
drop = ["tags"]
rename = { customer = "tenant", id = "alert_id" }
[mappings.siem-acme.fields]
title = "{{ summary }}"
site = "hq"
''')
    base = mappings["siem"].apply(EVENT)
    acme = mappings["siem-acme"].apply(EVENT)
    assert base["event_id"] == EVENT["id"] and base["customer"] == "acme"
    assert "beta" not in acme and "bypassdisplay" not in acme and "tags" not in acme
    assert acme["state"] == "start" and acme["alert_id"] == EVENT["id"]
    assert "event_id" not in acme and acme["tenant"] == "acme" and "customer" not in acme
    assert acme["src_ip"] == "1.2.3.4" and acme["bits_max"] == 12
    assert acme["title"] == EVENT["summary"] and acme["site"] == "hq"


def test_extends_overrides_scalar_settings_and_chains():
    mappings = load('''
[mappings.a]
keep = false
omit_missing = true
[mappings.a.fields]
x = "$.nope"
y = "$.id"
[mappings.b]
extends = "a"
omit_missing = false
[mappings.c]
extends = "b"
keep = true
drop = ["tags"]
''')
    assert mappings["a"].apply(EVENT) == {"y": EVENT["id"]}
    assert mappings["b"].apply(EVENT) == {"x": None, "y": EVENT["id"]}
    c = mappings["c"].apply(EVENT)
    assert c["x"] is None and c["y"] == EVENT["id"] and c["severity"] == "medium"
    assert "tags" not in c


def test_extends_a_body_template():
    mappings = load('''
[mappings.slack]
body = """{"text": {{ nope }}}"""
[mappings.slack-lenient]
extends = "slack"
undefined = "lenient"
''')
    assert mappings["slack-lenient"].apply(EVENT) == {"text": None}
    with pytest.raises(EventError):
        mappings["slack"].apply(EVENT)


def test_inherited_field_errors_name_where_it_is_written():
    mapping = load('''
[mappings.a.fields]
t = "{{ nope }}"
[mappings.b]
extends = "a"
''')["b"]
    with pytest.raises(EventError) as info:
        mapping.apply(EVENT)
    assert str(info.value).startswith("mappings.a.fields.t (in mapping 'b'): 'nope' is undefined")


def test_extends_unknown_parent():
    error = config_error('[mappings.siem]\n[mappings.acme]\nextends = "sime"')
    assert error.key == "mappings.acme.extends"
    assert "no mapping named 'sime' (did you mean 'siem'?)" in str(error)


@pytest.mark.parametrize("text, cycle", [
    ('[mappings.a]\nextends = "a"', "a -> a"),
    ('[mappings.a]\nextends = "b"\n[mappings.b]\nextends = "a"', "a -> b -> a"),
    ('[mappings.a]\nextends = "b"\n[mappings.b]\nextends = "c"\n[mappings.c]\nextends = "b"',
     "a -> b -> c -> b"),
])
def test_extends_cycles(text, cycle):
    error = config_error(text)
    assert "cycle" in str(error) and cycle in str(error)


def test_body_and_fields_do_not_mix_even_when_inherited():
    error = config_error('[mappings.m]\ntemplate = "x.j2"\ndrop = ["beta"]')
    assert "'drop'" in str(error) and error.key == "mappings.m"
    error = config_error(BASE + '[mappings.slack]\nextends = "siem"\nbody = "{{ id }}"')
    assert error.key == "mappings.slack" and "set in mappings.siem" in str(error)
    error = config_error('[mappings.m]\ntemplate = "x.j2"\nbody = "{}"')
    assert "not both" in str(error)


# -- configuration errors ------------------------------------------------------------------------

def test_unknown_mapping_key_with_did_you_mean():
    error = config_error('[mappings.siem]\nfeilds = { a = 1 }')
    assert error.key == "mappings.siem.feilds" and error.file == "nwpipe.toml"
    assert "did you mean 'fields'" in str(error)


def test_wrong_types_and_choices():
    assert config_error('[mappings.m]\nkeep = "yes"').key == "mappings.m.keep"
    assert config_error('[mappings.m]\ndrop = "beta"').key == "mappings.m.drop"
    error = config_error('[mappings.m]\nundefined = "loose"')
    assert error.key == "mappings.m.undefined" and "'strict'" in str(error)
    assert config_error('[mappings.m]\ndrop = ["a..b"]').key == "mappings.m.drop[0]"
    assert config_error('[mappings.m]\ndrop = [3]').key == "mappings.m.drop[0]"
    assert config_error('[mappings.m]\nrename = { a = 3 }').key == "mappings.m.rename.a"
    assert config_error('[mappings.m]\nrename = { a = "" }').key == "mappings.m.rename.a"
    assert config_error('[mappings]\nm = 3').key == "mappings.m"


def test_invalid_jsonpath_names_the_key_path():
    error = config_error('[mappings.siem.fields]\nsrc_ip = "$.srcip[0"')
    assert error.key == "mappings.siem.fields.src_ip"
    assert str(error).startswith("nwpipe.toml: mappings.siem.fields.src_ip: invalid jsonpath")
    error = config_error('[mappings.siem.fields.src]\nip = { path = "$.[" }')
    assert error.key == "mappings.siem.fields.src.ip.path"


def test_jinja_syntax_error_names_the_key_path():
    error = config_error('[mappings.siem.fields]\ntitle = "{{ algorithm | }}"')
    assert error.key == "mappings.siem.fields.title" and "Jinja syntax error" in str(error)
    error = config_error('[mappings.siem]\nbody = """{\n"a": {% if %}\n}"""')
    assert error.key == "mappings.siem.body" and "line 2 of the template" in str(error)
    error = config_error('[mappings.m.fields]\nx = { template = "{{ x", type = "int" }')
    assert error.key == "mappings.m.fields.x.template"


def test_field_table_errors():
    error = config_error('[mappings.m.fields]\nx = { pth = "$.id", default = 0 }')
    assert error.key == "mappings.m.fields.x.pth" and "did you mean 'path'" in str(error)
    error = config_error('[mappings.m.fields]\nx = { default = 0 }')
    assert error.key == "mappings.m.fields.x" and "needs one of" in str(error)
    error = config_error('[mappings.m.fields]\nx = { path = "$.id", value = 1 }')
    assert "only one of" in str(error)
    error = config_error('[mappings.m.fields]\n'
                         'x = { path = "$.id", default = 1, omit_missing = true }')
    assert error.key == "mappings.m.fields.x.omit_missing" and "default" in str(error)
    error = config_error('[mappings.m.fields]\nx = { template = "{{ id }}", default = 1 }')
    assert error.key == "mappings.m.fields.x.default"
    error = config_error('[mappings.m.fields]\nx = { template = "{{ id }}", type = "date" }')
    assert error.key == "mappings.m.fields.x.type"
    error = config_error('[mappings.m.fields]\nx = { path = "id" }')
    assert error.key == "mappings.m.fields.x.path" and "'$'" in str(error)
    error = config_error('[mappings.m.fields]\nx = { path = "$.id", list = "yes" }')
    assert error.key == "mappings.m.fields.x.list"
    error = config_error('[mappings.m.fields]\nx = {}')
    assert error.key == "mappings.m.fields.x"
    error = config_error('[mappings.m.fields]\n"a..b" = 1')
    assert error.key == "mappings.m.fields.a..b"


def test_sub_table_with_a_field_named_like_an_option_explains_quoting():
    error = config_error('[mappings.m.fields.event]\ntype = "alert"')
    assert error.key == "mappings.m.fields.event"
    assert '"event.type" = ...' in str(error)


# -- identity and odd events --------------------------------------------------------------------

def test_identity_is_the_event_itself():
    assert IDENTITY.apply(EVENT) is EVENT
    assert IDENTITY.apply([1, 2]) == [1, 2]
    assert isinstance(IDENTITY, Mapping) and IDENTITY.name


def test_event_that_is_not_an_object_is_event_error():
    mapping = load("[mappings.m]")["m"]
    with pytest.raises(EventError, match="not a JSON object"):
        mapping.apply(["not", "an", "object"])


def test_jsonpath_failing_on_odd_data_is_event_error():
    # jsonpath-ng's own extensions can raise on data they do not expect.
    mapping = load('[mappings.m.fields]\nx = "$.tags.`sorted`"')["m"]
    event = {**EVENT, "tags": [1, "mixed", None]}
    with pytest.raises(EventError) as info:
        mapping.apply(event)
    assert str(info.value).startswith("mappings.m.fields.x: jsonpath failed on this event")


def test_mappings_share_compiled_expressions():
    mappings = load('[mappings.a.fields]\nx = "$.id"\n[mappings.b.fields]\ny = "$.id"')
    assert mappings["a"]._steps[0][3] is mappings["b"]._steps[0][3]


# -- vars: named constants for templates ------------------------------------------------

def test_vars_reach_field_templates_and_bodies():
    body = apply('''
        [mappings.m]
        keep = false
        vars = { team = "soc", level = 3 }
        fields = { title = "{{ team }}: {{ algorithm }}", level = { template = "{{ level + 1 }}", type = "int" } }
    ''')
    assert body == {"title": "soc: knownbotnet", "level": 4}
    body = apply('''
        [mappings.m]
        vars = { routing_key = "R0UT1NG" }
        body = '{"key": {{ routing_key }}, "id": {{ id }}}'
    ''')
    assert body == {"key": "R0UT1NG", "id": EVENT["id"]}


def test_vars_in_a_template_file_and_extends_merges_them():
    mappings = load('''
        [mappings.pd]
        template = "pagerduty.json.j2"
        vars = { routing_key = "base-key" }
        [mappings.pd-acme]
        extends = "pd"
        vars = { routing_key = "acme-key" }
    ''')
    assert mappings["pd"].apply(EVENT)["routing_key"] == "base-key"
    assert mappings["pd-acme"].apply(EVENT)["routing_key"] == "acme-key"


def test_a_var_wins_over_an_event_field_of_the_same_name():
    # Event data must never replace a configured value (issue 14.7); the field stays
    # reachable through `event`.
    body = apply('''
        [mappings.m]
        keep = false
        vars = { severity = "unknown" }
        fields = { s = "{{ severity }}", raw = "{{ event.severity }}" }
    ''')
    assert body == {"s": "unknown", "raw": "medium"}
    mappings = load('''
        [mappings.pd]
        template = "pagerduty.json.j2"
        vars = { routing_key = "configured-key" }
        [mappings.inline]
        vars = { routing_key = "configured-key" }
        body = '{"routing_key": {{ routing_key }}}'
    ''')
    hostile = {**EVENT, "routing_key": "attacker-key"}
    assert mappings["pd"].apply(hostile)["routing_key"] == "configured-key"
    assert mappings["inline"].apply(hostile) == {"routing_key": "configured-key"}


def test_a_var_named_event_is_refused():
    error = config_error('''
        [mappings.m]
        vars = { event = "x" }
    ''')
    assert error.key == "mappings.m.vars.event" and "whole event" in str(error)


def test_var_names_must_be_plain_names():
    error = config_error('''
        [mappings.m]
        vars = { "routing-key" = "x" }
    ''')
    assert error.key == "mappings.m.vars.routing-key" and "plain name" in str(error)
