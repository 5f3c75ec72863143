"""`nwpipe check` knows the variables a mapping's templates use (the real CLI)."""

from __future__ import annotations

import json

from test_cli import ROOT, event, jsonl, nwpipe

from nwpipe.transform.template_vars import NETOGRAPHY_FIELDS

CONFIG = """
[mappings.siem.fields]
title = "{{ algoritm | upper }} for {{ customer }} ({{ event.id }}, {{ now() }})"
count = "{% set n = updatecount %}{{ n }} {{ team }} {{ site | default('-') }}"

[mappings.siem-b]
extends = "siem"
vars = { team = "blue" }

[mappings.siem-b.fields]
team = "{{ team }} {{ teem }}"

[outputs.siem]
type = "stdout"
mapping = { acme = "siem-b", default = "siem" }
when = "severity == 'high' or sevrity"
"""


def test_unknown_template_variables_are_warnings_naming_the_key(tmp_path):
    (tmp_path / "c.toml").write_text(CONFIG)
    proc = nwpipe("check", "-c", "c.toml", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    warnings = proc.stderr.splitlines()
    prefix = "nwpipe: warning: c.toml: "
    tail = "is neither in vars, a Jinja name nor a field of Netography's event"
    assert warnings == [
        f"{prefix}mappings.siem.fields.title: variable 'algoritm' {tail} "
        "(did you mean 'algorithm'?)",
        f"{prefix}mappings.siem.fields.count: variable 'team' {tail} "
        "(did you mean 'timestamp'?)",
        f"{prefix}mappings.siem-b.fields.team: variable 'teem' {tail} (did you mean 'team'?)",
        f"{prefix}outputs.siem.when: variable 'sevrity' {tail} (did you mean 'severity'?)",
    ]
    assert proc.stdout.startswith("c.toml: OK")


def test_pagerduty_without_routing_key_is_an_error_before_any_event(tmp_path):
    config = """
[mappings.pd]
template = "pagerduty.json.j2"

[outputs.pd]
type = "file"
path = "out.jsonl"
mapping = "pd"
"""
    (tmp_path / "c.toml").write_text(config)
    proc = nwpipe("check", "-c", "c.toml", cwd=tmp_path)
    assert proc.returncode == 1
    assert proc.stdout == ""
    assert proc.stderr.startswith("nwpipe: error: c.toml: mappings.pd.vars: template "
                                  "'pagerduty.json.j2' needs vars.routing_key")
    # run refuses too: nothing is read, nothing dead-lettered
    proc = nwpipe("run", "-c", "c.toml", input=jsonl([event(1)]), cwd=tmp_path)
    assert proc.returncode == 1
    assert "needs vars.routing_key" in proc.stderr
    assert not (tmp_path / "out.jsonl").exists()
    assert not (tmp_path / "nwpipe-dead-letter.jsonl").exists()

    (tmp_path / "c.toml").write_text(config.replace(
        'template = "pagerduty.json.j2"',
        'template = "pagerduty.json.j2"\nvars = { routing_key = "${PD_KEY:-abc}" }'))
    proc = nwpipe("check", "-c", "c.toml", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""  # the built-in template uses only known names


def test_the_built_in_templates_use_only_known_names(tmp_path):
    lines = []
    for name, extra in (("slack.json.j2", ""), ("teams.json.j2", ""),
                        ("pagerduty.json.j2", 'vars = { routing_key = "k" }'),
                        ("splunk_hec.json.j2", ""), ("ecs.json.j2", ""),
                        ("flat.json.j2", "")):
        key = name.split(".")[0]
        lines.append(f'[mappings.{key}]\ntemplate = "{name}"\n{extra}\n'
                     f'[outputs.{key}]\ntype = "stdout"\nmapping = "{key}"\n')
    (tmp_path / "c.toml").write_text("\n".join(lines))
    proc = nwpipe("check", "-c", "c.toml", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "warning" not in proc.stderr, proc.stderr


def test_event_fields_are_those_of_netographys_sample():
    sample = json.loads((ROOT / "examples" / "netography-sample.json").read_text())
    assert set(sample) == NETOGRAPHY_FIELDS
