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
        """Start the server and return once it answers as this very process.

        The port was free when it was picked, but another redis-server (one an earlier
        test left behind, or another test run on this machine) may have taken it since:
        ours then cannot bind and exits, and a bare PING would be answered by the other
        one, whose owner may stop it in the middle of our test. Then the server starts
        again on a new port.
        """
        for _ in range(5):
            if self._start_once(timeout):
                return
            self.port = free_port()
        pytest.fail("redis-server found its port taken by another server 5 times running")

    def _start_once(self, timeout: float) -> bool:
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
                if "Address already in use" in log:
                    return False
                pytest.fail(f"redis-server exited with {self.proc.returncode}: {log}")
            answered = self.server_pid()
            if answered == self.proc.pid:
                return True
            if answered is not None:  # another server has the port: ours exits
                self.proc.kill()
                self.proc.wait()
                return False
            time.sleep(0.05)
        self.proc.kill()
        self.proc.wait()
        pytest.fail(f"redis-server did not answer on port {self.port} within {timeout} s")

    def server_pid(self) -> int | None:
        """The process id of the server answering on the port (``INFO server``), or None
        when none answers."""
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                s.sendall(b"INFO server\r\n")
                data = b""
                while b"process_id:" not in data or not data.endswith(b"\r\n"):
                    chunk = s.recv(65536)
                    if not chunk:
                        break
                    data += chunk
        except OSError:
            return None
        for line in data.decode(errors="replace").splitlines():
            if line.startswith("process_id:"):
                return int(line.split(":", 1)[1])
        return None

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
        if not self._start_once(30):
            pytest.fail(f"redis-server could not restart: port {self.port} was taken meanwhile")

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
