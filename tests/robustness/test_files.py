"""Hostile files (issue 10): checkpoints, vocabularies and safetensors that are
truncated, bit-flipped, of the wrong model, with missing or extra keys, wrong
shapes or dtypes, object arrays (pickles) or absurd declared sizes.

Each must end in a clear ValueError (CheckpointError is one) naming the file,
never run code (a pickle that would create a marker file never does), and
never cost more memory than the file itself (tracemalloc sees numpy's
allocations).  A corruption that cannot be told from a valid file must not
exist for checkpoints (the zip CRC covers every entry) and vocabularies (a
sha256 covers the tokens); for safetensors, whose format carries no checksum,
a flipped payload bit loads as a different but finite, well-formed tensor --
the one undetectable case, counted in the summary.
"""

from __future__ import annotations

import json
import os
import pickle
import random
import struct
import tracemalloc
import zipfile

import numpy as np
import pytest

from numtransformer.checkpoint import CheckpointError, load_checkpoint
from numtransformer.data.tokenizers import SPECIALS, CharTokenizer, WordTokenizer, load_tokenizer
from numtransformer.pretrained import (BertModel, hf_bert_name_map, load_hf_bert_weights,
                                       load_safetensors, save_safetensors)
from numtransformer.train import TrainConfig, Trainer

from .tally import FAULTS, NOTES

TINY = dict(task="copy", n_train=200, n_valid=10, n_test=10, d_model=8, nhead=2, layers=1,
            dim_feedforward=16, dropout=0.1, batch_size=8, eval_every=0, checkpoint_every=0,
            eval_examples=10, warmup=2)
MEMORY_LIMIT = 16 * 2**20  # bytes numpy may allocate while refusing any forged file here


def _quiet():
    return open(os.devnull, "w")


class Boom:
    """Unpickling this runs ``touch <marker>``; nothing may ever do so."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A 3-step training run's checkpoint: (path, bytes, parameters)."""
    out = str(tmp_path_factory.mktemp("ckpt") / "run")
    t = Trainer(TrainConfig(steps=3, **TINY), out_dir=out, stream=_quiet())
    t.fit()
    t.close()
    path = os.path.join(out, "checkpoint.npz")
    params = {n: p.data.copy() for n, p in t.model.named_parameters()}
    return path, open(path, "rb").read(), params


def _bounded(fn):
    """Run fn under tracemalloc; return (exception or None, peak bytes)."""
    tracemalloc.start()
    try:
        fn()
        exc = None
    except Exception as e:  # noqa: BLE001 - the caller judges it
        exc = e
    finally:
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    return exc, peak


# -- checkpoints ------------------------------------------------------------------------------
def _load_run(path, intact):
    """'refused' (CheckpointError) or 'identical' (everything read equals the intact
    checkpoint ``intact``, a Checkpoint)."""
    try:
        ck = load_checkpoint(path)
    except CheckpointError:
        return "refused"
    same = (ck.config == intact.config and ck.meta == intact.meta
            and ck.params.keys() == intact.params.keys() and ck.optim.keys() == intact.optim.keys()
            and all(np.array_equal(ck.params[k], intact.params[k]) for k in ck.params)
            and all(np.array_equal(ck.optim[k], intact.optim[k]) for k in ck.optim))
    if same:
        return "identical"
    with pytest.raises(CheckpointError):  # read, but different: the run must refuse it
        Trainer.from_checkpoint(path, stream=_quiet())
    return "refused"


def test_truncated_checkpoints_are_refused(run, tmp_path):
    path, data, params = run
    bad = str(tmp_path / "cut.npz")
    for cut in list(range(0, 600, 7)) + list(range(600, len(data), 997)) + [len(data) - 1]:
        with open(bad, "wb") as f:
            f.write(data[:cut])
        with pytest.raises(CheckpointError, match="cut.npz"):
            load_checkpoint(bad)
        FAULTS["checkpoint: truncated"]["refused"] += 1


def test_bit_flipped_checkpoints_are_refused_or_harmless(run, tmp_path):
    """Every flip is refused (zip CRC, headers) or hit a field nothing reads (a
    timestamp): then the run loads with exactly the original parameters."""
    path, data, params = run
    bad = str(tmp_path / "flip.npz")
    intact = load_checkpoint(path)
    rng = random.Random(10)
    positions = [rng.randrange(len(data)) for _ in range(150)]
    positions += list(range(len(data) - 400, len(data), 8))  # the central directory
    for pos in positions:
        b = bytearray(data)
        b[pos] ^= 1 << rng.randrange(8)
        with open(bad, "wb") as f:
            f.write(b)
        FAULTS["checkpoint: bit flip"][_load_run(bad, intact)] += 1
    assert FAULTS["checkpoint: bit flip"]["refused"] > 0.8 * len(positions)


def _entries(path):
    with np.load(path) as z:
        return {k: z[k] for k in z.files}


def _json_entry(arrays, key, change):
    obj = json.loads(str(arrays[key]))
    change(obj)
    return dict(arrays, **{key: np.array(json.dumps(obj))})


def _structural_faults(a):
    """name -> the checkpoint's entries after the fault (a: the intact entries)."""
    p = sorted(k for k in a if k.startswith("param/"))
    o = sorted(k for k in a if k.startswith("optim/") and "." in k)
    cfg = lambda f: _json_entry(a, "config", f)  # noqa: E731
    meta = lambda f: _json_entry(a, "meta", f)  # noqa: E731
    return {
        "missing parameter": {k: v for k, v in a.items() if k != p[0]},
        "extra parameter": dict(a, **{"param/extra.W": np.zeros(3, np.float32)}),
        "missing optimizer moment": {k: v for k, v in a.items() if k != o[0]},
        "missing optimizer step": {k: v for k, v in a.items() if k != "optim/step_count"},
        "extra optimizer entry": dict(a, **{"optim/v.nope": np.zeros(2, np.float32)}),
        "parameter of the wrong shape": dict(a, **{p[0]: a[p[0]].T.copy()}),
        "parameter of dtype int64": dict(a, **{p[0]: a[p[0]].astype(np.int64)}),
        "parameter of dtype float64": dict(a, **{p[0]: a[p[0]].astype(np.float64)}),
        "parameter of dtype float16": dict(a, **{p[0]: a[p[0]].astype(np.float16)}),
        "parameter of dtype complex": dict(a, **{p[0]: a[p[0]].astype(np.complex64)}),
        "parameter as text": dict(a, **{p[0]: a[p[0]].astype(str)}),
        "parameter with NaN": dict(a, **{p[0]: np.full_like(a[p[0]], np.nan)}),
        "optimizer moment with inf": dict(a, **{o[0]: np.full_like(a[o[0]], np.inf)}),
        "optimizer step of another run": dict(a, **{"optim/step_count": np.array(7)}),
        "optimizer step as a vector": dict(a, **{"optim/step_count": np.array([1, 2])}),
        "no format tag": {k: v for k, v in a.items() if k != "__format__"},
        "another format": dict(a, __format__=np.array("numtransformer-checkpoint-9")),
        "config not JSON": dict(a, config=np.array("{nope")),
        "config a JSON list": dict(a, config=np.array("[1, 2]")),
        "config nested 100000 deep": dict(a, config=np.array('{"a":' * 100000 + "1"
                                                            + "}" * 100000)),
        "meta not an object": dict(a, meta=np.array("NaN")),
        "config of another kind": cfg(lambda c: c.update(kind="something-else")),
        "config without training settings": cfg(lambda c: c.pop("train")),
        "config without vocabulary": cfg(lambda c: c.pop("src_vocab")),
        "another vocabulary": cfg(lambda c: c["tgt_vocab"]["tokens"].append("zz")),
        "another model (d_model)": cfg(lambda c: c["train"].update(d_model=16)),
        "another model (seq2seq)": cfg(lambda c: c["train"].update(model="seq2seq")),
        "setting of the wrong type": cfg(lambda c: c["train"].update(d_model="64")),
        "unknown setting": cfg(lambda c: c["train"].update(turbo=True)),
        "unknown task": cfg(lambda c: c["train"].update(task="nope")),
        "absurd n_train": cfg(lambda c: c["train"].update(n_train=10**12)),
        "absurd d_model": cfg(lambda c: c["train"].update(d_model=2**20)),
        "absurd layers": cfg(lambda c: c["train"].update(layers=10**6)),
        "zero batch size": cfg(lambda c: c["train"].update(batch_size=0)),
        "meta without step": meta(lambda m: m.pop("step")),
        "meta step negative": meta(lambda m: m.update(step=-3)),
        "meta step text": meta(lambda m: m.update(step="3")),
        "meta without rng": meta(lambda m: m.pop("rng")),
        "meta rng garbage": meta(lambda m: m["rng"].update({k: 5 for k in m["rng"]})),
        "meta data position beyond the epoch": meta(lambda m: m["data"].update(index=10**9)),
        "meta without data position": meta(lambda m: m.pop("data")),
        "meta history not a list": meta(lambda m: m.update(history=5)),
    }


def test_structurally_wrong_checkpoints_are_clear_errors(run, tmp_path):
    path, data, params = run
    intact = _entries(path)
    for name, arrays in _structural_faults(intact).items():
        bad = str(tmp_path / "bad.npz")
        np.savez(bad, **arrays)
        load = lambda: Trainer.from_checkpoint(bad, stream=_quiet())  # noqa: E731
        if name.startswith("absurd"):  # refused before anything is built from them
            exc, peak = _bounded(load)
            assert peak < MEMORY_LIMIT, f"{name}: {peak} bytes"
        else:
            with pytest.raises(CheckpointError) as err:
                load()
            exc = err.value
        assert isinstance(exc, CheckpointError), f"{name}: {exc!r}"
        assert "bad.npz" in str(exc), f"{name}: {exc}"
        FAULTS["checkpoint: structure"]["refused"] += 1
    NOTES["checkpoint structural faults"] = sorted(_structural_faults(intact))


def test_pickles_in_checkpoints_are_refused_and_never_run(run, tmp_path):
    path, data, params = run
    marker = tmp_path / "pwned"
    intact = _entries(path)
    evil = np.array([Boom(str(marker))], dtype=object)
    cases = {"param": dict(intact, **{"param/src_embed.W": evil}),
             "optim": dict(intact, **{"optim/step_count": evil}),
             "config": dict(intact, config=evil)}
    for name, arrays in cases.items():
        bad = str(tmp_path / f"{name}.npz")
        np.savez(bad, **arrays)
        with pytest.raises(CheckpointError, match="object array|pickle|allow_pickle"):
            Trainer.from_checkpoint(bad, stream=_quiet())
        FAULTS["checkpoint: pickle"]["refused"] += 1
    raw = str(tmp_path / "raw.npz")
    with open(raw, "wb") as f:
        pickle.dump({"param/W": Boom(str(marker))}, f)
    with pytest.raises(CheckpointError):
        Trainer.from_checkpoint(raw, stream=_quiet())
    FAULTS["checkpoint: pickle"]["refused"] += 1
    assert not marker.exists(), "a pickle in a checkpoint was executed"


def _npy_header(shape, descr="<f4"):
    import io
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": descr, "fortran_order": False,
                                               "shape": tuple(shape)})
    return buf.getvalue()


def test_absurd_declared_sizes_are_refused_in_bounded_memory(run, tmp_path):
    path, data, params = run
    intact = _entries(path)
    # 1. an array header declaring 4 TiB over 16 real bytes
    forged = str(tmp_path / "header.npz")
    np.savez(forged, **intact)
    with zipfile.ZipFile(forged, "a") as z:
        z.writestr("param/huge.npy", _npy_header((2**40,)) + b"\0" * 16)
    # 2. a zip bomb: 64 MiB of zeros deflated to ~64 KiB, declared honestly
    bomb = str(tmp_path / "bomb.npz")
    np.savez(bomb, **intact)
    with zipfile.ZipFile(bomb, "a", compression=zipfile.ZIP_DEFLATED) as z:
        with z.open("param/bomb.npy", "w", force_zip64=True) as f:
            f.write(_npy_header((16 * 2**20,)))
            chunk = b"\0" * 2**20
            for _ in range(64):
                f.write(chunk)
    # 3. a central directory that declares an entry of 2 GiB in a small file
    lying = str(tmp_path / "lying.npz")
    np.savez(lying, x=np.zeros(4, np.float32))
    raw = bytearray(open(lying, "rb").read())
    cd = raw.rfind(b"PK\x01\x02")
    raw[cd + 24: cd + 28] = struct.pack("<I", 2**31)  # the uncompressed size field
    open(lying, "wb").write(bytes(raw))
    assert os.path.getsize(bomb) < 2**20
    for name, file in (("header", forged), ("bomb", bomb), ("lying", lying)):
        exc, peak = _bounded(lambda: load_checkpoint(file))
        assert isinstance(exc, CheckpointError), f"{name}: {exc!r}"
        assert peak < MEMORY_LIMIT, f"{name}: numpy allocated {peak} bytes"
        FAULTS["checkpoint: absurd declared size"]["refused"] += 1


# -- vocabularies -------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["char", "word"])
def test_every_truncation_and_bit_flips_of_a_vocabulary_are_refused(tmp_path, kind):
    texts = ["the cat sat on the mat", "a dog ran", "héllo wörld ✓ 日本"]
    tok = (CharTokenizer if kind == "char" else WordTokenizer).build(texts)
    good = str(tmp_path / "vocab.json")
    tok.save(good)
    data = open(good, "rb").read()
    bad = str(tmp_path / "bad.json")
    rng = random.Random(12)
    faults = [data[:cut] for cut in range(len(data))]
    for pos in range(len(data)):  # every byte, a bit of it (all 8 bits: HYPOTHESIS_PROFILE=dev)
        for bit in range(8) if os.environ.get("HYPOTHESIS_PROFILE") == "dev" else \
                [rng.randrange(8)]:
            b = bytearray(data)
            b[pos] ^= 1 << bit
            faults.append(bytes(b))
    for blob in faults:
        with open(bad, "wb") as f:
            f.write(blob)
        with pytest.raises(ValueError, match="bad.json"):
            load_tokenizer(bad)
        FAULTS["vocabulary: truncated or bit flip"]["refused"] += 1
    assert load_tokenizer(good).itos == tok.itos


@pytest.mark.parametrize("content, match", [
    (b"[" * 100000 + b"]" * 100000, "not valid JSON"),
    (b"\xff\xfe\x00{", "not valid JSON"),
    (pickle.dumps({"kind": "word", "tokens": list(SPECIALS)}), "not valid JSON"),
    (json.dumps({"kind": "word", "tokens": list(SPECIALS), "tokenz": []}).encode(),
     "unexpected keys"),
    (json.dumps({"kind": "word", "tokens": list(SPECIALS) + ["a"], "sha256": "0" * 64}).encode(),
     "corrupt"),
    (json.dumps({"kind": "word", "tokens": list(SPECIALS) + [7]}).encode(), "list of strings"),
    (json.dumps(["<pad>"]).encode(), "kind"),
])
def test_malformed_vocabularies_are_clear_errors(tmp_path, content, match):
    path = tmp_path / "v.json"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=match) as err:
        load_tokenizer(str(path))
    assert "v.json" in str(err.value)
    FAULTS["vocabulary: structure"]["refused"] += 1


# -- safetensors -------------------------------------------------------------------------------
BERT = dict(vocab_size=9, hidden_size=4, num_hidden_layers=1, num_attention_heads=2,
            intermediate_size=8, max_position_embeddings=6)


def _hf_tensors(model):
    """The model's parameters under their Hugging Face names."""
    params, out = dict(model.named_parameters()), {}
    D = model.config["hidden_size"]
    for ours, (src, how) in hf_bert_name_map(model).items():
        v = params[ours].data
        if how == "T":
            out[src] = v.T.copy()
        elif how == "qkv.T":
            out.update({n: v[:, i * D:(i + 1) * D].T.copy() for i, n in enumerate(src)})
        elif how == "qkv":
            out.update({n: v[i * D:(i + 1) * D].copy() for i, n in enumerate(src)})
        else:
            out[src] = v.copy()
    return out


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    model = BertModel(**BERT, rng=np.random.default_rng(0))
    tensors = _hf_tensors(model)
    path = str(tmp_path_factory.mktemp("st") / "w.safetensors")
    save_safetensors(path, tensors)
    return path, open(path, "rb").read(), tensors


def _load_bert(path):
    model = BertModel(**BERT, rng=np.random.default_rng(1))
    load_hf_bert_weights(model, load_safetensors(path))
    return model


def test_truncated_and_bit_flipped_safetensors(weights, tmp_path):
    path, data, tensors = weights
    (n_header,) = struct.unpack("<Q", data[:8])
    bad = str(tmp_path / "bad.safetensors")
    faults = [("truncated", data[:cut]) for cut in range(0, len(data), 13)]
    rng = random.Random(11)
    for _ in range(200):
        pos = rng.randrange(len(data))
        b = bytearray(data)
        b[pos] ^= 1 << rng.randrange(8)
        faults.append(("bit flip in the " + ("header" if pos < 8 + n_header else "payload"),
                       bytes(b)))
    for kind, blob in faults:
        with open(bad, "wb") as f:
            f.write(blob)
        try:
            _load_bert(bad)
            exc = None
        except Exception as e:  # noqa: BLE001 - judged below
            exc = e
        if exc is None:
            # only a payload flip can load: the format has no checksum.  The tensors
            # keep their names, shapes and dtypes, and every value is finite.
            assert kind == "bit flip in the payload", kind
            FAULTS["safetensors: " + kind]["loaded (undetectable: no checksum)"] += 1
            continue
        assert isinstance(exc, ValueError) and "bad.safetensors" in str(exc) or \
            "load_hf_bert_weights" in str(exc), f"{kind}: {exc!r}"
        FAULTS["safetensors: " + kind]["refused"] += 1


def _raw_safetensors(header: bytes, payload: bytes = b"") -> bytes:
    return struct.pack("<Q", len(header)) + header + payload


def test_forged_safetensors_are_refused_in_bounded_memory(weights, tmp_path):
    path, data, tensors = weights
    marker = tmp_path / "pwned"
    h = lambda obj: json.dumps(obj).encode()  # noqa: E731
    cases = {
        "header length 2**63": struct.pack("<Q", 2**63) + b"{}",
        "header length beyond the file": struct.pack("<Q", 2**20) + b"{}" * 10,
        "shape 2**40 with offsets beyond the file": _raw_safetensors(
            h({"a": {"dtype": "F32", "shape": [2**40], "data_offsets": [0, 2**42]}})),
        "shape whose product overflows": _raw_safetensors(
            h({"a": {"dtype": "F32", "shape": [2**62, 2**62], "data_offsets": [0, 0]}})),
        "negative shape": _raw_safetensors(
            h({"a": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}}), b"\0" * 4),
        "unknown dtype": _raw_safetensors(
            h({"a": {"dtype": "O", "shape": [1], "data_offsets": [0, 8]}}), b"\0" * 8),
        "overlapping tensors": _raw_safetensors(
            h({"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]},
               "b": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}), b"\0" * 4),
        "header nested 100000 deep": _raw_safetensors(b"[" * 100000 + b"]" * 100000),
        "header not an object": _raw_safetensors(b"[1, 2]"),
        "a pickle (torch .bin)": pickle.dumps({"w": Boom(str(marker))}),
        "empty file": b"",
    }
    bad = str(tmp_path / "bad.safetensors")
    for name, blob in cases.items():
        with open(bad, "wb") as f:
            f.write(blob)
        exc, peak = _bounded(lambda: load_safetensors(bad))
        assert isinstance(exc, ValueError) and "bad.safetensors" in str(exc), f"{name}: {exc!r}"
        assert peak < MEMORY_LIMIT, f"{name}: {peak} bytes"
        FAULTS["safetensors: forged header"]["refused"] += 1
    assert not marker.exists()


def test_safetensors_of_the_wrong_model_or_with_wrong_entries(weights, tmp_path):
    path, data, tensors = weights
    first = "embeddings.word_embeddings.weight"  # (V, D): its transpose is misshapen
    cases = {
        "missing tensor": {k: v for k, v in tensors.items() if k != first},
        "wrong shape": dict(tensors, **{first: tensors[first].T.copy()}),
        "int tensor": dict(tensors, **{first: tensors[first].astype(np.int64)}),
        "bool tensor": dict(tensors, **{first: tensors[first] > 0}),
        "NaN tensor": dict(tensors, **{first: np.full_like(tensors[first], np.nan)}),
        "another model": _hf_tensors(BertModel(**dict(BERT, hidden_size=6, intermediate_size=4),
                                               rng=np.random.default_rng(2))),
    }
    bad = str(tmp_path / "bad.safetensors")
    for name, ts in cases.items():
        save_safetensors(bad, ts)
        with pytest.raises(ValueError, match="load_hf_bert_weights"):
            _load_bert(bad)
        FAULTS["safetensors: wrong entries"]["refused"] += 1
    # extra tensors (a pooler, a task head) are skipped and reported, not an error
    save_safetensors(bad, dict(tensors, **{"pooler.dense.weight": np.zeros((4, 4), np.float32)}))
    model = BertModel(**BERT, rng=np.random.default_rng(1))
    assert load_hf_bert_weights(model, load_safetensors(bad)) == ["pooler.dense.weight"]
