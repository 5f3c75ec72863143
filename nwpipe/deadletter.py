"""The dead-letter file: every event that could not reach an output, with the reason.

One JSON object per line. Each record carries the original event (or the raw input when
it did not parse), where it came from (source and line), the output, the stage that
failed (``parse``, ``map`` or ``deliver``), the reason, the HTTP status and response
snippet when there was one, and every delivery attempt. Records are flushed and fsynced
as they are written, so a crash right after loses nothing written.
"""

from __future__ import annotations

import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable

import orjson

from nwpipe.outputs import Delivery

#: format version of a record; bumped if a field changes meaning
RECORD_VERSION = 1


def utc_now() -> str:
    """The current time as ISO 8601 UTC with milliseconds."""
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def delivery_record(delivery: Delivery, *, stage: str, reason: str, status: int | None = None,
                    response: str | None = None) -> dict[str, Any]:
    """A record for one delivery (or mapping) that failed for one output."""
    record = {
        "nwpipe_dead_letter": RECORD_VERSION,
        "time": utc_now(),
        "stage": stage,
        "output": delivery.output,
        "source": delivery.source,
        "line": delivery.line,
        "reason": reason,
        "delivery_id": delivery.id,
        "attempts": delivery.attempts,
        "event": delivery.event,
    }
    if status is not None:
        record["status"] = status
    if response is not None:
        record["response"] = response
    return record


def event_record(event: dict, *, stage: str, output: str | None, source: str, line: int,
                 reason: str, delivery_id: str | None = None) -> dict[str, Any]:
    """A record for an event that failed before delivery (validation or mapping)."""
    return {
        "nwpipe_dead_letter": RECORD_VERSION,
        "time": utc_now(),
        "stage": stage,
        "output": output,
        "source": source,
        "line": line,
        "reason": reason,
        "delivery_id": delivery_id,
        "attempts": [],
        "event": event,
    }


def raw_record(raw: str, *, source: str, line: int, reason: str) -> dict[str, Any]:
    """A record for input that is not a usable event (the raw text is kept)."""
    return {
        "nwpipe_dead_letter": RECORD_VERSION,
        "time": utc_now(),
        "stage": "parse",
        "output": None,
        "source": source,
        "line": line,
        "reason": reason,
        "attempts": [],
        "raw": raw,
    }


class DeadLetterFile:
    """Append-only, durable writer; the file is created on the first record only."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.count = 0
        self._fh = None

    def write(self, records: Iterable[dict[str, Any]]) -> None:
        """Append records, then flush and fsync once for all of them."""
        data = b"".join(orjson.dumps(r, default=_fallback) + b"\n" for r in records)
        if not data:
            return
        if self._fh is None:
            if self.path.parent != Path(""):
                self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fh = open(self.path, "ab")
        self._fh.write(data)
        self._fh.flush()
        os.fsync(self._fh.fileno())
        self.count += data.count(b"\n")

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None


def _fallback(value: Any) -> Any:
    # Events come from JSON, so only exotic values from plugins land here.
    return repr(value)


def read_records(path: str | os.PathLike) -> Iterable[tuple[int, dict[str, Any]]]:
    """Yield ``(line_number, record)`` from a dead-letter file, skipping blank lines."""
    with open(path, "rb") as fh:
        for number, line in enumerate(fh, 1):
            if line.strip():
                yield number, orjson.loads(line)
