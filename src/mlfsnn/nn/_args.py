"""The library's argument errors, structured so the runner can name the config key that was wrong."""

from __future__ import annotations

from typing import Any

__all__ = ["ArgError"]


class ArgError(ValueError):
    """An invalid argument: ``arg`` names it, ``allowed`` says what would be accepted."""

    def __init__(self, arg: str, value: Any, allowed: str) -> None:
        super().__init__(f"{arg} must be {allowed}, got {value!r}")
        self.arg, self.value, self.allowed = arg, value, allowed
