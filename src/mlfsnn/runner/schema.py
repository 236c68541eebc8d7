"""Which config keys exist: read from the shipped config groups, so a typo is an error, not a no-op.

Hydra accepts ``+trainer.epoch=3`` (a new key nobody reads) and rejects ``trainer.epoch=3`` with a
multi-line message. Both are checked here before Hydra composes anything (:func:`check_overrides`),
and the composed config is checked again (:func:`check_keys`), which also covers experiment files.
"""

from __future__ import annotations

import difflib
from functools import cache, lru_cache
from importlib import resources
from typing import Any

import yaml
from omegaconf import DictConfig, OmegaConf

from ..errors import ConfigError

__all__ = [
    "GROUPS",
    "MAX_NESTING",
    "PRESETS",
    "check_keys",
    "check_nesting",
    "check_overrides",
    "debug_last",
    "group_options",
    "known_keys",
    "unknown_key_message",
]

# Config groups whose options select a sub-config (``dataset=digits``); ``experiment``, ``variant``
# and ``debug`` are ``@package _global_`` presets that only set keys of the others. ``logger`` takes
# a list of options too (``logger=[tensorboard,wandb]``).
GROUPS = ("dataset", "model", "neuron", "optimizer", "scheduler", "trainer", "logger", "paths")
PRESETS = ("experiment", "variant", "debug")
TOP_LEVEL = ("time_steps", "name")
LOGGERS = ("csv", "tensorboard", "wandb")  # the logger options that each add a logger.<name> node


def _configs() -> Any:
    return resources.files("mlfsnn.configs")


@cache
def group_options(group: str) -> tuple[str, ...]:
    """Option names of a config group (``hydra/launcher`` included), sorted."""
    folder = _configs().joinpath(*group.split("/"))
    if not folder.is_dir():
        return ()
    return tuple(sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".yaml")))


def _flat(node: Any, prefix: str) -> set[str]:
    if isinstance(node, dict) and node:
        out: set[str] = set()
        for k, v in node.items():
            if k != "defaults":
                out |= _flat(v, f"{prefix}.{k}" if prefix else str(k))
        return out
    return {prefix}


@lru_cache(maxsize=1)
def known_keys() -> frozenset[str]:
    """Every leaf key a composed ``train`` config may hold (``hydra.*`` aside)."""
    primary = yaml.safe_load(_configs().joinpath("train.yaml").read_text()) or {}
    primary.pop("hydra", None)  # _flat drops "defaults"; hydra.* is Hydra's, checked by Hydra
    keys = set(TOP_LEVEL) | _flat(primary, "")  # top-level blocks of train.yaml (energy.*)
    for group in GROUPS:
        for option in group_options(group):
            text = _configs().joinpath(group, f"{option}.yaml").read_text()
            data = yaml.safe_load(text) or {}
            if data:  # an empty option (logger/none.yaml) adds no key, and must not make one of its group
                keys |= _flat(data, group)
    return frozenset(keys)


def _prefixes(keys: frozenset[str]) -> set[str]:
    out = set()
    for key in keys:
        parts = key.split(".")
        out |= {".".join(parts[:i]) for i in range(1, len(parts))}
    return out


def unknown_key_message(key: str) -> str:
    """``'<key> is not a config key; did you mean ...?'``."""
    keys = known_keys()
    close = difflib.get_close_matches(key, sorted(keys), n=1, cutoff=0.6)
    hint = f"; did you mean {close[0]}?" if close else ""
    group = key.split(".")[0]
    if group in GROUPS and not close:
        siblings = sorted(k.split(".", 1)[1] for k in keys if k.startswith(group + ".") and k.count(".") == 1)
        hint = f"; {group} has {', '.join(siblings)}"
    return f"{key} is not a config key{hint}"


def check_keys(cfg: DictConfig) -> None:
    """Raise :class:`ConfigError` for the first key of ``cfg`` that no config group defines."""
    keys, prefixes = known_keys(), _prefixes(known_keys())
    container = OmegaConf.to_container(cfg, resolve=False)
    assert isinstance(container, dict)
    container.pop("hydra", None)
    for key in sorted(_flat(container, "")):
        if key not in keys and key not in prefixes and not any(key.startswith(k + ".") for k in keys):
            raise ConfigError(unknown_key_message(key))


def debug_last(args: list[str]) -> list[str]:
    """``args`` with a ``debug=NAME`` (or ``+debug=NAME``) preset moved to the end as ``+debug=NAME``.

    Hydra applies appended presets in command-line order, so a debug preset placed last overrides
    what any ``+experiment`` / ``+variant`` sets (``trainer.epochs``), while ``key=value`` overrides
    still override the preset. ``debug=`` needs no ``+``: there is no debug entry to replace.
    """
    debug = [a for a in args if a.lstrip("+").startswith("debug=")]
    rest = [a for a in args if a not in debug]
    return rest + ["+" + a.lstrip("+") for a in debug]


def _choices(override: Any) -> list[str]:
    """The option names an override of a group selects, list values (``logger=[a,b]``) and sweeps
    of them (``logger=[a],[a,b]``) included."""
    values = list(override.sweep_iterator()) if override.is_sweep_override() else [override.value()]
    out: list[str] = []
    for value in values:
        out += [str(v) for v in value] if isinstance(value, list) else [str(value)]
    return out


def _loggers_of(option: str, seen: frozenset[str] = frozenset()) -> set[str]:
    """The loggers a ``logger`` option adds (``default`` -> wandb, ``all`` -> all three)."""
    if option in LOGGERS:
        return {option}
    path = _configs().joinpath("logger", f"{option}.yaml")
    if option in seen or not path.is_file():
        return set()
    defaults = (yaml.safe_load(path.read_text()) or {}).get("defaults") or []
    names = [d for d in defaults if isinstance(d, str) and d != "_self_"]
    return set().union(*(_loggers_of(n, seen | {option}) for n in names))


def _check_logger_keys(overrides: list[Any]) -> None:
    """``logger.<name>.*`` overrides must name a logger the run has (Hydra's own refusal spans lines).

    The chosen loggers: a ``logger=`` override, else an ``override /logger`` of a chosen preset,
    else configs/logger/default.yaml's (wandb).
    """
    chosen: list[str] | None = None
    shown = "default, wandb"
    for o in overrides:
        if o.key_or_group == "logger":
            if o.is_sweep_override():
                return  # each point of the sweep has its own loggers; Hydra checks them
            chosen, shown = _choices(o), o.get_value_element_as_str()
        elif o.key_or_group in PRESETS and chosen is None and not o.is_sweep_override():
            chosen = _preset_loggers(o.key_or_group, str(o.value()))
            shown = f"{'[' + ','.join(chosen) + ']' if chosen else ''} of +{o.key_or_group}={o.value()}"
    names = set().union(*(_loggers_of(c) for c in chosen)) if chosen is not None else _loggers_of("default")
    for o in overrides:
        parts = o.key_or_group.split(".")
        if parts[0] == "logger" and len(parts) > 2 and parts[1] in LOGGERS and parts[1] not in names:
            raw = o.input_line or o.key_or_group
            add = ",".join(sorted(names | {parts[1]}))
            raise ConfigError(
                f"{raw}: {parts[1]} is not among the loggers of this run (logger={shown}); choose it "
                f"with logger=[{add}], or leave the override out"
            )


def _preset_loggers(group: str, option: str) -> list[str] | None:
    """The loggers a preset chooses with ``override /logger: ...`` in its defaults (else ``None``)."""
    path = _configs().joinpath(group, f"{option}.yaml")
    if not path.is_file():
        return None
    for entry in (yaml.safe_load(path.read_text()) or {}).get("defaults") or []:
        if isinstance(entry, dict) and "override /logger" in entry:
            value = entry["override /logger"]
            return [str(v) for v in value] if isinstance(value, list) else [str(value)]
        if isinstance(entry, str) and entry != "_self_":
            found = _preset_loggers(group, entry)
            if found is not None:
                return found
    return None


def _check_group(group: str, values: list[str], raw: str) -> None:
    options = group_options(group)
    if not options and group not in PRESETS:
        raise ConfigError(f"{raw}: {group} is not a config group; groups: {', '.join(GROUPS + PRESETS)}")
    for value in values:
        if value not in options:
            close = difflib.get_close_matches(value, options, n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            raise ConfigError(
                f"{group}={value} is not an option{hint}; {group} options: {', '.join(options)}"
            )


def _check_group_prefix(group: str, raw: str, add: bool, force: bool, seen: set[str]) -> None:
    """Hydra's rules for selecting a group option, as one line each."""
    value = raw.lstrip("+")
    if force:
        raise ConfigError(f"{raw}: '++' cannot select a config group; write {value}")
    if group in seen:
        raise ConfigError(f"{raw}: {group} is chosen twice; choose it once")
    seen.add(group)
    if group in PRESETS and not add:
        raise ConfigError(f"{raw}: {group} presets are added with a '+': write +{value}")
    if group not in PRESETS and "/" not in group and add:
        raise ConfigError(f"{raw}: {group} is always part of the config, so drop the '+' ({value})")


SEARCH_SPACE = "hydra.sweeper.params."


def _search_space_advice(raw: str, target: str, delete: bool) -> str:
    """Why ``hydra.sweeper.params.KEY=...`` on the command line is refused, and what works instead.

    Hydra cannot set such an entry: it reads the dots of ``optimizer.lr`` as nesting (the entry is
    named ``optimizer.lr``), refuses a sweep value for its own keys and a new key without ``+``. The
    sweepers take ordinary overrides instead: ``'optimizer.lr=interval(0.01, 0.1)'`` replaces that
    entry, and a fixed ``neuron.levels=3`` takes the key out of the search.
    """
    name = target.lstrip("+")
    group = name in GROUPS + PRESETS or "/" in name
    if not group and name not in known_keys() and name not in _prefixes(known_keys()):
        return f"{raw}: {unknown_key_message(name)}"
    name = f"+{name}" if name in PRESETS else name
    if delete:
        return f"{raw}: to take {name} out of the search, give it a fixed value: {name}=VALUE"
    value = raw.partition("=")[2].strip("'\"")
    return (
        f"{raw}: Hydra cannot set a search-space entry from the command line; give it as an ordinary "
        f"override (with -m): '{name}={value}'"
    )


# Brackets an override's value may nest. Hydra's parser and OmegaConf recurse on every level (a few
# hundred levels end in a RecursionError traceback); real values nest 2 deep (a list of lists).
MAX_NESTING = 32
_OPENING, _CLOSING = "[{(", "]})"


def _nesting(text: str) -> int:
    """The deepest bracket nesting of ``text``, brackets inside quotes (and escaped ones) aside."""
    depth = deepest = 0
    quote, escaped = "", False
    for ch in text:
        if escaped:
            escaped = False
        elif ch == "\\":
            escaped = True
        elif quote:
            quote = "" if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch in _OPENING:
            depth += 1
            deepest = max(deepest, depth)
        elif ch in _CLOSING:
            depth = max(depth - 1, 0)
    return deepest


def check_nesting(raw: str) -> None:
    """Refuse an override whose key and value together nest deeper than :data:`MAX_NESTING`."""
    key, _, value = raw.partition("=")
    depth = key.count(".") + _nesting(value)
    if depth > MAX_NESTING:
        shown = key if len(key) <= 60 else key[:57] + "..."
        raise ConfigError(
            f"override {shown}=... nests {depth} levels deep (its key's dots and value's brackets); "
            f"at most {MAX_NESTING} are allowed"
        )


def check_overrides(args: list[str], sweep_advice: str = "add -m to run it") -> None:
    """Refuse overrides that name an unknown key or group option, before Hydra composes anything.

    ``sweep_advice`` ends the line that refuses a sweep override without ``-m``."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    parser = OverridesParser.create()
    keys, prefixes = known_keys(), _prefixes(known_keys())
    multirun = bool({"-m", "--multirun"} & set(args))
    seen: set[str] = set()
    parsed = []
    for raw in args:
        if raw.startswith("-"):
            continue  # Hydra's own flags (-m, --cfg job, ...)
        check_nesting(raw)  # before the parser, which would recurse on every level
        try:
            override = parser.parse_override(raw)
        except HydraException as exc:
            raise ConfigError(f"override {raw!r} cannot be parsed: {str(exc).splitlines()[0]}") from None
        parsed.append(override)
        key = override.key_or_group
        if key.startswith(SEARCH_SPACE):
            raise ConfigError(_search_space_advice(raw, key.removeprefix(SEARCH_SPACE), override.is_delete()))
        if key == "hydra" or key.startswith(("hydra.", "hydra/")):
            continue
        if override.is_delete():
            raise ConfigError(f"{raw}: deleting config entries is not supported; set the value instead")
        if override.is_sweep_override() and not multirun:
            raise ConfigError(f"{raw} is a sweep (one run per value): {sweep_advice}")
        if "/" in key or key in GROUPS + PRESETS:
            if key != "logger" and isinstance(override.value(), list):
                raise ConfigError(f"{raw}: {key} takes one option, not a list (only logger takes several)")
            _check_group(key, _choices(override), raw)
            _check_group_prefix(key, raw, override.is_add(), override.is_force_add(), seen)
            continue
        if key not in keys and key not in prefixes:
            raise ConfigError(unknown_key_message(key))
        if override.is_add() and key in keys:
            raise ConfigError(f"{raw}: {key} already exists, so drop the '+' ({raw.lstrip('+')})")
    _check_logger_keys(parsed)
