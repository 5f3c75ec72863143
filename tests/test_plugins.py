"""Plugins: built-ins, --plugins-dir, entry points, broken and misspelled plugins."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from nwpipe.plugins import PluginError, Plugins

GOOD = '''
from nwpipe import hookimpl, Output, Delivered

class Shout(Output):
    async def send(self, batch):
        return Delivered()

@hookimpl
def register_outputs(register):
    register("shout", Shout)
'''


def nwpipe(*args, env=None, input=None, cwd=None):
    full_env = {**os.environ, "NWPIPE_LOAD_PLUGINS": "", **(env or {})}
    return subprocess.run([sys.executable, "-m", "nwpipe", *args], capture_output=True, text=True,
                          env=full_env, input=input, cwd=cwd, timeout=60)


def test_builtins_register_like_any_plugin():
    plugins = Plugins(load_entry_points=False)
    assert {"stdout", "file", "webhook"} <= set(plugins.output_types)
    origins = {i.name: i.origin for i in plugins.info()}
    assert origins["nwpipe_plugins.stdout"] == "built-in"
    assert plugins.output_plugins["file"] == "nwpipe_plugins.file"


def test_plugins_dir(tmp_path):
    (tmp_path / "shout.py").write_text(GOOD)
    plugins = Plugins([tmp_path], load_entry_points=False)
    assert "shout" in plugins.output_types
    info = {i.name: i for i in plugins.info()}["shout"]
    assert info.origin == str(tmp_path / "shout.py")
    assert info.output_types == ["shout"]
    assert info.hooks == ["register_outputs"]


def test_broken_plugin_is_one_warning(tmp_path, caplog):
    (tmp_path / "broken.py").write_text("import does_not_exist_anywhere\n")
    (tmp_path / "shout.py").write_text(GOOD)
    plugins = Plugins([tmp_path], load_entry_points=False)
    assert "shout" in plugins.output_types
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1
    assert "broken.py" in warnings[0] and "does_not_exist_anywhere" in warnings[0]


def test_misspelled_hook_is_an_error(tmp_path):
    (tmp_path / "typo.py").write_text(GOOD.replace("def register_outputs", "def register_output"))
    with pytest.raises(PluginError, match="unknown hook 'register_output'.*did you mean 'register_outputs'"):
        Plugins([tmp_path], load_entry_points=False)


def test_wrong_hook_argument_is_an_error(tmp_path):
    (tmp_path / "args.py").write_text(GOOD.replace("register_outputs(register)", "register_outputs(reg)"))
    with pytest.raises(PluginError, match="args"):
        Plugins([tmp_path], load_entry_points=False)


def test_duplicate_output_type_names_both(tmp_path):
    (tmp_path / "mine.py").write_text(GOOD.replace('"shout"', '"file"'))
    with pytest.raises(PluginError, match="'file' is registered twice: by nwpipe_plugins.file and by mine"):
        Plugins([tmp_path], load_entry_points=False)


def test_register_rejects_non_output(tmp_path):
    (tmp_path / "bad.py").write_text(
        "from nwpipe import hookimpl\n@hookimpl\ndef register_outputs(register):\n    register('x', dict)\n")
    with pytest.raises(PluginError, match="subclass of nwpipe.Output"):
        Plugins([tmp_path], load_entry_points=False)


def make_entry_point(site, name="shoutplugin", module_text=GOOD, dist="nwpipe-shout"):
    """A real installed distribution: a module plus dist-info with an entry point."""
    (site / f"{name}.py").write_text(module_text)
    info = site / f"{dist.replace('-', '_')}-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(f"[nwpipe]\n{name} = {name}\n")


def test_entry_point_plugin_is_listed_and_usable(tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    make_entry_point(site)
    env = {"PYTHONPATH": str(site), "NWPIPE_LOAD_PLUGINS": "shoutplugin"}
    listing = nwpipe("plugins", "--json", env=env)
    assert listing.returncode == 0, listing.stderr
    entry = {p["name"]: p for p in json.loads(listing.stdout)}["shoutplugin"]
    assert entry["output_types"] == ["shout"]
    assert "nwpipe-shout 1.0" in entry["origin"]
    config = tmp_path / "c.toml"
    config.write_text('[outputs.s]\ntype = "shout"\n')
    check = nwpipe("check", "-c", str(config), env=env)
    assert check.returncode == 0, check.stderr


def test_load_plugins_env_selects_entry_points(tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    make_entry_point(site)
    listing = nwpipe("plugins", env={"PYTHONPATH": str(site), "NWPIPE_LOAD_PLUGINS": ""})
    assert "shoutplugin" not in listing.stdout
    listing = nwpipe("plugins", env={"PYTHONPATH": str(site), "NWPIPE_LOAD_PLUGINS": "shoutplugin"})
    assert "shoutplugin" in listing.stdout


def test_broken_entry_point_names_distribution(tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    make_entry_point(site, module_text="raise RuntimeError('boom at import')\n", dist="nwpipe-broken")
    proc = nwpipe("plugins", env={"PYTHONPATH": str(site), "NWPIPE_LOAD_PLUGINS": "shoutplugin"})
    assert proc.returncode == 0
    assert "nwpipe-broken" in proc.stderr and "boom at import" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert "nwpipe_plugins.webhook" in proc.stdout


def test_trace_plugins_env(tmp_path):
    proc = nwpipe("plugins", env={"NWPIPE_TRACE_PLUGINS": "1"})
    assert "register_outputs" in proc.stderr


def test_cli_plugins_dir_option(tmp_path):
    (tmp_path / "shout.py").write_text(GOOD)
    proc = nwpipe("plugins", "--plugins-dir", str(tmp_path))
    assert proc.returncode == 0
    assert "shout" in proc.stdout and str(tmp_path / "shout.py") in proc.stdout
    bad = nwpipe("plugins", "--plugins-dir", str(tmp_path / "nope"))
    assert bad.returncode == 1 and "no such folder" in bad.stderr
