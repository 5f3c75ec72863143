"""PID files: ``--pid-file PATH`` names a running nwpipe, ``nwpipe reload`` signals it.

The file holds the process id and a newline. It is written when the process starts
(after its config passed the checks) and removed when it exits; a file left by a
process that was killed (``kill -9``, a crash) is *stale*: ``nwpipe reload`` says so
instead of signalling whatever process has that id now, and the next start replaces it.
"""

from __future__ import annotations

import logging
import os
import signal
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from nwpipe.errors import NwpipeError

log = logging.getLogger("nwpipe")


def read_pid(path: str) -> int:
    """The process id in the PID file ``path``; NwpipeError when it cannot be read."""
    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        raise NwpipeError(f"PID file {path} does not exist: is nwpipe running with "
                          f"--pid-file {path}?") from None
    except OSError as exc:
        raise NwpipeError(f"cannot read PID file {path}: {exc.strerror}") from None
    word = text.strip()
    if not word.isdigit() or int(word) <= 0:
        raise NwpipeError(f"PID file {path} holds no process id ({text[:40]!r})")
    return int(word)


def is_nwpipe(pid: int) -> bool | None:
    """Whether process ``pid`` runs nwpipe: False when there is no such process (or it
    runs something else), None when the system cannot tell (no /proc)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # it exists, owned by another user
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except FileNotFoundError:
        return None if not Path("/proc/self").exists() else False
    except OSError:
        return None
    return b"nwpipe" in cmdline


def signal_reload(path: str) -> int:
    """Send SIGHUP to the nwpipe named in the PID file ``path``; returns its id."""
    pid = read_pid(path)
    if is_nwpipe(pid) is False:
        raise NwpipeError(f"PID file {path} is stale: no nwpipe runs as process {pid} (it "
                          f"ended without removing the file, e.g. killed); nothing to reload")
    try:
        os.kill(pid, signal.SIGHUP)
    except ProcessLookupError:
        raise NwpipeError(f"PID file {path} is stale: process {pid} has ended") from None
    except PermissionError:
        raise NwpipeError(f"not allowed to signal process {pid} (from {path}): run "
                          f"`nwpipe reload` as the user that runs it") from None
    return pid


@contextmanager
def pid_file(path: str | None) -> Iterator[None]:
    """Write this process's id to ``path`` (when given) for the block's duration.

    A file naming another running nwpipe is an error (two processes, one PID file);
    a stale one is replaced. The file is written atomically and removed at the end if
    it still names this process.
    """
    if path is None:
        yield
        return
    target = Path(path)
    try:
        other = read_pid(path)
    except NwpipeError:
        other = None
    if other is not None and other != os.getpid():
        if is_nwpipe(other):
            raise NwpipeError(f"PID file {path} names nwpipe process {other}, which is "
                              f"running: give each process its own --pid-file")
        log.info("PID file %s named process %d, which has ended: replaced", path, other)
    temporary = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        temporary.write_text(f"{os.getpid()}\n")
        os.replace(temporary, target)
    except OSError as exc:
        temporary.unlink(missing_ok=True)
        raise NwpipeError(f"cannot write PID file {path}: {exc.strerror}") from None
    try:
        yield
    finally:
        try:
            if read_pid(path) == os.getpid():
                target.unlink()
        except (NwpipeError, OSError):
            pass  # removed or replaced meanwhile: not ours to delete
