"""The lock of a run directory: one process trains in it at a time.

``RUN/.lock`` holds the PID of the process that trains there. It is held with ``flock`` (an
advisory lock the kernel drops when the process ends, however it ends), so a lock file left by a
killed process is simply taken over; a second ``chainrule train`` into the same directory gets a
one-line error naming the holder's PID. Where ``fcntl`` does not exist (Windows) the file is
created exclusively and a lock whose PID is no longer running is taken over.
"""

from __future__ import annotations

import os
from pathlib import Path
from types import TracebackType

from chainrule.errors import InputError

LOCK_FILE = ".lock"

try:
    import fcntl
except ImportError:  # pragma: no cover - not on Linux / macOS
    fcntl = None  # type: ignore[assignment]


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True
    return True


def _read_pid(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
        return int(text.split()[0]) if text else None
    except (OSError, ValueError, IndexError):
        return None


def lock_holder(directory: str | Path) -> int | None:
    """The PID of the live process that holds ``directory``'s lock, else None (writes nothing)."""
    path = Path(directory) / LOCK_FILE
    if not path.is_file():
        return None
    if fcntl is None:
        pid = _read_pid(path)
        return pid if pid is not None and pid != os.getpid() and _pid_alive(pid) else None
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        pid = _read_pid(path)
        return None if pid == os.getpid() else (pid or -1)  # our own lock is no other holder
    except OSError:
        return None
    finally:
        os.close(fd)  # closing drops the shared lock taken to test
    return None


class RunLock:
    """``with RunLock(directory):`` — hold ``directory``'s lock (the directory is created if needed);
    :class:`InputError` naming the holder's PID when another live process holds it. Released (the
    file removed) on exit, also on an error."""

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        self.path = self.directory / LOCK_FILE
        self._fd: int | None = None

    def _busy(self, pid: int | None) -> InputError:
        who = f"PID {pid}" if pid and pid > 0 else "another process"
        return InputError(f"{self.directory} is in use: {who} is training in it (lock {self.path}); wait for it to "
                          "finish or stop it, or give another --out")

    def acquire(self) -> RunLock:
        self.directory.mkdir(parents=True, exist_ok=True)
        if fcntl is None:  # pragma: no cover
            return self._acquire_exclusive()
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise self._busy(_read_pid(self.path)) from None
            # the holder may have removed the file between our open and our lock: lock the current one
            try:
                same = os.path.samestat(os.fstat(fd), os.stat(self.path))
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd
        return self

    def _acquire_exclusive(self) -> RunLock:  # pragma: no cover - the fallback without fcntl
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o666)
            except FileExistsError:
                pid = _read_pid(self.path)
                if pid is not None and _pid_alive(pid):
                    raise self._busy(pid) from None
                self.path.unlink(missing_ok=True)  # a stale lock of a process that is gone
                continue
            os.write(fd, f"{os.getpid()}\n".encode())
            self._fd = fd
            return self
        raise self._busy(_read_pid(self.path))

    def release(self) -> None:
        if self._fd is None:
            return
        try:
            self.path.unlink(missing_ok=True)  # before closing: nobody can lock the file we remove
        except OSError:
            pass
        os.close(self._fd)
        self._fd = None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.release()
