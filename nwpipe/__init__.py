"""nwpipe: forward Netography Fusion alert events to webhooks and other outputs.

The small public API a plugin needs::

    from nwpipe import hookimpl, Output, Setting, Delivered, Retry, Failed

and for a source plugin ``Source``, ``Event`` and ``Reject``.
"""

# not typing.TYPE_CHECKING: importing typing costs --version milliseconds; type
# checkers treat any constant of this name as true
TYPE_CHECKING = False

__version__ = "0.1.0"

if TYPE_CHECKING:  # the same names, for type checkers; at run time see __getattr__
    import pluggy

    from nwpipe.outputs import Delivered, Delivery, Failed, Output, ProbeResult, Result, Retry
    from nwpipe.settings import Setting
    from nwpipe.sources.base import Event, Reject, Source

    hookimpl: pluggy.HookimplMarker

# The public names are imported when first used, not here: `nwpipe --version`, and
# `nwpipe run` with a config that needs no templates or HTTP, start without loading
# pluggy, asyncio or the decoder (see "Start-up" in the README).
_LAZY = {
    "Delivered": "nwpipe.outputs",
    "Delivery": "nwpipe.outputs",
    "Failed": "nwpipe.outputs",
    "Output": "nwpipe.outputs",
    "ProbeResult": "nwpipe.outputs",
    "Result": "nwpipe.outputs",
    "Retry": "nwpipe.outputs",
    "Setting": "nwpipe.settings",
    "Event": "nwpipe.sources.base",
    "Reject": "nwpipe.sources.base",
    "Source": "nwpipe.sources.base",
}


def __getattr__(name: str):
    """Import a public name on first use (PEP 562) and keep it in the module."""
    if name == "hookimpl":
        import pluggy

        value = pluggy.HookimplMarker("nwpipe")
    elif name in _LAZY:
        from importlib import import_module

        value = getattr(import_module(_LAZY[name]), name)
    else:
        raise AttributeError(f"module 'nwpipe' has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


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
