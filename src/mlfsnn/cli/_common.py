"""The error contract every console script shares."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import TypeVar

from ..errors import UserError

__all__ = ["EXIT_USER_ERROR", "fail", "one_line", "user_errors_exit"]

EXIT_USER_ERROR = 2
T = TypeVar("T")


def one_line(exc: BaseException) -> str:
    """The first non-empty line of ``exc``'s message (the class name when it has none)."""
    for line in str(exc).splitlines():
        if line.strip():
            return line.strip()
    return type(exc).__name__


def fail(message: str) -> None:
    """Print ``error: message`` on stderr and exit with code 2."""
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(EXIT_USER_ERROR)


def user_errors_exit(fn: Callable[[], T]) -> T:
    """Run ``fn``; a :class:`~mlfsnn.errors.UserError` becomes one stderr line and exit code 2."""
    try:
        return fn()
    except UserError as exc:
        fail(one_line(exc))
        raise AssertionError("unreachable") from None
