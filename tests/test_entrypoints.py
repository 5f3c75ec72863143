"""nwpipe.entrypoints lists the same entry points as importlib.metadata, faster."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile

# prints both readers' answers for the groups given, in a fresh interpreter whose
# sys.path is the test's (PYTHONPATH)
COMPARE = """
import importlib.metadata, json, sys
from nwpipe import entrypoints
groups = sys.argv[1:]
def row(ep):
    return [ep.group, ep.name, ep.value, ep.dist.name, ep.dist.version]
fast = entrypoints.entry_points(groups)
slow = {g: list(importlib.metadata.entry_points(group=g)) for g in groups}
print(json.dumps({"fast": {g: [row(ep) for ep in fast[g]] for g in groups},
                  "slow": {g: [row(ep) for ep in slow[g]] for g in groups},
                  "loaded": [ep.load()() for ep in fast["nwpipe"] if ep.name == "shout"],
                  "importlib": "importlib.metadata" in sys.modules}))
"""

IMPORTLIB_LOADED = """
import sys
from nwpipe import entrypoints
entrypoints.entry_points(["nwpipe", "nwpipe.builtin"])
print("importlib.metadata" in sys.modules)
"""


def dist(site, folder: str, name: str, version: str, entry_points: str) -> None:
    info = site / folder
    info.mkdir(parents=True)
    header = "PKG-INFO" if folder.endswith(".egg-info") else "METADATA"
    (info / header).write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n\n"
                               f"Name: not-this-one\n")
    (info / "entry_points.txt").write_text(entry_points)


def compare(*sites, groups=("nwpipe", "nwpipe.builtin", "console_scripts")):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(str(s) for s in sites))
    run = subprocess.run([sys.executable, "-c", COMPARE, *groups], capture_output=True,
                         text=True, timeout=60, env=env)
    assert run.returncode == 0, run.stderr
    return json.loads(run.stdout)


def test_same_entry_points_as_importlib_metadata(tmp_path):
    first, second = tmp_path / "first", tmp_path / "second"
    (first / "shout.py").parent.mkdir()
    (first / "shout.py").write_text("class Maker:\n    @staticmethod\n    def make():\n"
                                    "        return 'made'\n")
    dist(first, "nwpipe_shout-1.0.dist-info", "nwpipe-shout", "1.0",
         "# a comment\n\n[nwpipe]\nshout = shout:Maker.make\n"
         "[console_scripts]\nshout = shout:main [cli]\n")
    dist(first, "Old.Style-0.3.egg-info", "Old.Style", "0.3", "[nwpipe]\nold=old_mod\n")
    # the same distribution again further down sys.path: shadowed, as on import
    dist(second, "nwpipe_shout-2.0.dist-info", "nwpipe-shout", "2.0", "[nwpipe]\nshout2 = x\n")
    dist(second, "other-1.dist-info", "other", "1", "[nwpipe]\n  spaced   =  a.b : c  \n")
    report = compare(first, second)
    assert report["fast"] == report["slow"]
    names = [row[1] for row in report["fast"]["nwpipe"]]
    assert sorted(names) == ["old", "shout", "spaced"]  # shout2 is shadowed
    assert ["nwpipe", "shout", "shout:Maker.make", "nwpipe-shout", "1.0"] \
        in report["fast"]["nwpipe"]
    assert report["loaded"] == ["made"]  # module:attr.attr resolved
    # nwpipe's own built-in plugins, found through the installed metadata
    assert {row[1] for row in report["fast"]["nwpipe.builtin"]} >= {"stdout", "webhook"}


def test_the_reader_does_not_import_importlib_metadata(tmp_path):
    run = subprocess.run([sys.executable, "-c", IMPORTLIB_LOADED], capture_output=True,
                         text=True, timeout=60)
    assert run.stdout.strip() == "False", run.stderr


def test_a_zip_on_sys_path_is_read_by_importlib_metadata(tmp_path):
    archive = tmp_path / "plugins.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("zipped-1.0.dist-info/METADATA", "Name: zipped\nVersion: 1.0\n")
        zf.writestr("zipped-1.0.dist-info/entry_points.txt", "[nwpipe]\nzipped = zmod\n")
    report = compare(archive)
    assert report["fast"] == report["slow"]
    assert ["nwpipe", "zipped", "zmod", "zipped", "1.0"] in report["fast"]["nwpipe"]
    assert report["importlib"] is True
