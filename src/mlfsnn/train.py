"""snn-train: build a spiking (DS-)ResNet from a Hydra config and train it with STBP.

STBP = backpropagation through time with the MLF surrogate gradient. Static images are repeated
over T steps; the loss is cross-entropy on the time-averaged logits (paper-notes §4-5).

    snn-train +experiment=digits                       # offline demo
    snn-train +experiment=cifar10 trainer.epochs=2     # the paper recipe, shortened
    torchrun --nproc_per_node=4 -m mlfsnn.train ...    # data parallel (the same program)

Resume is exact: the data order and augmentation depend only on (seed, epoch, sample), and a
checkpoint written mid-epoch (on SIGTERM / SIGUSR1) stores how far the epoch got, so a resumed run
writes the same metrics as an uninterrupted one.
"""

from __future__ import annotations

import logging
import math
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf

from . import distributed as dist_utils
from . import runtime
from .checkpoint import CheckpointError, capture_rng, load_resume_state, restore_rng, save_checkpoint
from .config import ConfigError, validate
from .data import DataError, build_datasets
from .evaluate import evaluate
from .loggers import MetricsLog, WandbLogger, add_file_log, environment, write_json
from .observe import add_grad_norms
from .preemption import PreemptionGuard
from .resnet import count_parameters

log = logging.getLogger("mlfsnn")


class NonFiniteLoss(RuntimeError):
    pass


@dataclass
class EpochProgress:
    """Running sums of the epoch in progress (what a mid-epoch checkpoint must carry)."""

    batches: int = 0
    loss_sum: float = 0.0
    correct: float = 0.0
    seen: float = 0.0
    time_s: float = 0.0
    grad_norm_sum: dict[str, float] = field(default_factory=dict)  # trainer.log_grad_norms


def _step_flags(ctx: runtime.Context, loss: torch.Tensor, guard: PreemptionGuard | None) -> tuple[bool, bool]:
    """(loss not finite on some rank, stop requested on some rank): every rank decides alike."""
    flags = [float(not torch.isfinite(loss).item()), float(guard is not None and guard.requested)]
    bad, stop = dist_utils.all_reduce_sum(flags, ctx.device)
    return bad > 0, stop > 0


def train_one_epoch(
    model,
    loader,
    optimizer,
    scaler,
    ctx: runtime.Context,
    epoch: int,
    step: int,
    progress: EpochProgress,
    guard: PreemptionGuard | None = None,
) -> tuple[int, bool]:
    """Train until the loader ends, ``max_steps`` is reached or a stop is requested.

    Returns the global step and whether the epoch was cut short by a stop request.
    """
    model.train()
    tr = ctx.cfg.trainer
    start = time.perf_counter() - progress.time_s
    bar = runtime.progress(loader, ctx, f"epoch {epoch}")
    for x, y in bar:
        if tr.max_steps is not None and step >= tr.max_steps:
            break
        x, y = runtime.to_model_input(x, ctx), y.to(ctx.device, non_blocking=True)
        with ctx.autocast():
            logits = model(x)
            loss = F.cross_entropy(logits.float(), y)
        bad, _ = _step_flags(ctx, loss, None)
        if bad:
            raise NonFiniteLoss(f"loss is not finite ({loss.item()}) at epoch {epoch}, step {step + 1}")
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        if tr.grad_clip is not None or tr.log_grad_norms:
            scaler.unscale_(optimizer)
        if tr.log_grad_norms:
            add_grad_norms(model, progress.grad_norm_sum)
        if tr.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), tr.grad_clip)
        scaler.step(optimizer)
        scaler.update()
        step += 1
        progress.batches += 1
        progress.loss_sum += loss.item() * y.shape[0]
        progress.correct += (logits.argmax(1) == y).sum().item()
        progress.seen += y.shape[0]
        progress.time_s = time.perf_counter() - start
        if hasattr(bar, "set_postfix"):
            bar.set_postfix(
                loss=f"{progress.loss_sum / progress.seen:.4f}",
                acc=f"{100 * progress.correct / progress.seen:.2f}",
                sps=f"{progress.seen / max(progress.time_s, 1e-9):.1f}",
            )
        if guard is not None and _step_flags(ctx, loss.detach(), guard)[1]:
            return step, True
    return step, False


def epoch_metrics(progress: EpochProgress, ctx: runtime.Context) -> dict[str, Any]:
    loss_sum, correct, seen = dist_utils.all_reduce_sum(
        [progress.loss_sum, progress.correct, progress.seen], ctx.device
    )
    seen = max(seen, 1.0)
    out: dict[str, Any] = {
        "train_loss": loss_sum / seen,
        "train_acc": 100.0 * correct / seen,
        "train_samples_per_s": seen / max(progress.time_s, 1e-9),
    }
    if progress.grad_norm_sum:  # gradients are identical on every rank after DDP's all-reduce
        out["grad_norm"] = {k: v / max(progress.batches, 1) for k, v in progress.grad_norm_sum.items()}
    return out


def train(cfg: DictConfig, run_dir: Path) -> dict[str, Any]:
    """Train as ``cfg`` says, writing everything to ``run_dir`` (rank 0); returns the summary."""
    validate(cfg)
    tr = cfg.trainer
    ctx = runtime.Context.create(cfg)
    ctx.rank, ctx.world_size, local_rank = dist_utils.init_distributed(ctx.device.type)
    if ctx.world_size > 1 and ctx.device.type == "cuda":
        ctx.device = torch.device("cuda", local_rank)
    main_rank = ctx.rank == 0
    runtime.local_batch_size(ctx)  # the global batch must split evenly: fail before any work
    run_dir = Path(dist_utils.broadcast_object(str(run_dir)))
    if main_rank:
        run_dir.mkdir(parents=True, exist_ok=True)
        add_file_log(run_dir / "train.log")
        log.info("run directory: %s", run_dir)
    else:
        log.setLevel(logging.WARNING)
    runtime.seed_everything(tr.seed, tr.deterministic)

    with dist_utils.rank_zero_first():  # one process builds an event-frame cache, the rest reuse it
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
        "model: %s-ResNet-%d %s, K=%d, T=%d, %d parameters, %d process(es)",
        cfg.model.block.upper(),
        cfg.model.depth,
        list(cfg.model.widths),
        cfg.neuron.levels,
        cfg.time_steps,
        num_params,
        ctx.world_size,
    )
    train_model = runtime.training_model(model, ctx)
    optimizer = runtime.build_optimizer(cfg, model)
    scheduler = runtime.build_scheduler(cfg, optimizer)
    scaler = torch.amp.GradScaler(ctx.device.type, enabled=tr.precision == "fp16")

    resolved = OmegaConf.to_container(cfg, resolve=True)
    next_epoch, step, best_acc, best_epoch, history = 1, 0, -1.0, 0, []
    progress = EpochProgress()
    state, ckpt_path = load_resume_state(tr.resume, run_dir, map_location=ctx.device)
    if state is not None:
        runtime.check_resume_compatible(state["config"], resolved, ckpt_path)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        next_epoch, step = state["epoch"] + 1, state["step"]
        best_acc, best_epoch, history = state["best_acc"], state["best_epoch"], state["history"]
        if state.get("in_epoch"):  # written mid-epoch: continue that epoch where it stopped
            saved = state["in_epoch"]
            progress = EpochProgress(**saved) if main_rank else EpochProgress(saved["batches"])
        log.info(
            "resumed from %s after epoch %d%s (step %d)",
            ckpt_path,
            state["epoch"],
            f" + {progress.batches} batches" if progress.batches else "",
            step,
        )
    metrics = MetricsLog(run_dir / "metrics.jsonl" if main_rank else None, history)
    wandb_id = state.get("wandb_id") if state is not None else None
    wandb_run = WandbLogger(cfg.logger.wandb if main_rank else None, run_dir, resolved, cfg.name, wandb_id)

    def checkpoint(name: str, epoch_done: int, in_epoch: EpochProgress | None = None) -> None:
        if in_epoch is not None:  # store the global sums: rank 0 resumes with them, the others with 0
            sums = dist_utils.all_reduce_sum([in_epoch.loss_sum, in_epoch.correct, in_epoch.seen], ctx.device)
            in_epoch = EpochProgress(in_epoch.batches, *sums, in_epoch.time_s, in_epoch.grad_norm_sum)
        if not main_rank:
            return
        state = {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "scaler": scaler.state_dict(),
            "epoch": epoch_done,
            "step": step,
            "best_acc": best_acc,
            "best_epoch": best_epoch,
            "history": metrics.history,
            "in_epoch": asdict(in_epoch) if in_epoch is not None else None,
            "wandb_id": wandb_run.run_id,
            "rng": capture_rng(),
            "config": resolved,
            "num_params": num_params,
        }
        save_checkpoint(state, run_dir / "checkpoints" / f"{name}.pt", keep_previous=name == "last")

    t0 = time.perf_counter()
    epoch, last_eval, status = next_epoch - 1, None, "ok"
    with PreemptionGuard() as guard:
        try:
            for epoch in range(next_epoch, tr.epochs + 1):
                runtime.seed_everything(tr.seed + epoch, tr.deterministic)
                if progress.batches and state is not None:
                    restore_rng(state["rng"])
                lr, t_epoch = optimizer.param_groups[0]["lr"], time.perf_counter()
                loader = runtime.train_loader(train_set, ctx, epoch, skip_batches=progress.batches)
                step, stopped = train_one_epoch(
                    train_model, loader, optimizer, scaler, ctx, epoch, step, progress, guard
                )
                if stopped:
                    checkpoint("last", epoch - 1, progress)
                    status = "preempted"
                    epoch -= 1
                    break
                scheduler.step()
                done = epoch == tr.epochs or (tr.max_steps is not None and step >= tr.max_steps)
                row: dict[str, Any] = {"epoch": epoch, "step": step, **epoch_metrics(progress, ctx)}
                progress = EpochProgress()
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
                if dist_utils.all_reduce_sum([float(guard.requested)], ctx.device)[0]:  # signal during eval
                    if epoch % tr.checkpoint_every:
                        checkpoint("last", epoch)
                    status = "preempted"
                    break
        except NonFiniteLoss as exc:
            status = "non_finite_loss"
            log.error("%s; stopping. The last good checkpoint is kept in %s", exc, run_dir / "checkpoints")
            epoch -= 1
    summary = _summary(
        cfg,
        metrics.history,
        best_acc,
        best_epoch,
        num_params,
        info,
        epoch,
        step,
        t0,
        last_eval,
        ctx,
        resolved,
        status,
    )
    if main_rank:
        write_json(run_dir / "summary.json", summary)
    wandb_run.finish(summary, 0 if status == "ok" else 1)
    if status == "preempted":
        log.warning(
            "stopped by %s: checkpoint saved to %s; rerun the same command with trainer.resume=auto "
            "to continue",
            guard.name,
            run_dir / "checkpoints" / "last.pt",
        )
        guard.chain()
    else:
        log.info(
            "best test acc %.2f%% (epoch %s), final %.2f%%; run directory: %s",
            max(best_acc, 0.0),
            best_epoch,
            summary["final_test_acc"] or math.nan,
            run_dir,
        )
    dist_utils.shutdown()
    if status == "non_finite_loss":
        raise SystemExit(3)
    return summary


def _summary(
    cfg: DictConfig,
    history: list[dict[str, Any]],
    best_acc: float,
    best_epoch: int,
    num_params: int,
    info: Any,
    epoch: int,
    step: int,
    t0: float,
    last_eval: dict[str, Any] | None,
    ctx: runtime.Context,
    resolved: Any,
    status: str,
) -> dict[str, Any]:
    final = next((row for row in reversed(history) if "test_acc" in row), {})
    last_eval = last_eval or final
    return {
        "name": cfg.name,
        "status": status,
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
        **{
            k: last_eval.get(k)
            for k in ("firing_rate", "dormant_ratio", "sops_per_sample", "ann_macs_per_sample")
        },
        "world_size": ctx.world_size,
        **environment(ctx.device),
        "config": resolved,
    }


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
    rank0 = dist_utils.env_rank() == 0
    if rank0:
        print(f"run directory: {run_dir}", file=sys.stderr)
    try:
        summary = train(cfg, run_dir)
    except USER_ERRORS as exc:
        _log_to_files(f"error: {exc}")
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    if rank0 and summary["status"] == "preempted":
        hint = f"trainer.resume=auto hydra.run.dir={run_dir}"
        print(f"stopped by a signal, checkpoint saved; continue with: {hint}", file=sys.stderr)
    elif rank0:
        print(f"run directory: {run_dir}", file=sys.stderr)
    return summary.get("best_test_acc")  # the sweep objective


def _rank_overrides(argv: list[str]) -> list[str]:
    """Under torchrun only rank 0 keeps Hydra's run directory and log file; the others write nothing.

    (Their run directory is rank 0's, broadcast by ``train``.)
    """
    if dist_utils.env_world_size() <= 1 or dist_utils.env_rank() == 0:
        return argv
    extra = ["hydra.output_subdir=null", "hydra/job_logging=stdout"]
    if not any(a.startswith("hydra.run.dir=") for a in argv):
        extra.append(f"hydra.run.dir={os.getcwd()}")
    return argv + extra


def main() -> None:
    """Console entry point ``snn-train`` (also ``python -m mlfsnn.train``)."""
    import hydra

    sys.argv = [sys.argv[0], *_rank_overrides(sys.argv[1:])]
    hydra.main(config_path="pkg://mlfsnn.configs", config_name="train", version_base="1.3")(_hydra_entry)()


if __name__ == "__main__":
    main()
