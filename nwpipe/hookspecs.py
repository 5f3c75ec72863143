"""The plugin contract. Every hook receives a ``register`` callback.

Quick start: write ``myplugin.py``::

    from nwpipe import hookimpl, Output, Delivered

    class Printer(Output):
        async def send(self, batch):
            for delivery in batch:
                print(delivery.body)
            return Delivered()

    @hookimpl
    def register_outputs(register):
        register("printer", Printer)

and run ``nwpipe --plugins-dir . run`` with ``[outputs.p] type = "printer"``, or
package it with an entry point in the ``nwpipe`` group.
"""

from __future__ import annotations

from typing import Callable

import pluggy

hookspec = pluggy.HookspecMarker("nwpipe")


@hookspec
def register_outputs(register: Callable[[str, type], None]) -> None:
    """Register output types: ``register("type-name", OutputClass)``.

    ``OutputClass`` subclasses ``nwpipe.Output``. The type name is what users write
    as ``type = "..."`` in ``[outputs.NAME]``; two plugins registering one name is an
    error naming both.
    """


@hookspec
def register_sources(register: Callable[[str, type], None]) -> None:
    """Register source types: ``register("type-name", SourceClass)``.

    ``SourceClass`` subclasses ``nwpipe.Source``. The type name is what users write as
    ``type = "..."`` in the ``[source]`` table; two plugins registering one name is an
    error naming both. The built-in ``files`` source (the paths given to ``nwpipe run``,
    or stdin) is registered through this hook too.
    """


@hookspec
def register_jinja_filters(register: Callable[[str, Callable], None]) -> None:
    """Register Jinja filters for mappings and templates: ``register("name", func)``.

    Filters run inside the sandbox; they receive plain values from the event.
    """
