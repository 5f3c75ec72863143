"""The plugin authoring kit keeps its promises: every hook has a test here and is in
docs/plugins.md with its arguments; the output contract there names every member; the
guide's plugins work as written; the example plugin installs and passes its own tests."""

from __future__ import annotations

import dataclasses
import inspect
import json
import os
import re
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from nwpipe import hookspecs
from nwpipe.outputs import Delivery, Failed, Output, ProbeResult, Retry
from nwpipe.plugins import ENV_LOAD_PLUGINS, ENV_TRACE_PLUGINS
from nwpipe.settings import Setting
from nwpipe.sources.base import Source

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

ROOT = Path(__file__).resolve().parent.parent
PLUGINS = (ROOT / "docs" / "plugins.md").read_text()

HOOKS = {name: function for name, function in inspect.getmembers(hookspecs, inspect.isfunction)
         if hasattr(function, "nwpipe_spec")}


def nwpipe_cli(*args, input=None, cwd=None, env=None):
    full_env = {k: v for k, v in os.environ.items() if k != "NWPIPE_CONFIG"}
    full_env.update({ENV_LOAD_PLUGINS: "", **(env or {})})
    return subprocess.run([sys.executable, "-m", "nwpipe", *args], input=input, cwd=cwd,
                          env=full_env, capture_output=True, text=True, timeout=120)


def plugin_dir(tmp_path: Path, name: str, text: str) -> Path:
    """A --plugins-dir folder holding one plugin module ``name``.py."""
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / f"{name}.py").write_text(text)
    return plugins


def listed(plugins: Path) -> dict[str, dict]:
    """What ``nwpipe plugins --json`` says about each plugin, by name."""
    listing = nwpipe_cli("--plugins-dir", str(plugins), "plugins", "--json")
    assert listing.returncode == 0, listing.stderr
    return {p["name"]: p for p in json.loads(listing.stdout)}


def event(i: int, **extra) -> dict:
    return {"id": f"alert-{i}", "customer": "acme", "alerttype": "start", "updatecount": 1,
            "severity": "high", "srcip": ["1.2.3.4"], "start": 1689391131, **extra}


def jsonl(events) -> str:
    return "".join(json.dumps(e) + "\n" for e in events)


# -- meta: every hook is tested and documented -----------------------------------------------

def test_there_are_hooks():
    assert set(HOOKS) >= {"register_outputs", "register_sources", "register_jinja_filters"}


@pytest.mark.parametrize("name", sorted(HOOKS))
def test_every_hook_has_a_test(name):
    assert callable(globals().get(f"test_hook_{name}")), \
        f"add test_hook_{name} to tests/test_hooks_meta.py"


def hook_subsection(name: str) -> str:
    signature = f"{name}({', '.join(inspect.signature(HOOKS[name]).parameters)})"
    heading = f"### `{signature}`"
    assert heading in PLUGINS, f"docs/plugins.md's hook reference lacks {heading}"
    return PLUGINS.split(heading)[1].split("\n### ")[0].split("\n## ")[0]


@pytest.mark.parametrize("name", sorted(HOOKS))
def test_every_hook_is_documented_with_its_arguments(name):
    text = hook_subsection(name)
    # the callback's call form, and a table row for each of its arguments
    call = re.search(r"`register\(([^)`]+)\)`", text)
    assert call, f"{name}: document how `register(...)` is called"
    arguments = [a.strip() for a in call.group(1).split(",")]
    annotation = inspect.signature(HOOKS[name]).parameters["register"].annotation
    expected = len(re.findall(r"\[([^\]]*)\]", str(annotation))[0].split(","))
    assert len(arguments) == expected, f"{name}: register takes {expected} arguments"
    for argument in arguments:
        assert re.search(rf"^\| `{argument}` \| .+ \| .+ \|$", text, re.M), \
            f"{name}: no table row for the argument `{argument}`"
    assert f"def {name}(register):" in text  # an example implementation


def test_plugin_environment_switches_are_documented():
    for variable in (ENV_LOAD_PLUGINS, ENV_TRACE_PLUGINS):
        assert re.search(rf"^\| `{variable}=", PLUGINS, re.M), variable


def test_output_contract_names_every_member():
    members = ["settings", "concurrency", "batch_max_events", "batch_max_wait",
               "check_config", "open", "send", "close", "describe", "probe"]
    for name in members:
        assert hasattr(Output, name)
        assert re.search(rf"^\| `(async )?{name}[`(]", PLUGINS, re.M), f"Output.{name}"
    # every public attribute: the slots, and the properties (the id is worked out lazily)
    public = [name for name in Delivery.__slots__ if not name.startswith("_")]
    public += [name for name, value in vars(Delivery).items()
               if isinstance(value, property) and not name.startswith("_")]
    assert {"id", "body", "event", "output", "source", "line", "attempts", "ticket", "key",
            "seed"} <= set(public)
    for name in public + ["body_json"]:
        assert re.search(rf"^\| `{name}(\(\))?`", PLUGINS, re.M) or \
            f"`{name}`, `" in PLUGINS or f", `{name}` |" in PLUGINS, f"Delivery.{name}"
    for cls in (Retry, Failed, ProbeResult):
        fields = dataclasses.fields(cls)
        shown = ", ".join(f.name if f.default is dataclasses.MISSING else f"{f.name}=None"
                          for f in fields)
        assert f"`{cls.__name__}({shown})`" in PLUGINS
    documented = re.search(r"`Setting\(([^`]*)\)`", PLUGINS, re.S)
    assert documented, "document Setting(...)"
    names = [part.split("=")[0].strip() for part in documented.group(1).split(",")]
    assert names == [f.name for f in dataclasses.fields(Setting)]


def test_source_contract_names_every_member():
    members = ["settings", "takes_inputs", "check_config", "open", "read", "stop", "ack",
               "unreadable", "close", "describe"]
    source = Source({})
    for name in members:
        assert hasattr(source, name)
        assert re.search(rf"^\| `(async )?{name}[`(]", PLUGINS, re.M), f"Source.{name}"


# -- the hooks, exercised ------------------------------------------------------------------------

OUTPUT_PLUGIN = '''
from nwpipe import Delivered, Output, Setting, hookimpl


class Recorder(Output):
    settings = {"path": Setting(str, required=True), "tag": Setting(str, default="rec")}
    batch_max_events = 10

    async def open(self):
        self.fh = open(self.config["path"], "a")

    async def send(self, batch):
        for d in batch:
            self.fh.write(f"{self.config['tag']} {d.key} {d.body_json().decode()}\\n")
        return Delivered()

    async def close(self):
        self.fh.close()

    def describe(self):
        return "recorded to " + self.config["path"]


@hookimpl
def register_outputs(register):
    register("recorder", Recorder)
'''


def test_hook_register_outputs(tmp_path):
    plugins = plugin_dir(tmp_path, "recorder", OUTPUT_PLUGIN)
    info = listed(plugins)["recorder"]
    assert info["output_types"] == ["recorder"] and info["hooks"] == ["register_outputs"]
    config = tmp_path / "nwpipe.toml"
    config.write_text('[outputs.r]\ntype = "recorder"\npath = "out.txt"\ntag = "T"\n')
    check = nwpipe_cli("--plugins-dir", str(plugins), "check", "-c", str(config), cwd=tmp_path)
    assert check.returncode == 0 and "r: type recorder; recorded to out.txt" in check.stdout
    run = nwpipe_cli("--plugins-dir", str(plugins), "run", "-c", str(config), cwd=tmp_path,
                     input=jsonl([event(1), event(2)]))
    assert run.returncode == 0, run.stderr
    lines = (tmp_path / "out.txt").read_text().splitlines()
    assert [line.split(" ", 2)[:2] for line in lines] == [["T", "alert-1"], ["T", "alert-2"]]
    assert json.loads(lines[0].split(" ", 2)[2]) == event(1)
    config.write_text('[outputs.r]\ntype = "recorder"\npath = "out.txt"\ntga = "T"\n')
    bad = nwpipe_cli("--plugins-dir", str(plugins), "check", "-c", str(config), cwd=tmp_path)
    assert bad.returncode == 1
    assert "outputs.r.tga: unknown setting 'tga' (did you mean 'tag'?)" in bad.stderr


FILTER_PLUGIN = '''
from nwpipe import hookimpl


def defang(value):
    return str(value).replace(".", "[.]")


def shout(value, mark="!"):
    if not isinstance(value, str):
        raise ValueError(f"shout: expected text, got {type(value).__name__}")
    return value.upper() + mark


@hookimpl
def register_jinja_filters(register):
    register("defang", defang)
    register("shout", shout)
    register("isotime", lambda value: "replaced")   # plugins may replace a built-in
'''


def test_hook_register_jinja_filters(tmp_path):
    plugins = plugin_dir(tmp_path, "filters", FILTER_PLUGIN)
    info = listed(plugins)["filters"]
    assert info["jinja_filters"] == ["defang", "isotime", "shout"]
    config = tmp_path / "nwpipe.toml"
    config.write_text(textwrap.dedent('''
        [outputs.out]
        type = "stdout"
        mapping = "m"
        when = "(algorithm | shout) == 'BOT!'"

        [outputs.body]
        type = "stdout"
        mapping = "b"
        customers = ["globex"]

        [mappings.m]
        keep = false
        [mappings.m.fields]
        src = "{{ srcip | join_ips | defang }}"
        title = "{{ algorithm | shout('?') }}"
        when = "{{ start | isotime }}"

        [mappings.b]
        body = \'\'\'{"src": {{ srcip | join_ips | defang }}}\'\'\'
        '''))
    events = [event(1, algorithm="bot"), event(2, algorithm="scan"),
              event(3, algorithm=7), event(4, customer="globex", srcip=["5.6.7.8"], algorithm="x")]
    run = nwpipe_cli("--plugins-dir", str(plugins), "run", "-c", str(config), cwd=tmp_path,
                     input=jsonl(events), env={"NWPIPE_TRACE_PLUGINS": ""})
    bodies = [json.loads(line) for line in run.stdout.splitlines()]
    # in fields, in a body template and in a `when` expression
    assert bodies == [{"src": "1[.]2[.]3[.]4", "title": "BOT?", "when": "replaced"},
                      {"src": "5[.]6[.]7[.]8"}]
    # a filter's ValueError fails that event only, with its message
    assert run.returncode == 3
    dead = [json.loads(line) for line in
            (tmp_path / "nwpipe-dead-letter.jsonl").read_text().splitlines()]
    assert [d["event"]["id"] for d in dead] == ["alert-3"]
    assert "shout: expected text, got int" in dead[0]["reason"]


SOURCE_PLUGIN = '''
import json

from nwpipe import Delivered, Event, Failed, Output, Reject, Setting, Source, hookimpl


class Numbers(Source):
    settings = {"count": Setting(int, required=True), "acks": Setting(str, required=True)}

    async def read(self):
        for n in range(1, self.config["count"] + 1):
            if self.stopping:
                return
            customer = "nobody" if n % 5 == 0 else "acme"
            yield [Event({"id": f"alert-{n}", "customer": customer, "n": n}, "numbers", n)]
        yield [Reject("{not json", "numbers", 999, "not valid JSON")]

    def ack(self, item):
        # what the dead-letter file holds at the moment of the acknowledgement
        try:
            with open("nwpipe-dead-letter.jsonl") as fh:
                dead = [json.loads(line) for line in fh]
        except FileNotFoundError:
            dead = []
        on_disk = any((r["source"], r["line"]) == (item.source, item.line) for r in dead)
        with open(self.config["acks"], "a") as fh:
            fh.write(json.dumps([item.line, on_disk]) + "\\n")


class Picky(Output):
    """Refuses odd-numbered events for good, after a moment."""

    concurrency = 4

    async def send(self, batch):
        import asyncio
        await asyncio.sleep(0.001 * (batch[0].event["n"] % 3))
        if batch[0].event["n"] % 2:
            return Failed("odd")
        return Delivered()


@hookimpl
def register_sources(register):
    register("numbers", Numbers)


@hookimpl
def register_outputs(register):
    register("picky", Picky)
'''


def test_hook_register_sources(tmp_path):
    plugins = plugin_dir(tmp_path, "numbers", SOURCE_PLUGIN)
    info = listed(plugins)
    assert info["numbers"]["source_types"] == ["numbers"]
    assert info["nwpipe_plugins.files"]["source_types"] == ["files"]  # the built-in one
    text = nwpipe_cli("--plugins-dir", str(plugins), "plugins")
    assert "    source types: numbers\n" in text.stdout

    config = tmp_path / "nwpipe.toml"
    config.write_text(textwrap.dedent('''
        [source]
        type = "numbers"
        count = 40
        acks = "acks.jsonl"

        [outputs.archive]
        type = "file"
        path = "archive.jsonl"
        customers = ["acme"]

        [outputs.picky]
        type = "picky"
        customers = ["acme"]
        '''))
    run = nwpipe_cli("--plugins-dir", str(plugins), "run", "-c", str(config), cwd=tmp_path)
    assert run.returncode == 3, run.stderr  # dead letters
    assert "read 41 events" in run.stderr
    acks = [json.loads(line) for line in (tmp_path / "acks.jsonl").read_text().splitlines()]
    # exactly one acknowledgement per item read: 40 events and the reject
    assert sorted(line for line, _ in acks) == [*range(1, 41), 999]
    dead = {(r["source"], r["line"]) for r in
            map(json.loads, (tmp_path / "nwpipe-dead-letter.jsonl").read_text().splitlines())}
    for line, on_disk in acks:
        refused = line == 999 or (line % 2 == 1 and line % 5 != 0)
        # a dead-lettered event is acknowledged only once its record is on disk
        assert on_disk == refused, line
        assert (("numbers", line) in dead) == refused
    archived = [json.loads(x)["n"] for x in (tmp_path / "archive.jsonl").read_text().split()]
    assert archived == [n for n in range(1, 41) if n % 5]

    # [source] is validated with key paths, like an output
    for table, message in [
            ('type = "numbers"\ncont = 3\nacks = "a"',
             "source.cont: unknown setting 'cont' (did you mean 'count'?)"),
            ('type = "numbres"',
             "source.type: unknown source type 'numbres' (did you mean 'numbers'?)"),
            ('type = "numbers"\nacks = "a"', "source.count: required setting is missing"),
            ('type = 3', "source.type: must be a string")]:
        config.write_text(f"[source]\n{table}\n[outputs.o]\ntype = \"stdout\"\n")
        bad = nwpipe_cli("--plugins-dir", str(plugins), "check", "-c", str(config), cwd=tmp_path)
        assert bad.returncode == 1 and message in bad.stderr, bad.stderr
        assert "Traceback" not in bad.stderr
    # a source that reads no files refuses file arguments
    config.write_text('[source]\ntype = "numbers"\ncount = 1\nacks = "a"\n'
                      '[outputs.o]\ntype = "stdout"\n')
    extra = nwpipe_cli("--plugins-dir", str(plugins), "run", "-c", str(config), "events.jsonl",
                       cwd=tmp_path)
    assert extra.returncode == 1
    assert "source type 'numbers' reads no files" in extra.stderr


# -- the plugins page's guide and the example plugin work as written ----------------------------------

def guide_file(name: str, language: str) -> str:
    for block in re.findall(rf"```{language}\n(.*?)```", PLUGINS, re.S):
        if block.startswith(f"# {name}\n"):
            return block
    raise AssertionError(f"no ```{language} block starting with '# {name}' in the guide")


def test_guide_output_plugin_works_as_written(tmp_path):
    folder = tmp_path / "nwpipe-sqlite"
    folder.mkdir()
    module = guide_file("nwpipe_sqlite.py", "python")
    (folder / "nwpipe_sqlite.py").write_text(module)
    (folder / "nwpipe.toml").write_text(guide_file("nwpipe.toml", "toml"))
    pyproject = tomllib.loads(guide_file("pyproject.toml", "toml"))
    assert pyproject["project"]["entry-points"]["nwpipe"] == {"sqlite": "nwpipe_sqlite"}
    assert pyproject["tool"]["setuptools"]["py-modules"] == ["nwpipe_sqlite"]
    events = jsonl([event(1), event(2), event(1, alerttype="end")])
    for _ in range(2):  # a replay adds nothing: the delivery id is the primary key
        run = nwpipe_cli("--plugins-dir", ".", "run", "-c", "nwpipe.toml", cwd=folder,
                         input=events)
        assert run.returncode == 0, run.stderr
    with sqlite3.connect(folder / "alerts.db") as db:
        rows = db.execute("SELECT alert_id, body FROM events ORDER BY rowid").fetchall()
    assert [(a, json.loads(b)["alerttype"]) for a, b in rows] == \
        [("alert-1", "start"), ("alert-2", "start"), ("alert-1", "end")]
    (folder / "nwpipe.toml").write_text('[outputs.db]\ntype = "sqlite"\npath = "a.db"\n'
                                        'tabel = "x"\n')
    check = nwpipe_cli("--plugins-dir", ".", "check", "-c", "nwpipe.toml", cwd=folder)
    assert "outputs.db.tabel: unknown setting 'tabel' (did you mean 'table'?)" in check.stderr
    (folder / "nwpipe.toml").write_text('[outputs.db]\ntype = "sqlite"\npath = "a.db"\n'
                                        'table = "my table"\n')
    check = nwpipe_cli("--plugins-dir", ".", "check", "-c", "nwpipe.toml", cwd=folder)
    assert "outputs.db: table must be a plain name, got 'my table'" in check.stderr
    assert "Traceback" not in check.stderr


def test_guide_source_plugin_works_as_written(tmp_path):
    folder = tmp_path / "nwpipe-spool"
    spool = folder / "spool"
    spool.mkdir(parents=True)
    (folder / "nwpipe_spool.py").write_text(guide_file("nwpipe_spool.py", "python"))
    (folder / "spool.toml").write_text(guide_file("spool.toml", "toml"))
    (spool / "a.jsonl").write_text(jsonl([event(1), event(2)]))
    (spool / "b.jsonl").write_text(jsonl([event(3)]) + "{oops\n" + jsonl([event(4)]))
    run = nwpipe_cli("--plugins-dir", ".", "run", "-c", "spool.toml", cwd=folder)
    assert run.returncode == 3, run.stderr  # the bad line is dead-lettered
    assert "b.jsonl:2: not valid JSON" in run.stderr
    archived = [json.loads(line)["id"] for line in
                (folder / "archive.jsonl").read_text().splitlines()]
    assert archived == ["alert-1", "alert-2", "alert-3", "alert-4"]
    dead = [json.loads(line) for line in
            (folder / "nwpipe-dead-letter.jsonl").read_text().splitlines()]
    assert [(d["source"], d["line"], d["raw"]) for d in dead] == [("b.jsonl", 2, "{oops")]
    assert list(spool.iterdir()) == []  # every file acknowledged in full, then deleted
    (folder / "spool.toml").write_text(guide_file("spool.toml", "toml").replace("folder",
                                                                                 "foldr"))
    check = nwpipe_cli("--plugins-dir", ".", "check", "-c", "spool.toml", cwd=folder)
    assert "spool.toml: source.foldr: unknown setting 'foldr' (did you mean 'folder'?)" \
        in check.stderr


def test_example_plugin_installs_and_its_own_tests_pass(tmp_path):
    example = ROOT / "examples" / "nwpipe-example-plugin"
    target = tmp_path / "site"
    install = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "-q",
         "--target", str(target), str(example)],
        capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert install.returncode == 0, install.stderr
    assert list(target.glob("nwpipe_example_plugin-*.dist-info"))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(target), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
    env.pop("NWPIPE_CONFIG", None)
    tests = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                            str(example / "tests")], capture_output=True, text=True,
                           timeout=300, cwd=example, env=env)
    assert tests.returncode == 0, tests.stdout + tests.stderr
    assert re.search(r"\b6 passed\b", tests.stdout), tests.stdout
