"""The error contract every console script shares (see :mod:`mlfsnn.errors`)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from ..errors import EXIT_USER_ERROR, UserError, exit_with, one_line

__all__ = ["EXIT_USER_ERROR", "fail", "one_line", "user_errors_exit"]

T = TypeVar("T")


def fail(message: str) -> None:
    """Print ``error: message`` on stderr and exit with code 2."""
    exit_with(message)


def user_errors_exit(fn: Callable[[], T]) -> T:
    """Run ``fn``; a :class:`~mlfsnn.errors.UserError` becomes one stderr line and exit code 2."""
    try:
        return fn()
    except UserError as exc:
        exit_with(one_line(exc))
        raise AssertionError("unreachable") from None
