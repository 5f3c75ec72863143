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
from datetime import datetime
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

import pytest

from nwpipe.config import build_config
from nwpipe.transform.mapping import compile_mappings
from nwpipe.plugins import Plugins
from nwpipe.transform.routing import Router
from nwpipe.transform.templating import make_environment

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
    blocks = body["blocks"]
    assert isinstance(blocks, list) and 1 <= len(blocks) <= 50
    for block in blocks:
        assert block["type"] in SLACK_BLOCK_TYPES
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
    for ip in event.get("srcip") or []:
        if is_ip(ip):
            assert ip in fields
    if isinstance(event.get("start"), int) and event["start"] > 0:
        assert f"<!date^{event['start']}^" in fields


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
    assert isinstance(payload["source"], str) and payload["source"]
    assert payload["severity"] in PD_SEVERITIES
    if "timestamp" in payload:
        iso8601(payload["timestamp"])
    for optional in ("component", "group", "class"):
        assert isinstance(payload.get(optional, ""), str)
    assert isinstance(payload["custom_details"], dict)


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
ECS_CATEGORIES = {"api", "authentication", "configuration", "database", "driver", "email",
                  "file", "host", "iam", "intrusion_detection", "library", "malware",
                  "network", "package", "process", "registry", "session", "threat",
                  "vulnerability", "web"}
ECS_TYPES = {"access", "admin", "allowed", "change", "connection", "creation", "deletion",
             "denied", "end", "error", "group", "indicator", "info", "installation",
             "protocol", "start", "user"}


def validate_ecs(body: dict, event: dict) -> None:
    """Elastic Common Schema 8.x: allowed values of event.kind/category/type, types."""
    if event.get("timestamp") or event.get("start"):
        iso8601(body["@timestamp"])
    assert body["ecs"]["version"].startswith("8.")
    ev = body["event"]
    assert ev["kind"] in ECS_KINDS and ev["kind"] == "alert"
    assert set(ev["category"]) <= ECS_CATEGORIES and ev["category"]
    assert set(ev["type"]) <= ECS_TYPES and ev["type"]
    assert isinstance(ev["action"], str)
    assert isinstance(ev["severity"], int) and 0 <= ev["severity"] <= 4
    assert isinstance(ev["risk_score"], (int, float)) and 0 <= ev["risk_score"] <= 100
    for key in ("start", "end"):
        if key in ev:
            iso8601(ev[key])
    if "duration" in ev:
        assert isinstance(ev["duration"], int)
    assert isinstance(body["rule"]["name"], str)
    assert body["observer"]["vendor"] == "Netography"
    srcs = [ip for ip in (event.get("srcip") or []) if ip]
    if srcs:
        assert body["source"]["ip"] == srcs[0]
        assert set(srcs) <= set(body["related"]["ip"])
    else:
        assert "source" not in body
    dsts = [ip for ip in (event.get("dstip") or []) if ip]
    if dsts:
        assert body["destination"]["ip"] == dsts[0]
    assert isinstance(body["tags"], list)


def validate_flat(body: dict, event: dict) -> None:
    """Flat JSON: one level, scalar values only."""
    for key, value in body.items():
        assert isinstance(value, (str, int, float, bool)) or value is None, key
    assert body["id"] == str(event["id"])
    assert body["customer"] == event["customer"]
    if event.get("start"):
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
    assert ecs["message"] == HOSTILE and ecs["source"]["ip"] == HOSTILE
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
    assert start["event"]["type"] == ["start"] and start["event"]["severity"] == 3
    assert start["event"]["risk_score"] == 73
    end = mapping.apply(make_event(alerttype="end", end=1689391731, duration=600))
    assert end["event"]["type"] == ["end"] and end["event"]["end"] == "2023-07-15T03:28:51Z"
    assert end["event"]["duration"] == 600 * 10**9
    assert mapping.apply(make_event(alerttype="ongoing"))["event"]["type"] == ["info"]


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
