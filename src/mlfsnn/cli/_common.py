"""The error contract every console script shares (see :mod:`mlfsnn.errors`)."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import TypeVar

from ..errors import EXIT_USER_ERROR, ConfigError, UserError, exit_with, one_line

__all__ = ["EXIT_USER_ERROR", "fail", "key_values", "one_line", "plain_text", "user_errors_exit"]

T = TypeVar("T")


def plain_text(doc: str | None) -> str:
    """A docstring as a terminal shows it: no reStructuredText markup (``x``, :mod:`x`)."""
    text = re.sub(r":[a-z]+:`~?([^`]+)`", r"\1", doc or "")
    return text.replace("``", "")


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


def key_values(
    argv: list[str], own: tuple[str, ...], usage: str, doc: str | None
) -> tuple[dict[str, str], list[str]]:
    """Split ``key=value`` arguments into the command's ``own`` keys and config overrides (the rest).

    ``--help`` prints ``usage`` and ``doc`` and exits 0; an argument without ``=`` is a ConfigError.
    """
    mine: dict[str, str] = {}
    overrides: list[str] = []
    for arg in argv:
        if arg in ("-h", "--help"):
            print(usage + "\n\n" + plain_text(doc))
            raise SystemExit(0)
        key, sep, value = arg.partition("=")
        if not sep:
            raise ConfigError(f"argument {arg!r} is invalid: expected key=value; {usage}")
        if key in own:
            mine[key] = value
        else:
            overrides.append(arg)
    if "checkpoint" in own and "checkpoint" not in mine:
        raise ConfigError(f"checkpoint is required; {usage}")
    return mine, overrides
