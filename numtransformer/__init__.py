"""numtransformer: attention models in NumPy, every backward pass written by hand.

The layer contract (see ``numtransformer.module``)::

    out, cache = layer.forward(x)      # cache holds what backward needs
    dx = layer.backward(dout, cache)   # parameter grads are added to p.grad
"""

import os as _os

# OpenBLAS keeps its idle threads spinning for 2^28 cycles (~0.1 s) after each
# GEMM, on the very cores that our large elementwise passes then want
# (numtransformer._parallel): with two cores, the spinning thread halves the
# second block's speed.  2^16 cycles (~25 us) still bridges back-to-back
# GEMMs.  OpenBLAS reads this when it loads, so it only takes effect when
# numtransformer is imported before numpy; the user's own setting wins.
_os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "16")

from .attention import (
    AdditiveScore,
    Attention,
    ConcatScore,
    CosineScore,
    DotScore,
    GeneralScore,
    LocationScore,
    MultiHeadAttention,
    RotaryEmbedding,
    ScaledDotScore,
    causal_mask,
    sliding_window_mask,
)
from . import fast, functional, kernels
from .gradcheck import GradcheckReport, gradcheck
from .layers import (
    GELU,
    Dropout,
    Embedding,
    LayerNorm,
    LearnedPositionalEmbedding,
    Linear,
    LoRALinear,
    PositionwiseFeedForward,
    ReLU,
    RMSNorm,
    Sigmoid,
    SiLU,
    SinusoidalPositionalEncoding,
    Softmax,
    SwiGLUFeedForward,
    Tanh,
    TiedLinear,
    adapter_state_dict,
    apply_lora,
    load_adapter_state_dict,
    lora_parameters,
    remove_lora,
)
from .losses import CrossEntropyLoss
from .recurrent import LSTMN, RNN, GRUCell, LSTMCell, RNNCell
from .models import MemN2N, Seq2Seq, Transformer, TransformerLM, llama_lm
from .module import Module, Parameter
from .inference import inference_mode
from .optim import SGD, Adam, AdamW, clip_grad_norm

__version__ = "0.1.0"

__all__ = [
    "Module", "Parameter", "gradcheck", "GradcheckReport",
    "Linear", "Embedding", "ReLU", "GELU", "Tanh", "Sigmoid", "Softmax", "Dropout",
    "LayerNorm", "PositionwiseFeedForward", "SinusoidalPositionalEncoding",
    "LearnedPositionalEmbedding", "TiedLinear", "CrossEntropyLoss",
    "RMSNorm", "SiLU", "SwiGLUFeedForward",
    "LoRALinear", "apply_lora", "remove_lora", "lora_parameters", "adapter_state_dict",
    "load_adapter_state_dict",
    "DotScore", "ScaledDotScore", "GeneralScore", "AdditiveScore", "ConcatScore",
    "CosineScore", "LocationScore", "Attention", "MultiHeadAttention", "causal_mask",
    "RotaryEmbedding", "sliding_window_mask",
    "RNNCell", "LSTMCell", "GRUCell", "RNN", "LSTMN",
    "Transformer", "TransformerLM", "llama_lm", "Seq2Seq", "MemN2N",
    "SGD", "Adam", "AdamW", "clip_grad_norm", "inference_mode",
]
