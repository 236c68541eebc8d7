"""``snn-data``: download the datasets, prepare and inspect the event datasets' frame caches.

    snn-data download dataset=cifar10_dvs           # the files, resumed, verified (docs/data.md)
    snn-data download dataset=dvs_gesture source=tonic
    snn-data prepare +experiment=dvs_gesture dataset.root=/data/dvs_gesture
    snn-data info dataset=cifar10_dvs dataset.root=/data/cifar10_dvs
    snn-data bench +experiment=dvs_gesture          # samples/s read from a prepared cache

Arguments after the command are Hydra overrides of snn-train's config (configs/train.yaml), so the
cache that ``prepare`` builds is exactly the one a training run with the same overrides reads, and
``download`` puts the files where that run looks. Only ``download`` touches the network
(``MLFSNN_DATA_MIRROR=<base URL>``: a mirror tried first, each file at <base>/<dataset>/<file name>).
"""

from __future__ import annotations

import os
import re
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..data.events.dataset import EventDataset
from ..errors import ConfigError, DataError
from ._common import user_errors_exit

__all__ = ["compose", "main"]

USAGE = "usage: snn-data {download,prepare,info,bench} [hydra overrides ...]"
COMMAND_HELP = {
    "download": "fetch the dataset's files into dataset.root; source=NAME picks the copy, "
    "MLFSNN_DATA_MIRROR=<base URL> is tried first; resumes, verifies",
    "prepare": "build the frame cache for the configured dataset (split/class counts, statistics)",
    "info": "what is under dataset.root against what is expected, where to download it, cache status",
    "bench": "read the prepared cache and report samples/s (direct and through a DataLoader)",
}
EXAMPLE = "example: snn-data prepare +experiment=dvs_gesture dataset.root=/data/dvs_gesture"
OVERRIDES_HELP = (
    "overrides: snn-train's Hydra overrides (configs/train.yaml), e.g. dataset=NAME or +experiment=NAME,\n"
    "dataset.root=DIR, time_steps=T; the same overrides given to snn-train read the same cache entry."
)
HELP_FLAGS = ("-h", "--help")


def compose(overrides: Sequence[str]) -> Any:
    """snn-train's config with ``overrides``, its ``dataset`` group resolved; a bad override is a
    :class:`~mlfsnn.errors.ConfigError`."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_module
    from hydra.errors import HydraException
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    from ..runner.schema import check_overrides

    one = "snn-data takes one configuration: run it once per value"
    if any(arg in ("-m", "--multirun") for arg in overrides):
        raise ConfigError(f"-m: {one}")
    check_overrides(list(overrides), sweep_advice=one)  # snn-train's check: a typo names what was meant
    try:
        with initialize_config_module("mlfsnn.configs", version_base="1.3"):
            cfg = hydra_compose(config_name="train", overrides=list(overrides))
        OmegaConf.resolve(cfg.dataset)
    except (HydraException, OmegaConfBaseException) as exc:
        raise ConfigError(f"config: {str(exc).splitlines()[0]}") from None
    return cfg


def _dataset(cfg: Any) -> EventDataset:
    from ..data import check_dataset_config  # torch: loaded once --help is ruled out
    from ..data.events import EVENT_DATASETS, event_dataset

    name = str(cfg.dataset.name)
    if name not in EVENT_DATASETS:
        raise ConfigError(
            f"snn-data handles the event datasets ({', '.join(EVENT_DATASETS)}), not {name!r}; "
            "pick one with dataset=NAME or +experiment=NAME"
        )
    check_dataset_config(cfg.dataset)  # every value that needs no data, before any file is touched
    return event_dataset(name, cfg.dataset, cfg.time_steps)


def _framing_line(cfg: Any, ds: EventDataset) -> str:
    spec = ds.spec
    timing = f" x {spec.bin_us / 1000:g} ms bins" if spec.framing == "paper" else f" ({spec.uniform_split})"
    line = (
        f"frames: {spec.framing} framing, T={spec.time_steps}{timing}, shape {list(spec.shape)}"
        f", origin={spec.origin}"
        + (f", window_origin={spec.window_origin}" if spec.window_origin != "first_event" else "")
        + (f", divisor={spec.divisor:g}" if spec.divisor else "")
        + (", transposed [p, x, y]" if spec.transpose else "")
    )
    if spec.time_steps != ds.paper_t:
        who = "its preset uses" if cfg.dataset.name == "digits_dvs" else "the paper uses"  # emulated data
        line += f"\nnote: {who} T={ds.paper_t}: add +experiment={cfg.dataset.name}"
    return line


def prepare(cfg: Any, overrides: Sequence[str]) -> int:
    """Build (or find) the cache entry and print its split, class and count statistics."""
    from ..data.events.cache import load_meta

    ds = _dataset(cfg)
    print(f"{cfg.dataset.name}: source={cfg.dataset.source}, root={cfg.dataset.root}")
    print(_framing_line(cfg, ds))
    found = load_meta(ds.plan().entry) is not None
    t0 = time.perf_counter()
    entry, meta = ds.prepare(progress=True)
    took = time.perf_counter() - t0
    if ds.built:
        how = f"built in {took:.1f} s"
    elif found:
        how = "found"
    else:  # it waited on the build lock while another process built the same entry
        how = f"reused the entry another process built meanwhile (waited {took:.1f} s)"
    print(f"cache: {entry} ({how})")
    print(f"dtype {meta['dtype']}, maximum count {meta['max_count']}")
    for split, s in meta["splits"].items():
        per_class = " ".join(f"{c}:{n}" for c, n in sorted(s["per_class"].items(), key=lambda kv: int(kv[0])))
        print(f"{split}: {s['samples']} samples; per class {per_class}")
        print(
            f"  {s['events']} events, mean {s['mean_events_per_frame']:.1f} events per frame "
            f"(one time bin, both channels), maximum count {s['max_count']}"
        )
    for key in ("skipped_files", "skipped_samples"):
        if meta.get(key):
            print(f"{key.replace('_', ' ')}: {len(meta[key])}")
            for msg in meta[key][:20]:
                print(f"  {msg}")
    for note in meta.get("notes", []):
        print(f"note: {note}")
    return 0


def info(cfg: Any, overrides: Sequence[str]) -> int:
    """Report what is under dataset.root and the cache status; 1 when the data looks incomplete."""
    from ..data.events.cache import load_meta
    from ..data.events.survey import survey

    ds = _dataset(cfg)
    print(f"{cfg.dataset.name}: source={cfg.dataset.source}, root={cfg.dataset.root}")
    if cfg.dataset.name != "digits_dvs":  # emulated on first use: no archive to read
        print("checking (an archive is read once to count its label rows) ...", flush=True)
    lines, ok = survey(cfg.dataset)
    for line in lines:
        print(line)
    print(_framing_line(cfg, ds))
    try:
        entry = ds.plan().entry
    except DataError as exc:
        print(f"cache: not available ({exc})")
        return 1
    meta = load_meta(entry)
    if meta is None:
        print(f"cache: not built yet ({entry}); run: snn-data prepare {' '.join(overrides)}".rstrip())
    else:
        counts = " / ".join(f"{s['samples']} {k}" for k, s in meta["splits"].items())
        print(f"cache: ready, {counts}, {meta['dtype']} ({entry})")
    return 0 if ok else 1


def bench(cfg: Any, overrides: Sequence[str]) -> int:
    """Samples/s read from the prepared cache, directly and through a DataLoader."""
    import torch
    from torch.utils.data import DataLoader

    from ..data.events.cache import CachedFrames, load_meta

    entry = _dataset(cfg).plan().entry
    if load_meta(entry) is None:
        raise DataError(f"no prepared cache at {entry}; run snn-data prepare with the same overrides first")
    ds = CachedFrames(entry, "train")
    n = len(ds)
    t0 = time.perf_counter()
    for i in range(n):
        ds[i]
    direct = n / (time.perf_counter() - t0)
    batch, workers = int(cfg.trainer.batch_size), int(cfg.trainer.num_workers)
    loader = DataLoader(ds, batch_size=batch, shuffle=True, num_workers=workers)
    t0 = time.perf_counter()
    seen = 0
    for x, _ in loader:
        x = x.transpose(0, 1)  # [T, B, C, H, W], as the model receives it
        seen += x.shape[1]
    loaded = seen / (time.perf_counter() - t0)
    print(
        f"{cfg.dataset.name}: {n} train samples of {list(ds[0][0].shape)}, "
        f"torch threads {torch.get_num_threads()}"
    )
    print(
        f"direct: {direct:.0f} samples/s; DataLoader(batch_size={batch}, shuffle, num_workers={workers}): "
        f"{loaded:.0f} samples/s"
    )
    return 0


def download(cfg: Any, overrides: Sequence[str]) -> int:
    """Fetch every file of the dataset's source into ``dataset.root`` (or say where to get it)."""
    from ..data.download import download_dataset, manual_message
    from ..data.sources import find_source

    name = str(cfg.dataset.name)
    source = find_source(name, cfg.dataset.get("source"))
    root = Path(os.path.expanduser(str(cfg.dataset.root))).resolve()
    print(f"{name}: source={source.name}, root={root} ({source.page})")
    if source.manual:
        found = _found_by_hand(source, root)
        if found is None:
            raise DataError(manual_message(source, root))
        print(found)
    else:
        for f in source.files:
            size = f"{f.size:,} bytes" if f.size else "size not published"
            check = f"md5 {f.md5}" if f.md5 else "no published checksum"
            print(f"  {Path(f.folder) / f.name}: {size}, {check}")
        for path, how in download_dataset(name, root, source.name):
            md5 = next((f.md5 for f in source.files if f.name == path.name), None)
            check = "md5 verified" if md5 else "archive intact, sha256 recorded"
            print(f"{path}: {how}, {path.stat().st_size:,} bytes, {check}")
        if source.note:
            print(f"note: {source.note}")
    if name == "cifar10":
        print(f"ready: snn-train dataset.root={root}")
    else:
        rest = " ".join(o.lstrip("+") for o in overrides if not o.startswith("dataset="))
        print(f"next: snn-data prepare dataset={name} {rest}".rstrip())
    return 0


def _found_by_hand(source: Any, root: Path) -> str | None:
    """What of a source without a direct link is already under ``root`` (checked), or None."""
    from ..data.download import manual_message
    from ..data.events.dvs_gesture import locate_ibm
    from ..data.verify import verify_existing

    try:
        kind, path = locate_ibm(root)
    except DataError:
        return None
    if kind == "folder":
        return f"found: the extracted folder {path}; nothing to download"
    print(f"checking {path} (read whole once; its sha256 is recorded beside it) ...", flush=True)
    problem = verify_existing(source.files[0], path)
    if problem is not None:
        raise DataError(f"{path}: {problem}; {manual_message(source, root)}")
    return f"found: {path}, gzip and tar intact, sha256 in {path.name}.sha256; nothing to download"


COMMANDS: dict[str, Callable[[Any, Sequence[str]], int]] = {
    "download": download,
    "prepare": prepare,
    "info": info,
    "bench": bench,
}


def _help(command: str | None) -> str:
    if command is None:
        width = max(map(len, COMMANDS))
        lines = [f"  {name:<{width}}  {COMMAND_HELP[name]}" for name in COMMANDS]
        return "\n".join([USAGE, *lines, EXAMPLE, "", OVERRIDES_HELP])
    return f"usage: snn-data {command} [hydra overrides ...]\n{COMMAND_HELP[command]}\n\n{OVERRIDES_HELP}"


def _run(args: list[str]) -> int:
    # -h / --help come before Hydra sees the arguments: to Hydra they are malformed overrides
    if args and args[0] in (*HELP_FLAGS, "help"):
        print(_help(None))
        return 0
    if not args:
        raise ConfigError(f"no command given; {USAGE} (snn-data --help lists the commands)")
    command, overrides = args[0], args[1:]
    if command not in COMMANDS:
        raise ConfigError(f"unknown command {command!r}; {USAGE}")
    if any(arg in HELP_FLAGS for arg in overrides):
        print(_help(command))
        return 0
    if command == "download":  # source=NAME is dataset.source, which cifar10's config lacks
        overrides = [re.sub(r"^source=", "++dataset.source=", arg) for arg in overrides]
    cfg = compose(overrides)
    try:
        return COMMANDS[command](cfg, overrides)
    except OSError as exc:  # no reader named it: still one line naming the file
        from ..data import data_os_error

        raise DataError(data_os_error(exc, str(cfg.dataset.name))) from None


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point ``snn-data``; a user error prints one ``error:`` line and exits with 2."""
    args = list(sys.argv[1:] if argv is None else argv)
    return user_errors_exit(lambda: _run(args))


if __name__ == "__main__":
    sys.exit(main())
