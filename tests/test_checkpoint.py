import os
import pickle

import numpy as np
import pytest

from numtransformer import Dropout, LayerNorm, Linear, Module
from numtransformer.checkpoint import (
    CheckpointError,
    load_checkpoint,
    rng_states,
    save_checkpoint,
    set_rng_states,
)
from numtransformer.optim import Adam


class Tiny(Module):
    def __init__(self, seed=0):
        self.lin = Linear(3, 4, rng=seed)
        self.norm = LayerNorm(4)
        self.drop = Dropout(0.5, rng=seed + 1)


def test_round_trip_params_optimizer_config_meta(tmp_path):
    model = Tiny()
    opt = Adam(model, lr=0.01)
    for p in model.parameters():
        p.grad[...] = 0.1
    opt.step()
    path = str(tmp_path / "ckpt.npz")
    save_checkpoint(path, model, {"model": "tiny", "d": 4}, {"step": 7}, opt)
    ck = load_checkpoint(path)
    assert ck.config == {"model": "tiny", "d": 4} and ck.meta == {"step": 7}
    fresh = Tiny(seed=9)
    fresh.load_state_dict(ck.params)
    for (n, a), (_, b) in zip(model.named_parameters(), fresh.named_parameters()):
        assert np.array_equal(a.data, b.data) and b.dtype == a.dtype, n
    opt2 = Adam(fresh, lr=1.0)
    opt2.load_state_dict(ck.optim)
    assert opt2.step_count == 1 and opt2.lr == 0.01
    assert os.listdir(tmp_path) == ["ckpt.npz"]


def test_rng_states_round_trip():
    model = Tiny()
    extra = {"data": np.random.default_rng(5)}
    states = rng_states(model, extra)
    assert set(states) == {"drop:rng", "data"}
    x = np.ones((4, 4), np.float32)
    first = model.drop(x), extra["data"].random()
    set_rng_states(model, states, extra)
    assert np.array_equal(model.drop(x), first[0]) and extra["data"].random() == first[1]
    with pytest.raises(CheckpointError, match="drop:rng"):
        set_rng_states(model, {"data": states["data"]}, extra)


def test_an_interrupted_save_leaves_the_previous_checkpoint(tmp_path, monkeypatch):
    model = Tiny()
    path = str(tmp_path / "ckpt.npz")
    save_checkpoint(path, model, {"v": 1})

    def explode(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(np, "savez", explode)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(path, model, {"v": 2})
    monkeypatch.undo()
    assert load_checkpoint(path).config == {"v": 1}
    assert os.listdir(tmp_path) == ["ckpt.npz"]  # the temp file was removed


def test_a_pickle_bearing_file_is_refused_without_running_code(tmp_path):
    class Boom:
        def __reduce__(self):
            return (os.system, ("echo pwned > " + str(tmp_path / "pwned"),))

    path = str(tmp_path / "evil.npz")
    np.savez(path, __format__=np.array("numtransformer-checkpoint-1"),
             config=np.array("{}"), meta=np.array("{}"),
             **{"param/W": np.array([Boom()], dtype=object)})
    with pytest.raises(CheckpointError):
        load_checkpoint(path)
    assert not (tmp_path / "pwned").exists()
    raw = str(tmp_path / "raw.pkl")
    with open(raw, "wb") as f:
        pickle.dump(Boom(), f)
    with pytest.raises(CheckpointError):
        load_checkpoint(raw)
    assert not (tmp_path / "pwned").exists()


def test_truncated_and_foreign_files_are_clear_errors(tmp_path):
    path = str(tmp_path / "ckpt.npz")
    save_checkpoint(path, Tiny(), {"v": 1})
    data = open(path, "rb").read()
    cut = str(tmp_path / "cut.npz")
    with open(cut, "wb") as f:
        f.write(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="cut.npz"):
        load_checkpoint(cut)
    other = str(tmp_path / "other.npz")
    np.savez(other, x=np.zeros(3))
    with pytest.raises(CheckpointError, match="missing entry '__format__'"):
        load_checkpoint(other)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(str(tmp_path / "nope.npz"))


# -- verified saves (issue 23) ------------------------------------------------------------------
def _full_disk(monkeypatch, after_bytes=64):
    """np.savez that writes ``after_bytes`` bytes and then fails as a full disk does."""
    import errno

    real = np.savez

    class Full:
        def __init__(self, f):
            self._f, self._left = f, after_bytes

        def write(self, b):
            if len(b) > self._left:
                self._f.write(bytes(b)[: self._left])
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            self._left -= len(b)
            return self._f.write(b)

        def __getattr__(self, name):
            return getattr(self._f, name)

    monkeypatch.setattr(np, "savez", lambda f, **arrays: real(Full(f), **arrays))


def test_a_full_disk_leaves_the_previous_checkpoint_and_says_so_in_one_line(tmp_path,
                                                                            monkeypatch):
    from numtransformer.checkpoint import CheckpointNotSaved

    model = Tiny()
    path = str(tmp_path / "ckpt.npz")
    save_checkpoint(path, model, {"v": 1})
    _full_disk(monkeypatch)
    with pytest.raises(CheckpointNotSaved) as info:
        save_checkpoint(path, model, {"v": 2})
    message = str(info.value)
    assert "No space left on device (ENOSPC)" in message and "ckpt.npz" in message
    assert "previous checkpoint there is kept" in message and "\n" not in message
    monkeypatch.undo()
    assert load_checkpoint(path).config == {"v": 1}
    assert os.listdir(tmp_path) == ["ckpt.npz"]  # the partial temp file is gone
    # a first save that fails leaves nothing behind, and says that nothing was saved
    _full_disk(monkeypatch)
    with pytest.raises(CheckpointNotSaved, match="nothing was saved"):
        save_checkpoint(str(tmp_path / "new.npz"), model, {"v": 1})
    assert os.listdir(tmp_path) == ["ckpt.npz"]


def test_a_file_that_does_not_read_back_as_written_never_replaces_the_previous(tmp_path,
                                                                               monkeypatch):
    from numtransformer.checkpoint import CheckpointNotSaved

    model = Tiny()
    path = str(tmp_path / "ckpt.npz")
    save_checkpoint(path, model, {"v": 1})
    real = np.savez

    def flipped(f, **arrays):  # a bit lost on its way to the disk
        arrays = dict(arrays)
        w = arrays["param/lin.W"].copy()
        w.view(np.uint8)[0] ^= 1
        arrays["param/lin.W"] = w
        return real(f, **arrays)

    monkeypatch.setattr(np, "savez", flipped)
    with pytest.raises(CheckpointNotSaved, match="param/lin.W reads back differently"):
        save_checkpoint(path, model, {"v": 2})
    monkeypatch.undo()
    # the caller's own check: a checkpoint its loader would refuse is never put in place
    with pytest.raises(CheckpointNotSaved, match="did not verify \\(the run disagrees\\)"):
        save_checkpoint(path, model, {"v": 3},
                        verify=lambda ck: (_ for _ in ()).throw(ValueError("the run disagrees")))
    assert load_checkpoint(path).config == {"v": 1}
    assert os.listdir(tmp_path) == ["ckpt.npz"]
    save_checkpoint(path, model, {"v": 4}, verify=lambda ck: None)
    assert load_checkpoint(path).config == {"v": 4}
