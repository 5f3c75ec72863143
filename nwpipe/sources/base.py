"""The source contract: what a source plugin implements, and the acknowledgement it gets.

A source produces events (each with where it came from, for messages) and is told,
once per item it produced, when nwpipe is done with it: every output that took the
event delivered it or wrote it to the dead-letter file (and that record is on disk),
or the event was rejected or taken by no output (and any reject record is on disk).
A source that must not lose events (a queue, a broker) removes an item upstream only
in :meth:`Source.ack`; one that has nothing to confirm (a file) ignores it.

A minimal source::

    from nwpipe import Event, Setting, Source, hookimpl

    class Counter(Source):
        settings = {"count": Setting(int, default=3)}

        async def read(self):
            for n in range(1, self.config["count"] + 1):
                if self.stopping:
                    return
                yield [Event({"id": f"a{n}", "customer": "acme"}, "counter", n)]

        def ack(self, item):
            print("done with", item.where)

    @hookimpl
    def register_sources(register):
        register("counter", Counter)

and in the config: ``[source]`` with ``type = "counter"`` and ``count = 10``.
"""

from __future__ import annotations

from typing import Any, AsyncIterator, ClassVar, Sequence

from nwpipe.settings import Setting
from nwpipe.sources.decode import Event, Reject

__all__ = ["Source", "Event", "Reject", "DEFAULT_SOURCE"]

#: the source type `nwpipe run` uses without a [source] table: its file arguments, or stdin
DEFAULT_SOURCE = "files"


class Source:
    """Base class for sources.

    Subclasses declare ``settings`` (their keys in the ``[source]`` table, validated like
    an output's) and implement :meth:`read`. ``config`` holds the validated settings with
    defaults filled in. ``inputs`` are the arguments of ``nwpipe run`` (file paths,
    ``-`` for stdin); a source that takes none leaves ``takes_inputs`` False and nwpipe
    refuses arguments for it.
    """

    settings: ClassVar[dict[str, Setting]] = {}
    #: True when the source reads the paths given to ``nwpipe run``
    takes_inputs: ClassVar[bool] = False

    def __init__(self, config: dict[str, Any], *, inputs: Sequence[str] = (),
                 max_line_bytes: int = 1 << 20):
        self.config = config
        self.inputs = list(inputs)
        #: the config's ``max_line_bytes``: the longest event a source should accept
        self.max_line_bytes = max_line_bytes
        #: inputs that could not be read to the end; the run's exit code reports them
        self.unreadable = 0
        #: set by :meth:`stop`: read should return soon
        self.stopping = False
        #: why reading stopped, when a signal stopped it (None: a quiet stop)
        self.stop_reason: str | None = None

    @classmethod
    def check_config(cls, config: dict[str, Any]) -> None:
        """Cross-setting checks after validation; raise ``ValueError`` with a message."""

    async def open(self) -> None:
        """Acquire resources. Called once before :meth:`read`."""

    def read(self) -> AsyncIterator[Sequence[Event | Reject]]:
        """Yield the events (and the pieces of input that are not events, as ``Reject``)
        in batches, in order, until the input ends or :meth:`stop` is called.

        Write it as an async generator (``async def read(self): ... yield [...]``).
        After a stop, yield what was already decoded (with a signal: a partial event as
        a ``Reject`` whose reason begins with ``stop_reason``) and return.
        """
        raise NotImplementedError

    def stop(self, reason: str | None = None) -> None:
        """Ask :meth:`read` to end soon. ``reason`` is set when a signal stopped the run
        ("input cut short by SIGTERM"); None means the outputs' reader went away and the
        rest of the input is simply not read. Override to interrupt a read that waits
        (call ``super().stop(reason)`` too)."""
        self.stopping = True
        if reason is not None:
            self.stop_reason = reason

    def ack(self, item: Event | Reject) -> None:
        """nwpipe is done with ``item``: called exactly once for every item :meth:`read`
        yielded, once it is delivered or dead-lettered everywhere it went (records on
        disk). Not called for items left unsettled when an output closed on purpose.
        Runs on the event loop: keep it quick (queue slow work for a task of your own)."""

    async def close(self) -> None:
        """Release resources. Called once after every acknowledgement."""

    def describe(self) -> str:
        """A one-line description for messages (never include secrets)."""
        return type(self).__name__
