"""The run directory: what a run writes in it, the checks before a run may train there, its lock,
and the replacement of a previous run (``--force``) such that nothing is lost.

A *run directory* holds ``best/`` (the best model: safetensors + JSON, including which dataset it
was trained on), ``last/`` (for resuming), ``log.csv``, ``results.json``, ``curve.png``, the
samples and ``config.toml``. :func:`claim_run_dir` is how a training run
(:func:`chainrule.apps.pipeline.train_run`) takes one: every check made once, under the lock.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from collections.abc import Callable, Iterator
from pathlib import Path

from chainrule.data.registry import CODES_DIR
from chainrule.errors import CheckpointError, InputError
from chainrule.io.checkpoint import CONFIG_FILE, read_config
from chainrule.io.run_state import complete_checkpoint

log = logging.getLogger(__name__)

#: The quick start's own directory: a previous run there is replaced without asking (``--force``
#: only for a run that ``chainrule quickstart`` did not write, elsewhere).
QUICKSTART_OUT = "runs/quickstart"


def checkpoint_dir(run: str | Path) -> Path:
    """Accept either a run directory (with ``best/``) or a checkpoint directory itself."""
    run = Path(run)
    if (run / "best" / CONFIG_FILE).is_file():
        return run / "best"
    return run


#: What a run directory holds that chainrule wrote (``--force`` removes these, and only these).
RUN_DIRS = ("best", "last", "last.tmp", "last.old", "checkpoints", "tensorboard", CODES_DIR)
RUN_FILES = ("log.csv", "curve.png", "results.json", "config.toml", "reconstructions.png")
SAMPLE_SUFFIXES = (".png", ".jpg", ".jpeg", ".npy", ".txt", ".wav")


def run_files(out: str | Path) -> list[Path]:
    """The entries of ``out`` that a previous run wrote: ``best/``, ``last/`` (and its ``.tmp`` /
    ``.old`` while being swapped), ``log.csv``, ``curve.png``, ``results.json``, ``samples.*``; a
    VQ-VAE run's ``codes/`` and ``reconstructions.png``."""
    out = Path(out)
    if not out.is_dir():
        return []
    found = [out / d for d in RUN_DIRS if (out / d).is_dir() or (out / d).is_symlink()]
    found += [out / f for f in RUN_FILES if (out / f).is_file()]
    found += sorted(p for p in out.glob("samples.*") if p.suffix.lower() in SAMPLE_SUFFIXES and p.is_file())
    return found


#: Where ``--force`` moves the run it replaces until the new run has written its first checkpoint.
REPLACED_DIR = ".replaced"


def holds_run(out: str | Path) -> bool:
    """True when ``out`` holds a training run: a checkpoint (``best/``, or ``last/`` / ``last.old/`` /
    a complete ``last.tmp/`` of an interrupted write). A run killed before its first checkpoint (a
    ``log.csv`` and nothing else) holds nothing to keep: it is simply started again."""
    out = Path(out)
    return (any((out / d).is_dir() for d in ("best", "last", "last.old"))
            or complete_checkpoint(out / "last.tmp"))


def started_run(out: str | Path) -> bool:
    """True when ``out`` shows a run was started there (``log.csv``, ``tensorboard/``, a lock file)."""
    from chainrule.io.lock import LOCK_FILE

    out = Path(out)
    return any((out / f).exists() for f in ("log.csv", "tensorboard", LOCK_FILE, "last.tmp"))


def check_run_path(out: str | Path, resume: bool = False, force: bool = False) -> None:
    """The checks of a run directory that need no lock: ``resume`` and ``force`` together, ``out`` a
    file, ``out`` inside a checkpoint directory. Writes nothing."""
    from chainrule.io.outputs import _in_checkpoint

    out = Path(out)
    if resume and force:
        raise InputError("--resume continues the run in the directory and --force replaces it: pass one of them")
    if out.exists() and not out.is_dir():
        raise InputError(f"{out} is a file, not a run directory: give a directory for the run")
    ckpt = _in_checkpoint(out.resolve())
    if ckpt is not None:
        raise InputError(f"{out} is inside the checkpoint directory {ckpt}: give a run directory of its own")


def check_run_state(out: str | Path, resume: bool = False, force: bool = False) -> None:
    """What ``out`` holds: a run is refused unless ``resume`` (continue it) or ``force`` (replace it,
    once the new run has its first checkpoint). Writes nothing; :func:`claim_run_dir` calls it under
    the directory's lock, so that no other process can start a run there between check and use."""
    if not resume and not force and holds_run(out):
        raise InputError(f"{out} already holds a run: pass --resume to continue it or --force to replace it")


def check_run_dir(out: str | Path, resume: bool = False, force: bool = False, check_lock: bool = True) -> None:
    """Refuse to train into ``out`` when it already holds a run, unless ``resume`` (continue it) or
    ``force`` (replace it, once the new run has its first checkpoint), or while another process
    trains in it (its lock; ``check_lock=False`` to leave the lock out). Writes nothing: the check
    of a command that writes a run without training it (``chainrule compose``); a training run
    claims its directory with :func:`claim_run_dir`."""
    from chainrule.io.lock import lock_holder

    check_run_path(out, resume, force)
    holder = lock_holder(out) if check_lock else None
    if holder is not None:
        who = f"PID {holder}" if holder > 0 else "another process"
        raise InputError(f"{out} is in use: {who} is training in it; wait for it to finish or stop it, or give "
                         "another --out")
    check_run_state(out, resume, force)


class RunReplacement:
    """What a (non-resumed) run does to the directory it trains in, so that nothing is lost:

    - ``begin``: with ``force``, the previous run's files (:func:`run_files`) are moved into
      ``RUN/.replaced/`` (renames: nothing is deleted);
    - ``commit`` (the trainer's first checkpoint): ``.replaced/`` is removed;
    - ``rollback`` (the new run failed before its first checkpoint: NaN loss, full disk, an
      interrupt): what the new run wrote is removed and the previous run moved back; a directory
      the run created is removed again when it is left empty.

    A process killed between ``begin`` and ``commit`` leaves ``.replaced/``: :func:`finish_replacement`
    completes or undoes it the next time a run starts there."""

    def __init__(self, out: Path, force: bool, created: bool) -> None:
        self.out, self.force, self.created = out, force, created
        self.saved = out / REPLACED_DIR
        self.committed = False

    def begin(self, report: Callable[[str], None] | None = None) -> list[Path]:
        """Move the previous run aside (with ``force``); ``report`` is told what was moved."""
        moved = run_files(self.out) if self.force else []
        if moved:
            self.saved.mkdir()
            done = []
            try:
                for p in moved:
                    p.rename(self.saved / p.name)
                    done.append(p)
            except BaseException:  # a rename refused half-way: everything back where it was
                for p in done:
                    (self.saved / p.name).rename(p)
                self.saved.rmdir()
                raise
        if moved and report is not None:
            report(f"replacing the previous run in {self.out} ({', '.join(p.name for p in moved)}): removed once "
                   "this run has written its first checkpoint")
        return moved

    def commit(self) -> None:
        if self.committed:
            return
        self.committed = True
        if self.saved.is_dir():
            import shutil

            shutil.rmtree(self.saved)

    def rollback(self) -> None:
        if self.committed:
            return
        _undo_replacement(self.out)
        if self.created:
            from chainrule.io.lock import LOCK_FILE

            leftovers = [p for p in self.out.iterdir() if p.name != LOCK_FILE] if self.out.is_dir() else []
            if not leftovers:
                (self.out / LOCK_FILE).unlink(missing_ok=True)
                self.out.rmdir()

    @contextlib.contextmanager
    def writing(self) -> Iterator[None]:
        """The new run's work: rolled back if it raises (anything, an interrupt too), committed
        when it returns (if its first checkpoint has not committed already)."""
        try:
            yield
        except BaseException:
            self.rollback()
            raise
        self.commit()


def replacing(replacement: RunReplacement | None) -> contextlib.AbstractContextManager[None]:
    """:meth:`RunReplacement.writing`, or nothing to guard (a resumed run, a rank other than 0)."""
    return contextlib.nullcontext() if replacement is None else replacement.writing()


def _undo_replacement(out: Path) -> None:
    """Remove what a run that never wrote a checkpoint left in ``out`` and move the run it was
    replacing (``.replaced/``) back."""
    for p in run_files(out):
        clear = p.is_symlink() or p.is_file()
        if clear:
            p.unlink()
        else:
            import shutil

            shutil.rmtree(p)
    saved = out / REPLACED_DIR
    if saved.is_dir():
        for p in saved.iterdir():
            p.rename(out / p.name)
        saved.rmdir()


def finish_replacement(out: str | Path, report: Callable[[str], None] = log.info) -> None:
    """A ``--force`` run killed before :class:`RunReplacement` could commit or roll back left
    ``RUN/.replaced/``: when the new run had written a checkpoint, the replaced run is removed;
    otherwise the new run's traces go and the replaced run comes back."""
    out = Path(out)
    saved = out / REPLACED_DIR
    if not saved.is_dir():
        return
    if holds_run(out):
        import shutil

        shutil.rmtree(saved)
        report(f"{out}: removed the run replaced by the previous --force run (which had written its checkpoint)")
    else:
        _undo_replacement(out)
        report(f"{out}: the previous --force run was stopped before its first checkpoint; the run it was "
               "replacing is back")


def clear_run_dir(out: str | Path) -> list[Path]:
    """Remove what a previous run wrote in ``out`` (:func:`run_files`); every other file stays.
    Returns the removed paths."""
    import shutil

    removed = run_files(out)
    for p in removed:
        if p.is_symlink() or p.is_file():
            p.unlink()
        else:
            shutil.rmtree(p)
    return removed


def is_quickstart_run(out: str | Path) -> bool:
    """True when the run in ``out`` was written by ``chainrule quickstart`` (marked in its config)."""
    for sub in ("best", "last"):
        try:
            if read_config(Path(out) / sub).get("extra", {}).get("quickstart"):
                return True
        except CheckpointError:  # no checkpoint there, or a damaged one: not quickstart's
            continue
    return False


@dataclasses.dataclass(frozen=True)
class RunClaim:
    """A run directory a training run holds (:func:`claim_run_dir`): ``resume`` as it turned out (a
    run stopped before its first checkpoint has nothing to resume: it starts again), ``force`` (the
    previous run is replaced), ``created`` (the directory did not exist before)."""

    out: Path
    resume: bool
    force: bool
    created: bool


@contextlib.contextmanager
def claim_run_dir(out: str | Path, resume: bool = False, force: bool = False,
                  report: Callable[[str], None] = log.info, quickstart: bool = False) -> Iterator[RunClaim]:
    """``with claim_run_dir(out, resume, force) as claim:`` — hold ``out``'s lock (one process trains
    in a run directory at a time) for the whole run, after checking it once: the path
    (:func:`check_run_path`) before the lock exists, a ``--force`` run killed before its first
    checkpoint finished (:func:`finish_replacement`), then what the directory holds
    (:func:`check_run_state`) under the lock. ``quickstart``: a run ``chainrule quickstart`` wrote
    there (:func:`is_quickstart_run`) is replaced as with ``force``. A directory the claim created is
    removed again when the run fails and leaves nothing in it."""
    from chainrule.io.lock import LOCK_FILE, RunLock

    out = Path(out)
    check_run_path(out, resume, force)
    created = not out.exists()
    was_started = started_run(out)  # before our own lock file exists
    with RunLock(out):
        try:
            finish_replacement(out, report)  # a --force run killed before its first checkpoint
            force = force or (quickstart and is_quickstart_run(out))
            check_run_state(out, resume, force)
            if resume and not holds_run(out) and was_started:  # killed before its first checkpoint
                report(f"{out}: the run was stopped before its first checkpoint: nothing to resume, starting it again")
                resume = False
            yield RunClaim(out, resume, force, created)
        except BaseException:
            if created and out.is_dir() and not any(p.name != LOCK_FILE for p in out.iterdir()):
                (out / LOCK_FILE).unlink(missing_ok=True)
                out.rmdir()
            raise
