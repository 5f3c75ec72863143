"""The output contract: what an output plugin implements and what it reports.

An output *sends once* and says how it went. Retries, backoff, ordering per alert,
batching, rate limits and the dead-letter file belong to the delivery engine
(``nwpipe.engine.delivery``), so every output, a user's plugin too, gets them for free.

A minimal output::

    from nwpipe import Output, Setting, Delivered, Retry, Failed, hookimpl

    class Echo(Output):
        settings = {"prefix": Setting(str, default="")}

        async def send(self, batch):
            for delivery in batch:
                print(self.config["prefix"], delivery.body_json().decode())
            return Delivered()

    @hookimpl
    def register_outputs(register):
        register("echo", Echo)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from hashlib import sha256
from typing import Any, ClassVar, Union

from nwpipe import jsonio
from nwpipe.settings import Setting


@dataclass(frozen=True, slots=True)
class Delivered:
    """Every delivery in the batch arrived, except those listed in ``refused``.

    ``refused`` holds ``(index in the batch, reason)`` pairs for deliveries that failed
    for good while the rest arrived (a message too large for the receiver): those go to
    the dead-letter file with their reason and are not sent again.
    """

    refused: tuple[tuple[int, str], ...] = ()


@dataclass(frozen=True, slots=True)
class Retry:
    """A temporary failure: the engine tries again, after ``after`` seconds if given."""

    reason: str
    after: float | None = None
    status: int | None = None
    response: str | None = None


@dataclass(frozen=True, slots=True)
class Failed:
    """A permanent failure: no retry; the batch goes to the dead-letter file."""

    reason: str
    status: int | None = None
    response: str | None = None


Result = Union[Delivered, Retry, Failed]


@dataclass(frozen=True, slots=True)
class ProbeResult:
    """How a receiver answered ``nwpipe check --probe``'s test delivery.

    ``message`` says it in plain words for the user: ``OK (HTTP 200 in 35 ms)``,
    ``connection refused: nothing listens on 10.0.0.5:514``, with what to change.
    """

    ok: bool
    message: str
    status: int | None = None
    elapsed: float | None = None


@dataclass(slots=True)
class Delivery:
    """One mapped event on its way to one output.

    ``body`` is the mapped event (a JSON value), ``event`` the original event as read.
    ``id`` is stable for the same event across retries and replays (built from the
    event's ``id``, ``alerttype`` and ``updatecount``), so receivers can deduplicate.
    """

    id: str
    body: Any
    event: dict
    output: str
    source: str = "<input>"
    line: int = 0
    attempts: list = field(default_factory=list)
    _json: bytes | None = None
    #: the pipeline's record of the event this delivery came from, handed back when the
    #: delivery is settled: the source's acknowledgement, or (shard, position) when the
    #: event came from the durable queue
    ticket: Any = None

    @property
    def key(self) -> str:
        """Deliveries with the same key reach the output in input order (the alert id)."""
        value = self.event.get("id")
        return value if isinstance(value, str) else repr(value)

    def body_json(self) -> bytes:
        """The body serialised as compact JSON (computed once)."""
        if self._json is None:
            # jsonio keeps integers beyond 64 bits exact, where orjson alone would fail.
            self._json = jsonio.dumps(self.body)
        return self._json


class Output:
    """Base class for outputs.

    Subclasses declare ``settings`` (their own config keys) and implement ``send``.
    ``config`` holds the validated settings with defaults filled in and ``${ENV}``
    secrets already expanded. ``name`` is the output's name from ``[outputs.NAME]``.

    Class attributes tune how the engine drives the output by default; the user may
    override them per output with ``concurrency`` and ``batch``.
    """

    settings: ClassVar[dict[str, Setting]] = {}
    #: deliveries in flight at once (per-alert order is kept regardless); the instance
    #: made for a run holds the configured value
    concurrency: int = 1
    #: largest batch handed to one ``send`` by default (1 = one event per call)
    batch_max_events: ClassVar[int] = 1
    #: seconds a partial batch waits for more events by default (0: send what is ready)
    batch_max_wait: ClassVar[float] = 0.0

    def __init__(self, name: str, config: dict[str, Any]):
        self.name = name
        self.config = config

    @classmethod
    def check_config(cls, config: dict[str, Any]) -> None:
        """Cross-setting checks after validation; raise ``ValueError`` with a message.

        Runs when the config loads, before any event is read.
        """

    async def open(self) -> None:
        """Acquire resources (sessions, files). Called once before the first send."""

    async def send(self, batch: list[Delivery]) -> Result:
        """Send ``batch`` once and report ``Delivered()``, ``Retry(...)`` or ``Failed(...)``.

        Raising an exception counts as ``Retry`` for ``OSError`` and ``TimeoutError``
        and as ``Failed`` for anything else, with the exception as the reason.
        """
        raise NotImplementedError

    async def close(self) -> None:
        """Release resources. Called once after the last send."""

    def describe(self) -> str:
        """A one-line description for ``nwpipe check`` (never include secrets)."""
        return type(self).__name__

    async def probe(self, delivery: Delivery) -> ProbeResult:
        """Optional, for outputs that talk to a receiver: ``nwpipe check --probe`` calls it
        on a new, unopened instance with one mapped test delivery. Open, send it once (no
        retries), close, and say how it went (:mod:`nwpipe.probing` has the helpers).
        An output that does not implement it is listed as "not probed"."""
        raise NotImplementedError


class OutputClosed(Exception):
    """Raised by ``send`` when the destination is gone for good on purpose (the reader
    of standard output went away): the run stops reading quietly, like a Unix filter."""


def delivery_id(event: dict) -> str:
    """A stable id for one state change of one alert: the same across retries and replays.

    Built from the event's ``id``, ``alerttype`` and ``updatecount``; hashed so that it is
    always a safe header value whatever the event contains.
    """
    seed = f"{event.get('id')}\x1f{event.get('alerttype')}\x1f{event.get('updatecount')}"
    return "nwp_" + sha256(seed.encode("utf-8", "surrogatepass")).hexdigest()[:32]
