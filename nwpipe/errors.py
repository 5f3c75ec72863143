"""Errors that reach the user as one clear message, never as a traceback."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator


class NwpipeError(Exception):
    """Base class for every error that is the user's to fix."""


class ConfigError(NwpipeError):
    """The configuration is wrong.

    ``key`` is the dotted key path (``outputs.soc.url``), ``file`` the config file
    (or template file) and ``line`` a line number inside it, when known.
    """

    def __init__(self, message: str, *, key: str | None = None, file: str | None = None,
                 line: int | None = None):
        super().__init__(message)
        self.message = message
        self.key = key
        self.file = file
        self.line = line

    def __str__(self) -> str:
        where = []
        if self.file:
            where.append(f"{self.file}:{self.line}" if self.line else str(self.file))
        if self.key:
            where.append(self.key)
        return ": ".join([*where, self.message])


class EventError(NwpipeError):
    """One event could not be processed (a template failed on its data, ...).

    The event goes to the dead-letter file with ``str(error)`` as the reason and the
    run goes on.
    """


class ConfigErrors(ConfigError):
    """Several configuration problems found in one pass; ``problems`` lists each one."""

    def __init__(self, problems: list[ConfigError]):
        super().__init__(f"{len(problems)} problems")
        self.problems = problems

    def __str__(self) -> str:
        return "\n".join(str(p) for p in self.problems)


class Problems:
    """Collects configuration problems, so that one pass reports all of them.

    ``with problems.collect(): ...`` records a ConfigError raised inside instead of
    stopping; :meth:`raise_if_any` raises the one problem, or a :class:`ConfigErrors`.
    """

    def __init__(self) -> None:
        self.errors: list[ConfigError] = []

    @contextmanager
    def collect(self) -> Iterator[None]:
        try:
            yield
        except ConfigErrors as exc:
            self.errors.extend(exc.problems)
        except ConfigError as exc:
            self.errors.append(exc)

    def raise_if_any(self) -> None:
        """Raise what was collected, each problem once (a mapping that ``extends`` a
        broken one reports the same problem)."""
        unique = list({str(e): e for e in self.errors}.values())
        if len(unique) == 1:
            raise unique[0]
        if unique:
            raise ConfigErrors(unique)
