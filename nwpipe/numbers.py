"""Numbers as nwpipe shows them everywhere: counts with thousands separators, rates that
stay meaningful when slow (``0.3/s``, not ``0/s``)."""

from __future__ import annotations


def count(n: int) -> str:
    """``12,345``."""
    return f"{n:,}"


def rate(per_second: float, unit: str = "/s") -> str:
    """``1,234/s``, ``2.5/s``, ``0.03/s``: whole numbers from 10/s, else two digits."""
    if per_second >= 10:
        text = f"{per_second:,.0f}"
    elif per_second >= 1:
        text = f"{per_second:.1f}"
    elif per_second >= 0.01:
        text = f"{per_second:.2f}".rstrip("0").rstrip(".")
    elif per_second > 0:
        text = "<0.01"
    else:
        text = "0"
    return text + unit


def plural(n: int, word: str, words: str | None = None) -> str:
    """``1 event``, ``1,024 events``."""
    return f"{n:,} {word if n == 1 else (words or word + 's')}"
