"""`nwpipe init`: a commented starter config that passes `nwpipe check` as written."""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from nwpipe.commands.init import STARTER_CONFIG, InitError, write_starter_config
from nwpipe.config import build_config, read_toml
from nwpipe.plugins import Plugins
from nwpipe.transform.routing import Router

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = json.loads((ROOT / "examples" / "netography-sample.json").read_text())


def nwpipe(*args, cwd, env=None):
    full_env = {k: v for k, v in os.environ.items() if k not in ("NWPIPE_CONFIG", "SOC_URL")}
    full_env.update({"NWPIPE_LOAD_PLUGINS": "", **(env or {})})
    return subprocess.run([sys.executable, "-m", "nwpipe", *args], cwd=cwd, env=full_env,
                          capture_output=True, text=True, timeout=60)


def test_init_then_check_passes_as_written(tmp_path):
    proc = nwpipe("init", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("wrote nwpipe.toml\n")
    assert (tmp_path / "nwpipe.toml").read_text() == STARTER_CONFIG
    check = nwpipe("check", cwd=tmp_path)  # found as ./nwpipe.toml
    assert check.returncode == 0, check.stderr
    assert "soc: type webhook; webhook POST https://soc.example.com/netography" in check.stdout


def test_init_refuses_to_overwrite_without_force(tmp_path):
    target = tmp_path / "nwpipe.toml"
    target.write_text("# mine\n")
    proc = nwpipe("init", cwd=tmp_path)
    assert proc.returncode == 1
    assert "nwpipe.toml already exists; use --force to overwrite it" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert target.read_text() == "# mine\n"
    assert nwpipe("init", "--force", cwd=tmp_path).returncode == 0
    assert target.read_text() == STARTER_CONFIG


def test_init_path_file_folder_and_missing_folder(tmp_path):
    assert nwpipe("init", "conf/custom.toml", cwd=tmp_path).returncode == 1
    (tmp_path / "conf").mkdir()
    proc = nwpipe("init", "conf/custom.toml", cwd=tmp_path)
    assert proc.returncode == 0 and (tmp_path / "conf" / "custom.toml").is_file()
    assert write_starter_config(tmp_path / "conf") == tmp_path / "conf" / "nwpipe.toml"
    with pytest.raises(InitError, match="folder .*missing does not exist"):
        write_starter_config(tmp_path / "missing" / "x.toml")


def starter(tmp_path, environ=None, text=STARTER_CONFIG):
    path = tmp_path / "nwpipe.toml"
    path.write_text(text)
    data = read_toml(str(path))
    config = build_config(data, Plugins(load_entry_points=False).output_types,
                          file=str(path), environ=environ or {})
    return data, config, Router(config)


def test_mapping_shows_each_kind_of_field(tmp_path):
    data, _, router = starter(tmp_path)
    fields = data["mappings"]["soc"]["fields"]
    kinds = set()
    for value in fields.values():
        if isinstance(value, str):
            kinds.add("template" if "{{" in value else "path" if value.startswith("$")
                      else "constant")
        elif isinstance(value, dict):
            kinds.update(k for k in ("path", "template", "value", "default", "list", "type")
                         if k in value)
        else:
            kinds.add("number")
    assert kinds == {"template", "path", "constant", "value", "default", "list", "type",
                     "number"}
    assert any("." in name for name in fields)  # nested output fields
    event = dict(SAMPLE, srcip=["1.2.3.4", "5.6.7.8"], dstip=["7.8.9.10"], customer="acme")
    body = router.routes[0].mapper("acme")(event)
    assert body == {
        "alert_id": "00edee24-bc66-4b37-803c-123456789012",
        "customer": "acme",
        "state": "start",
        "src_ip": "1.2.3.4",
        "bits_max": 0,
        "dst_ips": ["7.8.9.10"],
        "title": "MEDIUM: knownbotnet start for acme",
        "started_at": "2023-07-15T03:18:51Z",
        "sources": "1.2.3.4, 5.6.7.8",
        "severity_level": 2,
        "is_end": False,
        "vendor": "netography",
        "version": 1,
        "queue": "$SOC-L1",
        "links": {"portal": "https://portal.netography.com"},
    }


def test_commented_options_are_valid_when_uncommented(tmp_path):
    wanted = re.compile(r"^# ((username|password|customers|when|type|path|rotate_bytes|"
                        r"template) +=|\[outputs\.archive\]|\[mappings\.slack\])")
    text = "\n".join(line[2:] if wanted.match(line) else line
                     for line in STARTER_CONFIG.splitlines())
    assert text.count("\n# ") < STARTER_CONFIG.count("\n# ") - 8
    _, config, _ = starter(tmp_path, {"SOC_PASSWORD": "pw"}, text)
    assert set(config.outputs) == {"soc", "archive"}
    assert config.outputs["soc"].settings["username"] == "netography"
    assert config.outputs["archive"].settings["rotate_bytes"] == 104857600
    assert "slack" in config.mappings


async def test_starter_config_delivers_and_probes_with_soc_url_set(receiver, tmp_path):
    write_starter_config(tmp_path)
    env = {k: v for k, v in os.environ.items() if k != "NWPIPE_CONFIG"}
    env.update(NWPIPE_LOAD_PLUGINS="", SOC_URL=f"{receiver.url}/netography")

    async def run(*args, stdin=b""):
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "nwpipe", *args, cwd=tmp_path, env=env,
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE)
        out, err = await asyncio.wait_for(proc.communicate(stdin), 60)
        return proc.returncode, out.decode(), err.decode()

    code, out, err = await run("check", "--probe")
    assert code == 0, out + err
    assert re.search(r"soc: OK \(HTTP 200 in \d+ ms\)", out)
    code, _, err = await run("run", stdin=json.dumps(SAMPLE).encode())
    assert code == 0, err
    probe_request, run_request = receiver.requests
    assert run_request.path == "/netography"
    assert run_request.headers["X-Netography"] == "Webhook"
    assert run_request.json()["title"] == "MEDIUM: knownbotnet start for <shortname>"
    assert probe_request.json()["state"] == "end"
