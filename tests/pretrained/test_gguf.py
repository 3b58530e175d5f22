"""The NumPy GGUF reader: synthetic files of every value type in either byte
order, the block formats against a hand computation and against the ``gguf``
package's dequantizers, metadata and tensors against files the ``gguf``
package writes, and one clear ValueError (naming the file) for every broken or
hostile file, raised before anything the header claims is allocated."""

from __future__ import annotations

import importlib.util
import struct

import numpy as np
import pytest

from numtransformer.pretrained.gguf import (DEQUANTIZABLE, GGML_TYPES, dequantize,
                                            load_gguf_tensors, read_gguf)

HAVE_GGUF = importlib.util.find_spec("gguf") is not None
needs_gguf = pytest.mark.skipif(not HAVE_GGUF, reason="needs the gguf package "
                                                       "(pip install gguf==0.19.0)")
TYPE_ID = {name: t for t, (name, _, _) in GGML_TYPES.items()}


# -- a small GGUF writer for the tests (also used by test_bpe.py) -------------------------------
# order: "<" little-endian (the norm), ">" big-endian
def gstr(x, order="<") -> bytes:
    b = x.encode() if isinstance(x, str) else x
    return struct.pack(order + "Q", len(b)) + b


SCALAR = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q",
          12: "d"}


def gval(vtype: int, value, order="<") -> bytes:
    """One value; an array (vtype 9) is (item type, items)."""
    if vtype == 8:
        return gstr(value, order)
    if vtype == 9:
        item, items = value
        return (struct.pack(order + "IQ", item, len(items))
                + b"".join(gval(item, v, order) for v in items))
    return struct.pack(order + SCALAR[vtype], value)


def gkv(key, vtype: int, value, order="<") -> bytes:
    return gstr(key, order) + struct.pack(order + "I", vtype) + gval(vtype, value, order)


def ginfo(name, ne, type_id: int, offset: int, order="<") -> bytes:
    return (gstr(name, order) + struct.pack(order + "I", len(ne))
            + b"".join(struct.pack(order + "Q", d) for d in ne)
            + struct.pack(order + "IQ", type_id, offset))


def build(kvs=(), tensors=(), *, alignment=32, version=3, n_kv=None, n_tensors=None,
          magic=b"GGUF", order="<") -> bytes:
    """kvs: encoded key/values (``gkv``, in the same ``order``); tensors: (name, ne,
    type name, raw bytes), laid out in order at aligned offsets."""
    infos, data = [], b""
    for name, ne, tname, raw in tensors:
        data += b"\0" * (-len(data) % alignment)
        infos.append(ginfo(name, ne, TYPE_ID[tname], len(data), order))
        data += raw
    head = (magic + struct.pack(order + "IQQ", version,
                                len(tensors) if n_tensors is None else n_tensors,
                                len(kvs) if n_kv is None else n_kv)
            + b"".join(kvs) + b"".join(infos))
    return head + b"\0" * (-len(head) % alignment) + data


def q8_0_block(d: float, q) -> bytes:
    return np.float16(d).tobytes() + np.asarray(q, np.int8).tobytes()


def q4_block(q, d: float, m: float | None = None) -> bytes:
    q = np.asarray(q, np.uint8)
    qs = (q[:16] | (q[16:] << 4)).astype(np.uint8)
    head = np.float16(d).tobytes() + (b"" if m is None else np.float16(m).tobytes())
    return head + qs.tobytes()


def write(tmp_path, raw: bytes, name="m.gguf"):
    path = tmp_path / name
    path.write_bytes(raw)
    return path


# -- reading ------------------------------------------------------------------------------------
def every_value_type(order="<") -> list:
    kvs = [("u8", 0, 250), ("i8", 1, -7), ("u16", 2, 65000), ("i16", 3, -300),
           ("u32", 4, 4_000_000_000), ("i32", 5, -5), ("f32", 6, 1.5), ("b", 7, True),
           ("s", 8, "héllo ✓"), ("u64", 10, 2**63 + 1), ("i64", 11, -(2**40)), ("f64", 12, 0.1),
           ("strings", 9, (8, ["a", "", "Ġt", "日本"])), ("ints", 9, (5, [1, -2, 3])),
           ("bools", 9, (7, [True, False])), ("nested", 9, (9, [(4, [1, 2]), (8, ["x"])])),
           ("arrays", 9, (9, [(4, [1, 2]), (4, [3])])), ("no strings", 9, (8, []))]
    return [gkv(*kv, order=order) for kv in kvs]


@pytest.mark.parametrize("order", ["<", ">"])
def test_metadata_of_every_value_type(tmp_path, order):
    gg = read_gguf(write(tmp_path, build(every_value_type(order), order=order)))
    assert gg.byteorder == order
    m = gg.metadata
    assert (m["u8"], m["i8"], m["u16"], m["i16"], m["u32"], m["i32"]) == (
        250, -7, 65000, -300, 4_000_000_000, -5)
    assert m["f32"] == 1.5 and m["b"] is True and m["s"] == "héllo ✓"
    assert m["u64"] == 2**63 + 1 and m["i64"] == -(2**40) and m["f64"] == 0.1
    assert m["strings"] == ["a", "", "Ġt", "日本"]
    assert m["ints"].dtype == np.int32 and m["ints"].tolist() == [1, -2, 3]
    assert m["bools"].dtype == bool and m["bools"].tolist() == [True, False]
    assert m["nested"][0].tolist() == [1, 2] and m["nested"][1] == ["x"]
    assert [a.tolist() for a in m["arrays"]] == [[1, 2], [3]] and m["no strings"] == []
    assert m["u16"] == 65000 and m["ints"].dtype.isnative and m["f64"] == 0.1
    assert gg.value_types["u32"] == "uint32" and gg.tensors == {} and gg.version == 3
    assert gg.value_types["strings"] == "array"
    # keys=: only those are kept (a missing one is simply absent); every key is still read
    some = read_gguf(gg.path, keys=["u8", "strings", "not there"])
    assert some.metadata == {"u8": 250, "strings": ["a", "", "Ġt", "日本"]}
    assert some.value_types == gg.value_types


def test_a_big_endian_file_reads_its_plain_tensors_and_names_its_blocks(tmp_path):
    f32 = (np.arange(6, dtype=np.float32).reshape(2, 3) / 4).astype(">f4")
    i16 = np.array([-2, 300], ">i2")
    bf16 = (np.array([1.5, -3.0], np.float32).view(np.uint32) >> 16).astype(">u2")
    kvs = [gkv("general.alignment", 4, 64, order=">")]
    tensors = [("f", [3, 2], "F32", f32.tobytes()), ("i", [2], "I16", i16.tobytes()),
               ("h", [2], "BF16", bf16.tobytes()),
               ("q", [32], "Q8_0", q8_0_block(1.0, range(32)))]
    path = write(tmp_path, build(kvs, tensors, alignment=64, order=">"))
    gg = read_gguf(path)
    assert gg.byteorder == ">" and gg.alignment == 64 and gg.tensors["f"].shape == (2, 3)
    out = load_gguf_tensors(gg, ["f", "i", "h"])
    assert out["f"].dtype == np.float32 and out["f"].dtype.isnative
    np.testing.assert_array_equal(out["f"], f32)
    assert out["i"].dtype.isnative and out["i"].tolist() == [-2, 300]
    assert out["h"].tolist() == [1.5, -3.0]
    with pytest.raises(ValueError, match=r"tensor 'q': Q8_0 blocks of a big-endian file"):
        load_gguf_tensors(gg, ["q"])
    with pytest.raises(ValueError, match="Q8_0 blocks of a big-endian file"):
        dequantize(np.zeros(34, np.uint8), "Q8_0", (32,), byteorder=">")


def test_tensors_shapes_offsets_and_values(tmp_path):
    rng = np.random.default_rng(0)
    f32 = rng.standard_normal((3, 5)).astype(np.float32)
    f16 = rng.standard_normal((2, 4)).astype(np.float16)
    i32 = np.arange(6, dtype=np.int32).reshape(2, 3)
    tensors = [("a", [5, 3], "F32", f32.tobytes()), ("b", [4, 2], "F16", f16.tobytes()),
               ("c", [3, 2], "I32", i32.tobytes()),
               ("q", [32, 2], "Q8_0", q8_0_block(0.5, range(32)) + q8_0_block(-2, [1] * 32))]
    path = write(tmp_path, build([gkv("general.alignment", 4, 64)], tensors, alignment=64))
    gg = read_gguf(path)
    assert gg.alignment == 64 and gg.data_start % 64 == 0
    assert [t.shape for t in gg.tensors.values()] == [(3, 5), (2, 4), (2, 3), (2, 32)]
    assert all(t.offset % 64 == 0 for t in gg.tensors.values())
    out = load_gguf_tensors(path)
    np.testing.assert_array_equal(out["a"], f32)
    assert out["b"].dtype == np.float32
    np.testing.assert_array_equal(out["b"], f16.astype(np.float32))
    assert out["c"].dtype == np.int32 and out["c"].tolist() == i32.tolist()
    np.testing.assert_array_equal(out["q"][0], 0.5 * np.arange(32, dtype=np.float32))
    np.testing.assert_array_equal(out["q"][1], np.full(32, -2.0, np.float32))
    assert list(load_gguf_tensors(gg, ["c"])) == ["c"]
    with pytest.raises(KeyError, match="'zz'"):
        load_gguf_tensors(gg, ["a", "zz"])


@needs_gguf
@pytest.mark.parametrize("big", [False, True], ids=["little-endian", "big-endian"])
def test_metadata_and_tensors_equal_the_gguf_package(tmp_path, big):
    import gguf
    path = tmp_path / "w.gguf"
    weight = np.arange(12, dtype=np.float32).reshape(3, 4) / 8
    w = gguf.GGUFWriter(str(path), "llama",
                        endianess=gguf.GGUFEndian.BIG if big else gguf.GGUFEndian.LITTLE)
    w.add_uint32("llama.block_count", 30)
    w.add_float32("llama.rope.freq_base", 100000.0)
    w.add_token_list(["<|im_start|>", "a", "Ġthe"])
    w.add_token_types([3, 1, 1])
    w.add_token_merges(["Ġ t", "h e"])
    w.add_chat_template("{% for m in messages %}\n{% endfor %}")
    w.add_tensor("w", weight.copy())
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    gg = read_gguf(path)
    assert gg.byteorder == (">" if big else "<")
    theirs = gguf.GGUFReader(str(path))
    keys = [k for k in theirs.fields if not k.startswith("GGUF.")]
    assert keys == list(gg.metadata)
    for key in keys:
        got = gg.metadata[key]
        want = theirs.fields[key].contents()
        assert (got.tolist() if isinstance(got, np.ndarray) else got) == want, key
    np.testing.assert_array_equal(load_gguf_tensors(gg)["w"], weight)


# -- the block formats by hand ------------------------------------------------------------------
def test_q8_0_by_hand():
    q = np.arange(-16, 16, dtype=np.int8) * 4  # -64 .. 60
    raw = np.frombuffer(q8_0_block(0.125, q), np.uint8)
    out = dequantize(raw, TYPE_ID["Q8_0"], (32,))
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, [0.125 * v for v in q.tolist()])


def test_q4_1_by_hand():
    q = [(3 * j + 1) % 16 for j in range(32)]  # every nibble value, in a scrambled order
    raw = np.frombuffer(q4_block(q, 0.25, -1.5), np.uint8)
    # byte j holds value j in its low nibble and value j + 16 in its high nibble
    assert raw[4] == q[0] | (q[16] << 4)
    out = dequantize(raw, "Q4_1", (1, 32))
    expected = [[0.25 * v - 1.5 for v in q]]
    np.testing.assert_array_equal(out, np.array(expected, np.float32))


def test_q4_0_by_hand():
    q = list(range(16)) * 2
    out = dequantize(np.frombuffer(q4_block(q, 2.0), np.uint8), "Q4_0", (32,))
    np.testing.assert_array_equal(out, [2.0 * (v - 8) for v in q])


def test_bf16_is_widened_exactly():
    x = np.array([1.0, -2.5, 3.140625, 1e-3], np.float32)
    words = (x.view(np.uint32) >> 16).astype("<u2")
    out = dequantize(words.view(np.uint8), "BF16", (4,))
    np.testing.assert_array_equal(out, (words.astype(np.uint32) << 16).view(np.float32))


def random_blocks(rng, name, n_blocks):
    _, block, size = GGML_TYPES[TYPE_ID[name]]
    raw = rng.integers(0, 256, (n_blocks, size), dtype=np.uint8)
    if name in ("Q8_0", "Q4_0", "Q4_1"):  # finite float16 scales
        scales = rng.standard_normal((n_blocks, 2 if name == "Q4_1" else 1)).astype("<f2")
        raw[:, :2 * scales.shape[1]] = scales.view(np.uint8)
    if name in ("F16", "BF16"):  # keep the raw words finite
        raw[:, 1] &= 0x3F
    return raw.reshape(-1)


@needs_gguf
@pytest.mark.parametrize("name", ["Q8_0", "Q4_0", "Q4_1", "F16", "BF16", "F32"])
def test_dequantize_equals_the_gguf_package(name):
    from gguf.constants import GGMLQuantizationType
    from gguf.quants import dequantize as reference
    rng = np.random.default_rng(1)
    _, block, size = GGML_TYPES[TYPE_ID[name]]
    raw = random_blocks(rng, name, 96)
    n = raw.size // size * block
    ours = dequantize(raw, name, (n,))
    theirs = reference(raw.reshape(-1, size) if block > 1 else raw,
                       GGMLQuantizationType[name]).reshape(-1)
    assert ours.dtype == theirs.dtype == np.float32
    np.testing.assert_array_equal(ours.view(np.uint32), theirs.view(np.uint32))  # bit for bit


@needs_gguf
def test_type_table_equals_the_gguf_package():
    from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType
    for t, (name, block, size) in GGML_TYPES.items():
        assert GGMLQuantizationType(t).name == name
        assert GGML_QUANT_SIZES[GGMLQuantizationType(t)] == (block, size), name


# -- broken and hostile files -------------------------------------------------------------------
def small_file() -> bytes:
    kvs = [gkv("general.architecture", 8, "llama"), gkv("t", 9, (8, ["ab", "c"]))]
    tensors = [("w", [32, 2], "Q4_1", q4_block(range(32), 1.0, 0.0) * 2),
               ("n", [4], "F32", np.ones(4, np.float32).tobytes())]
    return build(kvs, tensors)


def one_line_error(path, raw: bytes, match: str):
    path.write_bytes(raw)
    with pytest.raises(ValueError, match=match) as info:
        gg = read_gguf(path)
        load_gguf_tensors(gg)
    msg = str(info.value)
    assert "\n" not in msg and str(path) in msg, msg
    return msg


def test_every_truncation_is_a_clear_error(tmp_path):
    raw = small_file()
    path = tmp_path / "cut.gguf"
    assert load_gguf_tensors(write(tmp_path, raw, "cut.gguf"))["n"].tolist() == [1.0] * 4
    for n in range(len(raw)):
        one_line_error(path, raw[:n], "truncated|not a GGUF file")


@pytest.mark.parametrize("order", ["<", ">"])
def test_every_truncation_of_every_value_type_is_a_clear_error(tmp_path, order):
    kvs = every_value_type(order)
    end = 24 + sum(map(len, kvs))  # no tensors: the file may end with its metadata
    raw = build(kvs, order=order)[:end]
    path = tmp_path / "cut.gguf"
    assert read_gguf(write(tmp_path, raw, "cut.gguf")).metadata["u8"] == 250
    for n in range(end):
        one_line_error(path, raw[:n], "truncated|not a GGUF file")


def patched(raw: bytes, old: bytes, new: bytes) -> bytes:
    assert raw.count(old) == 1
    return raw.replace(old, new)


HOSTILE = {
    "magic": (lambda: build(magic=b"GGUX"), "not a GGUF file"),
    "version": (lambda: build(version=1), "version 1 is not supported"),
    "huge kv count": (lambda: build(n_kv=2**63), "claims 9223372036854775808 items"),
    "huge tensor count": (lambda: build(n_tensors=2**64 - 1), "tensor count claims"),
    "huge string": (lambda: build([struct.pack("<Q", 2**40) + b"k" + struct.pack("<I", 8)
                                   + gstr("v")]),
                    "truncated: metadata key 0 needs 1099511627776 bytes"),
    "huge key": (lambda: build([struct.pack("<Q", 2**63) + bytes(16)]),
                 "truncated: metadata key 0 needs 9223372036854775808 bytes"),
    "huge string value": (lambda: build([gstr("s") + struct.pack("<IQ", 8, 2**60) + b"x"]),
                          "truncated: metadata 's' needs 1152921504606846976 bytes"),
    "huge array": (lambda: build([gstr("k") + struct.pack("<IIQ", 9, 4, 2**62)]),
                   "metadata 'k' claims 4611686018427387904 items"),
    "huge string array": (lambda: build([gstr("k") + struct.pack("<IIQ", 9, 8, 2**62)
                                         + gstr("x")]),
                          "metadata 'k' claims 4611686018427387904 items, at least "
                          "36893488147419103232 bytes"),
    "huge array of arrays": (lambda: build([gstr("k") + struct.pack("<IIQ", 9, 9, 2**61)
                                            + struct.pack("<IQ", 4, 0)]),
                             "metadata 'k' claims 2305843009213693952 items, at least "
                             "27670116110564327424 bytes"),
    "big-endian huge kv count": (lambda: build(n_kv=2**63, order=">"),
                                 "claims 9223372036854775808 items"),
    "too short": (lambda: b"GGUF" + bytes(10), "version 0 is not supported"),
    "unknown value type": (lambda: build([gstr("k") + struct.pack("<I", 13) + b"\0" * 8]),
                           "unknown value type 13"),
    "unknown array type": (lambda: build([gstr("k") + struct.pack("<IIQ", 9, 99, 1)]),
                           "array of unknown value type 99"),
    "deep nesting": (lambda: build([gstr("k") + struct.pack("<IIQ", 9, 9, 1)
                                    + struct.pack("<IQ", 9, 1) * 9 + struct.pack("<IQ", 4, 0)]),
                     "nests arrays more than 8 deep"),
    "bad utf-8": (lambda: build([gkv("k", 8, b"\xff\xfe")]), "not valid UTF-8"),
    "duplicate key": (lambda: build([gkv("k", 4, 1), gkv("k", 4, 2)]), "duplicate metadata key"),
    "bad alignment": (lambda: build([gkv("general.alignment", 4, 24)]),
                      "general.alignment must be a uint32 power of two"),
    "alignment type": (lambda: build([gkv("general.alignment", 8, "32")]),
                       "general.alignment must be"),
    "duplicate tensor": (lambda: build(tensors=[("w", [4], "F32", b"\0" * 16)] * 2),
                         "duplicate tensor name 'w'"),
    "unknown ggml type": (lambda: patched(build(tensors=[("w", [4], "F32", b"\0" * 16)]),
                                          ginfo("w", [4], 0, 0), ginfo("w", [4], 77, 0)),
                          "unknown ggml type 77"),
    "no dims": (lambda: patched(build(tensors=[("w", [4], "F32", b"\0" * 16)]),
                                ginfo("w", [4], 0, 0), ginfo("w", [], 0, 0) + b"\0" * 8),
                "0 dimensions"),
    "five dims": (lambda: build(tensors=[("w", [1, 1, 1, 1, 1], "F32", b"\0" * 4)]),
                  "5 dimensions"),
    "partial block": (lambda: build(tensors=[("w", [16], "Q8_0", b"\0" * 34)]),
                      "row length 16 is not a multiple of the Q8_0 block size 32"),
    "misaligned": (lambda: patched(build(tensors=[("w", [4], "F32", b"\0" * 16)]),
                                   ginfo("w", [4], 0, 0), ginfo("w", [4], 0, 4)),
                   "offset 4 is not a multiple of the alignment 32"),
    "huge tensor": (lambda: build(tensors=[("w", [2**31, 2**31], "F32", b"\0" * 16)]),
                    "truncated: tensor 'w'"),
    "beyond the end": (lambda: patched(build(tensors=[("w", [4], "F32", b"\0" * 16)]),
                                       ginfo("w", [4], 0, 0), ginfo("w", [4], 0, 2**40)),
                       "truncated: tensor 'w'"),
    "overlap": (lambda: patched(build(tensors=[("a", [8], "F32", b"\0" * 32),
                                               ("b", [8], "F32", b"\0" * 32)]),
                                ginfo("b", [8], 0, 32), ginfo("b", [8], 0, 0)),
                "overlaps the tensor before it"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_files_are_refused_by_name(tmp_path, case):
    make, match = HOSTILE[case]
    one_line_error(tmp_path / f"{case.replace(' ', '_')}.gguf", make(), match)


def test_unsupported_tensor_type_is_named_on_load(tmp_path):
    path = write(tmp_path, build(tensors=[("k", [256], "Q6_K", b"\0" * 210)]))
    gg = read_gguf(path)  # the header is readable: the tokenizer of such a file still loads
    assert gg.tensors["k"].type_name == "Q6_K" and gg.tensors["k"].nbytes == 210
    with pytest.raises(ValueError, match=r"tensor 'k': ggml type Q6_K is not supported"):
        load_gguf_tensors(gg)
    assert "Q6_K" not in DEQUANTIZABLE


def test_a_file_that_changed_size_is_refused(tmp_path):
    path = write(tmp_path, small_file())
    gg = read_gguf(path)
    path.write_bytes(small_file()[:-4])
    with pytest.raises(ValueError, match="changed size"):
        load_gguf_tensors(gg)
