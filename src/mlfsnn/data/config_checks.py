"""Static checks of the ``dataset`` config: everything that can be refused without reading any data.

:func:`check_dataset_config` runs in the config validation (:func:`mlfsnn.runner.config.validate`,
which Hydra's preflight calls before the run directory exists) and before every ``snn-data``
command, so a bad value is one line, ``dataset.<key>=<value> is invalid: expected ...``, and nothing
is created. The checks inside the builders (:class:`~.events.framing.FrameSpec` and the others) stay:
they guard callers that build datasets without a validated config.

Keys absent from a config are skipped: configs stored in older checkpoints lack newer keys, and the
builders fall back to the same defaults for them.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, NoReturn

from ..errors import ConfigError, DataError

__all__ = ["check_dataset_config"]

_ABSENT = object()
EVENT_SOURCES = {
    "dvs_gesture": ("ibm", "tonic"),
    "cifar10_dvs": ("original", "tonic"),
    "digits_dvs": ("emulator",),
}
# scikit-learn's digits: the split must leave every class on both sides (train_test_split's rule)
DIGITS_SAMPLES, DIGITS_CLASSES = 1797, 10
MAX_DIGITS_SIZE = 256  # 1797 images of 256 x 256 floats are 0.5 GB
MAX_BIN_MS = 3_600_000  # an hour: T bins of it stay far inside int64 microseconds
_SHOWN = 200  # characters of a value quoted in a message


def _show(value: Any) -> str:
    text = "null" if value is None else repr(value)
    return text if len(text) <= _SHOWN else text[:_SHOWN] + "...'"


def _bad(key: str, value: Any, allowed: str) -> NoReturn:
    raise ConfigError(f"dataset.{key}={_show(value)} is invalid: {allowed}")


def _get(cfg: Any, key: str) -> Any:
    return cfg.get(key, _ABSENT)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _int(cfg: Any, key: str, low: int, high: int | None = None, optional: bool = False) -> None:
    v = _get(cfg, key)
    if v is _ABSENT or (v is None and optional):
        return
    if not _is_int(v) or v < low or (high is not None and v > high):
        rng = f"an integer >= {low}" if high is None else f"an integer in {low}..{high}"
        _bad(key, v, f"expected {rng}" + (" or null" if optional else ""))


def _fraction(cfg: Any, key: str) -> None:
    v = _get(cfg, key)
    if v is not _ABSENT and (not _is_number(v) or not 0 < v < 1):
        _bad(key, v, "expected a number in (0, 1)")


def _bool(cfg: Any, *keys: str) -> None:
    for key in keys:
        v = _get(cfg, key)
        if v is not _ABSENT and not isinstance(v, bool):
            _bad(key, v, "expected true or false")


def _choice(cfg: Any, key: str, choices: tuple[str, ...]) -> None:
    v = _get(cfg, key)
    if v is not _ABSENT and v not in choices:
        _bad(key, v, f"expected one of {', '.join(choices)}")


def _folder(cfg: Any, key: str, hint: str) -> None:
    """A folder path: a non-empty string; if something exists there it is a folder, and the nearest
    existing folder above it is not a file (the folder could never be created)."""
    v = _get(cfg, key)
    if v is _ABSENT:
        return
    if not isinstance(v, str) or not v.strip():
        _bad(key, v, f"expected a folder path ({hint})")
    try:
        path = Path(os.path.expanduser(v)).resolve()
        existing = path
        while not existing.exists() and existing != existing.parent:
            existing = existing.parent
        is_dir = existing.is_dir()
    except (OSError, ValueError) as exc:  # a name too long, an embedded NUL, no permission
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        _bad(key, v, f"expected a folder path ({hint}); it cannot be used: {reason}")
    if is_dir:
        return
    what = "a file" if existing.is_file() else "not a folder"
    if existing == path:
        _bad(key, v, f"expected a folder ({hint}), and {path} is {what} (perhaps {path.parent})")
    _bad(key, v, f"expected a folder path ({hint}), and {existing} above it is {what}")


def check_dataset_config(cfg: Any) -> None:
    """Raise :class:`ConfigError` for the first invalid value of a composed ``dataset`` config."""
    from . import DATASETS, _load_builders

    _load_builders()
    name = _get(cfg, "name")
    if name not in DATASETS:
        _bad("name", name, f"expected one of {', '.join(sorted(DATASETS))}")
    _int(cfg, "subset", 1, optional=True)
    v = _get(cfg, "val_fraction")
    if v is not _ABSENT and v is not None and (not _is_number(v) or not 0 <= v <= 0.9):
        _bad("val_fraction", v, "expected a number in [0, 0.9] (0: no validation split)")
    if v not in (_ABSENT, None, 0):
        _int(cfg, "val_seed", 0, optional=True)
    if name == "digits":
        _digits(cfg)
    elif name == "cifar10":
        _folder(cfg, "root", "the folder that holds cifar-10-batches-py")
        _bool(cfg, "download", "augment")
    elif name in EVENT_SOURCES:
        _events(cfg, name)


def _digits(cfg: Any) -> None:
    _int(cfg, "size", 1, MAX_DIGITS_SIZE)
    _int(cfg, "split_seed", 0, 2**32 - 1)  # scikit-learn's random_state
    v = _get(cfg, "test_fraction")
    if v is _ABSENT:
        return
    n_test = math.ceil(v * DIGITS_SAMPLES) if _is_number(v) and 0 < v < 1 else 0
    if not DIGITS_CLASSES <= n_test <= DIGITS_SAMPLES - DIGITS_CLASSES:
        lo, hi = (DIGITS_CLASSES - 1) / DIGITS_SAMPLES, 1 - DIGITS_CLASSES / DIGITS_SAMPLES
        _bad(
            "test_fraction",
            v,
            f"expected a number in ({lo:.4f}, {hi:.4f}]: both sides of the split of the "
            f"{DIGITS_SAMPLES} digits must hold every one of the {DIGITS_CLASSES} classes",
        )


def _events(cfg: Any, name: str) -> None:
    from .events.aedat import SENSOR
    from .events.framing import FRAMINGS, ORIGINS, UNIFORM_SPLITS, WINDOW_ORIGINS, spec_from_cfg

    _choice(cfg, "source", EVENT_SOURCES[name])
    _folder(cfg, "root", "the folder that holds the release")
    _folder(cfg, "cache_dir", "where the frame cache is written")
    _bool(cfg, "download", "transpose", "binarize", "augment", "skip_corrupt")
    _choice(cfg, "framing", FRAMINGS)
    v = _get(cfg, "bin_ms")
    if v is not _ABSENT and (not _is_number(v) or not 0.0005 < v <= MAX_BIN_MS):
        _bad("bin_ms", v, f"expected a number of milliseconds > 0.0005 (1 us) and <= {MAX_BIN_MS}")
    _choice(cfg, "uniform_split", UNIFORM_SPLITS)
    _choice(cfg, "origin", ORIGINS)
    _choice(cfg, "window_origin", WINDOW_ORIGINS)
    _int(cfg, "size", 1, SENSOR)
    v = _get(cfg, "divisor")
    if v is not _ABSENT and v is not None and (not _is_number(v) or v <= 0):
        _bad("divisor", v, "expected a number > 0 or null")
    _int(cfg, "clip", 1, optional=True)
    v = _get(cfg, "flip_prob")
    if v is not _ABSENT and (not _is_number(v) or not 0 <= v <= 1):
        _bad("flip_prob", v, "expected a number in [0, 1]")
    _int(cfg, "max_shift", 0, SENSOR)
    _int(cfg, "num_workers_prepare", 0, 1024)
    if name in ("cifar10_dvs", "digits_dvs"):
        _choice(cfg, "split", ("sorted", "shuffled"))
        _int(cfg, "split_seed", 0)
        _fraction(cfg, "test_fraction")
    if name == "digits_dvs":  # dataset.emulator.<key>: one line naming the key, value and range
        from .events.emulator import params_from_cfg

        params_from_cfg(cfg.get("emulator"))
    if _get(cfg, "bin_ms") is _ABSENT or _get(cfg, "size") is _ABSENT:
        return
    try:  # the checks that combine keys (divisor against size, window_origin against framing)
        spec_from_cfg(cfg, 1)
    except DataError as exc:
        raise ConfigError(str(exc)) from None
