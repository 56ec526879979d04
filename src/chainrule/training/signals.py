"""SIGINT / SIGTERM during training: finish the step, save, say so, stop.

:class:`StopSignals` is a context manager that :meth:`Trainer.fit
<chainrule.training.trainer.Trainer.fit>` trains inside: it catches SIGINT and SIGTERM (in the main
thread only; the previous handlers are restored on exit), and the loop asks :meth:`StopSignals.pending`
after every step whether to stop. The trainer then writes ``last/`` and calls :meth:`StopSignals.stop`,
which prints one line saying what was saved and how to resume, and raises :class:`TrainingInterrupted`
(a ``KeyboardInterrupt``; the CLI exits with 128 + the signal number). A second signal stops at once.

Under DDP (``torchrun``, which forwards SIGINT / SIGTERM to the ranks) the ranks agree on the step to
stop after (any rank's signal counts), and a rank whose torchrun launcher is gone — killed with
SIGKILL, say, which torchrun cannot forward — counts as having received SIGTERM, rather than train on
as an orphan that a ``--resume`` would race for the run directory.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from types import TracebackType
from typing import Any, NoReturn

import torch
from tqdm.auto import tqdm

from chainrule.training import distributed as dist_utils

log = logging.getLogger("chainrule.training.trainer")  # the trainer's messages, under the trainer's name


class TrainingInterrupted(KeyboardInterrupt):
    """Raised by :meth:`Trainer.fit` after SIGINT / SIGTERM, once the current step is done and
    ``last/`` is written. ``signum``: the signal; ``exit_code``: 128 + it (130, 143)."""

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message)
        self.message, self.signum, self.exit_code = message, signum, 128 + signum

    def __str__(self) -> str:
        return self.message


class StopSignals:
    """While entered: SIGINT / SIGTERM are recorded (not raised) for :meth:`pending` to report.

    ``world_size``: the ranks training together (> 1: the ranks agree on a signal, and under
    torchrun the launcher is watched); ``is_main``: this process prints the stop line."""

    def __init__(self, world_size: int = 1, is_main: bool = True) -> None:
        self.world_size, self.is_main = world_size, is_main
        self.received: int | None = None  # the signal received while entered
        self.launcher: int | None = None  # under torchrun: the launcher's pid, watched while entered
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopSignals:
        self.received = None
        # torchrun's agent sets TORCHELASTIC_RUN_ID; a rank whose parent changes has lost its launcher
        self.launcher = os.getppid() if self.world_size > 1 and "TORCHELASTIC_RUN_ID" in os.environ else None
        self._previous = {}
        if threading.current_thread() is not threading.main_thread():
            return self

        def handler(signum: int, frame: Any) -> None:
            if self.received is not None:
                raise KeyboardInterrupt
            self.received = signum

        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._previous[sig] = signal.signal(sig, handler)
            except (ValueError, OSError):  # not settable here
                pass
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        for sig, h in self._previous.items():
            signal.signal(sig, h if h is not None else signal.SIG_DFL)
        self._previous = {}

    def _launcher_gone(self) -> bool:
        return self.launcher is not None and os.getppid() != self.launcher

    def pending(self) -> int:
        """The signal received (0: none); under DDP agreed by every rank (a collective: every rank
        calls it at the same points). A rank whose torchrun launcher is gone counts as having
        received SIGTERM."""
        if self.received is None and self._launcher_gone():
            self.received = signal.SIGTERM
            log.warning("the torchrun launcher (pid %d) is gone: stopping as on SIGTERM", self.launcher)
        sig = self.received or 0
        if self.world_size > 1:
            flags = torch.tensor([float(sig == signal.SIGINT), float(sig == signal.SIGTERM)], dtype=torch.float64)
            flags = dist_utils.all_reduce_sum(flags)
            sig = int(signal.SIGTERM) if flags[1] > 0 else int(signal.SIGINT) if flags[0] > 0 else 0
        return int(sig)

    def stop(self, signum: int, step: int, saved: str | None) -> NoReturn:
        """Stop after ``signum`` at optimizer step ``step``, with ``saved`` (what was written and
        where: "RUN/last (after epoch 3)"; None: nothing): one line on stderr (rank 0), then
        :class:`TrainingInterrupted`."""
        name = signal.Signals(signum).name
        if self._launcher_gone():
            name = f"the torchrun launcher (pid {self.launcher}) is gone"
        if saved is not None:
            msg = (f"chainrule: {name}: stopped after step {step}; saved {saved}; "
                   f"continue with the same command and --resume (fit(..., resume=True))")
        else:
            msg = f"chainrule: {name}: stopped after step {step}; nothing saved (no out_dir or save_last=False)"
        if self.is_main:
            tqdm.write(msg, file=sys.stderr)  # above the progress bars, not glued onto them
            sys.stderr.flush()
        raise TrainingInterrupted(msg, signum)
