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
import threading
from collections.abc import Iterator
from types import FrameType
from typing import Any

__all__ = ["Interrupted", "PreemptionGuard"]

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

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if signum == signal.SIGINT and self.signum == signal.SIGINT:
            if self._protected:
                self._interrupt_pending = True  # raised when the write in progress is complete
                return
            raise Interrupted
        if signum == signal.SIGINT:
            # os.write, not print: a handler that prints while tqdm is printing would fail (reentrant)
            os.write(2, b"\nCtrl-C: stopping after this step with a checkpoint; Ctrl-C again stops at once\n")
        self.signum = self.signum or signum

    def __enter__(self) -> PreemptionGuard:
        if threading.current_thread() is threading.main_thread():  # signals can only be set there
            for s in self.signals:
                self._previous[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
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
