"""The ``[serve]`` table as ``nwpipe check`` and ``nwpipe serve`` see it: one line naming
the file, the key and the problem; the starter config of ``nwpipe init --serve``."""

from __future__ import annotations

import subprocess
import sys

import pytest
from serveproc import env

OUTPUT = '\n[outputs.a]\ntype = "file"\npath = "out.jsonl"\n'


def nwpipe(*args, cwd):
    return subprocess.run([sys.executable, "-m", "nwpipe", *args], cwd=cwd, env=env(),
                          capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("table, message", [
    ('listen = "0.0.0.0:80x"', "serve.listen: port '80x' is not a number"),
    ('listen = "::1:8080"', "serve.listen: '::1:8080': write an IPv6 address in brackets"),
    ('path = "netography"', "serve.path: must start with '/'"),
    ('authusername = "netography"', "serve.password: Basic Auth needs both username and password"),
    ('authpassword = "x"', "serve.username: Basic Auth needs both username and password"),
    ('username = "u"\npassword = "p"\nbearer_token = "t"',
     "serve.bearer_token: set either username/password or bearer_token, not both"),
    ('signing_secret = "not base64!"', "serve.signing_secret: signing_secret must be 'whsec_'"),
    ('tls_cert = "missing.pem"', "serve.tls_cert: file not found: missing.pem"),
    ('max_body_bytes = 0', "serve.max_body_bytes: must be at least 1"),
    ('max_body = 10', "serve.max_body: unknown setting 'max_body' (did you mean 'max_body_bytes'?)"),
    ('read_timeout = "fast"', "serve.read_timeout: must be a number, got str"),
])
def test_check_names_the_key_and_the_problem(tmp_path, table, message):
    (tmp_path / "nwpipe.toml").write_text(f"[serve]\n{table}\n{OUTPUT}")
    proc = nwpipe("check", "-c", "nwpipe.toml", cwd=tmp_path)
    assert proc.returncode == 1
    assert proc.stderr == f"nwpipe: error: nwpipe.toml: {message}" + proc.stderr.split(message)[1]
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr


def test_a_secret_is_never_shown(tmp_path):
    (tmp_path / "nwpipe.toml").write_text(
        '[serve]\nusername = "u"\npassword = "hunter2-secret"\nbearer_token = "tok-secret"\n'
        + OUTPUT)
    proc = nwpipe("check", "-c", "nwpipe.toml", cwd=tmp_path)
    assert proc.returncode == 1
    assert "secret" not in proc.stderr


def test_serve_flags_and_a_taken_port_are_one_line_errors(tmp_path):
    (tmp_path / "nwpipe.toml").write_text(OUTPUT)
    proc = nwpipe("serve", "-c", "nwpipe.toml", "--listen", "nowhere", cwd=tmp_path)
    assert (proc.returncode, proc.stderr) == (1, "nwpipe: error: --listen: 'nowhere' is not "
                                                 "HOST:PORT (e.g. 127.0.0.1:8080 or 0.0.0.0:8080)\n")
    import socket
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = nwpipe("serve", "-c", "nwpipe.toml", "--listen", f"127.0.0.1:{port}", cwd=tmp_path)
    assert proc.returncode == 1
    assert f"listen 127.0.0.1:{port}: cannot listen:" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_init_serve_writes_a_config_that_checks(tmp_path):
    proc = nwpipe("init", "--serve", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    text = (tmp_path / "nwpipe.toml").read_text()
    assert "[serve]" in text and 'sync = "full"' in text
    proc = nwpipe("check", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "  [serve]: http://0.0.0.0:8443/netography; Basic Auth; max_body_bytes 1048576\n" \
        in proc.stdout
    assert "change-me" not in proc.stdout
