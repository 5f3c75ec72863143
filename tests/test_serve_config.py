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
    # Standard Webhooks secrets are base64: the length that counts is the decoded key's
    ('signing_secret = "whsec_c2hvcnQta2V5"',
     "serve.signing_secret: signing_secret is too short: its key is 9 bytes after base64 "
     "decoding, at least 16 are needed"),
    ('signing_secret = "YWJjZGVmZ2hpamtsbW5vcHFyc3Q="',  # 20 bytes: long enough ...
     None),
    ('signing_secret = "YWJjZGVmZ2hpamtsbW5v"',  # ... 15 bytes: too short
     "serve.signing_secret: signing_secret is too short: its key is 15 bytes"),
    ('tls_cert = "missing.pem"', "serve.tls_cert: file not found: missing.pem"),
    ('max_body_bytes = 0', "serve.max_body_bytes: must be at least 1"),
    ('max_body = 10', "serve.max_body: unknown setting 'max_body' (did you mean 'max_body_bytes'?)"),
    ('read_timeout = "fast"', "serve.read_timeout: must be a number, got str"),
])
def test_check_names_the_key_and_the_problem(tmp_path, table, message):
    (tmp_path / "nwpipe.toml").write_text(f"[serve]\n{table}\n{OUTPUT}")
    proc = nwpipe("check", "-c", "nwpipe.toml", cwd=tmp_path)
    if message is None:
        assert proc.returncode == 0, proc.stderr
        return
    assert proc.returncode == 1
    assert proc.stderr == f"nwpipe: error: nwpipe.toml: {message}" + proc.stderr.split(message)[1]
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr


def test_serve_refuses_a_short_signing_secret_without_showing_it(tmp_path):
    (tmp_path / "nwpipe.toml").write_text('[serve]\nlisten = "127.0.0.1:0"\n'
                                          'signing_secret = "whsec_c2hvcnQta2V5"\n' + OUTPUT)
    proc = nwpipe("serve", "-c", "nwpipe.toml", cwd=tmp_path)
    assert proc.returncode == 1
    assert "serve.signing_secret: signing_secret is too short" in proc.stderr
    assert "at least 16 are needed" in proc.stderr
    assert "c2hvcnQta2V5" not in proc.stderr and "Traceback" not in proc.stderr


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


@pytest.fixture
def pem_files(tmp_path):
    """A certificate, its key, its key with a pass phrase, and another certificate's key."""
    import trustme
    from cryptography.hazmat.primitives import serialization
    ca = trustme.CA()
    cert, other = ca.issue_cert("127.0.0.1"), ca.issue_cert("localhost")
    cert.cert_chain_pems[0].write_to_path(str(tmp_path / "cert.pem"))
    cert.private_key_pem.write_to_path(str(tmp_path / "key.pem"))
    other.private_key_pem.write_to_path(str(tmp_path / "other-key.pem"))
    key = serialization.load_pem_private_key(cert.private_key_pem.bytes(), None)
    (tmp_path / "encrypted-key.pem").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"pass phrase")))
    return tmp_path


@pytest.mark.parametrize("cert, key, message", [
    ("cert.pem", "encrypted-key.pem", "serve.tls_key: the private key in encrypted-key.pem is "
                                      "encrypted (has a pass phrase), which nwpipe cannot ask for"),
    ("cert.pem", "other-key.pem", "serve.tls_key: the key in other-key.pem does not belong to "
                                  "the certificate in cert.pem"),
    ("cert.pem", None, "serve.tls_cert: cert.pem holds no PEM private key (set tls_key to the "
                       "key's file)"),
    ("key.pem", "cert.pem", "serve.tls_cert: key.pem holds no PEM certificate"),
])
def test_a_certificate_that_does_not_load_is_named_with_the_reason(pem_files, cert, key, message):
    # a session of its own: no terminal OpenSSL could ask a pass phrase on
    key_line = f'tls_key = "{key}"\n' if key else ""
    (pem_files / "nwpipe.toml").write_text(f'[serve]\ntls_cert = "{cert}"\n{key_line}{OUTPUT}')
    proc = subprocess.run([sys.executable, "-m", "nwpipe", "check"], cwd=pem_files, env=env(),
                          capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL,
                          start_new_session=True)
    assert proc.returncode == 1
    assert proc.stderr.startswith(f"nwpipe: error: nwpipe.toml: {message}"), proc.stderr
    assert proc.stderr.count("\n") == 1 and "pass phrase:" not in proc.stderr


def test_an_outputs_encrypted_client_key_is_named(pem_files):
    (pem_files / "nwpipe.toml").write_text(
        '[outputs.soc]\ntype = "webhook"\nurl = "https://127.0.0.1:1/"\n'
        'client_cert = "cert.pem"\nclient_key = "encrypted-key.pem"\n')
    proc = nwpipe("check", cwd=pem_files)
    assert proc.returncode == 1
    assert "outputs.soc: client_key: the private key in encrypted-key.pem is encrypted" \
        in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr
