"""The ``file`` output: mapped events appended as JSON lines to a file.

With ``rotate_bytes`` the file is rotated by size, like logrotate: when the next batch
would take it past the limit, ``events.jsonl`` becomes ``events.jsonl.1``, the older
``.1`` becomes ``.2`` and so on, ``rotate_keep`` old files are kept, and a new file is
started. Lines are never split across files.
"""

from __future__ import annotations

import os
from pathlib import Path

from nwpipe import Delivered, Output, Setting, hookimpl


def _path(value: str) -> str:
    if not value.strip():
        raise ValueError("must be a file path")
    return value


def _rotate_bytes(value: int) -> int:
    if value < 0:
        raise ValueError("rotate_bytes must be 0 (no rotation) or a size in bytes")
    return value


def _rotate_keep(value: int) -> int:
    if value < 0:
        raise ValueError("rotate_keep must be 0 or more")
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
        "rotate_bytes": Setting(int, default=0, check=_rotate_bytes,
                                help="rotate the file before it grows past this size "
                                     "(0: never)"),
        "rotate_keep": Setting(int, default=5, check=_rotate_keep,
                               help="rotated files to keep (path.1 is the newest)"),
    }
    concurrency = 1
    batch_max_events = 500

    async def open(self) -> None:
        self._path = Path(self.config["path"])
        if self.config["mkdir"]:
            self._path.parent.mkdir(parents=True, exist_ok=True)
        self._limit = self.config.get("rotate_bytes") or 0
        self._keep = self.config.get("rotate_keep", 5)
        self._fh = open(self._path, "ab")
        self._size = os.fstat(self._fh.fileno()).st_size

    async def send(self, batch):
        data = b"\n".join([d.body_json() for d in batch]) + b"\n"
        if self._limit and self._size and self._size + len(data) > self._limit:
            self._rotate()
        self._fh.write(data)
        self._fh.flush()
        self._size += len(data)
        if self.config["fsync"]:
            os.fsync(self._fh.fileno())
        return Delivered()

    def _rotate(self) -> None:
        """Shift path.N-1 to path.N ... path to path.1, drop the oldest, start afresh."""
        self._fh.close()
        path = str(self._path)
        try:
            if self._keep == 0:
                _remove(path)
            else:
                _remove(f"{path}.{self._keep}")
                for n in range(self._keep - 1, 0, -1):
                    if os.path.exists(f"{path}.{n}"):
                        os.replace(f"{path}.{n}", f"{path}.{n + 1}")
                if os.path.exists(path):  # someone may have moved it away already
                    os.replace(path, f"{path}.1")
        finally:
            # whatever happened, keep a file open to write to
            self._fh = open(self._path, "ab")
            self._size = os.fstat(self._fh.fileno()).st_size

    async def close(self) -> None:
        fh = getattr(self, "_fh", None)
        if fh is not None:
            fh.close()

    def describe(self) -> str:
        text = f"JSON lines appended to {self.config['path']}"
        if self.config.get("rotate_bytes"):
            text += (f" (rotated at {self.config['rotate_bytes']} bytes, "
                     f"keeping {self.config.get('rotate_keep', 5)})")
        return text


def _remove(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


@hookimpl
def register_outputs(register):
    register("file", FileOutput)
