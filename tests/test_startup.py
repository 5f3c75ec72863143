"""Start-up: `nwpipe --version` and `nwpipe run` load no more than they need.

Not a timing test (the machine's load decides those): it asserts which heavy modules a
fresh interpreter has NOT imported, which is what makes start-up fast anywhere.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys

# each costs milliseconds to import; none is needed to print the version
HEAVY = ("asyncio", "pluggy", "importlib.metadata", "jinja2", "orjson", "ssl", "yarl",
         "aiohttp", "sqlite3", "jsonpath_ng", "nwpipe.sources.decode", "nwpipe.outputs",
         "nwpipe.engine.pipeline", "nwpipe.plugins", "nwpipe_plugins.webhook")

# not needed to run a stdout output on empty input (each is a config's choice)
RUN_UNWANTED = ("jinja2", "nwpipe.transform.templating", "nwpipe.transform.mapping",
                "jsonpath_ng", "yarl", "aiohttp", "nwpipe_plugins.webhook",
                "nwpipe_plugins.syslog", "nwpipe.webhook", "nwpipe.net.http1",
                "nwpipe.net.relp", "importlib.metadata", "sqlite3", "redis",
                "prometheus_client", "nwpipe.engine.metrics")

PROBE = """
import json, runpy, sys
sys.argv = ["nwpipe"] + sys.argv[1:]
try:
    runpy.run_module("nwpipe", run_name="__main__")
except SystemExit as exc:
    code = exc.code
print(json.dumps({"code": code, "modules": sorted(sys.modules)}), file=sys.stderr)
"""


def imported_by(*args: str) -> tuple[str, int, set[str]]:
    run = subprocess.run([sys.executable, "-c", PROBE, *args], capture_output=True, text=True,
                         timeout=60)
    report = json.loads(run.stderr.strip().splitlines()[-1])
    return run.stdout, report["code"], set(report["modules"])


def test_version_imports_none_of_the_heavy_modules():
    out, code, modules = imported_by("--version")
    assert code == 0 and out.strip().startswith("nwpipe ")
    assert [m for m in HEAVY if m in modules] == []


def test_run_to_stdout_loads_neither_the_network_plugins_nor_jinja(tmp_path):
    config = tmp_path / "c.toml"
    config.write_text('[outputs.out]\ntype = "stdout"\n')
    empty = tmp_path / "empty.jsonl"
    empty.write_bytes(b"")
    out, code, modules = imported_by("run", "-q", "-c", str(config), str(empty))
    assert code == 0 and out == ""
    assert [m for m in RUN_UNWANTED if m in modules] == []
    assert "nwpipe_plugins.stdout" in modules


def test_a_webhook_output_and_a_mapping_load_what_they_need(tmp_path):
    # the other side of the test above: the same probe sees these modules when the
    # config needs them, so an empty list there is not a probe that sees nothing
    config = tmp_path / "c.toml"
    config.write_text('[mappings.m.fields]\nsrc = "$.event.srcip"\ntitle = "{{ id }}"\n'
                      '[outputs.soc]\ntype = "webhook"\nurl = "http://127.0.0.1:9/hook"\n'
                      'mapping = "m"\n')
    empty = tmp_path / "empty.jsonl"
    empty.write_bytes(b"")
    out, code, modules = imported_by("run", "-q", "-c", str(config), "--queue",
                                     str(tmp_path / "q.db"), "--dead-letter",
                                     str(tmp_path / "dl.jsonl"), str(empty))
    assert code == 0 and out == ""
    needed = ("jinja2", "nwpipe.transform.templating", "nwpipe.transform.mapping",
              "jsonpath_ng", "yarl", "nwpipe_plugins.webhook", "nwpipe.webhook",
              "nwpipe.net.http1")
    assert [m for m in needed if m not in modules] == []
    # still not what a webhook run does not need
    assert [m for m in ("importlib.metadata", "nwpipe_plugins.syslog", "nwpipe.net.relp",
                        "sqlite3", "redis", "prometheus_client") if m in modules] == []


def test_a_durable_run_opens_its_queue_with_sqlite(tmp_path):
    # sqlite3 is imported on first use: a run that opens the queue still gets it
    config = tmp_path / "c.toml"
    config.write_text('[outputs.out]\ntype = "stdout"\n')
    events = tmp_path / "one.jsonl"
    events.write_bytes(b'{"id": "a-1", "customer": "acme", "alerttype": "start"}\n')
    out, code, modules = imported_by("run", "-q", "--durable", "-c", str(config), "--queue",
                                     str(tmp_path / "q.db"), str(events))
    assert code == 0 and json.loads(out)["id"] == "a-1"
    assert "sqlite3" in modules and (tmp_path / "q.db").exists()


def run_cli(tmp_path, config: str, *args: str, input: str = ""):
    path = tmp_path / "c.toml"
    path.write_text(config)
    return subprocess.run([sys.executable, "-m", "nwpipe", "run", "-c", str(path), *args],
                          input=input, capture_output=True, text=True, timeout=60,
                          cwd=tmp_path)


def test_run_loading_fewer_plugins_keeps_every_config_check(tmp_path):
    # a mistyped type still gets its suggestion from the full list of types
    typo = run_cli(tmp_path, '[outputs.soc]\ntype = "webhok"\nurl = "http://127.0.0.1:9/"\n')
    assert typo.returncode == 1
    assert "did you mean 'webhook'" in typo.stderr and "Traceback" not in typo.stderr
    # [defaults] may hold another type's settings: they stay valid
    line = '{"id": "a-1", "customer": "acme", "alerttype": "start"}\n'
    shared = run_cli(tmp_path, '[defaults]\ntimeout = 5\n[outputs.out]\ntype = "stdout"\n',
                     input=line)
    assert shared.returncode == 0, shared.stderr
    assert json.loads(shared.stdout)["id"] == "a-1"
    # a mapping with a template and a built-in filter: Jinja and the filters are loaded
    mapped = run_cli(tmp_path, '[mappings.m.fields]\ntitle = "{{ customer | upper }}"\n'
                               '[outputs.out]\ntype = "stdout"\nmapping = "m"\n'
                               'when = "alerttype == \'start\'"\n',
                     input=line)
    assert mapped.returncode == 0, mapped.stderr
    assert json.loads(mapped.stdout)["title"] == "ACME"


def test_the_built_in_types_table_matches_what_the_plugins_register():
    from nwpipe.plugins import BUILTIN_TYPES, Plugins

    plugins = Plugins(load_entry_points=False)
    registered: dict[str, set[str]] = {}
    for kind, owners in (("output", plugins.output_plugins), ("source", plugins.source_plugins)):
        for type_name, module in owners.items():
            registered.setdefault(module.rsplit(".", 1)[-1], set()).add(f"{kind}:{type_name}")
    if plugins.jinja_filters:
        registered.setdefault("filters", set()).add("jinja:filters")
    assert registered == {name: set(kinds) for name, kinds in BUILTIN_TYPES.items()}


def test_the_public_api_is_still_importable_from_the_package():
    # the names are loaded on first use, and are the real classes
    code = ("import nwpipe; from nwpipe import hookimpl, Output, Setting, Delivered, Source; "
            "from nwpipe.outputs import Output as O; assert Output is O; "
            "assert set(nwpipe.__all__) <= set(dir(nwpipe)); print('ok')")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60)
    assert run.stdout.strip() == "ok", run.stderr
    bad = subprocess.run([sys.executable, "-c", "import nwpipe; nwpipe.Nope"],
                         capture_output=True, text=True, timeout=60)
    assert "AttributeError: module 'nwpipe' has no attribute 'Nope'" in bad.stderr


# Counts the TLS contexts a run builds (ssl.SSLContext is a Python class: its __new__
# sees every context, the default one included); CONTROL=1 builds one first, to show
# that the count works.
SSL_PROBE = """
import json, os, runpy, ssl, sys
made = []
original = ssl.SSLContext.__new__
def counting(cls, *args, **kwargs):
    made.append(1)
    return original(cls, *args, **kwargs)
ssl.SSLContext.__new__ = counting
if os.environ.get("CONTROL"):
    ssl.create_default_context()
sys.argv = ["nwpipe"] + sys.argv[1:]
try:
    runpy.run_module("nwpipe", run_name="__main__")
except SystemExit as exc:
    code = exc.code
print(json.dumps({"code": code, "contexts": len(made)}), file=sys.stderr)
"""


async def test_a_plain_http_webhook_builds_no_tls_context(tmp_path, receiver):
    # building the default context loads the system's CA certificates: milliseconds
    # that an http:// receiver never needs
    config = tmp_path / "c.toml"
    config.write_text(f'[outputs.soc]\ntype = "webhook"\nurl = "{receiver.url}/hook"\n')
    line = b'{"id": "a-1", "customer": "acme", "alerttype": "start"}\n'
    reports = []
    for control in ("", "1"):
        env = dict(os.environ, CONTROL=control)
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-c", SSL_PROBE, "run", "-q", "-c", str(config),
            "--dead-letter", str(tmp_path / "dl.jsonl"), "--queue", str(tmp_path / "q.db"),
            stdin=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env,
            cwd=tmp_path)
        _, err = await asyncio.wait_for(proc.communicate(line), timeout=60)
        reports.append(json.loads(err.decode().strip().splitlines()[-1]))
    assert [r["code"] for r in reports] == [0, 0], reports
    assert len(receiver.requests) == 2  # both runs delivered
    assert [r["contexts"] for r in reports] == [0, 1]
