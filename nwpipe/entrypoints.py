"""Entry points of installed distributions, read without importing importlib.metadata.

Importing :mod:`importlib.metadata` (email, zipfile, csv, ...) and scanning every
distribution with it once per group took about 15 ms of a 150 ms start. Entry points are
plain text: this reads the ``entry_points.txt`` of each ``*.dist-info`` / ``*.egg-info``
folder on ``sys.path``, in the order and with the precedence importlib.metadata uses (the
first distribution of a name on ``sys.path`` wins), and answers for several groups in one
pass. Anything this reader does not cover (a zip file or an ``.egg`` on ``sys.path``, an
import hook that provides its own distributions) falls back to importlib.metadata, so the
answer is the same; tests/test_entrypoints.py compares both.
"""

from __future__ import annotations

import functools
import os
import re
import sys
from dataclasses import dataclass
from importlib import import_module
from typing import Any, Iterable

# importlib.metadata's grammar of an entry point's value: module[:attr.attr] [extras]
# (compiled at the first load, by re's own cache)
_VALUE = r"(?P<module>[\w.]+)\s*(:\s*(?P<attr>[\w.]+)\s*)?((?P<extras>\[.*\])\s*)?$"
_INFO_SUFFIXES = (".dist-info", ".egg-info")


class Distribution:
    """The distribution an entry point comes from: its name and version, read from its
    metadata on first use (only a plugin's origin line needs them)."""

    def __init__(self, path: str):
        self.path = path
        self._headers: dict[str, str] | None = None

    def _header(self, key: str) -> str | None:
        if self._headers is None:
            self._headers = _read_headers(self.path)
        return self._headers.get(key)

    @property
    def name(self) -> str | None:
        """The distribution's name as its metadata spells it (``nwpipe-shout``)."""
        return self._header("name")

    @property
    def version(self) -> str | None:
        """The distribution's version."""
        return self._header("version")


@dataclass(frozen=True)
class EntryPoint:
    """One entry point: the same attributes as importlib.metadata's that nwpipe uses."""

    name: str
    value: str
    group: str
    dist: Any = None

    def load(self) -> Any:
        """Import the module the value names and return the object it points to."""
        match = re.match(_VALUE, self.value)
        if match is None:
            raise ValueError(f"entry point {self.name} = {self.value!r} is malformed")
        module = import_module(match.group("module"))
        attrs = filter(None, (match.group("attr") or "").split("."))
        return functools.reduce(getattr, attrs, module)


def entry_points(groups: Iterable[str]) -> dict[str, list]:
    """The entry points of each of ``groups``, as importlib.metadata would list them:
    ``{group: [EntryPoint, ...]}`` (every group is a key, empty when none)."""
    wanted: dict[str, list] = {group: [] for group in groups}
    folders = _info_folders()
    if folders is None:
        return _from_importlib(wanted)
    for folder in folders:
        text = _read(os.path.join(folder, "entry_points.txt"))
        if not text:
            continue
        dist = Distribution(folder)
        for group, name, value in _parse(text):
            if group in wanted:
                wanted[group].append(EntryPoint(name, value, group, dist))
    return wanted


def _info_folders() -> list[str] | None:
    """The metadata folders of the distributions on ``sys.path``, the first of each name
    only; None where importlib.metadata's own search is needed."""
    from importlib.machinery import PathFinder

    for finder in sys.meta_path:
        if finder is not PathFinder and hasattr(finder, "find_distributions"):
            return None  # an import hook with distributions of its own
    seen: set[str] = set()
    found = []
    for entry in sys.path:
        root = entry or "."
        if os.path.isfile(root) or root.lower().endswith(".egg"):
            return None  # a zip file or an egg: importlib.metadata reads those
        try:
            children = os.listdir(root)
        except OSError:
            continue
        # grouped by name in listing order, as importlib.metadata's Lookup does
        by_name: dict[str, list[str]] = {}
        for child in children:
            low = child.lower()
            if low.endswith(_INFO_SUFFIXES):
                name = _normalize(low.rpartition(".")[0].partition("-")[0])
                by_name.setdefault(name, []).append(os.path.join(root, child))
        for name, paths in by_name.items():
            if name not in seen:  # the first distribution of a name is the one imported
                seen.add(name)
                found.append(paths[0])
    return found


def _normalize(name: str) -> str:
    """A distribution name as importlib.metadata compares them (PEP 503, with _)."""
    return re.sub(r"[-_.]+", "_", name).lower()


def _read(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8") as handle:
            return handle.read()
    except (OSError, UnicodeDecodeError):
        return None


def _parse(text: str) -> Iterable[tuple[str, str, str]]:
    """(group, name, value) of each line of an ``entry_points.txt``."""
    group = None
    for line in map(str.strip, text.splitlines()):
        if not line or line.startswith("#"):
            continue
        if line.startswith("[") and line.endswith("]"):
            group = line.strip("[]")
        elif group is not None and "=" in line:
            name, value = line.split("=", 1)
            yield group, name.strip(), value.strip()


def _read_headers(folder: str) -> dict[str, str]:
    """The Name and Version headers of a distribution's METADATA (PKG-INFO for eggs)."""
    text = _read(os.path.join(folder, "METADATA")) or _read(os.path.join(folder, "PKG-INFO"))
    headers: dict[str, str] = {}
    for line in (text or "").splitlines():
        if not line.strip():
            break  # the body (the long description) starts after the first blank line
        key, sep, value = line.partition(":")
        key = key.strip().lower()
        if sep and key in ("name", "version") and key not in headers:
            headers[key] = value.strip()
    return headers


def _from_importlib(wanted: dict[str, list]) -> dict[str, list]:
    import importlib.metadata

    for group in wanted:
        wanted[group].extend(importlib.metadata.entry_points(group=group))
    return wanted
