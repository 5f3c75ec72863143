"""Bounds on rendering one template for one event: time, output size, and signals.

A template is code written by a user and run on event data, on the event loop: one
that loops over every pair of 5,000 addresses, or writes ``'a' * 10**9``, would stall
every delivery and ignore Ctrl-C. Each rendering therefore runs inside a guard:

* **time**: a watchdog thread notices a rendering that runs past its deadline and
  interrupts the main thread (``_thread.interrupt_main`` with ``SIGALRM``, no real
  signal is sent), where the handler raises :class:`TemplateLimitError` inside the
  template. Only renderings on the main thread can be interrupted this way; elsewhere
  the size checks still apply.
* **size**: the rendered text is collected piece by piece and refused once it passes
  the limit; the sandbox refuses ``*`` and ``**`` and string methods and filters whose
  numbers ask for more than the limit before they run (see ``templating.Sandbox``).
* **signals**: SIGINT and SIGTERM arriving during a rendering end it at once (after the
  handler that was there has run, so the run still stops as usual).

The cost on the hot path is a few global stores and a clock read per rendering.
"""

from __future__ import annotations

import _signal  # getsignal without the enum conversion: 20 times cheaper, per rendering
import _thread
import signal
import threading
import time
from dataclasses import dataclass
from itertools import islice
from typing import Any, Callable, Iterable

__all__ = ["RenderLimits", "TemplateLimitError", "guarded_join", "guarded_render", "begin", "end",
           "DEFAULT_TIME_LIMIT", "DEFAULT_MAX_BYTES"]

#: seconds one rendering may take (a template for one event; normal ones take < 1 ms)
DEFAULT_TIME_LIMIT = 2.0
#: characters one rendering may produce
DEFAULT_MAX_BYTES = 1 << 20

# Pieces of output joined at once before they are counted one by one (see guarded_join).
_FEW_PIECES = 32

# How often the watchdog looks (seconds): a rendering past its deadline is stopped
# within this much more.
_WATCH_INTERVAL = 0.05


class TemplateLimitError(Exception):
    """A rendering went past a limit or was interrupted; the event fails with this."""


@dataclass(frozen=True)
class RenderLimits:
    """The limits of one configuration (``template_time_limit``, ``template_max_bytes``)."""

    time_limit: float = DEFAULT_TIME_LIMIT
    max_bytes: int = DEFAULT_MAX_BYTES


DEFAULT_LIMITS = RenderLimits()

# The rendering in progress on the main thread: its number (0: none), its deadline and
# limits. Plain globals: they are read by the watchdog thread and the signal handlers.
_active = 0
_count = 0
_deadline = 0.0
_limits = DEFAULT_LIMITS
_watchdog: threading.Thread | None = None
_wrapped: dict[int, Callable] = {}
_seen_term: Any = object()  # SIGTERM's handler as _install() left it (none yet)
_get_ident = threading.get_ident
_getsignal = _signal.getsignal
_monotonic = time.monotonic
_main_ident = threading.main_thread().ident
_SIGTERM = int(signal.SIGTERM)


def _on_alarm(signum: int, frame: Any) -> None:
    global _active
    if _active and time.monotonic() >= _deadline:
        _active = 0  # one interruption per rendering, wherever the exception goes
        raise TemplateLimitError(f"rendering took longer than template_time_limit "
                                 f"({_limits.time_limit:g} s)")


def _watch() -> None:
    while True:
        time.sleep(_WATCH_INTERVAL)
        current = _active
        if current and time.monotonic() >= _deadline and current == _active:
            _thread.interrupt_main(signal.SIGALRM)


def _interrupting(signum: int, previous: Any) -> Callable:
    name = signal.Signals(signum).name

    def handler(number: int, frame: Any) -> None:
        global _active
        if callable(previous):
            previous(number, frame)  # e.g. asyncio's: the run still learns of the signal
        if _active:
            _active = 0
            raise TemplateLimitError(f"rendering interrupted by {name}")

    return handler


def _install() -> None:
    """Set up the watchdog and handlers, from the main thread, once (and again for
    SIGINT/SIGTERM when someone, an event loop say, installed its own meanwhile)."""
    global _watchdog, _seen_term
    if _watchdog is None:
        signal.signal(signal.SIGALRM, _on_alarm)
        _watchdog = threading.Thread(target=_watch, name="nwpipe-template-watchdog",
                                     daemon=True)
        _watchdog.start()
    for signum in (signal.SIGINT, signal.SIGTERM):
        current = signal.getsignal(signum)
        if current is not _wrapped.get(signum) and current not in (signal.SIG_IGN, None):
            if current is signal.SIG_DFL:
                continue  # the default already ends the process at once
            _wrapped[signum] = _interrupting(signum, current)
            signal.signal(signum, _wrapped[signum])
    _seen_term = _signal.getsignal(_SIGTERM)


def begin(limits: RenderLimits) -> int:
    """Start guarding a rendering; returns a token for :func:`end` (0: not guarded,
    because another rendering is already guarded or this is not the main thread)."""
    global _active, _count, _deadline, _limits
    if _active or _get_ident() != _main_ident:
        return 0
    if _getsignal(_SIGTERM) is not _seen_term:
        _install()  # first time, or an event loop installed its handlers since
    _count += 1
    _limits = limits
    _deadline = _monotonic() + limits.time_limit
    _active = _count
    return _count


def end(token: int) -> None:
    """Stop guarding the rendering that :func:`begin` returned ``token`` for."""
    global _active
    if token and _active == token:
        _active = 0


def guarded_render(evaluate: Callable[[Any], Any], limits: RenderLimits,
                   sized: bool = True) -> Callable[[Any], Any]:
    """``render(arg)``: ``evaluate(arg)``, a function that renders a whole template at
    once, within ``limits``: guarded as by :func:`begin`/:func:`end`, its text refused
    past ``max_bytes`` (:class:`TemplateLimitError`) unless ``sized`` is false (for a
    value that is not text, such as a condition's).

    The same guard as ``begin`` and ``end``, written out in one function: a rendering
    of a simple template takes well under a microsecond, so two calls more per
    rendering would be a good part of its cost.
    """
    max_bytes = limits.max_bytes
    time_limit = limits.time_limit
    too_long = f"rendered text longer than template_max_bytes ({max_bytes})"

    def render(arg: Any) -> Any:
        global _active, _count, _deadline, _limits
        if _active or _get_ident() != _main_ident:
            text = evaluate(arg)  # inside a guarded rendering, or not on the main thread
        else:
            if _getsignal(_SIGTERM) is not _seen_term:
                _install()
            _count += 1
            token = _count
            _limits = limits
            _deadline = _monotonic() + time_limit
            _active = token
            try:
                text = evaluate(arg)
            finally:
                if _active == token:
                    _active = 0
        if sized and len(text) > max_bytes:
            raise TemplateLimitError(too_long)
        return text

    return render


def guarded_join(pieces: Iterable[str], limits: RenderLimits) -> str:
    """``"".join(pieces)`` for a template's output, within ``limits`` (raises
    :class:`TemplateLimitError` past them)."""
    token = begin(limits)
    try:
        pieces = iter(pieces)
        # Most templates end within a few dozen pieces: those are joined at C speed (each
        # piece is bounded already: by the event's size, or by the sandbox's checks).
        out = list(islice(pieces, _FEW_PIECES))
        if len(out) < _FEW_PIECES:
            text = "".join(out)
            if len(text) > limits.max_bytes:
                raise TemplateLimitError(f"rendered text longer than template_max_bytes "
                                         f"({limits.max_bytes})")
            return text
        append = out.append
        left = limits.max_bytes - sum(map(len, out))
        if left < 0:
            raise TemplateLimitError(f"rendered text longer than template_max_bytes "
                                     f"({limits.max_bytes})")
        for piece in pieces:
            left -= len(piece)
            if left < 0:
                raise TemplateLimitError(f"rendered text longer than template_max_bytes "
                                         f"({limits.max_bytes})")
            append(piece)
        return "".join(out)
    finally:
        end(token)


def check_size(size: int, limits: RenderLimits, what: str) -> None:
    """Refuse, before it is built, a value of ``size`` characters or items."""
    if size > limits.max_bytes:
        raise TemplateLimitError(f"{what} would be longer than template_max_bytes "
                                 f"({limits.max_bytes})")
