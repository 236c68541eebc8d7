"""The persistent Optuna study behind ``hydra/sweeper=optuna``: storage, ownership and retries.

Every trial a sweeper starts carries who runs it (``mlfsnn:host`` / ``mlfsnn:pid``), a heartbeat
(``mlfsnn:beat``, refreshed by :class:`Heartbeat`) and its run directory (``mlfsnn:job_dir``). A trial
left RUNNING by a process that is gone (same host, pid dead) or silent for longer than the grace
period is *stale*: it is failed and, up to ``max_retries`` times, enqueued again with the same
parameters and the same run directory, whose checkpoint the retry resumes. Optuna's own heartbeat
only works inside ``study.optimize``, not with ask/tell, hence this.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from ..errors import ConfigError
from ..files import ensure_dir, open_lock

__all__ = [
    "ATTR",
    "Heartbeat",
    "budget_left",
    "claim_lock",
    "counted",
    "fail_and_retry",
    "fail_stale",
    "is_stale",
    "open_storage",
    "owner_attrs",
    "storage_url",
]

ATTR = "mlfsnn:"
DB_NAME = "optuna.db"
LOCK_NAME = ".optuna.lock"


def storage_url(storage: str | None, sweep_dir: Path, cwd: Path) -> str:
    """The storage URL: ``None`` means an SQLite file in the sweep directory; relative paths (in
    ``sqlite:///`` and ``journal:`` URLs) are taken from the directory snn-train was started in."""
    if not storage:
        return f"sqlite:///{(cwd / sweep_dir / DB_NAME).resolve()}"
    storage = str(storage)
    for prefix in ("sqlite:///", "journal:"):
        if storage.startswith(prefix):
            path = Path(storage[len(prefix) :])
            if not str(path).startswith("/"):  # sqlite://// is an absolute path already
                path = cwd / path
            return prefix + str(path.resolve())
    if "://" not in storage:
        raise ConfigError(
            f"hydra.sweeper.storage={storage!r} is invalid: expected null (an SQLite file in the sweep "
            "directory), sqlite:///PATH, postgresql://..., mysql://... or journal:PATH"
        )
    return storage


def open_storage(url: str) -> optuna.storages.BaseStorage:
    """Optuna's storage for ``url``; SQLite waits for a busy database instead of failing at once."""
    if url.startswith("journal:"):
        from optuna.storages.journal import JournalFileBackend, JournalStorage

        path = Path(url[len("journal:") :])
        ensure_dir(path.parent)
        return JournalStorage(JournalFileBackend(str(path)))
    engine: dict[str, Any] = {"connect_args": {"timeout": 120}} if url.startswith("sqlite") else {}
    if url.startswith("sqlite:///"):
        ensure_dir(Path(url[len("sqlite:///") :]).parent)
    for attempt in range(3):
        try:
            return optuna.storages.RDBStorage(url, engine_kwargs=engine)
        except Exception as exc:  # also: workers elsewhere creating one new database's tables at once
            if attempt == 2 or isinstance(exc, ImportError):
                reason = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
                raise ConfigError(f"hydra.sweeper.storage={url} cannot be opened: {reason}") from None
            time.sleep(1.0 + attempt)
    raise AssertionError("unreachable")


@contextlib.contextmanager
def claim_lock(sweep_dir: Path) -> Iterator[None]:
    """Held while a sweeper creates trials or fails stale ones, so workers in one sweep directory
    number their trials (and so their run directories) one batch after another."""
    fd = open_lock(ensure_dir(sweep_dir) / LOCK_NAME)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def owner_attrs() -> dict[str, Any]:
    return {f"{ATTR}host": socket.gethostname(), f"{ATTR}pid": os.getpid(), f"{ATTR}beat": time.time()}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def is_stale(trial: FrozenTrial, grace_s: float, now: float | None = None) -> bool:
    """Whether a RUNNING trial's process is gone: dead on this host, or silent for ``grace_s``.

    Checked under :func:`claim_lock`: a sweeper sets a trial's owner before it lets the lock go, so
    a trial without one was asked for by a process that died at that moment.
    """
    attrs = trial.user_attrs
    beat = attrs.get(f"{ATTR}beat")
    if beat is None:
        return True
    if attrs.get(f"{ATTR}host") == socket.gethostname() and not _alive(int(attrs.get(f"{ATTR}pid", 0))):
        return True
    return (now or time.time()) - float(beat) > grace_s


def counted(trial: FrozenTrial) -> bool:
    """Whether a trial counts towards ``n_trials``: finished for good (a failure that was retried
    does not count; its retry does)."""
    if trial.state in (TrialState.COMPLETE, TrialState.PRUNED):
        return True
    return trial.state == TrialState.FAIL and not trial.user_attrs.get(f"{ATTR}retried")


def budget_left(study: optuna.Study, n_trials: int) -> int:
    """Trials still to create: the total minus those finished and those running (another worker's
    included) or waiting in the queue."""
    trials = study.get_trials(deepcopy=False)
    busy = sum(t.state in (TrialState.RUNNING, TrialState.WAITING) for t in trials)
    return max(0, n_trials - sum(counted(t) for t in trials) - busy)


def fail_and_retry(
    study: optuna.Study, trial: FrozenTrial, max_retries: int, why: str, count: bool = True
) -> bool:
    """Fail ``trial`` and, unless it has been retried ``max_retries`` times, enqueue a retry with
    its parameters and run directory. Returns whether it is retried. ``count=False``: a stop that
    was asked for (Ctrl-C, SIGTERM, a requeue) does not use up a retry; a process that vanished
    (killed, out of memory, a lost node) does, so a trial that kills its process ends.

    The retry is enqueued before the trial is failed, and never twice: a process killed half-way
    through leaves a RUNNING trial that the next session fails again, finding its retry queued.
    """
    storage, retries = study._storage, int(trial.user_attrs.get(f"{ATTR}retries", 0))
    retry = retries < max_retries and bool(trial.params)
    if retry and not any(
        t.user_attrs.get(f"{ATTR}retry_of") == trial.number for t in study.get_trials(deepcopy=False)
    ):
        study.enqueue_trial(
            trial.params,
            user_attrs={
                f"{ATTR}retry_of": trial.number,
                f"{ATTR}retries": retries + int(count),
                f"{ATTR}job_dir": trial.user_attrs.get(f"{ATTR}job_dir"),
            },
        )
    storage.set_trial_user_attr(trial._trial_id, f"{ATTR}failed", why)
    storage.set_trial_user_attr(trial._trial_id, f"{ATTR}retried", retry)
    storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
    return retry


def fail_stale(study: optuna.Study, grace_s: float, max_retries: int) -> list[int]:
    """Fail (and retry) every stale RUNNING trial; returns their numbers."""
    stale = [
        t for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)) if is_stale(t, grace_s)
    ]
    for trial in stale:
        fail_and_retry(study, trial, max_retries, "its process stopped (killed, or its machine lost)")
    return [t.number for t in stale]


class Heartbeat:
    """Refreshes ``mlfsnn:beat`` of the given trials every ``every_s`` seconds, in a daemon thread."""

    def __init__(self, storage: optuna.storages.BaseStorage, trial_ids: list[int], every_s: float) -> None:
        self.storage, self.trial_ids, self.every_s = storage, trial_ids, every_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="mlfsnn-heartbeat", daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.every_s):
            for trial_id in self.trial_ids:
                with contextlib.suppress(Exception):  # a finished trial, a busy database: next beat
                    if self.storage.get_trial(trial_id).state == TrialState.RUNNING:
                        self.storage.set_trial_user_attr(trial_id, f"{ATTR}beat", time.time())

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
