"""A real rsyslogd for tests: its own config, ports, pid file and output file in a
temporary folder, run in the foreground (-n) and stopped after.

It listens on 127.0.0.1 with imrelp (RELP) and imtcp (octet-counted or newline-framed
TCP) and writes each message it receives, exactly as received (``%rawmsg%``), as one line
of ``messages.log``. The main queue is direct: a message is in the file before
imrelp acknowledges it, so whatever was acknowledged survives a kill -9.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

IMRELP_PATHS = [Path("/usr/lib/x86_64-linux-gnu/rsyslog/imrelp.so"),
                Path("/usr/lib/aarch64-linux-gnu/rsyslog/imrelp.so"),
                Path("/usr/lib/rsyslog/imrelp.so")]


def rsyslog_missing() -> str | None:
    """Why rsyslogd with imrelp cannot run here, or None when it can."""
    if shutil.which("rsyslogd") is None and not Path("/usr/sbin/rsyslogd").exists():
        return "rsyslogd is not installed (apt-get install rsyslog rsyslog-relp)"
    if not any(p.exists() for p in IMRELP_PATHS):
        return "rsyslog's imrelp module is not installed (apt-get install rsyslog-relp)"
    return None


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


class Rsyslog:
    """One rsyslogd; ``start``, ``kill`` (SIGKILL) and ``start`` again keep the ports."""

    def __init__(self, folder: Path, max_message_size: int = 8192):
        self.folder = folder
        self.folder.mkdir(parents=True, exist_ok=True)
        self.relp_port = free_port()
        self.tcp_port = free_port()
        self.output = folder / "messages.log"
        self.config = folder / "rsyslog.conf"
        self.pid_file = folder / "rsyslogd.pid"
        self.max_message_size = max_message_size
        self.proc: subprocess.Popen | None = None
        self.starts = 0

    def _write_config(self) -> None:
        work = self.folder / "work"
        work.mkdir(exist_ok=True)
        self.config.write_text(f"""\
global(maxMessageSize="{self.max_message_size}" workDirectory="{work}")
main_queue(queue.type="direct")
module(load="imrelp")
module(load="imtcp")
template(name="raw" type="string" string="%rawmsg%\\n")
ruleset(name="net" queue.type="direct") {{
    action(type="omfile" file="{self.output}" template="raw" flushOnTXEnd="on"
           asyncWriting="off")
}}
input(type="imrelp" port="{self.relp_port}" address="127.0.0.1" ruleset="net")
input(type="imtcp" port="{self.tcp_port}" address="127.0.0.1" ruleset="net")
""")

    def start(self, timeout: float = 60) -> Rsyslog:
        """Start rsyslogd and wait until both ports accept connections."""
        self._write_config()
        binary = shutil.which("rsyslogd") or "/usr/sbin/rsyslogd"
        self.stderr = open(self.folder / f"rsyslogd.{self.starts}.err", "wb")
        self.proc = subprocess.Popen(
            [binary, "-n", "-f", str(self.config), "-i", str(self.pid_file)],
            stdin=subprocess.DEVNULL, stdout=self.stderr, stderr=self.stderr,
            start_new_session=True)
        self.starts += 1
        deadline = time.monotonic() + timeout
        while not (_accepts(self.relp_port) and _accepts(self.tcp_port)):
            if self.proc.poll() is not None:
                raise RuntimeError(f"rsyslogd exited with {self.proc.returncode}: "
                                   f"{self.errors()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"rsyslogd did not listen within {timeout} s: "
                                   f"{self.errors()}")
            time.sleep(0.05)
        return self

    def errors(self) -> str:
        """What rsyslogd wrote on stderr in its runs so far."""
        return "\n".join(p.read_text(errors="replace")
                         for p in sorted(self.folder.glob("rsyslogd.*.err")))

    def _end(self, sig: int, timeout: float = 30) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if proc.poll() is None:
            os.kill(proc.pid, sig)
            proc.wait(timeout)
        self.stderr.close()
        self.pid_file.unlink(missing_ok=True)

    def kill(self) -> None:
        """SIGKILL: what a crash or a power cut does to the collector."""
        self._end(signal.SIGKILL)

    def stop(self) -> None:
        """SIGTERM, and wait for rsyslogd to exit."""
        self._end(signal.SIGTERM)

    def lines(self) -> list[bytes]:
        """Every message written so far, one per line."""
        try:
            data = self.output.read_bytes()
        except FileNotFoundError:
            return []
        return data.splitlines()

    def wait_for_lines(self, count: int, timeout: float = 60) -> list[bytes]:
        """Poll the output file until it holds at least ``count`` messages."""
        deadline = time.monotonic() + timeout
        while True:
            lines = self.lines()
            if len(lines) >= count:
                return lines
            if time.monotonic() > deadline:
                raise AssertionError(f"rsyslog wrote {len(lines)} of {count} messages "
                                     f"within {timeout} s; its stderr: {self.errors()}")
            time.sleep(0.05)
