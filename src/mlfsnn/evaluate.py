"""snn-eval: evaluate a checkpoint on its test set.

    snn-eval checkpoint=outputs/.../checkpoints/best.pt
    snn-eval checkpoint=RUN_DIR time_steps=8 trainer.device=cpu out=eval.json

The model is rebuilt from the config stored in the checkpoint; ``key=value`` overrides apply to
that config (e.g. another T, data root or batch size). Results go to stdout and ``eval.json``
(beside the run directory's summary by default, or ``out=PATH``).
"""

from __future__ import annotations

import contextlib
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from . import runtime
from .checkpoint import CheckpointError, load_checkpoint
from .config import ConfigError, validate
from .data import DataError, build_datasets
from .distributed import all_reduce_sum
from .loggers import environment, write_json
from .observe import NeuronMonitor, SynapticOps
from .resnet import count_parameters

log = logging.getLogger("mlfsnn")


@torch.inference_mode()
def evaluate(model, loader, ctx: runtime.Context, observe: bool = True) -> dict[str, Any]:
    """Test loss, accuracy (%) and, when ``observe``, per-layer firing rate, dormant ratio and SOPs."""
    model.eval()
    total_loss = correct = seen = 0.0
    monitor, sops = NeuronMonitor(model, dormant=True), SynapticOps(model)
    with contextlib.ExitStack() as stack:
        if observe:
            stack.enter_context(monitor)
            stack.enter_context(sops)
        for x, y in loader:
            x, y = runtime.to_model_input(x, ctx), y.to(ctx.device, non_blocking=True)
            with ctx.autocast():
                logits = model(x)
            total_loss += F.cross_entropy(logits.float(), y, reduction="sum").item()
            correct += (logits.argmax(1) == y).sum().item()
            seen += y.shape[0]
    total_loss, correct, seen = all_reduce_sum([total_loss, correct, seen], ctx.device)
    seen = max(seen, 1.0)
    out: dict[str, Any] = {"test_loss": total_loss / seen, "test_acc": 100.0 * correct / seen}
    if observe:
        runtime.reduce_observations(monitor, sops, ctx)
        out["firing_rate"] = monitor.firing_rate()
        out["dormant_ratio"] = monitor.dormant_ratio()
        out["sops_per_sample"] = sops.sops_per_sample()
        out["ann_macs_per_sample"] = sops.ann_macs_per_sample()
    return out


USAGE = "usage: snn-eval checkpoint=<file or run dir> [key=value ...] [out=<eval.json path>]"


def _parse(argv: list[str]) -> tuple[Path, Path | None, list[str]]:
    ckpt, out, overrides = None, None, []
    for arg in argv:
        if arg in ("-h", "--help"):
            print(USAGE + "\n\n" + (__doc__ or ""))
            raise SystemExit(0)
        key, sep, value = arg.partition("=")
        if not sep:
            raise ConfigError(f"argument {arg!r} is invalid: expected key=value; {USAGE}")
        if key == "checkpoint":
            ckpt = Path(value).expanduser()
        elif key == "out":
            out = Path(value).expanduser()
        else:
            overrides.append(arg)
    if ckpt is None:
        raise ConfigError(f"checkpoint is required; {USAGE}")
    if ckpt.is_dir():
        best = ckpt / "checkpoints" / "best.pt"
        ckpt = best if best.is_file() else ckpt / "checkpoints" / "last.pt"
    return ckpt, out, overrides


def run_eval(checkpoint: Path, overrides: list[str], out: Path | None = None) -> dict[str, Any]:
    state = load_checkpoint(checkpoint)
    cfg = OmegaConf.create(state["config"])
    try:
        cfg.merge_with(OmegaConf.from_dotlist(overrides))
    except Exception as exc:
        raise ConfigError(f"override {' '.join(overrides)!r} is invalid: {exc}".splitlines()[0]) from None
    validate(cfg)
    ctx = runtime.Context.create(cfg)
    _, test_set, info = build_datasets(cfg.dataset, cfg.time_steps)
    ctx.static = info.static
    model = runtime.build_model(cfg, info).to(ctx.device)
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as exc:
        raise CheckpointError(
            f"checkpoint {checkpoint} does not fit the configured model: {str(exc).splitlines()[0]}"
        ) from None
    t0 = time.perf_counter()
    metrics = evaluate(model, runtime.test_loader(test_set, ctx), ctx)
    result = {
        "checkpoint": str(checkpoint.resolve()),
        "epoch": state.get("epoch"),
        "time_steps": cfg.time_steps,
        "overrides": overrides,
        "test_samples": info.test_samples,
        "num_params": count_parameters(model),
        **metrics,
        "eval_time_s": time.perf_counter() - t0,
        **environment(ctx.device),
    }
    if out is None:
        run_dir = checkpoint.resolve().parent.parent
        out = run_dir / "eval.json" if (run_dir / "checkpoints").is_dir() else Path("eval.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    write_json(out, result)
    result["eval_json"] = str(out)
    return result


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        ckpt, out, overrides = _parse(sys.argv[1:] if argv is None else argv)
        result = run_eval(ckpt, overrides, out)
    except (ConfigError, DataError, CheckpointError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    print(
        json.dumps(
            {
                k: result[k]
                for k in ("checkpoint", "epoch", "time_steps", "test_samples", "test_loss", "test_acc")
            },
            indent=2,
        )
    )
    print(f"wrote {result['eval_json']}")


if __name__ == "__main__":
    main()
