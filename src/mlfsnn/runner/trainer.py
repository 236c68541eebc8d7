"""A training run from start to finish: ``setup -> resume -> fit -> finish``.

Resume is exact: the data order and augmentation depend only on (seed, epoch, sample), and a
checkpoint written mid-epoch (on SIGTERM / SIGUSR1) stores how far the epoch got, so a resumed run
writes the same metrics as an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import logging
import math
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from ..data import build_splits
from ..errors import UserError
from ..nn import count_parameters
from . import distributed as dist
from .builders import build_model, build_optimizer, build_scheduler, training_model
from .checkpoint import capture_rng, restore_rng, save_checkpoint
from .config import check_logger_packages, check_memory, validate
from .context import Context, format_row, seed_everything
from .debug import Debug
from .loggers import Loggers
from .loop import EpochProgress, NonFiniteLoss, epoch_metrics, evaluate, release_workers, train_one_epoch
from .outputs import MetricsLog, add_file_log, environment, remove_stale_temporaries, write_json
from .preemption import PreemptionGuard, held
from .rundir import (
    check_sweep_point,
    check_writable_dir,
    claim_run_dir,
    finished_summary,
    release_run_dir,
    save_hydra_files,
)
from .state import RunState
from .summary import failure_summary, run_summary
from .trainer_resume import ResumeSteps

__all__ = ["RunState", "Trainer", "train"]  # RunState (in .state) re-exported for callers

log = logging.getLogger("mlfsnn")


class Trainer(ResumeSteps):
    """Owns the model, optimizer and outputs of one run; :func:`train` drives it."""

    def __init__(self, cfg: DictConfig, run_dir: Path, reporter: Any = None) -> None:
        self.cfg, self.run_dir = cfg, Path(run_dir)
        self.reporter = reporter  # an Optuna trial's (runner/trial.py): per-epoch val_acc, pruning
        self.state = RunState()
        self.t0 = time.perf_counter()
        self.finished: dict[str, Any] | None = None  # the summary of a run resumed after its end
        self._pending: tuple[int, dict[str, Any]] | None = None  # the checkpoint resume will apply
        self.owns_run_dir = False

    # --- setup ----------------------------------------------------------------------------------

    def setup(self) -> None:
        """Validate, claim the run directory, then build data, model, optimizer: all before any work."""
        cfg = self.cfg
        validate(cfg)
        check_logger_packages(cfg)
        check_memory(cfg)
        self.ctx = ctx = Context.create(cfg)
        timeout = cfg.trainer.dist_timeout_s
        ctx.rank, ctx.world_size, local_rank = dist.init_distributed(ctx.device.type, timeout)
        if ctx.world_size > 1 and ctx.device.type == "cuda":
            ctx.device = torch.device("cuda", local_rank)
        _ = ctx.local_batch_size  # the global batch must split evenly: fail before any work
        self.run_dir = Path(dist.broadcast_object(str(self.run_dir)))
        self.resolved = OmegaConf.to_container(cfg, resolve=True)
        if ctx.main_rank:
            check_sweep_point(self.run_dir)
            claim_run_dir(self.run_dir, cfg.trainer.resume, cfg.trainer.overwrite)
            check_writable_dir(self.ckpt_dir, "the checkpoint folder")
            removed = remove_stale_temporaries(self.run_dir) + remove_stale_temporaries(self.ckpt_dir)
        # Before anything is written: a resume of another trajectory is refused with the run's files
        # (its .hydra/ included) as they were, and a finished run is left byte for byte.
        self._pending = self._load_resume_checkpoint(0)
        if self._pending is not None and ctx.main_rank:
            self.finished = finished_summary(self.run_dir, self._pending[1], cfg.trainer)
            if self.finished is not None:
                return
        if ctx.main_rank:
            save_hydra_files(self.run_dir, cfg)
            self.owns_run_dir = True  # from here on a crash is recorded as this run's failure
            add_file_log(self.run_dir / "train.log")
            log.info("run directory: %s", self.run_dir)
            if removed:
                log.info("removed %d temporary file(s) of an interrupted write", len(removed))
        else:
            log.setLevel(logging.WARNING)
        if ctx.device.type == "cpu" and cfg.trainer.precision == "fp16":
            warnings.warn(
                "trainer.precision=fp16 on CPU is emulated and about 20x slower than bf16; use "
                "trainer.precision=bf16",
                RuntimeWarning,
                stacklevel=2,
            )
        seed_everything(cfg.trainer.seed, cfg.trainer.deterministic)
        self._setup_data()
        self._setup_model()

    @property
    def ckpt_dir(self) -> Path:
        return self.run_dir / "checkpoints"

    def _setup_data(self) -> None:
        with dist.rank_zero_first():  # one process builds an event-frame cache, the rest reuse it
            self.train_set, val_set, test_set, self.info = build_splits(self.cfg.dataset, self.cfg.time_steps)
        info = self.info
        self.ctx.static = info.static
        log.info(
            "data: %s (%s), %d train / %d test samples",
            *(info.name, info.source, info.train_samples, info.test_samples),
        )
        for note in info.notes:
            log.info("data note: %s", note)
        self.test_loader = self.ctx.test_loader(test_set)
        self.val_loader = self.ctx.test_loader(val_set) if val_set is not None else None
        if val_set is not None:
            log.info("validation: %d samples held out of the training set", info.val_samples)

    def _setup_model(self) -> None:
        cfg, ctx = self.cfg, self.ctx
        self.model = build_model(cfg, self.info).to(ctx.device)
        self.num_params = count_parameters(self.model)
        m = cfg.model
        log.info(
            "model: %s-ResNet-%d %s, K=%d, T=%d, %d parameters, %d process(es)",
            *(m.block.upper(), m.depth, list(m.widths), cfg.neuron.levels, cfg.time_steps),
            *(self.num_params, ctx.world_size),
        )
        self.train_model = training_model(self.model, ctx)
        self.optimizer = build_optimizer(cfg, self.model)
        self.scheduler = build_scheduler(cfg, self.optimizer)
        self.scaler = torch.amp.GradScaler(ctx.device.type, enabled=cfg.trainer.precision == "fp16")

    # --- fit --------------------------------------------------------------------------------------

    def fit(self) -> None:
        """Run the remaining epochs; stops early on a signal (checkpoint first) or a non-finite loss."""
        st, self.debug = self.state, Debug(self.cfg)  # trainer.fast_dev_run, detect_anomaly, ... (debug=)
        writes = self.debug.writes(self.ctx.main_rank)  # rank 0, unless a fast dev run
        self.metrics = MetricsLog(self.run_dir / "metrics.jsonl" if writes else None, st.history)
        self.loggers = Loggers.open(self.cfg, self.run_dir, self.resolved, st, writes)  # logger=[...]
        with PreemptionGuard() as self.guard, self.debug.watch(self):
            try:
                for epoch in range(st.epoch + 1, self.cfg.trainer.epochs + 1):
                    if not self._run_epoch(epoch):
                        break
            except NonFiniteLoss as exc:
                st.status = "non_finite_loss"
                last = self.ckpt_dir / "last.pt"
                kept = (
                    f"the last good checkpoint is kept: {last}"
                    if last.is_file()
                    else "no checkpoint was written yet"
                )
                log.error("%s; stopping (%s)", exc, kept)
            finally:
                for loader in (self.test_loader, self.val_loader):
                    release_workers(loader, self.guard)

    def _run_epoch(self, epoch: int) -> bool:
        """Train, evaluate, log and checkpoint one epoch; ``False`` when the run should stop."""
        tr, st, ctx = self.cfg.trainer, self.state, self.ctx
        seed_everything(tr.seed + epoch, tr.deterministic)
        if st.progress.batches and st.rng is not None:
            restore_rng(st.rng)
        # A resumed epoch's time includes what it ran before the stop, like its samples/s does.
        lr, t_epoch = self.optimizer.param_groups[0]["lr"], time.perf_counter() - st.progress.time_s
        loader = ctx.train_loader(self.train_set, epoch, skip_batches=st.progress.batches)
        st.step, stopped = train_one_epoch(
            self.train_model,
            loader,
            self.optimizer,
            self.scaler,
            ctx,
            epoch,
            st.step,
            st.progress,
            self.guard,
        )
        if stopped:
            self.save("last", in_epoch=True)
            st.status = "preempted"
            return False
        self.scheduler.step()
        done = epoch == tr.epochs or (tr.max_steps is not None and st.step >= tr.max_steps)
        row: dict[str, Any] = {"epoch": epoch, "step": st.step, **epoch_metrics(st.progress, ctx)}
        done = done or self.debug.reached(row)  # trainer.stop_at_train_acc (debug=overfit)
        st.epoch, st.progress = epoch, EpochProgress()
        if epoch % tr.eval_every == 0 or done:
            self._evaluate(epoch, row)
        row.update(lr=lr, epoch_time_s=time.perf_counter() - t_epoch)
        self.metrics.append(row)
        self.loggers.log(row, step=epoch)
        log.info("epoch %d: %s", epoch, format_row(row))
        # best.pt follows validation accuracy when there is a split (honest selection), else test.
        if row.get("best_val" if self.val_loader is not None else "best"):
            self.save("best")
        saved = epoch % tr.checkpoint_every == 0 or done
        if saved:
            self.save("last")
        if done:
            return False
        if self._pruned(epoch, row, saved):
            return False
        if dist.all_reduce_sum([float(self.guard.requested)], ctx.device)[0]:  # a signal during evaluation
            if epoch % tr.checkpoint_every:
                self.save("last")
            st.status = "preempted"
            return False
        return True

    def _pruned(self, epoch: int, row: dict[str, Any], saved: bool) -> bool:
        """Whether the Optuna pruner stops this trial after ``epoch`` (its checkpoint kept)."""
        prune = self.reporter is not None and self.reporter.should_prune(epoch, row.get("val_acc"))
        if not dist.all_reduce_sum([float(prune)], self.ctx.device)[0]:
            return False
        if not saved:
            self.save("last")
        self.state.status = "pruned"
        log.info(
            "epoch %d: pruned by the Optuna pruner (trial %d)", epoch, getattr(self.reporter, "number", -1)
        )
        return True

    def _evaluate(self, epoch: int, row: dict[str, Any]) -> None:
        """Test (and validation) metrics of ``epoch`` into ``row``; track the best epochs."""
        st = self.state
        st.last_eval = evaluate(self.model, self.test_loader, self.ctx)
        row.update(st.last_eval)
        if st.last_eval["test_acc"] > st.best_acc:
            st.best_acc, st.best_epoch = st.last_eval["test_acc"], epoch
            row["best"] = True
        if self.val_loader is None:
            return
        val = evaluate(self.model, self.val_loader, self.ctx, observe=False, split="val")
        row.update(val)
        if val["val_acc"] > st.best_val_acc:
            st.best_val_acc, st.best_val_epoch = val["val_acc"], epoch
            st.test_acc_at_best_val = st.last_eval["test_acc"]
            row["best_val"] = True

    def save(self, name: str, in_epoch: bool = False) -> None:
        """Write ``checkpoints/<name>.pt`` (rank 0); ``in_epoch`` also stores the epoch in progress."""
        st, progress = self.state, None
        if in_epoch:  # store the global sums: rank 0 resumes with them, the others with 0
            p = st.progress
            sums = dist.all_reduce_sum([p.loss_sum, p.correct, p.seen], self.ctx.device)
            progress = EpochProgress(p.batches, *sums, p.time_s, p.grad_norm_sum)
        if not self.ctx.main_rank or self.debug.skip_checkpoint(self.ckpt_dir / f"{name}.pt"):
            return  # a fast dev run writes no checkpoint
        state = {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            **st.checkpoint_fields(self.metrics.history, progress, time.perf_counter() - self.t0),
            "rng": capture_rng(),
            "wandb_run": self.loggers.wandb.identity,  # snn-eval's wandb run joins this one's group
            "config": self.resolved,
            "num_params": self.num_params,
        }
        guard = getattr(self, "guard", None)
        with held(guard):
            save_checkpoint(state, self.ckpt_dir / f"{name}.pt", keep_previous=name == "last")

    # --- finish -----------------------------------------------------------------------------------

    def finish(self) -> dict[str, Any]:
        """Write ``summary.json``, close the loggers and the process group; returns the summary."""
        st = self.state
        summary = self.summary()
        if self.debug.writes(self.ctx.main_rank):
            write_json(self.run_dir / "summary.json", summary)
        self.loggers.finish(summary, st.status)
        self.debug.report(self, summary)  # what a fast dev run would have written, overfit, the profile
        if st.status == "preempted":
            log.warning(
                "stopped by %s: checkpoint saved to %s; rerun the same command with trainer.resume=auto "
                "to continue",
                self.guard.name,
                self.ckpt_dir / "last.pt",
            )
            self.guard.chain()
        else:
            final = summary["final_test_acc"]
            log.info(
                "best test acc %.2f%% (epoch %s), final %.2f%%; run directory: %s",
                *(
                    max(st.best_acc, 0.0),
                    st.best_epoch,
                    final if final is not None else math.nan,
                    self.run_dir,
                ),
            )
        dist.shutdown()
        if self.ctx.main_rank:
            release_run_dir(self.run_dir)
        return summary

    def summary(self) -> dict[str, Any]:
        final = next((row for row in reversed(self.metrics.history) if "test_acc" in row), {})
        return run_summary(
            self.cfg.name,
            self.state,
            self.info,
            final,
            history=self.metrics.history,
            val_split=self.val_loader is not None,
            elapsed_s=time.perf_counter() - self.t0,
            stopped_by=self.guard.name,
            num_params=self.num_params,
            world_size=self.ctx.world_size,
            environment=environment(self.ctx.device),
            config=self.resolved,
        )

    def record_failure(self, exc: BaseException) -> None:
        """A ``summary.json`` with ``status: failed`` and the error, so that snn-report lists the run
        as failed (a crash would otherwise leave a directory that looks merely unfinished)."""
        summary = failure_summary(
            self.cfg.name, self.state, exc, time.perf_counter() - self.t0, self.resolved
        )
        with contextlib.suppress(UserError):  # the disk that failed the run may fail this too
            write_json(self.run_dir / "summary.json", summary)
        log.error("run failed: %s (recorded in %s)", summary["error"], self.run_dir / "summary.json")


def train(cfg: DictConfig, run_dir: Path, reporter: Any = None) -> dict[str, Any]:
    """Train as ``cfg`` says, writing everything to ``run_dir`` (rank 0); returns the summary.

    Exits with code 3 (``SystemExit``) after writing the summary when the loss became non-finite. A
    crash (anything but a :class:`~mlfsnn.errors.UserError`) after the run directory was claimed is
    recorded in ``summary.json`` as ``status: failed`` before it propagates.
    """
    trainer = Trainer(cfg, run_dir, reporter)
    try:
        return _train(trainer)
    except Exception as exc:
        if trainer.owns_run_dir and not isinstance(exc, UserError):
            trainer.record_failure(exc)
        raise


def _train(trainer: Trainer) -> dict[str, Any]:
    cfg = trainer.cfg
    trainer.setup()
    if trainer.finished is not None:
        release_run_dir(trainer.run_dir)
        # Not logged: train.log belongs to the finished run and stays as it was.
        print(
            f"{trainer.run_dir} already finished ({trainer.finished.get('epochs_completed')} epochs): "
            "nothing to do, nothing changed",
            file=sys.stderr,
        )
        return trainer.finished
    trainer.resume()
    try:
        trainer.fit()
    except RuntimeError as exc:
        if trainer.ctx.world_size <= 1:
            raise
        last = trainer.ckpt_dir / "last.pt"
        kept = f"the last checkpoint is kept: {last}" if last.is_file() else "no checkpoint was written yet"
        raise dist.PeerLost(
            f"a peer process failed or stopped answering within trainer.dist_timeout_s="
            f"{cfg.trainer.dist_timeout_s} s ({str(exc).strip().splitlines()[0][:160]}); {kept}"
        ) from None
    summary = trainer.finish()
    if summary["status"] == "non_finite_loss":
        raise SystemExit(3)
    return summary
