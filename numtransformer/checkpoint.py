"""Checkpoints: one ``.npz`` file, written atomically, read without pickle.

Layout of the file (every entry a plain numpy array; text is stored as a 0-d
unicode array, never as a pickled object):

    __format__        "numtransformer-checkpoint-1"
    config            JSON text: what is needed to rebuild the model, task and run
    meta              JSON text: step count, RNG states, data position, metrics ...
    param/<name>      each entry of ``model.state_dict()``
    optim/<key>       each entry of ``optimizer.state_dict()``

Writing goes to a temporary file in the same directory, is flushed to disk,
loaded back and verified (every array equal to what was meant, config and meta
readable, and the caller's own check, e.g. the optimizer's step count against
the run's), and only then renamed over the target (``os.replace`` is atomic on
POSIX), so a process killed at any moment leaves either the old checkpoint or
the new one, never a torn file, and a failed write (a full disk) leaves the
old one.  Reading uses ``np.load(allow_pickle=False)``: loading a file never
runs code, and a pickle-bearing or malformed file is a clear ``ValueError``.
Before anything is read, every entry's declared size is checked against the
file (entries must be stored uncompressed, as ``save_checkpoint`` writes them,
and each array header must declare exactly the bytes its entry holds), so a
forged or corrupt file costs at most its own size in memory.  Parameters must
be finite floating-point arrays, config and meta JSON objects.
"""

from __future__ import annotations

import errno
import json
import math
import os
import zipfile
from dataclasses import dataclass, field

import numpy as np

from ._io import atomic_write
from .module import Module

__all__ = ["save_checkpoint", "load_checkpoint", "Checkpoint", "rng_states", "set_rng_states",
           "CheckpointError", "CheckpointNotSaved", "NonFiniteParameters"]

FORMAT = "numtransformer-checkpoint-1"


class CheckpointError(ValueError):
    """A checkpoint file that cannot be used (missing, corrupt, another model ...)."""


class CheckpointNotSaved(CheckpointError):
    """save_checkpoint could not write a verified file (a full disk, a file that did
    not read back); the previous checkpoint at the path is untouched."""


class NonFiniteParameters(CheckpointError):
    """save_checkpoint refused a model with NaN/inf parameters (loading would refuse
    it too), so the file already on disk stays as it was."""


@dataclass
class Checkpoint:
    config: dict
    meta: dict
    params: dict[str, np.ndarray] = field(default_factory=dict)
    optim: dict[str, np.ndarray] = field(default_factory=dict)


def rng_states(module: Module, extra: dict | None = None) -> dict:
    """The bit-generator state of every ``np.random.Generator`` attribute in the
    module tree (keyed ``path:attr``), plus those of ``extra`` generators."""
    states = {}
    for path, m in module.named_modules():
        for attr, value in vars(m).items():
            if isinstance(value, np.random.Generator):
                states[f"{path}:{attr}"] = value.bit_generator.state
    for name, gen in (extra or {}).items():
        states[name] = gen.bit_generator.state
    return states


def set_rng_states(module: Module, states: dict, extra: dict | None = None) -> None:
    """Restore what ``rng_states`` saved; a generator missing from ``states`` is an error."""
    wanted = rng_states(module, extra)
    missing = sorted(set(wanted) - set(states))
    if missing:
        raise CheckpointError(f"checkpoint: no saved state for random generator(s) {missing}")
    for path, m in module.named_modules():
        for attr, value in vars(m).items():
            if isinstance(value, np.random.Generator):
                value.bit_generator.state = states[f"{path}:{attr}"]
    for name, gen in (extra or {}).items():
        gen.bit_generator.state = states[name]


def save_checkpoint(path: str, model: Module, config: dict, meta: dict | None = None,
                    optimizer=None, verify=None) -> None:
    """Write model parameters, config, meta and optimizer state to ``path`` atomically.

    The file is written to a temporary file in the same directory, flushed to
    disk, loaded back and compared with what was meant to be written (every
    parameter and optimizer entry bit for bit, config and meta), then checked by
    ``verify(checkpoint)`` if given (a callable raising ``ValueError`` on a
    checkpoint its caller cannot use), and only then renamed over ``path``.
    Until that rename the previous file at ``path`` is untouched: a failure
    (a full disk, a file that does not read back) raises ``CheckpointNotSaved``
    naming what happened, and the previous checkpoint stays."""
    arrays = {
        "__format__": np.array(FORMAT),
        "config": np.array(json.dumps(config, sort_keys=True)),
        "meta": np.array(json.dumps(meta or {}, sort_keys=True)),
    }
    for name, value in model.state_dict().items():
        if not np.isfinite(value).all():  # loading would refuse it: keep the last good file
            raise NonFiniteParameters(f"parameter {name!r} contains NaN/inf; not saving {path!r}")
        arrays[f"param/{name}"] = value
    if optimizer is not None:
        for key, value in optimizer.state_dict().items():
            arrays[f"optim/{key}"] = np.asarray(value)
    directory = os.path.dirname(os.path.abspath(path))
    writer = atomic_write(path, prefix=".ckpt-", suffix=".tmp",
                          check=lambda tmp: _verify_written(tmp, arrays, path, verify))
    try:
        os.makedirs(directory, exist_ok=True)
        with writer as (f, _):
            np.savez(f, **arrays)
    except OSError as exc:  # no temp file is left; say at which step the save failed
        if writer.stage == "create":
            raise CheckpointNotSaved(f"could not save checkpoint {path!r}: {_why(exc)}") from exc
        if writer.stage == "write":  # a full disk, a quota, an I/O error
            raise CheckpointNotSaved(f"could not write checkpoint {path!r}: {_why(exc)}; "
                                     f"{_kept(path)}") from exc
        if writer.stage == "replace":
            raise CheckpointNotSaved(f"could not move the new checkpoint into place at "
                                     f"{path!r}: {_why(exc)}; {_kept(path)}") from exc
        raise


def _why(exc: OSError) -> str:
    """``No space left on device (ENOSPC)``: an OSError in words, with its errno name."""
    code = errno.errorcode.get(exc.errno) if exc.errno is not None else None
    text = exc.strerror or str(exc) or type(exc).__name__
    return f"{text} ({code})" if code else text


def _kept(path: str) -> str:
    return ("the previous checkpoint there is kept" if os.path.exists(path)
            else "nothing was saved")


def _verify_written(tmp: str, arrays: dict, path: str, verify) -> None:
    """Load the temp file back and compare it with ``arrays``; then ``verify``."""
    def refuse(why):
        raise CheckpointNotSaved(f"checkpoint {path!r} not saved: the file written did not "
                                 f"verify ({why}); {_kept(path)}")

    try:
        ck = load_checkpoint(tmp)
    except CheckpointError as exc:
        refuse(str(exc).replace(repr(tmp), "(temp file)"))
    if json.dumps(ck.config, sort_keys=True) != str(arrays["config"]):
        refuse("its config reads back differently")
    if json.dumps(ck.meta, sort_keys=True) != str(arrays["meta"]):
        refuse("its meta reads back differently")
    for prefix, stored in (("param/", ck.params), ("optim/", ck.optim)):
        meant = {k[len(prefix):]: v for k, v in arrays.items() if k.startswith(prefix)}
        if set(meant) != set(stored):
            refuse(f"its {prefix[:-1]} entries differ")
        for name, value in meant.items():
            got = stored[name]
            if got.dtype != value.dtype or got.shape != value.shape or \
                    not np.array_equal(got, value):
                refuse(f"{prefix}{name} reads back differently")
    if verify is not None:
        try:
            verify(ck)
        except (ValueError, KeyError, TypeError) as exc:
            refuse(str(exc))


def _check_archive(path: str) -> None:
    """Refuse, before numpy allocates anything, entries whose declared sizes the
    file cannot back: a compressed entry (a zip bomb: a small file declaring
    gigabytes), an entry larger than the file, an array header whose shape and
    dtype need more (or fewer) bytes than its entry holds, an object array."""
    file_size = os.path.getsize(path)
    with zipfile.ZipFile(path) as z:
        for info in z.infolist():
            where = f"checkpoint {path!r}, entry {info.filename!r}"
            if info.compress_type != zipfile.ZIP_STORED:
                raise CheckpointError(f"{where} is compressed; checkpoints are stored "
                                      f"uncompressed (not written by save_checkpoint?)")
            if info.file_size > file_size:
                raise CheckpointError(f"{where} declares {info.file_size} bytes, more than "
                                      f"the {file_size}-byte file")
            with z.open(info) as f:
                version = np.lib.format.read_magic(f)
                read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                               else np.lib.format.read_array_header_2_0)
                shape, _, dtype = read_header(f)
                header_size = f.tell()
            if dtype.hasobject:
                raise CheckpointError(f"{where} is an object array (a pickle); refused "
                                      f"without running it")
            declared = math.prod(shape) * dtype.itemsize
            if declared != info.file_size - header_size:
                raise CheckpointError(f"{where} declares shape {shape} of {dtype} "
                                      f"({declared} bytes) but holds "
                                      f"{info.file_size - header_size}")


def _text(archive, key: str, path: str) -> str:
    if key not in archive.files:
        raise CheckpointError(f"checkpoint {path!r}: missing entry {key!r}")
    value = archive[key]
    if value.dtype.kind != "U" or value.shape != ():
        raise CheckpointError(f"checkpoint {path!r}: entry {key!r} is not text")
    return str(value)


def load_checkpoint(path: str) -> Checkpoint:
    """Read a checkpoint written by ``save_checkpoint`` (never unpickles anything)."""
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint {path!r} does not exist")
    try:
        _check_archive(path)
        with np.load(path, allow_pickle=False) as archive:
            fmt = _text(archive, "__format__", path)
            if fmt != FORMAT:
                raise CheckpointError(f"checkpoint {path!r}: format {fmt!r}, expected {FORMAT!r}")
            try:
                config = json.loads(_text(archive, "config", path))
                meta = json.loads(_text(archive, "meta", path))
            except (json.JSONDecodeError, RecursionError) as exc:
                raise CheckpointError(f"checkpoint {path!r}: config/meta is not JSON: {exc}") from exc
            if not (isinstance(config, dict) and isinstance(meta, dict)):
                raise CheckpointError(f"checkpoint {path!r}: config and meta must be JSON "
                                      f"objects")
            params, optim = {}, {}
            for key in archive.files:
                if key.startswith("param/"):
                    params[key[len("param/"):]] = archive[key]
                elif key.startswith("optim/"):
                    optim[key[len("optim/"):]] = archive[key]
    except CheckpointError:
        raise
    except ValueError as exc:  # includes "Object arrays cannot be loaded when allow_pickle=False"
        raise CheckpointError(f"checkpoint {path!r} is not a valid numtransformer checkpoint: "
                              f"{exc}") from exc
    except Exception as exc:  # noqa: BLE001 - whatever corrupt bytes make zipfile/numpy raise
        # (BadZipFile, EOFError, OSError, NotImplementedError for a flipped compression
        # method, tokenize.TokenError for a flipped array header ...)
        raise CheckpointError(f"checkpoint {path!r} is unreadable (truncated or corrupt): "
                              f"{type(exc).__name__}: {exc}") from exc
    for kind, arrays in (("parameter", params), ("optimizer entry", optim)):
        for name, value in arrays.items():
            if value.dtype.kind not in ("f" if kind == "parameter" else "fiu"):
                raise CheckpointError(f"checkpoint {path!r}: {kind} {name!r} has dtype "
                                      f"{value.dtype}, expected a "
                                      f"{'floating-point' if kind == 'parameter' else 'numeric'}"
                                      f" array")
            if value.dtype.kind == "f" and not np.isfinite(value).all():
                raise CheckpointError(f"checkpoint {path!r}: {kind} {name!r} contains "
                                      f"NaN/inf")
    return Checkpoint(config=config, meta=meta, params=params, optim=optim)
