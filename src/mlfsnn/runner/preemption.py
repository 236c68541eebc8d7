"""Stop cleanly on SIGTERM / SIGUSR1 (what SLURM and torchrun send before killing a job) and Ctrl-C.

The handler only sets a flag; the training loop checks it at the next step boundary, writes a
checkpoint and exits. Whatever handler was installed before (e.g. submitit's requeue handler) is
called afterwards, so cluster launchers keep working. Ctrl-C (SIGINT) does the same, once; a second
Ctrl-C stops at once (:class:`Interrupted`, which the CLI turns into one line), without a checkpoint.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from collections.abc import Iterator
from types import FrameType
from typing import Any

__all__ = ["Interrupted", "PreemptionGuard", "held"]

DEFAULT_SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)


class Interrupted(KeyboardInterrupt):
    """A second Ctrl-C while the first one's checkpoint was pending: stop now."""


class PreemptionGuard:
    def __init__(self, signals: tuple[signal.Signals, ...] = DEFAULT_SIGNALS) -> None:
        self.signals = signals
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}
        self._chain_to: dict[int, Any] = {}  # kept after exit: chain() runs once our handler is gone
        self._protected = False
        self._interrupt_pending = False
        self._pid = os.getpid()

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if os.getpid() != self._pid:
            return  # a DataLoader worker forked before its init set SIGINT aside: the main process acts
        if signum == signal.SIGINT and self.signum == signal.SIGINT:
            # Pending too when raised: an exception raised where Python swallows it (an at-fork hook,
            # a __del__) must still stop the run, at the next checkpoint write at the latest.
            self._interrupt_pending = True
            if not self._protected:  # else raised when the write in progress is complete
                raise Interrupted
            return
        first = self.signum is None
        self.signum = self.signum or signum  # before the write: a second signal may run its handler
        if signum == signal.SIGINT and first:  # as soon as the write returns
            # os.write, not print: a handler that prints while tqdm is printing would fail (reentrant)
            os.write(2, b"\nCtrl-C: stopping after this step with a checkpoint; Ctrl-C again stops at once\n")

    def __enter__(self) -> PreemptionGuard:
        self._pid = os.getpid()
        if threading.current_thread() is threading.main_thread():  # signals can only be set there
            for s in self.signals:
                self._previous[s] = signal.signal(s, self._handle)
            self._unraisable = sys.unraisablehook
            sys.unraisablehook = self._quiet_interrupt
        return self

    def _quiet_interrupt(self, unraisable: Any) -> None:
        """A second Ctrl-C that lands where Python cannot raise it (a ``__del__``, an at-fork hook)
        is not an error to print: it is pending, and raised at the next checkpoint write."""
        if not isinstance(unraisable.exc_value, KeyboardInterrupt):
            self._unraisable(unraisable)

    def __exit__(self, *exc: object) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        if self._previous:
            sys.unraisablehook = self._unraisable
        self._chain_to = dict(self._previous)
        self._previous.clear()

    @contextlib.contextmanager
    def protect(self) -> Iterator[None]:
        """Hold a second Ctrl-C until the block ends: a checkpoint being written completes (an
        interrupt inside torch.save would surface as torch's own "unexpected pos" error)."""
        self._protected = True
        try:
            yield
        finally:
            self._protected = False
        if self._interrupt_pending:
            self._interrupt_pending = False
            raise Interrupted

    def chain(self) -> None:
        """Call the handler that was installed before ours (e.g. submitit's save-and-requeue).

        Call it after the checkpoint is written; it works inside or after the ``with`` block.
        """
        handlers = self._previous or self._chain_to
        previous = handlers.get(self.signum) if self.signum is not None else None
        if callable(previous) and previous is not signal.default_int_handler:  # that would raise
            previous(self.signum, None)

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name if self.signum is not None else ""


def held(guard: PreemptionGuard | None) -> contextlib.AbstractContextManager[None]:
    """``guard.protect()``, or nothing when there is no guard (evaluation, tests, other ranks)."""
    return guard.protect() if guard is not None else contextlib.nullcontext()
