"""Start-up: `nwpipe --version` loads no more than the command line needs.

Not a timing test (the machine's load decides those): it asserts which heavy modules a
fresh interpreter has NOT imported, which is what makes start-up fast anywhere.
"""

from __future__ import annotations

import json
import subprocess
import sys

# each costs milliseconds to import; none is needed to print the version
HEAVY = ("asyncio", "pluggy", "importlib.metadata", "jinja2", "orjson", "ssl", "yarl",
         "aiohttp", "sqlite3", "jsonpath_ng", "nwpipe.sources.decode", "nwpipe.outputs",
         "nwpipe.engine.pipeline", "nwpipe.plugins", "nwpipe_plugins.webhook")

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
