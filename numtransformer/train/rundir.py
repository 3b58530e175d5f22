"""The run directory: where a run keeps its checkpoint, and the lock that keeps
a second run out of it.

    lock = claim(out_dir, fresh=True)   # refuses a directory in use, or one that
    ...                                 # already holds a run (fresh)
    lock.release()
"""

from __future__ import annotations

import os

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: _Lock falls back to a pid file
    fcntl = None

from .errors import TrainingError

__all__ = ["CHECKPOINT", "claim"]

CHECKPOINT = "checkpoint.npz"


def claim(out_dir: str, fresh: bool) -> "_Lock":
    """Create ``out_dir`` if needed and lock it for this run.  ``fresh``: refuse a
    directory that already holds a checkpoint (resuming one passes False).
    Temp files left by a save cut short are removed."""
    os.makedirs(out_dir, exist_ok=True)
    lock = _Lock(out_dir).acquire()
    if fresh and os.path.exists(os.path.join(out_dir, CHECKPOINT)):
        lock.release()
        raise TrainingError(f"{out_dir!r} already holds a checkpoint; pass --resume to "
                            f"continue it or choose another --out")
    # A save cut short (the process killed mid-write) leaves its temp file; with the
    # lock held no other run can be writing one, so they are all garbage.
    for name in os.listdir(out_dir):
        if name.startswith(".ckpt-") and name.endswith(".tmp"):
            try:
                os.unlink(os.path.join(out_dir, name))
            except OSError:
                pass
    return lock


class _Lock:
    """An exclusive lock file in the output directory: a second run pointed at
    the same directory refuses to start instead of corrupting the first.

    Where ``fcntl`` exists (POSIX) the lock is an ``flock`` on ``.lock``, which
    the kernel drops when its process ends, however it ends (SIGKILL too): a
    dead run's lock is free at once, and two runs that start together cannot
    both win.  (Taking over a "stale" pid file is check-then-act: two runs that
    both find it stale both took it.)  The file is never removed, only
    unlocked: removed, a run that had just opened it would lock the unlinked
    file while the next run locks a new one.  Without ``fcntl``: an O_EXCL file
    holding the pid, taken over when that pid is gone."""

    def __init__(self, directory: str):
        self.path = os.path.join(directory, ".lock")
        self.fd = None

    def acquire(self):
        if fcntl is not None:
            fd = os.open(self.path, os.O_CREAT | os.O_RDWR, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:  # BlockingIOError: another run holds it
                try:
                    pid = int(os.read(fd, 32).decode().strip() or 0)
                except (OSError, ValueError):
                    pid = 0
                os.close(fd)
                raise TrainingError(f"output directory {os.path.dirname(self.path)!r} is in "
                                    f"use by another run" + (f" (pid {pid})" if pid else ""))
            os.ftruncate(fd, 0)
            os.write(fd, str(os.getpid()).encode())
            self.fd = fd
            return self
        for _ in range(2):
            try:
                self.fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
                os.write(self.fd, str(os.getpid()).encode())
                return self
            except FileExistsError:
                try:
                    pid = int(open(self.path).read().strip() or 0)
                except (OSError, ValueError):
                    pid = 0
                if pid and _alive(pid):
                    raise TrainingError(f"output directory {os.path.dirname(self.path)!r} is "
                                        f"in use by another run (pid {pid})") from None
                os.unlink(self.path)  # stale: its process is gone
        raise TrainingError(f"could not lock {self.path!r}")

    def release(self):
        if self.fd is not None:
            if fcntl is not None:
                os.ftruncate(self.fd, 0)
                os.close(self.fd)  # (closing drops the flock)
                self.fd = None
                return
            os.close(self.fd)
            self.fd = None
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
