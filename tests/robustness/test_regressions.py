"""One pinned test per library defect the robustness suite found (issue 10).

Each test states the defect as it was; the fuzz and the file tests would find
them again, these say plainly what was wrong.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

import numtransformer as nt
from numtransformer import models as ntm
from numtransformer.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from numtransformer.data.batching import BatchIterator
from numtransformer.data.tokenizers import WordTokenizer, load_tokenizer
from numtransformer.decoding import beam_search, greedy_decode
from numtransformer.interop import TransformerStack
from numtransformer.train import TrainConfig

R = np.random.default_rng


def _transformer():
    return nt.Transformer(7, 6, d_model=4, nhead=2, num_encoder_layers=1, num_decoder_layers=1,
                          dim_feedforward=8, dropout=0.0, max_len=8, rng=R(0)).eval()


def test_empty_batch_runs_forward_backward_and_decoding():
    """Was: B = 0 crashed in reshape(0, -1) ("cannot reshape array of size 0") in
    MultiHeadAttention (key/value projection) and RNN, and KVCache refused
    batch_size=0, so decoding an empty batch failed."""
    mha = nt.MultiHeadAttention(4, 2, kdim=3, vdim=5, rng=R(0))
    y, cache = mha.forward(np.zeros((0, 2, 4), np.float32), np.zeros((0, 3, 3), np.float32),
                           np.zeros((0, 3, 5), np.float32))
    assert y.shape == (0, 2, 4)
    assert [g.shape for g in mha.backward(y, cache)] == [(0, 2, 4), (0, 3, 3), (0, 3, 5)]
    rnn = nt.RNN("lstm", 3, 4, bidirectional=True, rng=R(0))
    (out, h, c), cache = rnn.forward(np.zeros((0, 5, 3), np.float32))
    assert out.shape == (0, 5, 8) and rnn.backward(out, cache).shape == (0, 5, 3)
    src = np.zeros((0, 3), np.int64)
    for model in (_transformer(), nt.Seq2Seq(7, 6, embed_dim=4, hidden_size=4, rng=R(0))):
        assert greedy_decode(model, src, None, max_len=4) == []
        assert beam_search(model, src, None, beam_size=2, max_len=4) == []


@pytest.mark.parametrize("build, call, arg", [
    (lambda: ntm.TransformerEncoderLayer(4, 2, 8, rng=R(0)),
     lambda m, x, bad: m.forward(x, src_key_padding_mask=bad), "src_key_padding_mask"),
    (lambda: ntm.TransformerEncoder(1, 4, 2, 8, rng=R(0)),
     lambda m, x, bad: m.forward(x, mask=bad), "mask"),
    (lambda: ntm.TransformerDecoderLayer(4, 2, 8, rng=R(0)),
     lambda m, x, bad: m.forward(x, x, memory_key_padding_mask=bad), "memory_key_padding_mask"),
    (lambda: ntm.TransformerDecoder(1, 4, 2, 8, rng=R(0)),
     lambda m, x, bad: m.forward(x, x, tgt_key_padding_mask=bad), "tgt_key_padding_mask"),
    (lambda: TransformerStack(4, 2, 1, 1, 8, rng=R(0)),
     lambda m, x, bad: m.forward(x, x, tgt_mask=bad), "tgt_mask"),
])
def test_composite_layers_name_themselves_and_the_mask_they_were_given(build, call, arg):
    """Was: "MultiHeadAttention: key_padding_mask must be boolean ..." -- neither the
    layer called nor the argument passed (one of three masks)."""
    m = build()
    x = np.zeros((2, 3, 4), np.float32)
    owner = type(m).__name__
    with pytest.raises(TypeError, match=f"^{owner}: {arg} must be boolean"):
        call(m, x, np.zeros((2, 3), np.int64) if "padding" in arg else np.zeros((3, 3)))
    with pytest.raises(ValueError, match=f"^{owner}: {arg} has shape"):
        call(m, x, np.zeros((2, 4), bool) if "padding" in arg else np.zeros((3, 4), bool))
    with pytest.raises(ValueError, match=f"^{owner}: (src|tgt) has no positions"):
        call(m, np.zeros((2, 0, 4), np.float32), None)


def test_multihead_attention_names_the_argument_that_is_empty():
    """Was: self-attention over an empty query said "key has no positions" (no key was
    passed), and decode with no new step raised numpy's zero-size reduction error."""
    mha = nt.MultiHeadAttention(4, 2, rng=R(0))
    with pytest.raises(ValueError, match="MultiHeadAttention: query has no positions"):
        mha.forward(np.zeros((2, 0, 4), np.float32))
    with pytest.raises(ValueError, match="MultiHeadAttention: x has no positions"):
        mha.decode(np.zeros((2, 0, 4), np.float32), mha.new_kv_cache(2))


def test_decode_step_checks_its_tokens_against_the_state():
    """Was: Transformer.decode_step(state, 3) raised IndexError (0-d tokens indexed
    [:, None]); a (B, 2) array failed in the positional encoding; in
    TransformerLM a (B, 0) array hit numpy's zero-size max and a wrong batch
    the KV cache; in the RNN decoders a wrong batch failed in np.concatenate."""
    model = _transformer()
    state = model.start_decoding(np.array([[3, 4], [5, 6]]))
    for tokens in (3, np.array([[1, 1], [1, 1]]), np.array([1, 1, 1])):
        with pytest.raises(ValueError, match=r"Transformer: tokens has shape"):
            model.decode_step(state, tokens)
    lm = nt.TransformerLM(7, d_model=4, nhead=2, num_layers=1, max_len=6, rng=R(0))
    st = lm.start_decoding(2)
    for tokens in (np.zeros((2, 0), np.int64), np.array([1, 1, 1]), np.ones((2, 2, 2), int)):
        with pytest.raises(ValueError, match="TransformerLM: tokens has shape"):
            lm.decode_step(st, tokens)
    with pytest.raises(ValueError, match="TransformerLM: batch_size must be >= 0"):
        lm.start_decoding(-1)
    assert lm.decode_step(lm.start_decoding(0), np.zeros(0, np.int64)).shape == (0, 7)
    s2s = nt.Seq2Seq(7, 6, embed_dim=4, hidden_size=4, rng=R(0))
    st = s2s.start_decoding(np.array([[3, 4], [5, 6]]))
    with pytest.raises(ValueError, match=r"LuongDecoder: tokens must be \(B,\) with B = 2"):
        s2s.decode_step(st, np.array([1, 1, 1]))


def test_models_say_that_tgt_in_ids_is_required():
    """Was: "Embedding: ids must be an integer numpy array, got NoneType"."""
    with pytest.raises(TypeError, match="Transformer: tgt_in_ids is required"):
        _transformer().forward(np.array([[1, 2]]), None)
    with pytest.raises(TypeError, match="Seq2Seq: tgt_in_ids is required"):
        nt.Seq2Seq(7, 6, embed_dim=4, hidden_size=4, rng=R(0)).forward(np.array([[1, 2]]), None)


def test_positional_encoding_names_the_offset():
    with pytest.raises(ValueError, match="offset=5"):
        nt.SinusoidalPositionalEncoding(4, 6).forward(np.zeros((1, 2, 4)), offset=5)


def test_softmax_over_an_empty_axis():
    """Was: numpy's "zero-size array to reduction operation maximum"."""
    y, cache = nt.Softmax().forward(np.zeros((2, 0)))
    assert y.shape == (2, 0) and nt.Softmax().backward(y, cache).shape == (2, 0)
    assert nt.layers.log_softmax(np.zeros((3, 0))).shape == (3, 0)


def test_checkpoint_config_of_absurd_size_is_refused_before_anything_is_built(tmp_path):
    """Was: a checkpoint whose settings said n_train=10**12 generated examples for
    ever; d_model=2**20 tried to allocate terabytes; wrong-typed settings
    crashed deep in the model (TypeError); a missing key was a KeyError."""
    from numtransformer.train import Trainer
    cfg = TrainConfig(task="copy", n_train=50, n_valid=5, n_test=5, d_model=8, nhead=2,
                      layers=1, dim_feedforward=16, steps=2, eval_every=0, checkpoint_every=0)
    t = Trainer(cfg, stream=open(os.devnull, "w"))
    path = str(tmp_path / "c.npz")
    t.save(path)
    with np.load(path) as z:
        arrays = {k: z[k] for k in z.files}
    import json
    for change, match in [({"n_train": 10**12}, "n_train"), ({"d_model": 2**20}, "at least"),
                          ({"d_model": "8"}, "not of type int")]:
        config = json.loads(str(arrays["config"]))
        config["train"].update(change)
        np.savez(path, **dict(arrays, config=np.array(json.dumps(config))))
        with pytest.raises(CheckpointError, match=match):
            Trainer.from_checkpoint(path)


def test_checkpoint_with_a_missing_optimizer_moment_is_refused(tmp_path):
    """Was: loaded, and the moment silently restarted from zero: the resume was no
    longer exact."""
    from numtransformer.train import Trainer
    cfg = TrainConfig(task="copy", n_train=50, n_valid=5, n_test=5, d_model=8, nhead=2,
                      layers=1, dim_feedforward=16, steps=2, eval_every=0, checkpoint_every=0)
    out = str(tmp_path / "run")
    t = Trainer(cfg, out_dir=out, stream=open(os.devnull, "w"))
    t.fit()
    t.close()
    path = os.path.join(out, "checkpoint.npz")
    with np.load(path) as z:
        arrays = {k: z[k] for k in z.files if k != "optim/v.src_embed.W"}
    np.savez(path, **arrays)
    with pytest.raises(CheckpointError, match="optimizer state 'v' is missing"):
        Trainer.resume(out)


def test_checkpoint_parameters_must_be_finite_floats(tmp_path):
    """Was: an int64 parameter was cast silently, a NaN parameter loaded."""
    model = nt.Linear(2, 2, rng=R(0))
    path = str(tmp_path / "c.npz")
    save_checkpoint(path, model, {})
    with np.load(path) as z:
        arrays = {k: z[k] for k in z.files}
    for bad, match in [(np.ones((2, 2), np.int64), "floating-point"),
                       (np.full((2, 2), np.nan, np.float32), "NaN/inf")]:
        np.savez(path, **dict(arrays, **{"param/W": bad}))
        with pytest.raises(CheckpointError, match=match):
            load_checkpoint(path)


def test_batch_position_beyond_the_epoch_is_refused():
    it = BatchIterator([([1], [2])] * 10, batch_size=4)
    with pytest.raises(ValueError, match="index=99"):
        it.load_state_dict({"epoch": 0, "index": 99})


def test_vocabulary_bit_flips_inside_a_token_are_detected(tmp_path):
    """Was: a flipped bit inside a token ("cat" -> "cbt") still made valid JSON and
    a valid vocabulary: loaded silently.  The file now carries a sha256."""
    tok = WordTokenizer.build(["the cat sat"])
    path = tmp_path / "v.json"
    tok.save(str(path))
    text = path.read_text()
    path.write_text(text.replace('"cat"', '"cbt"'))
    with pytest.raises(ValueError, match="corrupt"):
        load_tokenizer(str(path))
    path.write_text(text.replace('"sha256"', '"sha257"'))
    with pytest.raises(ValueError, match="unexpected keys"):
        load_tokenizer(str(path))
    # a vocabulary written before the digest existed still loads
    path.write_text('{"kind": "word", "tokens": ["<pad>", "<bos>", "<eos>", "<unk>", "x"]}')
    assert load_tokenizer(str(path)).itos[-1] == "x"


def test_deeply_nested_json_is_a_value_error(tmp_path):
    """Was: RecursionError out of json in load_tokenizer, load_safetensors and
    load_checkpoint."""
    from numtransformer.pretrained import load_safetensors
    import struct
    deep = b"[" * 100000 + b"]" * 100000
    (tmp_path / "v.json").write_bytes(deep)
    with pytest.raises(ValueError, match="not valid JSON"):
        load_tokenizer(str(tmp_path / "v.json"))
    (tmp_path / "w.safetensors").write_bytes(struct.pack("<Q", len(deep)) + deep)
    with pytest.raises(ValueError, match="not valid UTF-8 JSON"):
        load_safetensors(str(tmp_path / "w.safetensors"))


def test_activations_take_a_0d_input():
    """Was (a new in-place sigmoid): Sigmoid()(0.5) raised numpy's "return arrays must
    be of ArrayType" -- a 0-d input made np.negative return a scalar."""
    for act in (nt.Sigmoid(), nt.Tanh(), nt.ReLU(), nt.GELU(), nt.GELU("tanh")):
        y, cache = act.forward(np.array(0.5))
        assert np.shape(y) == () and np.isfinite(y)
        assert np.shape(act.backward(np.array(1.5), cache)) == ()
