"""``numtransformer._io.atomic_write``: the one temp-file + fsync + rename writer
behind checkpoints, run-directory data files and safetensors files."""

import errno
import os

import numpy as np
import pytest

from numtransformer._io import atomic_write

OLD = b"the previous file\n" * 100


def _enospc():
    return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


class _Full:
    """A file that takes ``left`` bytes and then fails as a full disk does."""

    def __init__(self, f, left):
        self._f, self._left = f, left

    def write(self, b):
        if len(b) > self._left:
            self._f.write(bytes(b)[: self._left])
            raise _enospc()
        self._left -= len(b)
        return self._f.write(b)


@pytest.fixture
def target(tmp_path):
    path = tmp_path / "out.bin"
    path.write_bytes(OLD)
    return path


def _untouched(path):
    assert path.read_bytes() == OLD
    assert os.listdir(path.parent) == [path.name], "a temporary file was left behind"


def test_success_replaces_the_target_in_one_rename_after_an_fsync(target, monkeypatch):
    events = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(os, "fsync", lambda fd: (events.append("fsync"), real_fsync(fd))[1])
    monkeypatch.setattr(os, "replace",
                        lambda a, b: (events.append(("replace", a, b)), real_replace(a, b))[1])
    writer = atomic_write(target, prefix=".x-", suffix=".part")
    with writer as (f, tmp):
        f.write(b"new ")
        f.write(b"content")
        assert target.read_bytes() == OLD  # nothing reaches the target before the rename
        name = os.path.basename(tmp)
        assert name.startswith(".x-") and name.endswith(".part")
        assert os.path.dirname(tmp) == str(target.parent)
    monkeypatch.undo()
    assert target.read_bytes() == b"new content"
    assert os.listdir(target.parent) == [target.name]
    # the file is fsync-ed before the one rename, the directory after it
    assert events == ["fsync", ("replace", tmp, target), "fsync"]
    assert writer.stage == "done"


def test_the_temporary_file_is_in_the_targets_directory_for_a_relative_path(tmp_path,
                                                                            monkeypatch):
    (tmp_path / "sub").mkdir()
    monkeypatch.chdir(tmp_path)
    with atomic_write(os.path.join("sub", "new.bin")) as (f, tmp):
        assert os.path.dirname(tmp) == str(tmp_path / "sub")
        f.write(b"x")
    assert (tmp_path / "sub" / "new.bin").read_bytes() == b"x"
    assert sorted(os.listdir(tmp_path / "sub")) == ["new.bin"]


def test_the_new_file_keeps_the_mode_mkstemp_gives(tmp_path):
    with atomic_write(tmp_path / "new.bin") as (f, _):
        f.write(b"x")
    assert os.stat(tmp_path / "new.bin").st_mode & 0o777 == 0o600


@pytest.mark.parametrize("error", [ValueError("bad value"), KeyboardInterrupt(), _enospc()],
                         ids=["ValueError", "KeyboardInterrupt", "ENOSPC"])
def test_an_exception_in_the_block_leaves_the_target_and_no_temporary(target, error):
    writer = atomic_write(target)
    with pytest.raises(type(error)) as info:
        with writer as (f, tmp):
            f.write(b"half of the new")
            f.flush()
            assert os.path.getsize(tmp) == len(b"half of the new")
            raise error
    assert info.value is error  # propagated unchanged, not wrapped
    assert writer.stage == "write"
    _untouched(target)


def test_a_full_disk_during_a_write_leaves_the_target_and_no_temporary(target):
    with pytest.raises(OSError) as info:
        with atomic_write(target) as (f, _):
            _Full(f, 1000).write(b"y" * 4096)
    assert info.value.errno == errno.ENOSPC and type(info.value) is OSError
    _untouched(target)


def test_a_full_disk_during_a_first_write_leaves_nothing(tmp_path):
    with pytest.raises(OSError):
        with atomic_write(tmp_path / "new.bin") as (f, _):
            _Full(f, 10).write(b"y" * 100)
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("where", ["fsync", "replace"])
def test_a_failing_fsync_or_rename_leaves_the_target_and_no_temporary(target, monkeypatch,
                                                                      where):
    error = _enospc() if where == "fsync" else OSError(errno.EXDEV, "cross-device link")
    monkeypatch.setattr(os, where, lambda *args: (_ for _ in ()).throw(error))
    writer = atomic_write(target)
    with pytest.raises(OSError) as info:
        with writer as (f, _):
            f.write(b"new content")
    monkeypatch.undo()
    assert info.value is error
    assert writer.stage == ("write" if where == "fsync" else "replace")
    _untouched(target)


def test_a_failing_check_leaves_the_target_and_no_temporary(target):
    seen = {}

    def check(tmp):
        seen["content"] = open(tmp, "rb").read()  # complete and closed when checked
        raise ValueError("does not read back")

    writer = atomic_write(target, check=check)
    with pytest.raises(ValueError, match="does not read back"):
        with writer as (f, _):
            f.write(b"new content")
    assert seen["content"] == b"new content"
    assert writer.stage == "check"
    _untouched(target)


def test_a_passing_check_lets_the_write_through(target):
    with atomic_write(target, check=lambda tmp: None) as (f, _):
        f.write(b"new content")
    assert target.read_bytes() == b"new content"


def test_a_directory_that_refuses_fsync_does_not_fail_the_write(target, monkeypatch):
    real_fsync = os.fsync
    calls = []

    def fsync(fd):
        calls.append(fd)
        if len(calls) == 2:  # the directory's
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    with atomic_write(target) as (f, _):
        f.write(b"new content")
    monkeypatch.undo()
    assert len(calls) == 2
    assert target.read_bytes() == b"new content"


def test_a_missing_directory_raises_before_anything_is_written(tmp_path):
    writer = atomic_write(tmp_path / "absent" / "new.bin")
    with pytest.raises(FileNotFoundError):
        with writer:
            pytest.fail("the block must not run")
    assert writer.stage == "create"
    assert os.listdir(tmp_path) == []


# -- the three writers that use it -------------------------------------------------------------
def test_the_safetensors_and_run_directory_writers_leave_old_files_on_a_full_disk(
        tmp_path, monkeypatch):
    from numtransformer.pretrained.safetensors import load_safetensors, save_safetensors
    from numtransformer.train.rundir import store_data

    st = tmp_path / "w.safetensors"
    save_safetensors(st, {"w": np.arange(4, dtype=np.float32)})
    old_st = st.read_bytes()
    record = {"stored": "copy", "file": "corpus.txt", "size": 3, "sha256": "0" * 64}
    data = tmp_path / "corpus.txt"
    data.write_bytes(b"old")

    def full(fd):
        raise _enospc()

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(OSError, match="No space left"):
        save_safetensors(st, {"w": np.ones(8, dtype=np.float32)})
    with pytest.raises(OSError, match="No space left"):
        store_data(str(tmp_path), record, b"new corpus")
    monkeypatch.undo()
    assert st.read_bytes() == old_st and data.read_bytes() == b"old"
    assert sorted(os.listdir(tmp_path)) == ["corpus.txt", "w.safetensors"]
    np.testing.assert_array_equal(load_safetensors(st)["w"], np.arange(4, dtype=np.float32))
