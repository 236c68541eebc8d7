"""The job side of an Optuna trial: report validation accuracy per epoch, ask whether to prune.

A job launched by ``hydra/sweeper=optuna`` finds its trial in the study (the RUNNING trial whose
``mlfsnn:job_dir`` is this run's directory), reports ``val_acc`` after every evaluated epoch and asks
the study's pruner whether to stop. The sweeper, not the job, records the trial's final state.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from ..errors import ConfigError

__all__ = ["TrialReporter", "trial_reporter"]

log = logging.getLogger("mlfsnn")


class TrialReporter:
    def __init__(self, storage_url: str, study_name: str, pruner: Any, job_dir: Path) -> None:
        import optuna
        from optuna.trial import TrialState

        from . import study as st

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        self.storage = st.open_storage(storage_url)
        pruner_obj = None
        if pruner:
            from hydra.utils import instantiate

            pruner_obj = instantiate(pruner)
        self.study = optuna.load_study(study_name=study_name, storage=self.storage, pruner=pruner_obj)
        key, where = f"{st.ATTR}job_dir", str(job_dir.resolve())
        running = self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
        mine = [t for t in running if t.user_attrs.get(key) == where]
        if not mine:
            raise ConfigError(
                f"{job_dir}: no running trial of study '{study_name}' runs in this directory (a job "
                "started by hand in an Optuna sweep directory?); rerun the sweep command instead"
            )
        self.trial = optuna.trial.Trial(self.study, mine[-1]._trial_id)
        self.enabled = pruner_obj is not None

    @property
    def number(self) -> int:
        return self.trial.number

    def should_prune(self, epoch: int, val_acc: float | None) -> bool:
        """Report ``val_acc`` for ``epoch``; whether the pruner stops the trial here."""
        if val_acc is None:
            return False
        frozen = self.study._storage.get_trial(self.trial._trial_id)
        if epoch not in frozen.intermediate_values:  # a resumed epoch was reported before the stop
            self.trial.report(float(val_acc), epoch)
        return self.enabled and self.trial.should_prune()


def trial_reporter(cfg: Any) -> TrialReporter | None:
    """The reporter of this job when it is a trial of ``hydra/sweeper=optuna``, else ``None``."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized() or int(os.environ.get("RANK", "0")) != 0:
        return None
    hc = HydraConfig.get()
    if "mlfsnn_sweeper" not in str(hc.sweeper.get("_target_", "")):
        return None
    from omegaconf import OmegaConf

    from . import study as st

    sweep_dir = Path(hc.sweep.dir)
    url = st.storage_url(hc.sweeper.get("storage"), sweep_dir, Path(hc.runtime.cwd))
    name = str(hc.sweeper.get("study_name") or sweep_dir.resolve().name)
    pruner = hc.sweeper.get("pruner")
    pruner = OmegaConf.to_container(pruner, resolve=True) if pruner is not None else None
    return TrialReporter(url, name, pruner, Path(hc.runtime.output_dir))
