"""A real redis-server for the tests: its own free port, its own temporary folder.

The session fixture ``redis_server`` (tests/conftest.py) starts one with append-only
persistence (so a restart keeps what was acknowledged), no RDB snapshots, nothing
written outside its folder. Tests that stop, kill or restart Redis take the
function-scoped ``own_redis`` instead, so they never disturb the shared one.
Each test takes a fresh key prefix (``redis_prefix``) so tests never see each other's keys.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RedisServer:
    """One ``redis-server --daemonize no`` process; :meth:`restart` keeps port and data."""

    def __init__(self, folder: Path, port: int | None = None):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:PORT/0``."""
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 30) -> None:
        """Start the server and return once it answers PING."""
        exe = shutil.which("redis-server")
        if exe is None:
            pytest.fail("redis-server is not installed (apt-get install redis-server; .ci/run does it)")
        self.proc = subprocess.Popen(
            [exe, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.folder),
             "--daemonize", "no", "--appendonly", "yes", "--appendfsync", "everysec",
             "--save", "", "--protected-mode", "yes", "--loglevel", "warning",
             "--logfile", str(self.folder / "redis.log")],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                log = (self.folder / "redis.log").read_text(errors="replace")[-2000:]
                pytest.fail(f"redis-server exited with {self.proc.returncode}: {log}")
            if self.ping():
                return
            time.sleep(0.05)
        pytest.fail(f"redis-server did not answer on port {self.port} within {timeout} s")

    def ping(self) -> bool:
        """Whether the server answers PING (a plain socket, no client library)."""
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                s.sendall(b"PING\r\n")
                return s.recv(64).startswith(b"+PONG")
        except OSError:
            return False

    def stop(self, timeout: float = 30) -> None:
        """SIGTERM (Redis writes its append-only file and exits) and wait for the exit."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def restart(self) -> None:
        """Stop and start again on the same port with the same data."""
        self.stop()
        self.start()

    def command(self, *args: str) -> str:
        """Run one command with redis-cli and return its output (for checks in tests)."""
        out = subprocess.run(["redis-cli", "-p", str(self.port), "--no-raw", *args],
                             capture_output=True, text=True, timeout=30)
        return out.stdout.strip()


def start_redis(folder: Path) -> RedisServer:
    """A started :class:`RedisServer` in ``folder``."""
    server = RedisServer(folder)
    server.start()
    return server


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory):
    """One redis-server for the whole session, stopped at the end."""
    server = start_redis(tmp_path_factory.mktemp("redis"))
    yield server
    server.stop()


@pytest.fixture
def own_redis(tmp_path):
    """A redis-server of the test's own, for tests that stop or restart it."""
    server = start_redis(tmp_path / "redis")
    yield server
    server.stop()


@pytest.fixture
def redis_prefix(request) -> str:
    """A key prefix no other test uses."""
    return f"t{os.getpid()}-{abs(hash(request.node.nodeid)) % 10**8}-{time.monotonic_ns() % 10**6}"
