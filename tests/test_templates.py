"""The ready-made templates in templates/: each renders the vendor's sample, generated
events and hostile events into a body that the target API accepts (its documented
required fields and types), and the README's copy-paste configs work as written."""

from __future__ import annotations

import asyncio
import copy
import importlib.util
import ipaddress
import json
import os
import re
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

import orjson
import pytest
from slack_sdk.models.blocks import Block

from nwpipe.config import build_config
from nwpipe.plugins import Plugins
from nwpipe.transform.mapping import compile_mappings
from nwpipe.transform.routing import Router
from nwpipe.transform.templating import clip, make_environment, valid_ips, valid_time

ROOT = Path(__file__).resolve().parent.parent
VENDOR_SAMPLE = json.loads((ROOT / "examples" / "netography-sample.json").read_text())
ROUTING_KEY = "0123456789abcdef0123456789abcdef"

_spec = importlib.util.spec_from_file_location("bench_events", ROOT / "benchmarks" / "events.py")
bench_events = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench_events)
GENERATED = list(bench_events.generate(240))

HOSTILE = ('He said "hi" \\ C:\\temp\\ \n\r\t {{ 7*7 }} {% if 1 %}x{% endif %} {# c #} '
           '</script><script>alert(1)</script> <!channel> & ünïcödé 🚨 \u2028\u2029 \x00\x1f')


def mapping_for(name: str):
    env = make_environment()
    if name == "pagerduty.json.j2":
        table = {"template": name, "vars": {"routing_key": ROUTING_KEY}}
    else:
        table = {"template": name}
    return compile_mappings({"m": table}, env)["m"]


def hostile_event(**extra) -> dict:
    event = copy.deepcopy(GENERATED[0])
    for key, value in list(event.items()):
        if isinstance(value, str) and key not in ("id", "customer"):
            event[key] = HOSTILE
    event.update(srcip=[HOSTILE, "1.2.3.4"], dstip=[HOSTILE], tags=[HOSTILE],
                 categories=[HOSTILE], customer="acme" + HOSTILE, id="id-" + HOSTILE)
    event.update(extra)
    return event


def events_for_validation():
    sample_with_ips = dict(VENDOR_SAMPLE, srcip=["1.2.3.4"], dstip=["7.8.9.10", "2001:db8::1"])
    return [VENDOR_SAMPLE, sample_with_ips, dict(VENDOR_SAMPLE, alerttype="end", end=1689391731),
            {"id": "minimal", "customer": "acme"}, *GENERATED]


def iso8601(text: str) -> datetime:
    assert isinstance(text, str) and re.fullmatch(
        r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:?\d{2})", text), text
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def is_ip(text) -> bool:
    try:
        ipaddress.ip_address(text)
        return True
    except ValueError:
        return False


# -- validators: the documented required fields and types of each API -------------------------

SLACK_BLOCK_TYPES = {"header", "section", "context", "divider", "actions", "image"}


def check_text_object(obj: dict, *, types=("plain_text", "mrkdwn"), limit: int) -> str:
    assert obj["type"] in types
    assert isinstance(obj["text"], str) and 1 <= len(obj["text"]) <= limit
    return obj["text"]


def mrkdwn_is_escaped(text: str) -> None:
    # Slack reads <...> as links/mentions: the only ones left are the template's own dates
    without_dates = re.sub(r"<!date\^\d+\^[^|<>]*\|[^<>]*>", "", text)
    assert "<" not in without_dates and ">" not in without_dates, text
    assert not re.search(r"&(?!amp;|lt;|gt;)", without_dates), text


def validate_slack(body: dict, event: dict) -> None:
    """https://api.slack.com/messaging/webhooks, Block Kit reference."""
    assert set(body) == {"text", "blocks"}
    assert isinstance(body["text"], str) and body["text"]
    mrkdwn_is_escaped(body["text"])
    assert len(body["text"]) <= 3000  # shown in notifications; Slack cuts at 40,000
    blocks = body["blocks"]
    assert isinstance(blocks, list) and 1 <= len(blocks) <= 50
    for block in blocks:
        assert block["type"] in SLACK_BLOCK_TYPES
        Block.parse(block).validate_json()  # slack_sdk's own Block Kit checks
        if block["type"] == "header":
            check_text_object(block["text"], types=("plain_text",), limit=150)
        elif block["type"] == "section":
            assert "text" in block or "fields" in block
            if "text" in block:
                mrkdwn_is_escaped(check_text_object(block["text"], limit=3000))
            if "fields" in block:
                assert 1 <= len(block["fields"]) <= 10
                for item in block["fields"]:
                    mrkdwn_is_escaped(check_text_object(item, limit=2000))
        elif block["type"] == "context":
            assert 1 <= len(block["elements"]) <= 10
            for item in block["elements"]:
                mrkdwn_is_escaped(check_text_object(item, limit=2000))
    fields = " ".join(f["text"] for b in blocks for f in b.get("fields", []))
    for label in ("*Severity*", "*Algorithm*", "*Source IPs*", "*Destination IPs*", "*Started*"):
        assert label in fields
    sources = next(f["text"] for f in blocks[2]["fields"] if f["text"].startswith("*Source"))
    for ip in event.get("srcip") or []:
        if is_ip(ip) and not sources.endswith("…"):  # every address, unless cut to fit
            assert ip in sources
    start = event.get("start")
    if isinstance(start, int) and 0 < start < 10**14:  # seconds, or milliseconds above 10^11
        assert f"<!date^{start // 1000 if start >= 10**11 else start}^" in fields


#: a Teams webhook refuses messages over about 28 KB
TEAMS_MAX_BYTES = 28 * 1000

ADAPTIVE_ELEMENTS = {"TextBlock", "FactSet", "ColumnSet", "Container", "Image"}


def validate_teams(body: dict, event: dict) -> None:
    """Teams Workflows webhook: a message with Adaptive Card attachments (schema 1.4)."""
    assert body["type"] == "message"
    assert isinstance(body["attachments"], list) and len(body["attachments"]) == 1
    attachment = body["attachments"][0]
    assert attachment["contentType"] == "application/vnd.microsoft.card.adaptive"
    card = attachment["content"]
    assert card["type"] == "AdaptiveCard"
    assert tuple(int(p) for p in card["version"].split(".")) >= (1, 4)
    assert isinstance(card["body"], list) and card["body"]
    assert len(orjson.dumps(body)) <= TEAMS_MAX_BYTES
    for element in card["body"]:
        assert element["type"] in ADAPTIVE_ELEMENTS
        if element["type"] == "TextBlock":
            assert isinstance(element["text"], str) and element["text"]
            assert element.get("color", "Default") in (
                "Default", "Dark", "Light", "Accent", "Good", "Warning", "Attention")
        if element["type"] == "FactSet":
            for fact in element["facts"]:
                assert set(fact) == {"title", "value"}
                assert isinstance(fact["title"], str) and isinstance(fact["value"], str)
                assert fact["value"]


PD_SEVERITIES = {"critical", "error", "warning", "info"}
PD_MAX_BYTES = 512 * 1024  # the Events API's limit for one event


def validate_pagerduty(body: dict, event: dict) -> None:
    """https://developer.pagerduty.com/docs/events-api-v2/trigger-events/ and resolve."""
    assert body["routing_key"] == ROUTING_KEY
    assert body["event_action"] in ("trigger", "acknowledge", "resolve")
    assert isinstance(body["dedup_key"], str) and 1 <= len(body["dedup_key"]) <= 255
    assert body["dedup_key"] == str(event["id"])[:255]
    expected = "resolve" if event.get("alerttype") == "end" else "trigger"
    assert body["event_action"] == expected
    if expected == "resolve":
        assert "payload" not in body
        return
    payload = body["payload"]
    assert isinstance(payload["summary"], str) and 1 <= len(payload["summary"]) <= 1024
    assert isinstance(payload["source"], str) and 1 <= len(payload["source"]) <= 255
    assert payload["severity"] in PD_SEVERITIES
    if "timestamp" in payload:
        iso8601(payload["timestamp"])
    for optional in ("component", "group", "class"):
        assert isinstance(payload.get(optional, ""), str)
        assert len(payload.get(optional, "")) <= 255
    assert isinstance(payload["custom_details"], dict)
    assert len(orjson.dumps(body)) <= PD_MAX_BYTES


def validate_splunk(body: dict, event: dict) -> None:
    """Splunk HEC /services/collector/event: 'event' required; time epoch; strings."""
    assert body["event"] == event
    if "time" in body:
        assert isinstance(body["time"], (int, float)) and not isinstance(body["time"], bool)
        assert body["time"] > 0
    for key in ("host", "source", "sourcetype"):
        assert isinstance(body[key], str) and body[key]
    for name, value in body["fields"].items():
        assert isinstance(value, str) or (isinstance(value, list)
                                          and all(isinstance(v, str) for v in value)), name


ECS_KINDS = {"alert", "enrichment", "event", "metric", "state", "pipeline_error", "signal"}
#: ECS event.category values and the event.type values each one expects (ECS's
#: schemas/event.yml, expected_event_types; the same in 8.11 and later)
ECS_TYPES_BY_CATEGORY = {
    "api": {"access", "admin", "allowed", "change", "creation", "deletion", "denied", "end",
            "info", "start", "user"},
    "authentication": {"start", "end", "info"},
    "configuration": {"access", "change", "creation", "deletion", "info"},
    "database": {"access", "change", "info", "error"},
    "driver": {"change", "end", "info", "start"},
    "email": {"info"},
    "file": {"access", "change", "creation", "deletion", "info"},
    "host": {"access", "change", "end", "info", "start"},
    "iam": {"admin", "change", "creation", "deletion", "group", "info", "user"},
    "intrusion_detection": {"allowed", "denied", "info"},
    "library": {"start"},
    "malware": {"info"},
    "network": {"access", "allowed", "connection", "denied", "end", "info", "protocol",
                "start"},
    "package": {"access", "change", "deletion", "info", "installation", "start"},
    "process": {"access", "change", "end", "info", "start"},
    "registry": {"access", "change", "creation", "deletion"},
    "session": {"start", "end", "info"},
    "threat": {"indicator"},
    "vulnerability": {"info"},
    "web": {"access", "error", "info"},
}


def validate_ecs(body: dict, event: dict) -> None:
    """Elastic Common Schema 8.x: allowed values of event.kind/category/type, types."""
    iso8601(body["@timestamp"])  # always: a data stream refuses a document without it
    assert body["netography"]["timestamp_source"] in ("timestamp", "start", "mapping")
    assert body["ecs"]["version"].startswith("8.")
    ev = body["event"]
    assert ev["kind"] in ECS_KINDS and ev["kind"] == "alert"
    assert ev["category"] and set(ev["category"]) <= set(ECS_TYPES_BY_CATEGORY)
    assert ev["type"]
    for category in ev["category"]:
        assert set(ev["type"]) <= ECS_TYPES_BY_CATEGORY[category], category
    assert ev["action"] == (event.get("alerttype") or "unknown").lower()
    assert isinstance(ev["severity"], int) and 0 <= ev["severity"] <= 4
    assert isinstance(ev["risk_score"], (int, float)) and 0 <= ev["risk_score"] <= 100
    for key in ("start", "end"):
        if key in ev:
            iso8601(ev[key])
    if "duration" in ev:
        assert isinstance(ev["duration"], int)
    assert isinstance(body["rule"]["name"], str)
    assert body["observer"]["vendor"] == "Netography"
    # ip-typed fields hold addresses only: the first valid one of each side
    srcs = [ip for ip in as_list(event.get("srcip")) if is_ip(ip)]
    dsts = [ip for ip in as_list(event.get("dstip")) if is_ip(ip)]
    for field, ips in (("source", srcs), ("destination", dsts)):
        if ips:
            assert body[field]["ip"] == str(ipaddress.ip_address(ips[0]))
        else:
            assert field not in body
    related = body.get("related", {}).get("ip", [])
    assert all(is_ip(ip) for ip in related)
    assert set(related) == {str(ipaddress.ip_address(ip)) for ip in srcs + dsts}
    assert isinstance(body["tags"], list)


def as_list(value) -> list:
    if value is None:
        return []
    return [value] if isinstance(value, str) else list(value)


def validate_flat(body: dict, event: dict) -> None:
    """Flat JSON: one level, scalar values only."""
    for key, value in body.items():
        assert isinstance(value, (str, int, float, bool)) or value is None, key
    assert body["id"] == str(event["id"])
    assert body["customer"] == event["customer"]
    if valid_time(event.get("start")):
        iso8601(body["start_time"])


VALIDATORS = {
    "slack.json.j2": validate_slack,
    "teams.json.j2": validate_teams,
    "pagerduty.json.j2": validate_pagerduty,
    "splunk_hec.json.j2": validate_splunk,
    "ecs.json.j2": validate_ecs,
    "flat.json.j2": validate_flat,
}


def test_every_shipped_template_has_a_validator():
    shipped = {p.name for p in (ROOT / "templates").glob("*.j2")}
    assert shipped == set(VALIDATORS)


@pytest.mark.parametrize("name", sorted(VALIDATORS))
def test_sample_and_generated_events_give_valid_bodies(name):
    mapping = mapping_for(name)
    for event in events_for_validation():
        body = mapping.apply(event)
        VALIDATORS[name](body, event)


@pytest.mark.parametrize("name", sorted(VALIDATORS))
def test_hostile_strings_never_break_the_json(name):
    mapping = mapping_for(name)
    for alerttype in ("start", "ongoing", "end"):
        event = hostile_event(alerttype=alerttype)
        body = mapping.apply(event)  # the mapping parses the rendered text: it is JSON
        VALIDATORS[name](body, event)
        text = json.dumps(body, ensure_ascii=False)
        assert "{{ 7*7 }}" in text and "{% if 1 %}x{% endif %}" in text  # data, not code


@pytest.mark.parametrize("name", sorted(VALIDATORS))
@pytest.mark.parametrize("times", [
    {"timestamp": 1e300, "start": -1e300, "end": 1e30},  # out of any calendar
    {"timestamp": "soon", "start": "1689391131", "end": "1689391731000"},  # strings
    {"timestamp": 1689391131250, "start": 1689391131250, "end": 0},  # milliseconds
    {"timestamp": [1], "start": {"t": 1}, "end": True},
])
def test_odd_times_still_give_valid_bodies(make_event, name, times):
    event = make_event(**times, tags=["a", {"b": 1}, ["c"]])
    body = mapping_for(name).apply(event)
    VALIDATORS[name](body, event)


def test_hostile_text_is_intact_where_each_api_expects_it():
    event = hostile_event()
    slack = mapping_for("slack.json.j2").apply(event)
    section = slack["blocks"][1]["text"]["text"]
    assert section.startswith(HOSTILE.replace("&", "&amp;").replace("<", "&lt;")
                              .replace(">", "&gt;"))
    mrkdwn_is_escaped(section)
    teams = mapping_for("teams.json.j2").apply(event)
    assert teams["attachments"][0]["content"]["body"][1]["text"] == HOSTILE
    pd = mapping_for("pagerduty.json.j2").apply(event)
    assert pd["payload"]["custom_details"]["summary"] == HOSTILE
    assert pd["dedup_key"] == ("id-" + HOSTILE)[:255]
    assert mapping_for("splunk_hec.json.j2").apply(event)["event"] == event
    ecs = mapping_for("ecs.json.j2").apply(event)
    assert ecs["message"] == HOSTILE and ecs["source"]["ip"] == "1.2.3.4"
    assert ecs["netography"]["srcip"] == [HOSTILE, "1.2.3.4"]  # the list as sent
    flat = mapping_for("flat.json.j2").apply(event)
    assert flat["summary"] == HOSTILE and flat["customer"] == "acme" + HOSTILE


@pytest.mark.parametrize("alerttype, action", [("start", "trigger"), ("ongoing", "trigger"),
                                               ("end", "resolve")])
def test_pagerduty_actions_and_dedup_key(make_event, alerttype, action):
    body = mapping_for("pagerduty.json.j2").apply(make_event(alerttype=alerttype))
    assert body["event_action"] == action
    assert body["dedup_key"] == "00edee24-bc66-4b37-803c-123456789012"


@pytest.mark.parametrize("severity, expected", [("critical", "critical"), ("high", "error"),
                                                ("medium", "warning"), ("low", "info"),
                                                ("HIGH", "error"), ("odd", "info")])
def test_pagerduty_severity_mapping(make_event, severity, expected):
    body = mapping_for("pagerduty.json.j2").apply(make_event(severity=severity))
    assert body["payload"]["severity"] == expected
    assert body["payload"]["timestamp"] == "2023-07-15T03:18:51Z"
    assert body["payload"]["source"] == "7.8.9.10"


def test_pagerduty_without_routing_key_names_it():
    mapping = compile_mappings({"pd": {"template": "pagerduty.json.j2"}}, make_environment())["pd"]
    with pytest.raises(Exception, match="'routing_key' is undefined"):
        mapping.apply(VENDOR_SAMPLE)


def test_splunk_variables_override_the_envelope(make_event):
    env = make_environment()
    body = ('{% set splunk_index = "security" %}{% set splunk_sourcetype = "nf:alert" %}'
            '{% include "splunk_hec.json.j2" %}')
    mapping = compile_mappings({"s": {"body": body}}, env)["s"]
    out = mapping.apply(make_event())
    assert out["index"] == "security" and out["sourcetype"] == "nf:alert"
    assert out["time"] == 1689391131 and out["source"] == "netography:fusion"
    assert "index" not in mapping_for("splunk_hec.json.j2").apply(make_event())


def test_ecs_state_and_severity(make_event):
    mapping = mapping_for("ecs.json.j2")
    start = mapping.apply(make_event(severity="high"))
    assert start["event"]["type"] == ["info"] and start["event"]["action"] == "start"
    assert start["event"]["severity"] == 3 and start["event"]["risk_score"] == 73
    end = mapping.apply(make_event(alerttype="end", end=1689391731, duration=600))
    assert end["event"]["action"] == "end" and end["event"]["end"] == "2023-07-15T03:28:51Z"
    assert end["event"]["duration"] == 600 * 10**9
    for alerttype in ("start", "ongoing", "end", "odd", None):
        body = mapping.apply(make_event(alerttype=alerttype))
        validate_ecs(body, make_event(alerttype=alerttype))


@pytest.mark.parametrize("fields, expected, source", [
    ({"timestamp": 1689391131}, "2023-07-15T03:18:51Z", "timestamp"),
    ({"timestamp": 1689391131250}, "2023-07-15T03:18:51.250Z", "timestamp"),  # milliseconds
    ({"timestamp": "1689391131"}, "2023-07-15T03:18:51Z", "timestamp"),  # a numeric string
    ({"timestamp": "1689391131250"}, "2023-07-15T03:18:51.250Z", "timestamp"),
    ({"timestamp": 0, "start": 1689391131}, "2023-07-15T03:18:51Z", "start"),
    ({"timestamp": None, "start": "1689391131"}, "2023-07-15T03:18:51Z", "start"),
    ({"timestamp": "yesterday", "start": 1689391131}, "2023-07-15T03:18:51Z", "start"),
    ({"timestamp": True, "start": 1689391131}, "2023-07-15T03:18:51Z", "start"),
    ({"timestamp": 1e300, "start": 1689391131}, "2023-07-15T03:18:51Z", "start"),
])
def test_ecs_timestamp_falls_back_to_start_numeric_strings_and_milliseconds(
        make_event, fields, expected, source):
    event = make_event(**fields)
    mapping = mapping_for("ecs.json.j2")
    body = mapping.apply(event)
    assert body["@timestamp"] == expected
    assert body["netography"]["timestamp_source"] == source
    validate_ecs(body, event)
    assert mapping.apply(event) == body  # the same body every time: contract tests hold


@pytest.mark.parametrize("fields", [{}, {"timestamp": None, "start": None},
                                    {"timestamp": "not a time", "start": "0"},
                                    {"timestamp": [], "start": {"x": 1}},
                                    {"timestamp": -0.0, "start": ""}])
def test_ecs_timestamp_without_an_event_time_is_the_time_of_mapping(make_event, fields):
    event = make_event()
    del event["timestamp"], event["start"]
    event.update(fields)
    before = datetime.now(timezone.utc)
    body = mapping_for("ecs.json.j2").apply(event)
    after = datetime.now(timezone.utc)
    stamp = iso8601(body["@timestamp"])
    assert before - timedelta(milliseconds=1) <= stamp <= after
    assert body["netography"]["timestamp_source"] == "mapping"
    assert "start" not in body["event"]
    validate_ecs(body, event)


def test_ecs_ip_fields_hold_only_valid_addresses(make_event):
    mapping = mapping_for("ecs.json.j2")
    event = make_event(srcip=["not-an-ip", "", None, 7, "1.2.3.4", "fe80::1%eth0"],
                       dstip=["999.1.1.1", " 2001:DB8::1 ", "10.0.0.1"])
    body = mapping.apply(event)
    assert body["source"]["ip"] == "1.2.3.4"
    assert body["destination"]["ip"] == "2001:db8::1"
    assert body["related"]["ip"] == ["1.2.3.4", "2001:db8::1", "10.0.0.1"]
    assert body["netography"]["srcip"][0] == "not-an-ip"  # the vendor's list as sent
    body = mapping.apply(make_event(srcip=["not-an-ip"], dstip="also not"))
    assert "source" not in body and "destination" not in body and "related" not in body


# -- limits of the receiving services ---------------------------------------------------------

LONG = ('Ünïcödé & <b>bold</b> "quoted" \\ \x01\x1b[31m 🚨 ' * 4000)  # ~180 KB, ~300 KB as JSON


def huge_event(text: str = LONG, ips: int = 20000, lists: int = 200, **extra) -> dict:
    """Long texts everywhere, thousands of addresses: what a template must cut to fit."""
    event = hostile_event(summary=text, description=text, algorithm=text, customer=text,
                          severity="high", threshold=text, id="id-" + text,
                          srcip=[f"10.{i // 65536}.{i // 256 % 256}.{i % 256}"
                                 for i in range(ips)] + ["not-an-ip"],
                          dstip=[f"2001:db8::{i:x}" for i in range(ips)],
                          tags=[text] * lists, categories=[text] * lists)
    event.update(extra)
    return event


@pytest.mark.parametrize("name", ["slack.json.j2", "teams.json.j2", "pagerduty.json.j2"])
@pytest.mark.parametrize("alerttype", ["start", "end", LONG])
def test_huge_events_give_bodies_within_the_service_limits(name, alerttype):
    event = huge_event(alerttype=alerttype)
    body = mapping_for(name).apply(event)
    VALIDATORS[name](body, event)  # each validator checks its service's limits
    text = json.dumps(body, ensure_ascii=False)
    if name != "pagerduty.json.j2" or alerttype != "end":
        assert "…" in text  # cut text is marked


async def test_huge_events_are_delivered_within_the_limits_by_the_real_cli(receiver, tmp_path):
    """Through `nwpipe run`, the bytes on the wire: one huge event to Slack, Teams and
    PagerDuty outputs, each body received and within its service's limits."""
    names = ["slack.json.j2", "teams.json.j2", "pagerduty.json.j2"]
    lines = []
    for i, name in enumerate(names):
        lines += [f'[mappings.m{i}]', f'template = "{name}"']
        if name == "pagerduty.json.j2":
            lines.append(f'vars = {{ routing_key = "{ROUTING_KEY}" }}')
        lines += [f'[outputs.o{i}]', 'type = "webhook"', f'url = "{receiver.url}/{i}"',
                  f'mapping = "m{i}"']
    config = tmp_path / "nwpipe.toml"
    config.write_text("\n".join(lines) + "\n")
    event = huge_event(LONG[:30000], ips=5000, lists=3)  # a line under max_line_bytes
    env = {**os.environ, "NWPIPE_LOAD_PLUGINS": ""}
    env.pop("NWPIPE_CONFIG", None)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "nwpipe", "run", "-c", str(config), "-", cwd=tmp_path, env=env,
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE)
    _, err = await asyncio.wait_for(proc.communicate(orjson.dumps(event) + b"\n"), 60)
    assert proc.returncode == 0, err.decode()
    assert sorted(r.path for r in receiver.requests) == ["/0", "/1", "/2"]
    for request in receiver.requests:
        name = names[int(request.path[1:])]
        VALIDATORS[name](request.json(), event)
        if name == "teams.json.j2":
            assert len(request.body) <= TEAMS_MAX_BYTES


def test_limits_cut_with_a_marker_and_keep_what_fits(make_event):
    event = make_event(summary="S" * 5000, description="D" * 50000, algorithm="a" * 200,
                       id="i" * 300)
    slack = mapping_for("slack.json.j2").apply(event)
    section = slack["blocks"][1]["text"]["text"]
    assert len(section) == 3000 and section.startswith("S" * 2999) and section.endswith("…")
    header = slack["blocks"][0]["text"]["text"]
    assert len(header) == 150 and header.endswith("…")
    teams = mapping_for("teams.json.j2").apply(event)
    card = teams["attachments"][0]["content"]["body"]
    assert card[1]["text"] == "S" * 5000  # fits: kept whole
    assert len(card[2]["text"].encode()) <= 12000 and card[2]["text"].endswith("D…")
    pd = mapping_for("pagerduty.json.j2").apply(event)
    assert len(pd["payload"]["summary"]) == 1024 and pd["payload"]["summary"].endswith("…")
    assert pd["dedup_key"] == "i" * 255  # an id is cut without a marker: it stays an id
    details = pd["payload"]["custom_details"]
    assert details["summary"] == "S" * 5000 and len(details["description"].encode()) <= 16000


def test_slack_escapes_are_never_cut_in_half(make_event):
    for pad in range(6):
        event = make_event(summary="x" * (2996 + pad) + "&&&&&<<<<>>>>" * 10)
        section = mapping_for("slack.json.j2").apply(event)["blocks"][1]["text"]["text"]
        assert len(section) <= 3000 and section.endswith("…")
        mrkdwn_is_escaped(section)


def test_teams_bodies_of_generated_events_with_long_texts_fit(make_event):
    """Realistic long alerts (the kind that made 33 of 649 Teams bodies too big)."""
    mapping = mapping_for("teams.json.j2")
    for i, event in enumerate(GENERATED):
        event = dict(event, summary=event.get("summary", "") * (10 + i * 5),
                     description=event.get("description", "") * (20 + i * 7))
        body = mapping.apply(event)
        validate_teams(body, event)


@pytest.mark.parametrize("value, args, expected", [
    ("short", (10,), "short"),
    ("abcdefghij", (10,), "abcdefghij"),
    ("abcdefghijk", (10,), "abcdefghi…"),
    ("abcdefghijk", (10, "..."), "abcdefg..."),
    ("a<b", (4,), "a<b"),
    (None, (5,), None),
    (12345678, (5, ""), "12345"),
])
def test_clip_filter(value, args, expected):
    assert clip(value, *args) == expected


def test_clip_counts_escapes_and_json_bytes():
    mrkdwn = {"&": "&amp;", "<": "&lt;", ">": "&gt;"}
    assert clip("a&b", 7, escape=mrkdwn) == "a&amp;b"
    assert clip("a&b&c", 8, escape=mrkdwn) == "a&amp;b…"  # never "a&amp;b&a…"
    assert clip("a&b&c", 7, escape=mrkdwn) == "a&amp;…"
    assert clip("a&b&c", 6, escape=mrkdwn) == "a…"
    # bytes: UTF-8 as a JSON string; a control character is written as \u0001 (6 bytes)
    assert clip("é" * 10, 20, unit="bytes") == "é" * 10
    assert clip("é" * 11, 20, unit="bytes") == "é" * 8 + "…"
    assert clip("\x01" * 10, 20, unit="bytes") == "\x01\x01…"  # 6 + 6 + 3 for "…"
    assert clip('"' * 10, 20, unit="bytes") == '"' * 10
    for text in (LONG, "🚨" * 1000, "\n" * 1000):
        for limit in (1, 100, 1001):
            cut = clip(text, limit, unit="bytes")
            assert len(json.dumps(cut, ensure_ascii=False).encode()) - 2 <= max(limit, 3)


def test_valid_ips_and_valid_time_filters():
    assert valid_ips(["1.2.3.4", "x", "::FFFF:1.2.3.4", None, 5, "1.2.3.4/24"]) == \
        ["1.2.3.4", "::ffff:102:304"]
    assert valid_ips("10.0.0.1") == ["10.0.0.1"] and valid_ips({"a": 1}) == []
    assert valid_time([None, "x", 0, "1689391131"]) == "2023-07-15T03:18:51Z"
    assert valid_time(1689391131.9) == "2023-07-15T03:18:51.900Z"
    assert valid_time(["", False, float("nan")]) is None


# -- the README's copy-paste configs -----------------------------------------------------------

README = (ROOT / "README.md").read_text()
SECTION = README.split("<!-- section:templates -->")[1].split("<!-- /section:templates -->")[0]
SNIPPETS = re.findall(r"```toml\n(.*?)```", SECTION, re.S)
ENV = {"SLACK_WEBHOOK_URL": "https://hooks.slack.test/services/T/B/X",
       "TEAMS_WORKFLOW_URL": "https://teams.test/workflows/1?sig=abc",
       "PD_ROUTING_KEY": ROUTING_KEY, "SPLUNK_HEC_TOKEN": "hec-token",
       "ELASTIC_API_KEY": "es-key"}


def test_readme_has_a_config_for_every_template():
    used = set()
    for snippet in SNIPPETS:
        used.update(re.findall(r'"(\w+\.json\.j2)"', snippet))
    assert used == set(VALIDATORS)


def snippet_config(snippet: str, url: str | None = None) -> dict:
    data = tomllib.loads(snippet)
    if url is not None:
        for table in data["outputs"].values():
            table["url"] = url
    return data


def test_readme_configs_are_valid_as_written():
    assert len(SNIPPETS) == 6
    output_types = Plugins(load_entry_points=False).output_types
    for snippet in SNIPPETS:
        config = build_config(snippet_config(snippet), output_types, file="README.md",
                              environ=ENV)
        Router(config)  # compiles the mappings and templates


async def test_readme_configs_deliver_through_the_real_cli(receiver, tmp_path):
    """Each README config, pointed at a local receiver, delivers a body the API accepts."""
    sample = (ROOT / "examples" / "netography-sample.json").read_text()
    env = {**os.environ, **ENV, "NWPIPE_LOAD_PLUGINS": ""}
    env.pop("NWPIPE_CONFIG", None)
    expected = {}
    for i, snippet in enumerate(SNIPPETS):
        data = snippet_config(snippet, f"{receiver.url}/{i}")
        for table in data["outputs"].values():
            table.pop("when", None)  # the sample is a medium 'start': send it anyway
        name = re.findall(r'"(\w+\.json\.j2)"', snippet)[0]
        expected[f"/{i}"] = name
        path = tmp_path / f"{i}.toml"
        path.write_text(to_toml(data))
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "nwpipe", "run", "-c", str(path), "-", cwd=tmp_path, env=env,
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE)
        _, err = await asyncio.wait_for(proc.communicate(sample.encode()), 60)
        assert proc.returncode == 0, err.decode()
    assert len(receiver.requests) == 6
    for request in receiver.requests:
        name = expected[request.path]
        bodies = request.ndjson() if name == "splunk_hec.json.j2" else [request.json()]
        assert len(bodies) == 1
        VALIDATORS[name](bodies[0], VENDOR_SAMPLE)
        if name == "splunk_hec.json.j2":
            assert request.headers["Authorization"] == "Splunk hec-token"


def to_toml(data: dict) -> str:
    """Just enough TOML for the README snippets: tables of strings, numbers and tables."""
    def value(v):
        if isinstance(v, dict):
            return "{ " + ", ".join(f"{json.dumps(k)} = {value(x)}" for k, x in v.items()) + " }"
        return json.dumps(v)
    lines = []
    for section in ("mappings", "outputs"):
        for name, table in data.get(section, {}).items():
            lines.append(f"[{section}.{json.dumps(name)}]")
            lines.extend(f"{json.dumps(k)} = {value(v)}" for k, v in table.items())
    return "\n".join(lines) + "\n"
