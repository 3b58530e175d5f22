"""The NumPy safetensors reader: round trips, and a clear ValueError for every broken file."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest

from numtransformer.pretrained.safetensors import (load_safetensors, read_safetensors_header,
                                                   save_safetensors)


def write_raw(path, header: dict | bytes, data: bytes = b"", length: int | None = None):
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    n = len(raw) if length is None else length
    path.write_bytes(struct.pack("<Q", n) + raw + data)
    return path


def entry(dtype, shape, begin, end):
    return {"dtype": dtype, "shape": shape, "data_offsets": [begin, end]}


def test_round_trip_every_dtype(tmp_path):
    rng = np.random.default_rng(0)
    tensors = {
        "f64": rng.standard_normal((2, 3)),
        "f32": rng.standard_normal((4,)).astype(np.float32),
        "f16": rng.standard_normal((3, 1)).astype(np.float16),
        "i64": np.arange(-3, 3, dtype=np.int64).reshape(2, 3),
        "i32": np.array([1, -2], np.int32), "i16": np.array([7], np.int16),
        "i8": np.array([-8, 9], np.int8), "u8": np.array([250], np.uint8),
        "u16": np.array([65000], np.uint16), "u32": np.array([1], np.uint32),
        "u64": np.array([2**63], np.uint64), "bool": np.array([True, False, True]),
        "scalar": np.float32(2.5), "empty": np.zeros((0, 3), np.float32),
        "big_endian": np.arange(3, dtype=">f4"),
    }
    path = tmp_path / "t.safetensors"
    save_safetensors(path, tensors, metadata={"format": "np", "n": 3})
    out = load_safetensors(path)
    assert list(out) == list(tensors)
    for k, v in tensors.items():
        v = np.asarray(v)
        assert out[k].shape == v.shape, k
        assert out[k].dtype == v.dtype.newbyteorder("="), k
        assert out[k].dtype.isnative
        np.testing.assert_array_equal(out[k], v)
    header, metadata = read_safetensors_header(path)
    assert metadata == {"format": "np", "n": "3"}
    assert header["f32"] == {"dtype": "F32", "shape": [4], "data_offsets": header["f32"][
        "data_offsets"]}
    (n,) = struct.unpack("<Q", path.read_bytes()[:8])
    assert n % 8 == 0


def test_select_names_and_missing_name(tmp_path):
    path = tmp_path / "t.safetensors"
    save_safetensors(path, {"a": np.ones(2, np.float32), "b": np.zeros(3)})
    assert list(load_safetensors(path, names=["b"])) == ["b"]
    with pytest.raises(KeyError, match="'c'"):
        load_safetensors(path, names=["a", "c"])


def test_bf16_is_widened_exactly(tmp_path):
    x = np.array([1.0, -2.5, 3.140625, 1e-3], np.float32)
    words = (x.view(np.uint32) >> 16).astype("<u2")  # truncate to bfloat16
    path = write_raw(tmp_path / "b.safetensors", {"x": entry("BF16", [4], 0, 8)},
                     words.tobytes())
    out = load_safetensors(path)["x"]
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, (words.astype(np.uint32) << 16).view(np.float32))
    assert out[0] == 1.0 and out[1] == -2.5


def test_save_refuses_unsupported_dtypes(tmp_path):
    with pytest.raises(TypeError, match="complex128"):
        save_safetensors(tmp_path / "x.safetensors", {"z": np.zeros(2, complex)})


def test_truncated_files(tmp_path):
    good = tmp_path / "good.safetensors"
    save_safetensors(good, {"a": np.arange(6, dtype=np.float32), "b": np.ones(4)})
    raw = good.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    for cut, message in [(0, "truncated"), (5, "truncated"), (8 + n // 2, "header length"),
                         (8 + n + 3, "outside"), (len(raw) - 1, "outside")]:
        bad = tmp_path / f"cut{cut}.safetensors"
        bad.write_bytes(raw[:cut])
        with pytest.raises(ValueError, match=message):
            load_safetensors(bad)


def test_absurd_sizes_never_allocate(tmp_path):
    """A header claiming terabytes (or a 2^63-byte header) fails on a size check."""
    huge = write_raw(tmp_path / "huge.safetensors", b"{}", length=2**63)
    with pytest.raises(ValueError, match="exceeds"):
        load_safetensors(huge)
    claim = write_raw(tmp_path / "claim.safetensors",
                      {"x": entry("F32", [10**6, 10**6], 0, 4 * 10**12)}, b"\0" * 16)
    with pytest.raises(ValueError, match="outside the 16-byte buffer"):
        load_safetensors(claim)
    overflow = write_raw(tmp_path / "overflow.safetensors",
                         {"x": entry("F32", [2**40, 2**40], 0, 4)}, b"\0" * 4)
    with pytest.raises(ValueError, match="need"):
        load_safetensors(overflow)


@pytest.mark.parametrize("header, data, message", [
    (b"not json", b"", "not valid UTF-8 JSON"),
    (b"\xff\xfe{}", b"", "not valid UTF-8 JSON"),
    (b"[1, 2]", b"", "must be a JSON object, got list"),
    (b'{"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}, "a": {"dtype": "F32", '
     b'"shape": [1], "data_offsets": [0, 4]}}', b"\0" * 4, "duplicate key 'a'"),
    ({"a": entry("F8_E4M3", [1], 0, 1)}, b"\0", "unsupported dtype 'F8_E4M3'"),
    ({"a": entry("F32", [-1], 0, 4)}, b"\0" * 4, "non-negative ints"),
    ({"a": entry("F32", [1.5], 0, 4)}, b"\0" * 4, "non-negative ints"),
    ({"a": entry("F32", "4", 0, 4)}, b"\0" * 4, "non-negative ints"),
    ({"a": {"dtype": "F32", "shape": [1], "data_offsets": [0]}}, b"\0" * 4, "begin, end"),
    ({"a": {"dtype": "F32", "shape": [1]}}, b"\0" * 4, "exactly dtype, shape and data_offsets"),
    ({"a": [1, 2]}, b"", "exactly dtype, shape"),
    ({"a": entry("F32", [2], 4, 0)}, b"\0" * 8, "outside"),
    ({"a": entry("F32", [2], 0, 4)}, b"\0" * 4, "4 bytes for dtype F32 and shape \\(2,\\)"),
    ({"a": entry("F32", [1], 0, 4), "b": entry("F32", [1], 2, 6)}, b"\0" * 6, "overlaps"),
    ({"a": entry("F32", [1], 0, 4), "b": entry("F32", [1], 8, 12)}, b"\0" * 12, "hole of 4"),
    ({"a": entry("F32", [1], 0, 4)}, b"\0" * 9, "trailing bytes"),
    ({"__metadata__": {"k": 1}}, b"", "__metadata__ must map strings to strings"),
])
def test_inconsistent_headers(tmp_path, header, data, message):
    path = write_raw(tmp_path / "bad.safetensors", header, data)
    with pytest.raises(ValueError, match=message):
        load_safetensors(path)
    with pytest.raises(ValueError, match="bad.safetensors"):
        read_safetensors_header(path)


def test_zero_tensors_is_valid(tmp_path):
    path = write_raw(tmp_path / "empty.safetensors", {"__metadata__": {"a": "b"}})
    assert load_safetensors(path) == {}
    assert read_safetensors_header(path) == ({}, {"a": "b"})


def test_atomic_write_leaves_no_temp_file(tmp_path):
    path = tmp_path / "x.safetensors"
    with pytest.raises(TypeError):
        save_safetensors(path, {"a": np.zeros(1), "z": np.zeros(1, complex)})
    assert list(tmp_path.iterdir()) == []


def test_agrees_with_the_safetensors_package(tmp_path):
    st = pytest.importorskip("safetensors.numpy")
    rng = np.random.default_rng(1)
    tensors = {"w": rng.standard_normal((3, 4)).astype(np.float32),
               "ids": np.arange(5, dtype=np.int64), "h": np.ones(2, np.float16)}
    theirs = tmp_path / "theirs.safetensors"
    st.save_file(tensors, str(theirs), metadata={"format": "pt"})
    out = load_safetensors(theirs)
    assert read_safetensors_header(theirs)[1] == {"format": "pt"}
    for k, v in tensors.items():
        np.testing.assert_array_equal(out[k], v)
    ours = tmp_path / "ours.safetensors"
    save_safetensors(ours, tensors)
    back = st.load_file(str(ours))
    for k, v in tensors.items():
        np.testing.assert_array_equal(back[k], v)
