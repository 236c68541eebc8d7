"""snn-train: build a spiking (DS-)ResNet from a Hydra config and train it with STBP.

snn-train +experiment=digits                       # offline demo
snn-train +experiment=cifar10 trainer.epochs=2     # the paper recipe, shortened
torchrun --nproc_per_node=4 -m mlfsnn.train ...    # data parallel (the same program)
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from ..errors import UserError, exit_with
from ..runner.preflight import created_run_dir, register_resolvers
from ..runner.rank import env_rank, env_world_size
from ..runner.rundir import RUN_FILES, remove_created, remove_unstarted
from ..runner.schema import check_overrides, debug_last
from ._common import fail, one_line, user_errors_exit
from .console import print_config_tree, summary_line, wants_tree

# torch (runner.trainer, runner.distributed, runner.outputs) is imported in the functions that train:
# `snn-train --help` answers without it, and mlfsnn.cli sets OpenMP's defaults before it loads.

EXIT_NON_FINITE = 3  # the loss became non-finite (train() exits with it after writing the summary)
EXIT_PEER_LOST = 4  # another process of a torchrun job died or hung

log = logging.getLogger("mlfsnn")


def _log_to_files(message: str, run_dir: Path) -> None:
    """Record an error in train.log without repeating it on the console (stderr already shows it).

    Only once this process has claimed the run's log: a refused command leaves the log of the run it
    refused as it was.
    """
    from ..runner.outputs import records_to

    if not records_to(run_dir / "train.log"):
        return
    record = log.makeRecord(log.name, logging.ERROR, __file__, 0, message, None, None)
    for logger in (log, logging.getLogger()):
        for handler in logger.handlers:
            if isinstance(handler, logging.FileHandler):
                handler.handle(record)


def _close_file_logs() -> None:
    for logger in (log, logging.getLogger()):
        for handler in list(logger.handlers):
            if isinstance(handler, logging.FileHandler):
                handler.close()
                logger.removeHandler(handler)


def _hydra_entry(cfg: DictConfig) -> float | None:
    from hydra.core.hydra_config import HydraConfig

    from ..runner import distributed as dist

    run_dir = Path(HydraConfig.get().runtime.output_dir)
    rank0 = env_rank() == 0
    if rank0:
        print(f"run directory: {run_dir}", file=sys.stderr)
        if wants_tree(cfg):  # print_config: auto (a terminal), true, false
            print_config_tree(cfg, HydraConfig.get().runtime.choices)
    try:
        summary = _train(cfg, run_dir)
    except UserError as exc:
        _log_to_files(f"error: {one_line(exc)}", run_dir)
        created = created_run_dir()
        if created is not None and created.resolve() == run_dir.resolve():  # refused: leave nothing
            _close_file_logs()
            remove_created(run_dir)
        fail(one_line(exc))
    except dist.PeerLost as exc:
        _log_to_files(f"error: {exc}", run_dir)
        exit_with(str(exc), EXIT_PEER_LOST)
    if rank0 and summary["status"] == "preempted":
        hint = f"trainer.resume=auto hydra.run.dir={run_dir}"
        by = summary.get("stopped_by") or "SIGTERM"
        what = "Ctrl-C" if by == "SIGINT" else by
        print(f"stopped by {what}, checkpoint saved; continue with: {hint}", file=sys.stderr)
        code = 128 + getattr(signal, by, signal.SIGTERM)
        if _in_local_sweep():
            # The basic launcher runs the points one after another in this process: a stop request
            # is for the whole sweep, not only for the point that happened to be running.
            print("the sweep stops here; rerun it with trainer.resume=auto to continue", file=sys.stderr)
            # Not 0: `snn-train -m ... && snn-report` must not report a sweep that stopped half-way.
            raise SystemExit(code)
        if by == "SIGINT":
            raise SystemExit(code)  # 130, as a shell expects after Ctrl-C (SIGTERM keeps 0 for requeues)
    elif rank0:
        print(summary_line(run_dir, summary, RUN_FILES), file=sys.stderr)
    return objective(summary)


def train(cfg: DictConfig, run_dir: Path) -> dict[str, Any]:
    """:func:`mlfsnn.runner.trainer.train`, imported when a run starts (it loads torch); a trial of
    ``hydra/sweeper=optuna`` reports to its study (runner/trial.py)."""
    from ..runner.trainer import train as run
    from ..runner.trial import trial_reporter

    return run(cfg, run_dir, trial_reporter(cfg))


def objective(summary: dict[str, Any]) -> float | None:
    """What the task function returns: the sweep objective of a run, for a sweeper that reads one.

    The best validation accuracy when there is a split (the Optuna preflight requires one), else the
    paper's best test accuracy; ``None`` when the run evaluated nothing. Hydra ignores it otherwise.
    """
    val = summary.get("best_val_acc")
    return val if val is not None else summary.get("best_test_acc")


def _train(cfg: DictConfig, run_dir: Path) -> dict[str, Any]:
    """:func:`train`, except that in an Optuna search a diverged trial is a result, not the end of it."""
    from hydra.core.hydra_config import HydraConfig

    try:
        return train(cfg, run_dir)
    except SystemExit as exc:
        sweeper = str(HydraConfig.get().sweeper.get("_target_", "")).lower()
        if exc.code != EXIT_NON_FINITE or "optuna" not in sweeper or env_rank() != 0:
            raise
    summary = json.loads((run_dir / "summary.json").read_text())  # written before the exit
    summary["best_val_acc"] = summary.get("best_val_acc") or 0.0
    print(
        "the loss became non-finite: this trial counts with its best validation accuracy "
        f"({summary['best_val_acc']:.2f}); the search goes on",
        file=sys.stderr,
    )
    return summary


def _overrides_of(args: list[str]) -> list[str] | None:
    """The overrides among Hydra's command-line arguments, parsed as Hydra parses them.

    ``None`` for commands that run nothing (``--help``, ``--info``, shell completion): Hydra answers
    those itself.
    """
    from hydra._internal.utils import get_args_parser

    try:
        parsed, _ = get_args_parser().parse_known_args(args)
    except SystemExit:
        return None  # argparse has already printed its own one-line usage error
    if parsed.help or parsed.hydra_help or parsed.info or parsed.shell_completion:
        return None
    return [*parsed.overrides, *(["-m"] if parsed.multirun else [])]


def _in_local_sweep() -> bool:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    hc = HydraConfig.get()
    return hc.mode == RunMode.MULTIRUN and "BasicLauncher" in str(hc.launcher.get("_target_", ""))


def rank_overrides(argv: list[str]) -> list[str]:
    """Under torchrun only rank 0 keeps Hydra's run directory and log file; the others write nothing.

    (Their run directory is rank 0's, broadcast by the trainer.)
    """
    if env_world_size() <= 1 or env_rank() == 0:
        return argv
    extra = ["hydra.output_subdir=null", "hydra/job_logging=stdout"]
    if not any(a.startswith("hydra.run.dir=") for a in argv):
        extra.append(f"hydra.run.dir={os.getcwd()}")
    return argv + extra


def fast_help() -> str:
    """snn-train's help, from the config folders alone (no Hydra composition, no torch)."""
    from ..runner.schema import GROUPS, PRESETS, _configs

    root = _configs()
    lines = [
        "usage: snn-train [-m] [group=option | +experiment=NAME | key=value ...]",
        "",
        (__doc__ or "").strip().split("\n\n", 1)[1],
        "",
        "Configuration groups (group=option; logger=[a,b] takes several; the presets are added with "
        "+experiment= / +variant=, and debug=NAME applies after them):",
    ]
    for group in sorted((*GROUPS, *PRESETS)):
        folder = root / group
        names = (
            sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".yaml"))
            if folder.is_dir()
            else []
        )
        lines.append(f"  {group}: {', '.join(names)}")
    launchers = sorted(
        p.name[:-5] for p in (root / "hydra" / "launcher").iterdir() if p.name.endswith(".yaml")
    )
    lines.append(f"  hydra/launcher: {', '.join(launchers)} (with -m)")
    lines += [
        "",
        "The composed config with every key: snn-train [overrides] --cfg job (README: Config keys).",
        "Hydra's own flags (--multirun, --cfg, --info, --shell-completion ...): snn-train --hydra-help",
    ]
    return "\n".join(lines)


def main() -> None:
    """Console entry point ``snn-train`` (also ``python -m mlfsnn.train``)."""
    import hydra

    args = debug_last(sys.argv[1:])  # debug=NAME as +debug=NAME, last: it overrides +experiment's keys
    if any(a in ("-h", "--help") for a in args):
        print(fast_help())  # Hydra's own --help composes the whole config first: seconds
        return
    overrides = _overrides_of(args)
    if overrides is not None:
        user_errors_exit(lambda: check_overrides(overrides))  # before Hydra: a typo is one line, exit 2
    register_resolvers()
    _register_sweeper()
    sys.argv = [sys.argv[0], *rank_overrides(args)]
    try:
        hydra.main(config_path="pkg://mlfsnn.configs", config_name="train", version_base="1.3")(
            _hydra_entry
        )()
    except KeyboardInterrupt:
        _interrupted()


def _register_sweeper() -> None:
    """Make ``hydra/sweeper=optuna`` (hydra_plugins.mlfsnn_sweeper) known to Hydra.

    Hydra finds plugins by scanning the ``hydra_plugins`` namespace package, which an editable
    install does not expose to that scan; registering the class works for every kind of install.
    """
    from hydra.core.plugins import Plugins

    from hydra_plugins.mlfsnn_sweeper import OptunaSweeper

    Plugins.instance().register(OptunaSweeper)


def _interrupted() -> None:
    """Ctrl-C outside the training loop, or a second one inside it: one line, exit 130.

    A run directory this process created and that holds no run yet is removed (it would count as an
    incomplete run in snn-report); one with a checkpoint stays, to be continued.
    """
    created, note = created_run_dir(), ""
    if created is not None:
        _close_file_logs()
        note = (
            f"; {created} held no result yet and was removed"
            if remove_unstarted(created)
            else f"; continue from its last checkpoint with trainer.resume=auto hydra.run.dir={created}"
        )
    print(f"\nerror: interrupted (Ctrl-C){note}", file=sys.stderr)
    raise SystemExit(128 + signal.SIGINT)


if __name__ == "__main__":
    main()
