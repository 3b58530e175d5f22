"""numtransformer: attention models in NumPy, every backward pass written by hand.

The layer contract (see ``numtransformer.module``)::

    out, cache = layer.forward(x)      # cache holds what backward needs
    dx = layer.backward(dout, cache)   # parameter grads are added to p.grad
"""

from .attention import (
    AdditiveScore,
    Attention,
    ConcatScore,
    CosineScore,
    DotScore,
    GeneralScore,
    LocationScore,
    MultiHeadAttention,
    ScaledDotScore,
    causal_mask,
)
from .gradcheck import GradcheckReport, gradcheck
from .layers import (
    GELU,
    Dropout,
    Embedding,
    LayerNorm,
    LearnedPositionalEmbedding,
    Linear,
    PositionwiseFeedForward,
    ReLU,
    Sigmoid,
    SinusoidalPositionalEncoding,
    Softmax,
    Tanh,
    TiedLinear,
)
from .losses import CrossEntropyLoss
from .recurrent import LSTMN, RNN, GRUCell, LSTMCell, RNNCell
from .models import MemN2N, Seq2Seq, Transformer, TransformerLM
from .module import Module, Parameter
from .optim import SGD, Adam, AdamW, clip_grad_norm

__version__ = "0.1.0"

__all__ = [
    "Module", "Parameter", "gradcheck", "GradcheckReport",
    "Linear", "Embedding", "ReLU", "GELU", "Tanh", "Sigmoid", "Softmax", "Dropout",
    "LayerNorm", "PositionwiseFeedForward", "SinusoidalPositionalEncoding",
    "LearnedPositionalEmbedding", "TiedLinear", "CrossEntropyLoss",
    "DotScore", "ScaledDotScore", "GeneralScore", "AdditiveScore", "ConcatScore",
    "CosineScore", "LocationScore", "Attention", "MultiHeadAttention", "causal_mask",
    "RNNCell", "LSTMCell", "GRUCell", "RNN", "LSTMN",
    "Transformer", "TransformerLM", "Seq2Seq", "MemN2N",
    "SGD", "Adam", "AdamW", "clip_grad_norm",
]
