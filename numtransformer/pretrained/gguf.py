"""Read GGUF files (llama.cpp's model format) with NumPy alone.

The format (GGUF versions 2 and 3; all numbers little-endian, or all big-endian
in a file written for a big-endian machine: its version then reads byte-swapped,
and the reader follows that order for every number of the header and metadata):

    magic        4 bytes  b"GGUF"
    version      uint32   2 or 3
    n_tensors    uint64
    n_kv         uint64
    n_kv times   key: string;  value type: uint32;  value
    n_tensors times
                 name: string;  n_dims: uint32 (1..4);  ne: n_dims x uint64;
                 ggml type: uint32;  offset: uint64 (from the data section's start)
    padding      to a multiple of ``general.alignment`` (default 32)
    data         the tensors, each at its offset (a multiple of the alignment)

    string       uint64 length, then that many bytes of UTF-8
    value types  0 uint8  1 int8  2 uint16  3 int16  4 uint32  5 int32  6 float32
                 7 bool  8 string  9 array (uint32 item type, uint64 count, items)
                 10 uint64  11 int64  12 float64

A tensor's ``ne`` lists its dimensions fastest-varying first (ne[0] is the row
length), so its NumPy shape is ``ne`` reversed: llama.cpp's ``[576, 49152]``
token table is the (49152, 576) array ``embed_tokens.weight`` of PyTorch.
Quantized types store each row in blocks of ``block_size`` values, each
block ``type_size`` bytes (``GGML_TYPES``).  Dequantized here (to float32,
with the operations in the order llama.cpp's and the ``gguf`` package's
reference dequantizers use, so the results are bit-identical):

    F32, F16, BF16, F64         the values themselves (F16, BF16 widened to float32)
    Q8_0  (32 values, 34 B)     d: float16, q: 32 x int8;          x_j = q_j * d
    Q4_0  (32 values, 18 B)     d: float16, qs: 16 bytes;          x_j = d * (q_j - 8)
    Q4_1  (32 values, 20 B)     d, m: float16, qs: 16 bytes;       x_j = d * q_j + m
                                (q_j for j < 16 is the low nibble of qs[j], for
                                j >= 16 the high nibble of qs[j - 16])
    I8, I16, I32, I64           integers, as they are

Why an own reader rather than the ``gguf`` package (the GGUF project's NumPy
reader): this one is ~300 lines with no dependency beyond NumPy, it checks
every size a header claims against the real file size before it allocates or
maps anything, and it reports a broken file as one ``ValueError`` naming the
file and the field.  ``gguf.GGUFReader`` memory-maps the file and builds its
arrays from offsets it has not checked first: the SmolLM2 file cut to 1 MB
fails inside it with NumPy's "When changing to a larger dtype, its size must
be a divisor ...", cut to 40 MB with "cannot reshape array of size 375744
into shape (1536,360)"; here: "metadata 'tokenizer.ggml.merges' claims 48900
items, at least 391200 bytes, but only 39805 remain" and "tensor
'blk.11.ffn_up.weight' (Q4_1, shape (1536, 576)) needs bytes
39624256..40177216 but the file has 40000000".  It is also slower where it
matters for start-up: its header (98,000 tokenizer strings) takes 3.2-3.7 s
on the SmolLM2 file against 0.13 s here (dequantizing all tensors: 1.8 s
either way; 2-core Xeon, 2026-12-06).  And it would be a second runtime
dependency for three block formats of a dozen lines each.  The tests compare
this reader with ``gguf`` (when installed) on random blocks of every
dequantized type, bit for bit, and the SmolLM2 weights with those
transformers loads through it.

Checks, each a ValueError naming the file: the magic and version; every
count, string length and array length against the bytes that remain (so a
forged count costs nothing); no duplicate key or tensor name; known value and
tensor types; 1 to 4 dimensions with a row length that is a whole number of
blocks; each tensor's offset aligned, its bytes inside the file, no two
tensors overlapping.  A big-endian file's header and metadata read as a
little-endian one's (so its tokenizer loads); of its tensors, the plain types
(F32, F16, BF16, F64, I8..I64) are read byte-swapped, and the block formats are
refused by name (which order their float16 scales are in is not defined).
``read_gguf(path, keys=...)`` keeps only the metadata keys asked for (all are
still read and checked: the format has no index to skip by).  A forged header
can make this reader hold at most a few times the file's own size in memory
(Python strings of the metadata); tensor data is read with one ``readinto`` of
its exact, already-checked size.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass, field

import numpy as np

__all__ = ["GGML_TYPES", "GGUFTensorInfo", "GGUFFile", "read_gguf", "load_gguf_tensors",
           "dequantize", "DEQUANTIZABLE"]

GGUF_MAGIC = b"GGUF"
GGUF_VERSIONS = (2, 3)
DEFAULT_ALIGNMENT = 32
MAX_DIMS = 4
MAX_ARRAY_NESTING = 8

# ggml type id -> (name, values per block, bytes per block), as in ggml's type traits
GGML_TYPES = {
    0: ("F32", 1, 4), 1: ("F16", 1, 2), 2: ("Q4_0", 32, 18), 3: ("Q4_1", 32, 20),
    6: ("Q5_0", 32, 22), 7: ("Q5_1", 32, 24), 8: ("Q8_0", 32, 34), 9: ("Q8_1", 32, 40),
    10: ("Q2_K", 256, 84), 11: ("Q3_K", 256, 110), 12: ("Q4_K", 256, 144),
    13: ("Q5_K", 256, 176), 14: ("Q6_K", 256, 210), 15: ("Q8_K", 256, 292),
    16: ("IQ2_XXS", 256, 66), 17: ("IQ2_XS", 256, 74), 18: ("IQ3_XXS", 256, 98),
    19: ("IQ1_S", 256, 50), 20: ("IQ4_NL", 32, 18), 21: ("IQ3_S", 256, 110),
    22: ("IQ2_S", 256, 82), 23: ("IQ4_XS", 256, 136), 24: ("I8", 1, 1), 25: ("I16", 1, 2),
    26: ("I32", 1, 4), 27: ("I64", 1, 8), 28: ("F64", 1, 8), 29: ("IQ1_M", 256, 56),
    30: ("BF16", 1, 2), 34: ("TQ1_0", 256, 54), 35: ("TQ2_0", 256, 66),
}

# metadata value type id -> (name, little-endian NumPy dtype or None for string/array)
_VALUE_TYPES = {
    0: ("uint8", np.dtype("u1")), 1: ("int8", np.dtype("i1")), 2: ("uint16", np.dtype("<u2")),
    3: ("int16", np.dtype("<i2")), 4: ("uint32", np.dtype("<u4")), 5: ("int32", np.dtype("<i4")),
    6: ("float32", np.dtype("<f4")), 7: ("bool", np.dtype("u1")), 8: ("string", None),
    9: ("array", None), 10: ("uint64", np.dtype("<u8")), 11: ("int64", np.dtype("<i8")),
    12: ("float64", np.dtype("<f8")),
}
_STRING, _ARRAY, _BOOL = 8, 9, 7
# the fewest bytes one item of each value type can take (an empty string: its length)
_MIN_BYTES = {t: (8 if t == _STRING else 12 if t == _ARRAY else dt.itemsize)
              for t, (_, dt) in _VALUE_TYPES.items()}


@dataclass(frozen=True)
class GGUFTensorInfo:
    """One tensor of a GGUF file: ``shape`` in NumPy order (ne reversed);
    ``offset`` from the start of the file; ``nbytes`` its stored size."""
    name: str
    shape: tuple
    ggml_type: int
    type_name: str
    offset: int
    nbytes: int

    @property
    def n_elements(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n


@dataclass
class GGUFFile:
    """The checked header of a GGUF file (no tensor data): ``metadata`` maps each
    key to a Python value (int, float, bool, str), a list (arrays of strings
    or of arrays) or a 1-D NumPy array (arrays of numbers or bools);
    ``tensors`` maps names to ``GGUFTensorInfo`` in file order."""
    path: str
    version: int
    metadata: dict
    tensors: dict
    alignment: int
    data_start: int
    file_size: int
    value_types: dict = field(default_factory=dict, repr=False)  # key -> value type name
    byteorder: str = "<"  # ">" for a big-endian file

    def __repr__(self) -> str:
        return (f"GGUFFile({self.path!r}, version={self.version}, {len(self.metadata)} keys, "
                f"{len(self.tensors)} tensors)")


class _Cursor:
    """Sequential reads from a file, each checked against the bytes that remain."""

    def __init__(self, f, size: int, who: str, order: str = "<"):
        self.f, self.size, self.who, self.pos, self.order = f, size, who, 0, order

    def take(self, n: int, what: str) -> bytes:
        if n > self.size - self.pos:
            raise ValueError(f"{self.who} is truncated: {what} needs {n} bytes at offset "
                             f"{self.pos}, but only {self.size - self.pos} remain")
        data = self.f.read(n)
        if len(data) != n:
            raise ValueError(f"{self.who}: short read at offset {self.pos} (the file changed "
                             f"while reading?)")
        self.pos += n
        return data

    def scalar(self, dtype: np.dtype, what: str):
        dtype = dtype.newbyteorder(self.order)
        return np.frombuffer(self.take(dtype.itemsize, what), dtype)[0].item()

    def u32(self, what: str) -> int:
        return struct.unpack(self.order + "I", self.take(4, what))[0]

    def u64(self, what: str) -> int:
        return struct.unpack(self.order + "Q", self.take(8, what))[0]

    def string(self, what: str) -> str:
        n = self.u64(f"the length of {what}")
        raw = self.take(n, what)
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ValueError(f"{self.who}: {what} is not valid UTF-8 ({exc})") from None

    def check_count(self, count: int, min_bytes: int, what: str) -> None:
        """Refuse a count whose items could not fit in the rest of the file."""
        if count * min_bytes > self.size - self.pos:
            raise ValueError(f"{self.who}: {what} claims {count} items, at least "
                             f"{count * min_bytes} bytes, but only {self.size - self.pos} "
                             f"remain (truncated or forged)")

    def value(self, vtype: int, what: str, depth: int = 0):
        if vtype not in _VALUE_TYPES:
            raise ValueError(f"{self.who}: {what} has unknown value type {vtype} (known: "
                             f"0..12)")
        if vtype == _STRING:
            return self.string(what)
        if vtype == _ARRAY:
            if depth >= MAX_ARRAY_NESTING:
                raise ValueError(f"{self.who}: {what} nests arrays more than "
                                 f"{MAX_ARRAY_NESTING} deep")
            item = self.u32(f"the item type of {what}")
            count = self.u64(f"the length of {what}")
            if item not in _VALUE_TYPES:
                raise ValueError(f"{self.who}: {what} is an array of unknown value type {item}")
            self.check_count(count, _MIN_BYTES[item], what)
            dt = _VALUE_TYPES[item][1]
            if dt is None:
                return [self.value(item, f"{what}[{i}]", depth + 1) for i in range(count)]
            dt = dt.newbyteorder(self.order)
            a = np.frombuffer(self.take(count * dt.itemsize, what), dt)
            return a.astype(bool) if item == _BOOL else a.astype(dt.newbyteorder("="))
        x = self.scalar(_VALUE_TYPES[vtype][1], what)
        return bool(x) if vtype == _BOOL else x


def _who(path) -> str:
    return f"GGUF file {os.fspath(path)!r}"


def read_gguf(path, keys=None) -> GGUFFile:
    """The checked header of the GGUF file at ``path`` (see the module docstring).

    No tensor data is read (``load_gguf_tensors`` does that).  ``keys``: if
    given, ``metadata`` keeps only these keys (missing ones are simply absent);
    every key is still read and checked, and ``value_types`` names them all.
    """
    who = _who(path)
    wanted = None if keys is None else frozenset(keys)
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        c = _Cursor(f, size, who)
        magic = c.take(4, "the magic")
        if magic != GGUF_MAGIC:
            raise ValueError(f"{who} is not a GGUF file: it starts with {magic!r}, not "
                             f"{GGUF_MAGIC!r}")
        version = c.u32("the version")
        swapped = struct.unpack(">I", struct.pack("<I", version))[0]
        if version not in GGUF_VERSIONS and swapped in GGUF_VERSIONS:
            c.order, version = ">", swapped  # a big-endian file
        if version not in GGUF_VERSIONS:
            raise ValueError(f"{who}: GGUF version {version} is not supported (only "
                             f"{' and '.join(map(str, GGUF_VERSIONS))})")
        n_tensors = c.u64("the tensor count")
        n_kv = c.u64("the metadata count")
        c.check_count(n_kv, 8 + 4 + 1, "the metadata count")

        metadata, value_types, alignment = {}, {}, DEFAULT_ALIGNMENT
        for i in range(n_kv):
            key = c.string(f"metadata key {i}")
            if key in value_types:
                raise ValueError(f"{who}: duplicate metadata key {key!r}")
            vtype = c.u32(f"the value type of {key!r}")
            value = c.value(vtype, f"metadata {key!r}")
            value_types[key] = _VALUE_TYPES[vtype][0]
            if key == "general.alignment":
                alignment = value
            if wanted is None or key in wanted:
                metadata[key] = value

        if (value_types.get("general.alignment", "uint32") != "uint32"
                or not 0 < alignment <= 1 << 30 or alignment & (alignment - 1)):
            raise ValueError(f"{who}: general.alignment must be a uint32 power of two, got "
                             f"{alignment!r}")

        c.check_count(n_tensors, 8 + 4 + 8 + 4 + 8, "the tensor count")
        raw_infos = []
        names = set()
        for i in range(n_tensors):
            name = c.string(f"the name of tensor {i}")
            where = f"tensor {name!r}"
            if name in names:
                raise ValueError(f"{who}: duplicate tensor name {name!r}")
            names.add(name)
            n_dims = c.u32(f"the number of dimensions of {where}")
            if not 1 <= n_dims <= MAX_DIMS:
                raise ValueError(f"{who}, {where}: {n_dims} dimensions; GGUF tensors have 1 "
                                 f"to {MAX_DIMS}")
            ne = [c.u64(f"dimension {d} of {where}") for d in range(n_dims)]
            ggml_type = c.u32(f"the type of {where}")
            offset = c.u64(f"the offset of {where}")
            if ggml_type not in GGML_TYPES:
                raise ValueError(f"{who}, {where}: unknown ggml type {ggml_type}")
            type_name, block, type_size = GGML_TYPES[ggml_type]
            if ne[0] % block:
                raise ValueError(f"{who}, {where}: row length {ne[0]} is not a multiple of "
                                 f"the {type_name} block size {block}")
            n = 1
            for d in ne:
                n *= d
            if offset % alignment:
                raise ValueError(f"{who}, {where}: offset {offset} is not a multiple of the "
                                 f"alignment {alignment}")
            raw_infos.append((name, tuple(reversed(ne)), ggml_type, type_name, offset,
                              n // block * type_size))

        data_start = -(-c.pos // alignment) * alignment
        tensors, end = {}, 0
        for name, shape, ggml_type, type_name, offset, nbytes in raw_infos:
            if data_start + offset + nbytes > size:
                raise ValueError(f"{who} is truncated: tensor {name!r} ({type_name}, shape "
                                 f"{shape}) needs bytes {data_start + offset}.."
                                 f"{data_start + offset + nbytes} but the file has {size}")
            tensors[name] = GGUFTensorInfo(name, shape, ggml_type, type_name,
                                           data_start + offset, nbytes)
        for info in sorted(tensors.values(), key=lambda t: t.offset):
            if info.offset < end:
                raise ValueError(f"{who}: tensor {info.name!r} at offset {info.offset} "
                                 f"overlaps the tensor before it (which ends at {end})")
            end = info.offset + info.nbytes
    return GGUFFile(os.fspath(path), version, metadata, tensors, alignment, data_start, size,
                    value_types, c.order)


# -- dequantization -----------------------------------------------------------------------------
def _f16(col: np.ndarray) -> np.ndarray:
    """Two-byte columns (n, 2) of raw little-endian float16 -> (n, 1) float32."""
    return np.ascontiguousarray(col).view("<f2").astype(np.float32)


def _nibbles(qs: np.ndarray) -> np.ndarray:
    """(n, 16) bytes -> (n, 32) values: the low nibbles, then the high ones."""
    return np.concatenate([qs & np.uint8(0x0F), qs >> np.uint8(4)], axis=1)


def _q8_0(blocks):
    d = _f16(blocks[:, :2])
    q = np.ascontiguousarray(blocks[:, 2:]).view(np.int8).astype(np.float32)
    return q * d


def _q4_0(blocks):
    d = _f16(blocks[:, :2])
    q = _nibbles(blocks[:, 2:]).astype(np.int8) - np.int8(8)
    return d * q.astype(np.float32)


def _q4_1(blocks):
    d, m = _f16(blocks[:, :2]), _f16(blocks[:, 2:4])
    q = _nibbles(blocks[:, 4:]).astype(np.float32)
    return d * q + m


_BLOCK_DEQUANT = {"Q8_0": _q8_0, "Q4_0": _q4_0, "Q4_1": _q4_1}
_PLAIN = {"F32": "<f4", "F16": "<f2", "F64": "<f8", "I8": "i1", "I16": "<i2", "I32": "<i4",
          "I64": "<i8"}
DEQUANTIZABLE = tuple(_PLAIN) + ("BF16",) + tuple(_BLOCK_DEQUANT)


def dequantize(raw: np.ndarray, ggml_type: int | str, shape, byteorder: str = "<") -> np.ndarray:
    """The values stored in ``raw`` (1-D uint8, the tensor's bytes) as an array of
    ``shape`` (NumPy order): float32 for F32/F16/BF16 and the block formats,
    float64 for F64, integers for I8..I64 (see the module docstring).
    ``byteorder=">"``: the bytes of a big-endian file (plain types only)."""
    name = GGML_TYPES[ggml_type][0] if isinstance(ggml_type, int) else ggml_type
    if name not in DEQUANTIZABLE:
        raise ValueError(f"dequantize: ggml type {name} is not supported (supported: "
                         f"{', '.join(DEQUANTIZABLE)})")
    if byteorder != "<" and name in _BLOCK_DEQUANT:
        raise ValueError(f"dequantize: {name} blocks of a big-endian file are not supported "
                         f"(the plain types are)")
    shape = tuple(int(d) for d in shape)
    raw = np.asarray(raw, dtype=np.uint8).reshape(-1)
    if name in _PLAIN:
        dt = np.dtype(_PLAIN[name]).newbyteorder(byteorder)
        out = raw.view(dt).astype(np.float32 if name == "F16" else dt.newbyteorder("="))
    elif name == "BF16":
        words = raw.view(np.dtype("<u2").newbyteorder(byteorder))
        out = (words.astype(np.uint32) << np.uint32(16)).view(np.float32)
    else:
        _, block, type_size = next(v for v in GGML_TYPES.values() if v[0] == name)
        if raw.size % type_size:
            raise ValueError(f"dequantize: {raw.size} bytes are not whole {name} blocks of "
                             f"{type_size} bytes")
        out = _BLOCK_DEQUANT[name](raw.reshape(-1, type_size)).reshape(-1)
    return out.reshape(shape)


def load_gguf_tensors(source, names=None) -> dict:
    """Read and dequantize tensors of a GGUF file: ``{name: array}`` in NumPy
    shape (see ``dequantize`` for the dtypes).

    ``source``: a path or a ``GGUFFile`` from ``read_gguf``; ``names``: only these
    tensors (each must exist), default all in file order.
    """
    gg = source if isinstance(source, GGUFFile) else read_gguf(source)
    who = _who(gg.path)
    wanted = list(gg.tensors) if names is None else list(names)
    missing = [n for n in wanted if n not in gg.tensors]
    if missing:
        raise KeyError(f"{who} has no tensor(s) {', '.join(map(repr, missing))}")
    out = {}
    with open(gg.path, "rb") as f:
        if os.fstat(f.fileno()).st_size != gg.file_size:
            raise ValueError(f"{who} changed size since its header was read")
        for name in wanted:
            info = gg.tensors[name]
            if info.type_name not in DEQUANTIZABLE:
                raise ValueError(f"{who}, tensor {name!r}: ggml type {info.type_name} is not "
                                 f"supported (supported: {', '.join(DEQUANTIZABLE)})")
            if gg.byteorder != "<" and info.type_name in _BLOCK_DEQUANT:
                raise ValueError(f"{who}, tensor {name!r}: {info.type_name} blocks of a "
                                 f"big-endian file are not supported (the plain types are)")
            raw = np.empty(info.nbytes, np.uint8)
            f.seek(info.offset)
            if f.readinto(memoryview(raw)) != info.nbytes:
                raise ValueError(f"{who}, tensor {name!r}: short read (the file changed while "
                                 f"reading?)")
            out[name] = dequantize(raw, info.ggml_type, info.shape, gg.byteorder)
    return out
