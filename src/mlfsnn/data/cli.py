"""``snn-data``: prepare and inspect the event datasets' frame caches.

    snn-data prepare +experiment=dvs_gesture dataset.root=/data/dvs_gesture
    snn-data info dataset=cifar10_dvs dataset.root=/data/cifar10_dvs
    snn-data bench +experiment=dvs_gesture          # samples/s read from a prepared cache

Arguments after the command are Hydra overrides of snn-train's config (configs/train.yaml), so the
cache that ``prepare`` builds is exactly the one a training run with the same overrides reads.
Nothing here touches the network.
"""

from __future__ import annotations

import importlib
import sys
import time
from collections.abc import Sequence
from types import ModuleType
from typing import Any

from .common import DataError

USAGE = """usage: snn-data {prepare,info,bench} [hydra overrides ...]
  prepare  build the frame cache for the configured dataset (progress bar, split/class counts, statistics)
  info     what is under dataset.root against what is expected, where to download it, cache status
  bench    read the prepared cache and report samples/s (direct and through a DataLoader)
example: snn-data prepare +experiment=dvs_gesture dataset.root=/data/dvs_gesture"""
EVENT_DATASETS = ("dvs_gesture", "cifar10_dvs")


def compose(overrides: Sequence[str]) -> Any:
    from hydra import compose as hydra_compose
    from hydra import initialize_config_module
    from hydra.errors import HydraException
    from omegaconf import OmegaConf

    try:
        with initialize_config_module("mlfsnn.configs", version_base="1.3"):
            cfg = hydra_compose(config_name="train", overrides=list(overrides))
        OmegaConf.resolve(cfg.dataset)
    except HydraException as exc:
        raise DataError(f"config: {str(exc).splitlines()[0]}") from None
    return cfg


def _module(cfg: Any) -> ModuleType:
    name = str(cfg.dataset.name)
    if name not in EVENT_DATASETS:
        raise DataError(
            f"snn-data handles the event datasets ({', '.join(EVENT_DATASETS)}), not {name!r}; "
            "pick one with dataset=NAME or +experiment=NAME"
        )
    return importlib.import_module(f"{__package__}.{name}")


def _framing_line(cfg: Any) -> str:
    from .framing import spec_from_cfg

    spec = spec_from_cfg(cfg.dataset, cfg.time_steps)
    timing = f" x {spec.bin_us / 1000:g} ms bins" if spec.framing == "paper" else f" ({spec.uniform_split})"
    line = (
        f"frames: {spec.framing} framing, T={spec.time_steps}{timing}, shape {list(spec.shape)}"
        f", origin={spec.origin}"
        + (f", divisor={spec.divisor:g}" if spec.divisor else "")
        + (", transposed [p, x, y]" if spec.transpose else "")
    )
    paper_t = _module(cfg).PAPER_T
    if spec.time_steps != paper_t:
        line += f"\nnote: the paper uses T={paper_t}: add +experiment={cfg.dataset.name}"
    return line


def prepare(cfg: Any) -> int:
    mod = _module(cfg)
    print(f"{cfg.dataset.name}: source={cfg.dataset.source}, root={cfg.dataset.root}")
    print(_framing_line(cfg))
    from .cache import load_meta

    found = load_meta(mod.plan(cfg.dataset, cfg.time_steps)["entry"]) is not None
    t0 = time.perf_counter()
    entry, meta = mod.prepare(cfg.dataset, cfg.time_steps, progress=True)
    print(f"cache: {entry} ({'found' if found else f'built in {time.perf_counter() - t0:.1f} s'})")
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


def info(cfg: Any) -> int:
    mod = _module(cfg)
    print(f"{cfg.dataset.name}: source={cfg.dataset.source}, root={cfg.dataset.root}")
    print("checking (an archive is read once to count its label rows) ...", flush=True)
    lines, ok = mod.survey(cfg.dataset)
    for line in lines:
        print(line)
    print(_framing_line(cfg))
    from .cache import load_meta

    try:
        entry = mod.plan(cfg.dataset, cfg.time_steps)["entry"]
    except DataError as exc:
        print(f"cache: not available ({exc})")
        return 1
    meta = load_meta(entry)
    if meta is None:
        print(f"cache: not built yet ({entry}); run: snn-data prepare {' '.join(sys.argv[2:])}".rstrip())
    else:
        counts = " / ".join(f"{s['samples']} {k}" for k, s in meta["splits"].items())
        print(f"cache: ready, {counts}, {meta['dtype']} ({entry})")
    return 0 if ok else 1


def bench(cfg: Any) -> int:
    import torch
    from torch.utils.data import DataLoader

    from .cache import CachedFrames, load_meta

    mod = _module(cfg)
    entry = mod.plan(cfg.dataset, cfg.time_steps)["entry"]
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


COMMANDS = {"prepare": prepare, "info": info, "bench": bench}


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help", "help") or args[0] not in COMMANDS:
        print(USAGE, file=sys.stderr if args and args[0] not in ("-h", "--help", "help") else sys.stdout)
        return 0 if args and args[0] in ("-h", "--help", "help") else 2
    try:
        return COMMANDS[args[0]](compose(args[1:]))
    except DataError as exc:
        print(f"snn-data: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
