"""Read (and write) ``.safetensors`` files with NumPy alone.

The format (the safetensors project's specification):

    bytes 0..7        N, the header length: an unsigned 64-bit little-endian integer
    bytes 8..8+N-1    the header: a UTF-8 JSON object
                      {"name": {"dtype": "F32", "shape": [d0, d1, ...],
                                "data_offsets": [begin, end]}, ...,
                       "__metadata__": {"key": "value", ...}}      (optional, str -> str)
    bytes 8+N..       the byte buffer; tensor "name" is bytes begin..end-1 of it,
                      row-major (C order), little-endian

Checks, each a ValueError naming the file and the tensor: N must fit in the
file (and be below 100 MB); the header must be a JSON object without duplicate
keys; each entry needs a known dtype, a shape of non-negative ints and
0 <= begin <= end <= buffer size with end - begin = prod(shape) * itemsize;
the tensors must tile the buffer exactly (no overlap, no hole, nothing
after), as the specification requires.  Nothing is allocated from what a
header merely claims: every size is first checked against the real file size,
so a truncated or forged file costs at most its own size in memory.

BF16 has no NumPy dtype: it is widened to float32 (exactly: a bfloat16 is the
upper half of a float32).  Arrays are returned in native byte order.
"""

from __future__ import annotations

import json
import math
import os
import struct

import numpy as np

from .._io import atomic_write

__all__ = ["load_safetensors", "read_safetensors_header", "save_safetensors", "DTYPES"]

# safetensors dtype name -> little-endian NumPy dtype
DTYPES = {
    "F64": np.dtype("<f8"), "F32": np.dtype("<f4"), "F16": np.dtype("<f2"),
    "BF16": np.dtype("<u2"),  # read as raw 16-bit words, widened to float32
    "I64": np.dtype("<i8"), "I32": np.dtype("<i4"), "I16": np.dtype("<i2"), "I8": np.dtype("i1"),
    "U64": np.dtype("<u8"), "U32": np.dtype("<u4"), "U16": np.dtype("<u2"), "U8": np.dtype("u1"),
    "BOOL": np.dtype("?"),
}
_NAMES = {np.dtype(v).newbyteorder("<") if v.itemsize > 1 else v: k
          for k, v in DTYPES.items() if k != "BF16"}

MAX_HEADER_BYTES = 100 * 1024 * 1024


def _no_duplicates(pairs):
    out = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"duplicate key {key!r}")
        out[key] = value
    return out


def _parse_header(path, f, file_size: int):
    """Returns (entries {name: (dtype_name, shape, begin, end)}, metadata, data_start)."""
    who = f"safetensors file {os.fspath(path)!r}"
    prefix = f.read(8)
    if len(prefix) < 8:
        raise ValueError(f"{who} is truncated: {file_size} bytes, shorter than the 8-byte "
                         f"header length")
    (n,) = struct.unpack("<Q", prefix)
    if n > file_size - 8:
        raise ValueError(f"{who}: header length {n} exceeds the {file_size - 8} bytes after "
                         f"the length field (truncated or not a safetensors file)")
    if n > MAX_HEADER_BYTES:
        raise ValueError(f"{who}: header length {n} is larger than the {MAX_HEADER_BYTES} "
                         f"bytes allowed")
    raw = f.read(n)
    try:
        header = json.loads(raw.decode("utf-8"), object_pairs_hook=_no_duplicates)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:  # (deep nesting: recursion)
        raise ValueError(f"{who}: the header is not valid UTF-8 JSON ({exc})") from None
    if not isinstance(header, dict):
        raise ValueError(f"{who}: the header must be a JSON object, got "
                         f"{type(header).__name__}")
    data_start = 8 + n
    data_size = file_size - data_start
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
        raise ValueError(f"{who}: __metadata__ must map strings to strings")

    entries = {}
    for name, info in header.items():
        where = f"{who}, tensor {name!r}"
        if not isinstance(info, dict) or set(info) != {"dtype", "shape", "data_offsets"}:
            raise ValueError(f"{where}: expected an object with exactly dtype, shape and "
                             f"data_offsets, got {info!r}"[:300])
        dtype_name, shape, offsets = info["dtype"], info["shape"], info["data_offsets"]
        if dtype_name not in DTYPES:
            raise ValueError(f"{where}: unsupported dtype {dtype_name!r}; supported: "
                             f"{', '.join(DTYPES)}")
        if (not isinstance(shape, list)
                or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0
                           for d in shape)):
            raise ValueError(f"{where}: shape must be a list of non-negative ints, got "
                             f"{shape!r}"[:300])
        if (not isinstance(offsets, list) or len(offsets) != 2
                or not all(isinstance(o, int) and not isinstance(o, bool) for o in offsets)):
            raise ValueError(f"{where}: data_offsets must be [begin, end], got {offsets!r}"[:300])
        begin, end = offsets
        if not 0 <= begin <= end <= data_size:
            raise ValueError(f"{where}: data_offsets [{begin}, {end}] fall outside the "
                             f"{data_size}-byte buffer (truncated file?)")
        expected = math.prod(shape) * DTYPES[dtype_name].itemsize
        if end - begin != expected:
            raise ValueError(f"{where}: {end - begin} bytes for dtype {dtype_name} and shape "
                             f"{tuple(shape)}, which need {expected}")
        entries[name] = (dtype_name, tuple(shape), begin, end)

    position = 0
    for name, (_, _, begin, end) in sorted(entries.items(), key=lambda e: (e[1][2], e[1][3])):
        if begin != position:
            kind = "overlaps the previous tensor" if begin < position else \
                f"leaves a hole of {begin - position} bytes before it"
            raise ValueError(f"{who}, tensor {name!r}: data_offsets [{begin}, {end}] {kind}")
        position = end
    if position != data_size:
        raise ValueError(f"{who}: the tensors cover {position} bytes but the buffer has "
                         f"{data_size} (trailing bytes)")
    return entries, metadata, data_start


def read_safetensors_header(path) -> tuple[dict, dict]:
    """The checked header: ({name: {"dtype", "shape", "data_offsets"}}, metadata)."""
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        entries, metadata, _ = _parse_header(path, f, size)
    return ({name: {"dtype": d, "shape": list(s), "data_offsets": [b, e]}
             for name, (d, s, b, e) in entries.items()}, metadata)


def load_safetensors(path, names=None) -> dict[str, np.ndarray]:
    """Read tensors from a ``.safetensors`` file into NumPy arrays.

    ``names``: only these tensors (every name must exist); default all, in
    file order.  The whole header is checked first (see the module docstring),
    then each tensor is read with one ``readinto`` of its exact size.
    """
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        entries, _, data_start = _parse_header(path, f, size)
        if names is None:
            wanted = sorted(entries, key=lambda k: entries[k][2])
        else:
            wanted = list(names)
            missing = [n for n in wanted if n not in entries]
            if missing:
                raise KeyError(f"safetensors file {os.fspath(path)!r} has no tensor(s) "
                               f"{', '.join(map(repr, missing))}")
        out = {}
        for name in wanted:
            dtype_name, shape, begin, end = entries[name]
            dt = DTYPES[dtype_name]
            a = np.empty(shape, dtype=dt)
            f.seek(data_start + begin)
            if f.readinto(memoryview(a.reshape(-1)).cast("B")) != end - begin:
                raise ValueError(f"safetensors file {os.fspath(path)!r}, tensor {name!r}: "
                                 f"short read (the file changed while reading?)")
            if dtype_name == "BF16":
                a = (a.astype(np.uint32) << 16).view(np.float32)
            elif not a.dtype.isnative:
                a = a.astype(a.dtype.newbyteorder("="))
            out[name] = a
    return out


def save_safetensors(path, tensors: dict, metadata: dict | None = None) -> None:
    """Write ``{name: array}`` as a ``.safetensors`` file (atomically: temp file + rename).

    Supported dtypes: those of ``DTYPES`` except BF16.  Tensors are laid out in
    the given order; the header is padded with spaces to a multiple of 8 bytes.
    """
    header, arrays, offset = {}, [], 0
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    for name, value in tensors.items():
        a = np.asarray(value)
        key = a.dtype.newbyteorder("<") if a.dtype.itemsize > 1 else a.dtype
        if key not in _NAMES:
            raise TypeError(f"save_safetensors: tensor {name!r} has dtype {a.dtype}, which "
                            f"safetensors cannot store")
        a = np.array(a, dtype=key, order="C")  # (ascontiguousarray would make a 0-d array 1-d)
        header[str(name)] = {"dtype": _NAMES[key], "shape": list(a.shape),
                             "data_offsets": [offset, offset + a.nbytes]}
        arrays.append(a)
        offset += a.nbytes
    raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
    raw += b" " * (-len(raw) % 8)
    with atomic_write(path, prefix=".tmp-", suffix=".safetensors") as (f, _):
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        for a in arrays:
            f.write(a.tobytes())
