"""snn-train: build a spiking (DS-)ResNet from a Hydra config and train it with STBP.

STBP = backpropagation through time with the MLF surrogate gradient. Static images are repeated
over T steps; the loss is cross-entropy on the time-averaged logits (paper-notes §4-5).

    snn-train +experiment=digits                       # offline demo
    snn-train +experiment=cifar10 trainer.epochs=2     # the paper recipe, shortened
    python -m mlfsnn.train ...                         # the same program (for torchrun)
"""

from __future__ import annotations

import contextlib
import logging
import math
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf

from . import runtime
from .checkpoint import (
    CheckpointError,
    capture_rng,
    load_checkpoint,
    resolve_resume,
    restore_rng,
    save_checkpoint,
)
from .config import ConfigError, validate
from .data import DataError, build_datasets
from .loggers import MetricsLog, WandbLogger, add_file_log, environment, write_json
from .observe import NeuronMonitor, SynapticOps
from .resnet import count_parameters

log = logging.getLogger("mlfsnn")


class NonFiniteLoss(RuntimeError):
    pass


def train_one_epoch(
    model, loader, optimizer, scaler, ctx: runtime.Context, epoch: int, step: int
) -> tuple[dict[str, float], int]:
    """One pass over ``loader``; returns the epoch's train metrics and the global step count."""
    model.train()
    tr = ctx.cfg.trainer
    total_loss = correct = seen = 0.0
    start = time.perf_counter()
    bar = runtime.progress(loader, ctx, f"epoch {epoch}")
    for x, y in bar:
        if tr.max_steps is not None and step >= tr.max_steps:
            break
        x, y = runtime.to_model_input(x, ctx), y.to(ctx.device, non_blocking=True)
        with ctx.autocast():
            logits = model(x)
            loss = F.cross_entropy(logits.float(), y)
        if not torch.isfinite(loss):
            raise NonFiniteLoss(f"loss is {loss.item()} at epoch {epoch}, step {step + 1}")
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        if tr.grad_clip is not None:
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(model.parameters(), tr.grad_clip)
        scaler.step(optimizer)
        scaler.update()
        step += 1
        n = y.shape[0]
        total_loss += loss.item() * n
        correct += (logits.argmax(1) == y).sum().item()
        seen += n
        if hasattr(bar, "set_postfix"):
            rate = seen / max(time.perf_counter() - start, 1e-9)
            bar.set_postfix(
                loss=f"{total_loss / seen:.4f}", acc=f"{100 * correct / seen:.2f}", sps=f"{rate:.1f}"
            )
    elapsed = time.perf_counter() - start
    seen = max(seen, 1)
    return {
        "train_loss": total_loss / seen,
        "train_acc": 100.0 * correct / seen,
        "train_samples_per_s": seen / max(elapsed, 1e-9),
    }, step


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
    seen = max(seen, 1)
    out: dict[str, Any] = {"test_loss": total_loss / seen, "test_acc": 100.0 * correct / seen}
    if observe:
        out["firing_rate"] = monitor.firing_rate()
        out["dormant_ratio"] = monitor.dormant_ratio()
        out["sops_per_sample"] = sops.sops_per_sample()
        out["ann_macs_per_sample"] = sops.ann_macs_per_sample()
    return out


def train(cfg: DictConfig, run_dir: Path) -> dict[str, Any]:
    """Train as ``cfg`` says, writing everything to ``run_dir``; returns the summary."""
    validate(cfg)
    run_dir.mkdir(parents=True, exist_ok=True)
    add_file_log(run_dir / "train.log")
    tr = cfg.trainer
    ctx = runtime.Context.create(cfg)
    runtime.seed_everything(tr.seed, tr.deterministic)
    log.info("run directory: %s", run_dir)

    train_set, test_set, info = build_datasets(cfg.dataset, cfg.time_steps)
    ctx.static = info.static
    log.info(
        "data: %s (%s), %d train / %d test samples",
        info.name,
        info.source,
        info.train_samples,
        info.test_samples,
    )
    for note in info.notes:
        log.info("data note: %s", note)
    test_loader = runtime.test_loader(test_set, ctx)
    model = runtime.build_model(cfg, info).to(ctx.device)
    num_params = count_parameters(model)
    log.info(
        "model: %s-ResNet-%d %s, K=%d, T=%d, %d parameters",
        cfg.model.block.upper(),
        cfg.model.depth,
        list(cfg.model.widths),
        cfg.neuron.levels,
        cfg.time_steps,
        num_params,
    )
    optimizer = runtime.build_optimizer(cfg, model)
    scheduler = runtime.build_scheduler(cfg, optimizer)
    scaler = torch.amp.GradScaler(ctx.device.type, enabled=tr.precision == "fp16")

    resolved = OmegaConf.to_container(cfg, resolve=True)
    start_epoch, step, best_acc, best_epoch, history = 1, 0, -1.0, 0, []
    ckpt_path = resolve_resume(tr.resume, run_dir)
    if ckpt_path is not None:
        state = load_checkpoint(ckpt_path, map_location=ctx.device)
        runtime.check_resume_compatible(state["config"], resolved, ckpt_path)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        restore_rng(state["rng"])
        start_epoch, step = state["epoch"] + 1, state["step"]
        best_acc, best_epoch, history = state["best_acc"], state["best_epoch"], state["history"]
        log.info("resumed from %s at epoch %d (step %d)", ckpt_path, state["epoch"], step)
    metrics = MetricsLog(run_dir / "metrics.jsonl", history)
    wandb_run = WandbLogger(cfg.logger.wandb, run_dir, resolved, cfg.name)

    def checkpoint(name: str, epoch: int) -> None:
        state = {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "scaler": scaler.state_dict(),
            "epoch": epoch,
            "step": step,
            "best_acc": best_acc,
            "best_epoch": best_epoch,
            "history": metrics.history,
            "rng": capture_rng(),
            "config": resolved,
            "num_params": num_params,
        }
        save_checkpoint(state, run_dir / "checkpoints" / f"{name}.pt")

    t0 = time.perf_counter()
    epoch, last_eval, exit_code = start_epoch - 1, None, 0
    try:
        for epoch in range(start_epoch, tr.epochs + 1):
            runtime.seed_everything(tr.seed + epoch, tr.deterministic)  # exact resume at epoch bounds
            lr = optimizer.param_groups[0]["lr"]
            t_epoch = time.perf_counter()
            train_metrics, step = train_one_epoch(
                model, runtime.train_loader(train_set, ctx, epoch), optimizer, scaler, ctx, epoch, step
            )
            scheduler.step()
            done = epoch == tr.epochs or (tr.max_steps is not None and step >= tr.max_steps)
            row: dict[str, Any] = {"epoch": epoch, "step": step, **train_metrics}
            if epoch % tr.eval_every == 0 or done:
                last_eval = evaluate(model, test_loader, ctx)
                row.update(last_eval)
                if last_eval["test_acc"] > best_acc:
                    best_acc, best_epoch = last_eval["test_acc"], epoch
                    row["best"] = True
            row.update(lr=lr, epoch_time_s=time.perf_counter() - t_epoch)
            metrics.append(row)
            wandb_run.log(row, step=epoch)
            log.info("epoch %d: %s", epoch, runtime.format_row(row))
            if row.get("best"):
                checkpoint("best", epoch)
            if epoch % tr.checkpoint_every == 0 or done:
                checkpoint("last", epoch)
            if done:
                break
    except NonFiniteLoss as exc:
        exit_code = 3
        log.error("%s; stopping. The last good checkpoint is kept in %s", exc, run_dir / "checkpoints")
        epoch -= 1
    final = metrics.history[-1] if metrics.history else {}
    summary = {
        "name": cfg.name,
        "status": "ok" if exit_code == 0 else "non_finite_loss",
        "best_test_acc": best_acc if best_acc >= 0 else None,
        "best_epoch": best_epoch or None,
        "final_test_acc": final.get("test_acc"),
        "final_test_loss": final.get("test_loss"),
        "num_params": num_params,
        "train_samples": info.train_samples,
        "test_samples": info.test_samples,
        "data": info.to_dict(),
        "epochs_completed": epoch,
        "steps": step,
        "wall_time_s": time.perf_counter() - t0,
        "firing_rate": (last_eval or {}).get("firing_rate"),
        "dormant_ratio": (last_eval or {}).get("dormant_ratio"),
        "sops_per_sample": (last_eval or {}).get("sops_per_sample"),
        "ann_macs_per_sample": (last_eval or {}).get("ann_macs_per_sample"),
        "world_size": 1,
        **environment(ctx.device),
        "config": resolved,
    }
    write_json(run_dir / "summary.json", summary)
    wandb_run.finish(summary, exit_code)
    log.info(
        "best test acc %.2f%% (epoch %s), final %.2f%%; run directory: %s",
        max(best_acc, 0.0),
        best_epoch,
        final.get("test_acc") or math.nan,
        run_dir,
    )
    if exit_code:
        raise SystemExit(exit_code)
    return summary


USER_ERRORS = (ConfigError, DataError, CheckpointError)


def _log_to_files(message: str) -> None:
    """Record an error in train.log without repeating it on the console (stderr already shows it)."""
    record = log.makeRecord(log.name, logging.ERROR, __file__, 0, message, None, None)
    for logger in (log, logging.getLogger()):
        for handler in logger.handlers:
            if isinstance(handler, logging.FileHandler):
                handler.handle(record)


def _hydra_entry(cfg: DictConfig) -> float | None:
    from hydra.core.hydra_config import HydraConfig

    run_dir = Path(HydraConfig.get().runtime.output_dir)
    print(f"run directory: {run_dir}", file=sys.stderr)
    try:
        summary = train(cfg, run_dir)
    except USER_ERRORS as exc:
        _log_to_files(f"error: {exc}")
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    print(f"run directory: {run_dir}", file=sys.stderr)
    return summary.get("best_test_acc")  # the sweep objective


def main() -> None:
    """Console entry point ``snn-train`` (also ``python -m mlfsnn.train``)."""
    import hydra

    hydra.main(config_path="pkg://mlfsnn.configs", config_name="train", version_base="1.3")(_hydra_entry)()


if __name__ == "__main__":
    main()
