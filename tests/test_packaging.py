"""The built wheel, installed into a fresh virtual environment, works on its own.

Catches a module, plugin package or template left out of the wheel. Dependencies come
from the test environment (a .pth file), so no network is needed; nwpipe itself comes
only from the wheel.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def run(*args, **kw):
    return subprocess.run(args, capture_output=True, text=True, timeout=300, **kw)


@pytest.fixture(scope="module")
def venv(tmp_path_factory):
    base = tmp_path_factory.mktemp("wheel")
    dist = base / "dist"
    built = run(sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                "-w", str(dist), str(ROOT), str(ROOT / "examples" / "nwpipe-example-plugin"))
    assert built.returncode == 0, built.stderr
    env_dir = base / "venv"
    made = run(sys.executable, "-m", "venv", "--without-pip", str(env_dir))
    assert made.returncode == 0, made.stderr
    python = env_dir / "bin" / "python"
    site = Path(run(str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])")
                .stdout.strip())
    # dependencies from the test environment, but not its (editable) nwpipe
    (site / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    wheels = sorted(str(p) for p in dist.glob("*.whl"))
    installed = run(sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps",
                    "-q", *wheels)
    if installed.returncode != 0 and "no such option: --python" in installed.stderr:
        installed = run(sys.executable, "-m", "pip", "install", "--no-deps", "-q",
                        "--target", str(site), *wheels)
    assert installed.returncode == 0, installed.stderr
    return env_dir


def nwpipe(venv, *args, **kw):
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "NWPIPE_CONFIG")}
    return run(str(venv / "bin" / "python"), "-m", "nwpipe", *args, env=env, **kw)


def test_wheel_runs_from_its_own_install(venv, tmp_path):
    where = run(str(venv / "bin" / "python"), "-c", "import nwpipe, nwpipe_plugins; "
                "print(nwpipe.__file__); print(nwpipe_plugins.__file__)", cwd=tmp_path)
    assert str(ROOT) not in where.stdout, "nwpipe was imported from the source tree"
    assert str(venv) in where.stdout
    version = nwpipe(venv, "--version", cwd=tmp_path)
    assert version.returncode == 0 and version.stdout.startswith("nwpipe ")
    sample = ROOT / "examples" / "events.jsonl"
    proc = nwpipe(venv, "run", str(sample), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert len(lines) == len(sample.read_text().splitlines())
    assert json.loads(lines[0]) == json.loads(sample.read_text().splitlines()[0])


def test_wheel_has_builtin_plugins_and_example_plugin(venv, tmp_path):
    proc = nwpipe(venv, "plugins", "--json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    types = {t for p in json.loads(proc.stdout) for t in p["output_types"]}
    assert {"stdout", "file", "webhook", "tcp-jsonl"} <= types


def test_wheel_ships_templates(venv, tmp_path):
    names = run(str(venv / "bin" / "python"), "-c",
                "import importlib.resources as r; "
                "print(sorted(p.name for p in r.files('nwpipe.templates').iterdir()))", cwd=tmp_path)
    assert names.returncode == 0, names.stderr
    shipped = sorted(p.name for p in (ROOT / "templates").glob("*.j2"))
    for name in shipped:
        assert name in names.stdout
