"""A real ``nwpipe serve`` process for the tests: started on a free port, stopped after.

    proc = ServeProcess(tmp_path, config_text).start()
    proc.url            # http://127.0.0.1:PORT (where it said it listens)
    proc.stop()         # SIGTERM, and the exit code
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

LISTENING = re.compile(r"serve: listening on (https?://\S+?)(/\S*)?$")
METRICS = re.compile(r"serve: metrics on (http://\S+)/metrics")


def env() -> dict:
    e = {k: v for k, v in os.environ.items() if k != "NWPIPE_CONFIG"}
    e["NWPIPE_LOAD_PLUGINS"] = ""
    return e


class ServeProcess:
    """``python -m nwpipe serve -c CONFIG --listen 127.0.0.1:0`` in ``folder``.

    stderr is read by a thread into ``lines``, so a test can wait for a message with a
    deadline; the queue and dead-letter files are in ``folder``.
    """

    def __init__(self, folder: Path, config: str, *args: str):
        self.folder = folder
        self.config = folder / "nwpipe.toml"
        self.config.write_text(config)
        self.args = args
        self.proc: subprocess.Popen | None = None
        self.lines: list[str] = []
        self.url = ""
        self.metrics_url = ""
        self._reader: threading.Thread | None = None

    def start(self, timeout: float = 60) -> ServeProcess:
        self.lines = []
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "nwpipe", "serve", "-c", str(self.config),
             "--listen", "127.0.0.1:0", *self.args],
            cwd=self.folder, env=env(), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        line = self.wait_line(LISTENING, timeout)
        self.url = LISTENING.search(line).group(1)
        metrics = [m for m in map(METRICS.search, self.lines) if m]
        self.metrics_url = metrics[0].group(1) if metrics else self.url
        return self

    def _read(self) -> None:
        for line in self.proc.stderr:
            self.lines.append(line.rstrip("\n"))

    def wait_line(self, pattern: str | re.Pattern, timeout: float = 60) -> str:
        """The first stderr line matching ``pattern``, waiting for it up to ``timeout`` s."""
        pattern = re.compile(pattern) if isinstance(pattern, str) else pattern
        deadline = time.monotonic() + timeout
        seen = 0
        while True:
            lines = list(self.lines)
            for line in lines[seen:]:
                if pattern.search(line):
                    return line
            seen = len(lines)
            if self.proc.poll() is not None and self._reader is not None:
                self._reader.join(5)
                if not any(pattern.search(x) for x in self.lines[seen:]):
                    raise AssertionError(f"nwpipe serve exited ({self.proc.returncode}) "
                                         f"without {pattern.pattern!r}:\n" + self.stderr)
                continue
            assert time.monotonic() < deadline, (f"no line {pattern.pattern!r} within "
                                                 f"{timeout} s:\n" + self.stderr)
            time.sleep(0.02)

    @property
    def stderr(self) -> str:
        return "\n".join(self.lines)

    def signal(self, signum: int) -> None:
        self.proc.send_signal(signum)

    def wait(self, timeout: float = 60) -> int:
        """The exit code, waiting for it; the stderr reader has read everything."""
        code = self.proc.wait(timeout)
        if self._reader is not None:
            self._reader.join(10)
        return code

    def stop(self, timeout: float = 60) -> int:
        """SIGTERM and the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.wait(timeout)

    def kill(self) -> None:
        """SIGKILL: no chance to clean up."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.wait()
