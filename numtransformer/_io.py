"""The command line's files: reading inputs (a path, or ``-`` for standard input)
with errors that name the file and the line, and checking output paths before
any work is done.

    lines = read_lines("inputs.txt", "--input-file")   # or "-": standard input
    check_output_file("plots/att.png", "--attention", formats=("png", "pdf", "svg"))
    with atomic_write("run/corpus.tsv", prefix=".data-") as (f, tmp):
        f.write(content)                   # all or nothing: temp file + fsync + rename

Every problem is a ``UserError`` (``numtransformer.train.errors``, a
``ValueError``): the command line prints it as one line and exits with status 2.
This module imports nothing of the package at import time, so the data loaders
(below ``train``) may use ``read_text`` / ``decode_text`` too, and the
checkpoint, run-directory and safetensors writers share ``atomic_write``.
"""

from __future__ import annotations

import codecs
import os
import sys
import tempfile


def _error(message: str) -> Exception:
    """A ``UserError`` (imported when needed: the data loaders sit below ``train``)."""
    from .train.errors import UserError

    return UserError(message)

__all__ = ["STDIN", "source_name", "read_lines", "read_text", "decode_text",
           "check_output_file", "atomic_write"]

STDIN = "-"  # the path that means standard input


def source_name(path: str) -> str:
    """How messages name ``path``: ``standard input`` for ``-``, else the path."""
    return "standard input" if path == STDIN else path


def _read_bytes(path: str, flag: str) -> bytes:
    if path == STDIN:
        stream = sys.stdin
        if stream is None:
            raise _error(f"{flag} -: there is no standard input to read")
        buffer = getattr(stream, "buffer", None)
        if buffer is not None:
            return buffer.read()
        return stream.read().encode("utf-8")  # a text stream (tests, embedding programs)
    if not os.path.exists(path):
        raise _error(f"{flag}: no such file: {path!r}")
    if os.path.isdir(path):
        raise _error(f"{flag}: {path!r} is a directory, not a file")
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as exc:
        raise _error(f"{flag}: cannot read {path!r}: {exc.strerror or exc}") from None


def decode_text(data: bytes, name: str) -> str:
    """``data`` as UTF-8 text (a leading byte-order mark dropped); a byte that is not
    UTF-8 is a ``UserError`` naming ``name``, the line and the byte."""
    start = len(codecs.BOM_UTF8) if data.startswith(codecs.BOM_UTF8) else 0
    try:
        return data[start:].decode("utf-8")
    except UnicodeDecodeError as exc:
        at = start + exc.start
        line = data.count(b"\n", 0, at) + 1
        column = at - (data.rfind(b"\n", 0, at) + 1) + 1
        raise _error(f"{name}, line {line}: not UTF-8 text (byte 0x{data[at]:02x} at byte "
                        f"{column} of the line); save the file as UTF-8") from None


def read_text(path: str, flag: str = "input") -> str:
    """The whole of ``path`` (``-``: standard input) as UTF-8 text."""
    return decode_text(_read_bytes(path, flag), source_name(path))


def read_lines(path: str, flag: str = "--input-file") -> list[str]:
    """The lines of ``path`` (``-``: standard input), without their line ends
    (``\\n`` or ``\\r\\n``).  Lines are split at ``\\n`` only, so line N is what an
    editor shows as line N; a last line without a line end counts."""
    text = read_text(path, flag)
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()  # the end of the last line, not a line of its own
    return [line[:-1] if line.endswith("\r") else line for line in lines]


def check_output_file(path: str, flag: str, formats=None) -> str:
    """Refuse, before any work, an output ``path`` that could not be written: a
    directory, a parent directory that does not exist or is not writable, a file
    that cannot be overwritten, or (with ``formats``, suffixes without the dot) a
    suffix not among them.  Returns ``path``."""
    if not path:
        raise _error(f"{flag}: the file name is empty")
    if path.endswith(("/", os.sep)) or os.path.isdir(path):
        raise _error(f"{flag} {path}: is a directory; give a file name in it")
    parent = os.path.dirname(path)
    shown = parent or "."
    if not os.path.isdir(parent or "."):
        raise _error(f"{flag} {path}: the directory {shown!r} does not exist")
    if not os.access(parent or ".", os.W_OK | os.X_OK):
        raise _error(f"{flag} {path}: the directory {shown!r} is not writable")
    if os.path.exists(path) and not os.access(path, os.W_OK):
        raise _error(f"{flag} {path}: the file exists and is not writable")
    if formats is not None:
        suffix = os.path.splitext(path)[1].lower().lstrip(".")
        allowed = ", ".join("." + f for f in formats)
        if not suffix:
            raise _error(f"{flag} {path}: no suffix to say the format; use one of {allowed}")
        if suffix not in formats:
            raise _error(f"{flag} {path}: cannot write .{suffix} files; use one of {allowed}")
    return path


class atomic_write:
    """Write the file at ``path`` all or nothing::

        with atomic_write(path, prefix=".ckpt-", suffix=".tmp", check=check) as (f, tmp):
            f.write(data)           # f: a binary file open on the temporary file tmp

    Guarantees:

    - The bytes go to a new temporary file (``tempfile.mkstemp``: mode 0600,
      named ``prefix...suffix``) in ``path``'s own directory, so the rename
      below never crosses a filesystem.  ``path`` is not touched before the rename.
    - When the block ends normally the file is flushed, ``os.fsync``-ed and
      closed; then ``check(tmp)``, if given, may read the complete temporary
      file and raise to refuse it; only then ``os.replace(tmp, path)`` puts it
      in place in one atomic step (POSIX): a reader, or a process killed at any
      moment, sees the old file or the new one, never a torn one.
    - After the rename the directory is fsync-ed so that the rename itself is
      durable; that is best effort (an ``OSError`` there is ignored: some
      filesystems refuse it) and the new file is in place either way.
    - On any exception, raised in the block (``ValueError``, ``KeyboardInterrupt``,
      an ``OSError`` such as ENOSPC from a write), by the flush, fsync, check or
      the rename, the temporary file is closed and removed, ``path`` keeps its
      old content (or stays absent), and the exception propagates unchanged:
      nothing is wrapped, and a failure of the clean-up itself is ignored.

    ``stage`` says how far the write got, so a caller can word its own error
    for an exception: ``"create"`` (making the temporary file), ``"write"``
    (the block, the flush, the fsync), ``"check"``, ``"replace"``, then
    ``"done"``.  One object serves one ``with``.
    """

    def __init__(self, path, *, prefix: str = ".tmp-", suffix: str = ".tmp", check=None):
        self.path = path
        self.directory = os.path.dirname(os.path.abspath(path))
        self.prefix, self.suffix, self.check = prefix, suffix, check
        self.tmp = None
        self.stage = "create"
        self._file = None

    def __enter__(self):
        fd, self.tmp = tempfile.mkstemp(dir=self.directory, prefix=self.prefix,
                                        suffix=self.suffix)
        try:
            self._file = os.fdopen(fd, "wb")
        except BaseException:
            os.close(fd)
            self._discard()
            raise
        self.stage = "write"
        return self._file, self.tmp

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc_type is not None:
            self._discard()
            return False  # the block's exception goes on as it was
        try:
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
            if self.check is not None:
                self.stage = "check"
                self.check(self.tmp)
            self.stage = "replace"
            os.replace(self.tmp, self.path)
        except BaseException:
            self._discard()
            raise
        self.stage = "done"
        _fsync_directory(self.directory)
        return False

    def _discard(self) -> None:
        """Close and remove the temporary file, quietly: the caller's exception matters."""
        try:
            if self._file is not None:
                self._file.close()
        except Exception:  # e.g. ENOSPC again while flushing what was buffered
            pass
        try:
            os.unlink(self.tmp)
        except OSError:  # already gone (renamed just before an interrupt), or not ours to remove
            pass


def _fsync_directory(directory: str) -> None:
    """Make a rename in ``directory`` durable; best effort."""
    try:
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:  # pragma: no cover - some filesystems refuse directory fsync
        pass
