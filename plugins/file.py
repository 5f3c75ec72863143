"""The ``file`` output: mapped events appended as JSON lines to a file."""

from __future__ import annotations

import os
from pathlib import Path

from nwpipe import Delivered, Output, Setting, hookimpl


def _path(value: str) -> str:
    if not value.strip():
        raise ValueError("must be a file path")
    return value


class FileOutput(Output):
    """Append each body as one JSON line to ``path``.

    Each send is flushed to the operating system, so what was written survives a crash
    of nwpipe; ``fsync = true`` also forces it to disk (slower).
    """

    settings = {
        "path": Setting(str, required=True, check=_path, help="file to append JSON lines to"),
        "fsync": Setting(bool, default=False, help="force each write to disk"),
        "mkdir": Setting(bool, default=True, help="create missing parent folders"),
    }
    concurrency = 1
    batch_max_events = 500

    async def open(self) -> None:
        path = Path(self.config["path"])
        if self.config["mkdir"]:
            path.parent.mkdir(parents=True, exist_ok=True)
        self._fh = open(path, "ab")

    async def send(self, batch):
        data = b"\n".join([d.body_json() for d in batch])
        self._fh.write(data + b"\n")
        self._fh.flush()
        if self.config["fsync"]:
            os.fsync(self._fh.fileno())
        return Delivered()

    async def close(self) -> None:
        fh = getattr(self, "_fh", None)
        if fh is not None:
            fh.close()

    def describe(self) -> str:
        return f"JSON lines appended to {self.config['path']}"


@hookimpl
def register_outputs(register):
    register("file", FileOutput)
