"""nwpipe: forward Netography Fusion alert events to webhooks and other outputs.

The small public API a plugin needs::

    from nwpipe import hookimpl, Output, Setting, Delivered, Retry, Failed

and for a source plugin ``Source``, ``Event`` and ``Reject``.
"""

import pluggy

__version__ = "0.1.0"

hookimpl = pluggy.HookimplMarker("nwpipe")

from nwpipe.outputs import (  # noqa: E402
    Delivered,
    Delivery,
    Failed,
    Output,
    ProbeResult,
    Result,
    Retry,
)
from nwpipe.settings import Setting  # noqa: E402
from nwpipe.sources.base import Event, Reject, Source  # noqa: E402

__all__ = [
    "__version__",
    "hookimpl",
    "Output",
    "Setting",
    "Delivery",
    "Delivered",
    "Retry",
    "Failed",
    "Result",
    "ProbeResult",
    "Source",
    "Event",
    "Reject",
]
