"""The one policy of every file chainrule writes for a user (``compress``, ``decompress``,
``sample --out``, ``score --out``, ``inspect --out``, ...):

- an output that already exists is refused unless the caller allows replacing it (``--force`` on
  the command line; one spelling for every command);
- an output that is a directory is refused (nothing is ever written beside it under another name);
- an output is never one of the command's input files (compared by resolved path and by
  ``os.path.samefile``, so links and ``./`` spellings are caught), and never inside a checkpoint
  directory (``best/``, ``last/``, ``checkpoints/step-N/`` or any directory holding a chainrule
  ``config.json`` + ``model.safetensors``): a command can never destroy the model it reads;
- the file is written to a temporary file in the same directory and renamed into place, so an
  interrupted or failed write (a full disk, a read-only file system) leaves the old state, never a
  half-written file; the new file gets the mode the umask gives (as ``open`` would), not the 0600
  of :func:`tempfile.mkstemp`.

:func:`check_output` checks a path before any work is done (so a refusal costs nothing);
:func:`output_file` then writes it.
"""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path

from chainrule.errors import InputError

#: Directory names inside a run directory that hold checkpoints (never written into by a command).
CHECKPOINT_DIR_NAMES = ("best", "last", "last.tmp", "last.old", "checkpoints")

_umask_lock = threading.Lock()


def umask_mode(base: int = 0o666) -> int:
    """``base`` with the process umask applied: the mode ``open(path, "w")`` would give a new file."""
    with _umask_lock:
        mask = os.umask(0)
        os.umask(mask)
    return base & ~mask


def _is_checkpoint_dir(d: Path) -> bool:
    return (d / "config.json").is_file() and (d / "model.safetensors").is_file()


def _in_checkpoint(path: Path) -> Path | None:
    """The checkpoint directory ``path`` lies in (or is), else None."""
    for d in [path, *path.parents]:
        try:
            if d.is_dir() and _is_checkpoint_dir(d):
                return d
            if d.name in CHECKPOINT_DIR_NAMES and d.parent.is_dir() and (
                    (d.parent / "log.csv").is_file() or any(_is_checkpoint_dir(d.parent / n)
                                                            for n in ("best", "last"))):
                return d  # a run directory's checkpoint folder (even before its files exist)
        except OSError:  # a path component we cannot stat: nothing to protect there
            continue
    return None


def _same(a: Path, b: Path) -> bool:
    try:
        if a.resolve() == b.resolve():
            return True
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


def check_output(path: str | Path, *, force: bool = False, inputs: Iterable[str | Path] = (),
                 option: str = "output") -> Path:
    """``path`` checked as an output a command may write (module docstring: the policy); writes
    nothing. ``force``: an existing file may be replaced. ``inputs``: the files (or directories)
    the command reads, which the output must not be or lie in. ``option`` names the argument in
    errors (``--out``, ``OUTPUT``)."""
    path = Path(path)
    where = f"{option} {path}"
    for src in inputs:
        src = Path(src)
        if _same(path, src):
            raise InputError(f"{where} is the input {src}: the output would destroy it; write to another file")
        if src.is_dir():
            try:
                path.resolve().relative_to(src.resolve())
            except ValueError:
                pass
            else:
                if _in_checkpoint(src) is not None or src.name in CHECKPOINT_DIR_NAMES:
                    raise InputError(f"{where} is inside the input {src}; write to another place")
    ckpt = _in_checkpoint(path.resolve() if path.exists() or path.parent.exists() else path)
    if ckpt is not None:
        raise InputError(f"{where} is inside the checkpoint directory {ckpt}: a command never writes there "
                         "(it would damage the model); write to another place")
    if path.is_dir():
        raise InputError(f"{where} is a directory; give a file name")
    if path.exists() or path.is_symlink():
        if not path.is_file():
            raise InputError(f"{where} exists and is not a regular file; give another name")
        if not force:
            raise InputError(f"{where} already exists: pass --force to replace it (or give another name)")
    parent = path.parent
    for d in [parent, *parent.parents]:
        if d.exists():
            if not d.is_dir():
                raise InputError(f"{where}: {d} is a file, not a directory")
            break
    return path


@contextlib.contextmanager
def output_file(path: str | Path, *, force: bool = True) -> Iterator[Path]:
    """Write ``path`` atomically: yields a temporary path in the same directory, with the same
    suffix (so writers that go by the extension, e.g. PIL or matplotlib, pick the same format);
    once the body has written it, it is given the umask's mode and renamed to ``path``. On any
    error (or an interrupt) the temporary file is removed and ``path`` is untouched. ``force=False``
    never replaces a file that appeared meanwhile (the rename is a hard link, which fails on an
    existing name). Errors of the file system (full disk, read-only) become one-line
    :class:`InputError`\\ s naming the path."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=f".tmp{path.suffix}")
        os.close(fd)
    except OSError as exc:
        raise InputError(f"cannot write {path}: {_reason(exc)}") from None
    tmp = Path(tmp_name)
    try:
        yield tmp
        os.chmod(tmp, umask_mode())
        if force:
            os.replace(tmp, path)
        else:
            try:
                os.link(tmp, path)
            except FileExistsError:
                raise InputError(f"{path} already exists: pass --force to replace it (or give another name)") from None
            except OSError as exc:
                if exc.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.EXDEV, errno.EMLINK, errno.ENOSYS):
                    raise
                if path.exists():  # no hard links on this file system: checked, then renamed
                    raise InputError(f"{path} already exists: pass --force to replace it") from None
                os.replace(tmp, path)
            else:
                tmp.unlink()
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise InputError(f"cannot write {path}: {_reason(exc)}") from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _reason(exc: OSError) -> str:
    """An OSError's reason without its repeated file name: 'No space left on device (ENOSPC)'."""
    name = errno.errorcode.get(exc.errno or 0)
    text = exc.strerror or str(exc)
    return f"{text} ({name})" if name else text
