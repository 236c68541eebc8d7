"""The errors a user can fix: one line naming the key or file, the value and what is allowed.

Every console script catches :class:`UserError` and prints ``error: <message>`` on stderr with exit
code 2 (see :mod:`mlfsnn.cli._common`); anything else is a bug and keeps its traceback. The concrete
classes also derive from the builtin that code outside mlfsnn would expect (``ValueError`` for bad
configuration, ``RuntimeError`` for files), so ``except ValueError`` keeps working.
"""

from __future__ import annotations

__all__ = ["CheckpointError", "ConfigError", "DataError", "ReportError", "UserError"]


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
