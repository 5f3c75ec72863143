"""One route-and-map function: `nwpipe run` sends exactly the bytes `nwpipe render --json`
shows, for every kind of mapping, and both agree on what fails and why."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from nwpipe.config import build_config
from nwpipe.outputs import Delivery
from nwpipe.plugins import Plugins
from nwpipe.transform.route_map import MapFailed, NotRouted, map_for, route_and_map
from nwpipe.transform.routing import Router

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

from events import generate  # noqa: E402

# One output per kind of mapping; each writes its bodies to its own file.
CONFIG = textwrap.dedent('''
    [outputs.unchanged]
    type = "file"
    path = "out/unchanged.jsonl"

    [outputs.jsonpath]
    type = "file"
    path = "out/jsonpath.jsonl"
    mapping = "jsonpath"

    [outputs.jinja]
    type = "file"
    path = "out/jinja.jsonl"
    mapping = "jinja"

    [outputs.reshape]
    type = "file"
    path = "out/reshape.jsonl"
    mapping = "reshape"

    [outputs.body]
    type = "file"
    path = "out/body.jsonl"
    mapping = "body"

    [outputs.slack]
    type = "file"
    path = "out/slack.jsonl"
    mapping = "slack"

    [outputs.per_customer]
    type = "file"
    path = "out/per_customer.jsonl"
    mapping = { default = "jsonpath", acme = "extended" }
    when = "severity != 'low'"

    [outputs.some]
    type = "file"
    path = "out/some.jsonl"
    customers = ["globex", "initech"]
    mapping = { globex = "vars" }

    [mappings.jsonpath]
    keep = false
    omit_missing = true
    [mappings.jsonpath.fields]
    src_ip = "$.srcip[0]"
    dst_ips = "$.dstip"
    bits_max = { path = "$.metrics.bits.max", default = 0 }
    tags = { path = "$.tags[*]", list = true }
    site = "$.site"
    "alert.id" = "$.id"
    vendor = "netography"
    version = 2

    [mappings.jinja]
    keep = false
    [mappings.jinja.fields]
    title = "{{ algorithm | upper }} {{ alerttype }} for {{ customer }} ({{ summary }})"
    flows = { template = "{{ metrics.count.flow }}", type = "int" }
    started = "{{ start | isotime }}"
    ips = "{{ srcip | join_ips }}"

    [mappings.reshape]
    drop = ["metrics.clockahead", "metrics.clockbehind", "ipinfo", "rules"]
    rename = { alerttype = "state", "metrics.bits" = "bits" }
    [mappings.reshape.fields]
    "extra.severity" = "$.severity"

    [mappings.body]
    body = \'\'\'{"text": {{ summary }}, "n": {{ updatecount }}, "ips": {{ srcip }},
               "big": {{ metrics.bits.sum }}}\'\'\'

    [mappings.slack]
    template = "slack.json.j2"

    [mappings.extended]
    extends = "jsonpath"
    [mappings.extended.fields]
    customer = "{{ customer | upper }}"

    [mappings.vars]
    keep = false
    vars = { team = "blue" }
    [mappings.vars.fields]
    who = "{{ team }}-{{ customer }}"
    ''')

FAILING = textwrap.dedent('''
    [outputs.strict]
    type = "file"
    path = "out/strict.jsonl"
    mapping = "strict"

    [outputs.plain]
    type = "file"
    path = "out/plain.jsonl"

    [mappings.strict]
    keep = false
    [mappings.strict.fields]
    flows = { template = "{{ metrics.count.flow }}", type = "int" }
    ''')


def nwpipe_cli(*args, cwd, input=None):
    env = {k: v for k, v in os.environ.items() if k != "NWPIPE_CONFIG"}
    env["NWPIPE_LOAD_PLUGINS"] = ""
    return subprocess.run([sys.executable, "-m", "nwpipe", *args], cwd=cwd, input=input,
                          env=env, capture_output=True, timeout=120)


def events_file(folder: Path, events) -> Path:
    path = folder / "events.jsonl"
    path.write_bytes(b"".join(json.dumps(e).encode() + b"\n" for e in events))
    return path


def rendered_bodies(stdout: bytes) -> dict[str, list[bytes]]:
    """Per output, the exact bytes `render --json` shows as each body (written last)."""
    bodies: dict[str, list[bytes]] = {}
    for line in stdout.splitlines():
        record = json.loads(line)
        assert list(record)[-1] == "body", record
        raw = line[line.index(b',"body":') + len(b',"body":'):-1]
        assert json.loads(raw) == record["body"]
        bodies.setdefault(record["output"], []).append(raw)
    return bodies


def test_run_sends_the_bytes_render_shows_for_every_kind_of_mapping(tmp_path):
    (tmp_path / "nwpipe.toml").write_text(CONFIG)
    events = list(generate(300, seed=11))
    # text that JSON must escape, and numbers of every size
    events[0]["summary"] = 'quote " backslash \\ newline \n tab \t unicode é ☃ \u2028'
    events[1]["metrics"]["bits"]["sum"] = 2**63 - 1
    events_file(tmp_path, events)
    run = nwpipe_cli("run", "-c", "nwpipe.toml", "events.jsonl", cwd=tmp_path)
    assert run.returncode == 0, run.stderr.decode()
    render = nwpipe_cli("render", "--json", "-c", "nwpipe.toml", "events.jsonl", cwd=tmp_path)
    assert render.returncode == 0, render.stderr.decode()
    shown = rendered_bodies(render.stdout)
    outputs = ["unchanged", "jsonpath", "jinja", "reshape", "body", "slack", "per_customer",
               "some"]
    for name in outputs:
        sent = (tmp_path / "out" / f"{name}.jsonl").read_bytes().splitlines()
        assert sent, name
        assert sent == shown.get(name, []), f"output {name}: run and render differ"
    # the filters were exercised: some events went to some outputs only
    assert 0 < len(shown["per_customer"]) < len(events)
    assert 0 < len(shown["some"]) < len(shown["unchanged"])


def test_run_and_render_agree_on_failures(tmp_path):
    (tmp_path / "nwpipe.toml").write_text(FAILING)
    good = {"id": "a1", "customer": "acme", "metrics": {"count": {"flow": 7}}}
    bad = {"id": "a2", "customer": "acme", "metrics": {"count": {"flow": "many"}}}
    no_id = {"customer": "acme"}
    huge = {"id": "a3", "customer": "acme", "metrics": {"count": {"flow": 2}}, "n": 2**70}
    # (a number beyond 64 bits: nwpipe reads and sends it as it came, in both commands)
    path = events_file(tmp_path, [good, bad, no_id])
    path.write_bytes(path.read_bytes() + b"not json\n" + json.dumps(huge).encode() + b"\n")
    run = nwpipe_cli("run", "-c", "nwpipe.toml", "events.jsonl", cwd=tmp_path)
    assert run.returncode == 3
    render = nwpipe_cli("render", "--json", "-c", "nwpipe.toml", "events.jsonl", cwd=tmp_path)
    assert render.returncode == 3
    errors = [(r["line"], r["output"], r["error"]) for r in
              map(json.loads, render.stdout.splitlines()) if "error" in r]
    dead = [(r["line"], r["output"], r["reason"]) for r in
            map(json.loads, (tmp_path / "nwpipe-dead-letter.jsonl").read_text().splitlines())]
    assert sorted(errors, key=str) == sorted(dead, key=str)
    assert len(dead) == 3  # bad's mapping, no id, not JSON
    assert (tmp_path / "out" / "strict.jsonl").read_bytes().splitlines() == \
        rendered_bodies(b"\n".join(line for line in render.stdout.splitlines()
                                   if b'"body"' in line)).get("strict")


# -- the function itself ------------------------------------------------------------------

@pytest.fixture(scope="module")
def router():
    plugins = Plugins(load_entry_points=False)
    config = build_config({
        "outputs": {
            "all": {"type": "stdout"},
            "acme": {"type": "stdout", "customers": ["acme"], "mapping": {"acme": "m"}},
            "table": {"type": "stdout", "mapping": {"globex": "m"}},
            "high": {"type": "stdout", "when": "severity == 'high'"},
        },
        "mappings": {"m": {"keep": False, "fields": {"x": "{{ x | upper }}"}}},
    }, plugins.output_types, source_types=plugins.source_types)
    return Router(config, plugins.jinja_filters)


def test_outcomes_per_output(router):
    outcomes = route_and_map({"id": "a", "customer": "acme", "x": "y", "severity": "high"},
                             router.routes, "f", 3)
    assert [type(o) for o in outcomes] == [Delivery, Delivery, NotRouted, Delivery]
    assert [o.output for o in outcomes] == ["all", "acme", "table", "high"]
    assert outcomes[1].body == {"x": "Y"} and (outcomes[1].source, outcomes[1].line) == ("f", 3)
    assert outcomes[2].reason == ("its mapping table has no entry for customer 'acme' and "
                                  "no default")
    assert len({o.id for o in outcomes if isinstance(o, Delivery)}) == 1


def test_a_failing_when_stops_the_whole_event(router):
    outcomes = route_and_map({"id": "a", "customer": "acme", "x": "y"}, router.routes)
    assert len(outcomes) == 1 and isinstance(outcomes[0], MapFailed)
    assert outcomes[0].whole_event and outcomes[0].output == "high"
    assert outcomes[0].reason.startswith("'when' failed: ")


def test_a_failing_mapping_fails_that_output_only(router):
    outcomes = route_and_map({"id": "a", "customer": "acme", "severity": "low"}, router.routes)
    assert [type(o) for o in outcomes] == [Delivery, MapFailed, NotRouted]
    assert outcomes[1].output == "acme" and outcomes[1].mapping == "m"
    assert outcomes[1].reason.startswith("mapping 'm' failed: ") and not outcomes[1].whole_event


def test_not_routed_and_not_an_event(router):
    high = [r for r in router.routes if r.name == "high"]
    outcome, = route_and_map({"id": "a", "customer": "c", "severity": "low"}, high)
    assert outcome == NotRouted("high", "its when is false: severity == 'high'")
    outcome, = route_and_map({"id": "a", "customer": "c", "severity": "low"},
                             [router.routes[1], router.routes[3]])
    assert outcome == NotRouted(None, "no output takes this event (their customers or when "
                                      "do not match)")
    for event, reason in [({"customer": "c"}, "event has no 'id' field"),
                          ({"id": "", "customer": "c"}, "event field 'id' must be a non-empty "
                                                        "string"),
                          (["a"], "an event must be a JSON object, not list")]:
        outcome, = route_and_map(event, router.routes)
        assert outcome == MapFailed(None, None, reason, stage="parse")


def test_map_for_ignores_the_filters_but_needs_a_mapping(router):
    table = router.routes[2]
    delivery = map_for(table, {"id": "a", "customer": "globex", "x": "q"}, delivery_id="nwp_1",
                       attempts=[{"attempt": 1}])
    assert isinstance(delivery, Delivery)
    assert (delivery.body, delivery.id, delivery.attempts) == ({"x": "Q"}, "nwp_1",
                                                               [{"attempt": 1}])
    failed = map_for(table, {"id": "a", "customer": "acme"})
    assert failed == MapFailed("table", None, "output 'table' has no mapping for customer 'acme'")
