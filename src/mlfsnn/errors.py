"""The errors a user can fix: one line naming the key or file, the value and what is allowed.

Every console script catches :class:`UserError` and prints ``error: <message>`` on stderr with exit
code 2 (see :mod:`mlfsnn.cli._common`); anything else is a bug and keeps its traceback. The concrete
classes also derive from the builtin that code outside mlfsnn would expect (``ValueError`` for bad
configuration, ``RuntimeError`` for files), so ``except ValueError`` keeps working.
"""

from __future__ import annotations

import sys

__all__ = [
    "EXIT_USER_ERROR",
    "CheckpointError",
    "ConfigError",
    "DataError",
    "ReportError",
    "UserError",
    "exit_with",
    "one_line",
]

EXIT_USER_ERROR = 2


class UserError(Exception):
    """A mistake in what the user asked for or pointed at; the message is one line."""


class ConfigError(UserError, ValueError):
    """An invalid configuration value or command-line argument."""


class DataError(UserError, RuntimeError):
    """Missing, corrupt or misconfigured data."""


class CheckpointError(UserError, RuntimeError):
    """A missing, unreadable or incompatible checkpoint."""


class ReportError(UserError):
    """Nothing to report on, or report inputs that cannot be read."""


def one_line(exc: BaseException) -> str:
    """The first non-empty line of ``exc``'s message (the class name when it has none)."""
    for line in str(exc).splitlines():
        if line.strip():
            return line.strip()
    return type(exc).__name__


def exit_with(message: str, code: int = EXIT_USER_ERROR) -> None:
    """Print ``error: message`` on stderr and exit: the one-line contract of every console script.

    Raises ``SystemExit``, which Hydra's error reporting lets through (it catches ``Exception``), so
    code that runs inside Hydra (callbacks, the task function) can use it too.
    """
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(code)
