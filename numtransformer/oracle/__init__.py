"""A float64 gradient oracle for other people's kernels.

For each kernel family a function takes plain arrays by keyword (and an
upstream gradient ``dout``) and returns ``(outputs, grads)``, two dicts of
float64 arrays by name, computed by the reference kernels of
``numtransformer.functional`` (one statement per equation, each proven
against finite differences and PyTorch):

    scaled_dot_product_attention   q, k, v (B, H, T, d); key padding, attn_mask
                                   (bool or float), causal, sliding window, fully
                                   blocked rows, grouped-query heads, custom scale
    multi_head_attention           with its projections; n_kv_heads for GQA
    layer_norm, rms_norm           over the last axis
    cross_entropy                  ignore_index, label_smoothing, reductions
    lstm_step, gru_step, lstm, gru one step or a batch-first sequence
    rotary_embedding               "half" (Llama) or "interleaved" (RoFormer) pairs

Conventions: batch first; boolean masks True = blocked (as PyTorch's
``nn.MultiheadAttention``; torch's ``scaled_dot_product_attention`` reads a
boolean mask the other way round); a query with no visible key gets zeros,
never NaN.  Where PyTorch's layout differs there is an option: ``layout=
"bthd"`` for (B, T, H, d) attention, ``layout="torch"`` for weights stored as
``nn.Linear`` / ``nn.LSTM`` store them, ``gate_order`` for recurrent weights.

``compare(candidate, reference, cases)`` runs a candidate with the same
protocol on many cases and prints a per-tensor report;
``numtransformer.oracle.strategies`` has hypothesis strategies (shapes and
masks, fully blocked rows and length-1 sequences included) for your own test
suite; ``numtransformer.oracle.examples`` builds the same cases without
hypothesis.  See docs/11-gradient-oracle.md.
"""

from __future__ import annotations

from . import examples
from ._core import OracleResult
from .attention import attention_mask, multi_head_attention, scaled_dot_product_attention
from .compare import CompareReport, TensorComparison, compare
from .layers import cross_entropy, layer_norm, rms_norm, rotary_embedding
from .recurrent import gru, gru_step, lstm, lstm_step

FUNCTIONS = {
    "scaled_dot_product_attention": scaled_dot_product_attention,
    "multi_head_attention": multi_head_attention,
    "layer_norm": layer_norm,
    "rms_norm": rms_norm,
    "cross_entropy": cross_entropy,
    "lstm_step": lstm_step,
    "gru_step": gru_step,
    "lstm": lstm,
    "gru": gru,
    "rotary_embedding": rotary_embedding,
}

__all__ = ["OracleResult", "FUNCTIONS", "examples", "compare", "CompareReport", "TensorComparison",
           "attention_mask", *FUNCTIONS]
