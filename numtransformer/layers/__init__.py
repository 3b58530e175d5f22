"""Core layers: each a Module with an explicit forward and backward."""

from .activations import (GELU, ReLU, Sigmoid, SiLU, Softmax, Tanh, get_activation, log_softmax,
                          softmax)
from .dropout import Dropout
from .embedding import Embedding
from .feedforward import PositionwiseFeedForward, SwiGLUFeedForward
from .layernorm import LayerNorm
from .linear import Linear, TiedLinear
from .lora import (LoRALinear, adapter_state_dict, apply_lora, load_adapter_state_dict,
                   lora_parameters, remove_lora)
from .norms import NORM_KINDS, make_norm
from .rmsnorm import RMSNorm
from .positional import LearnedPositionalEmbedding, SinusoidalPositionalEncoding, sinusoid_table
from .residual import SublayerConnection, SublayerConnectionCache

__all__ = [
    "Linear", "TiedLinear", "Embedding", "ReLU", "GELU", "Tanh", "Sigmoid", "Softmax", "Dropout",
    "LayerNorm", "PositionwiseFeedForward", "SinusoidalPositionalEncoding",
    "LearnedPositionalEmbedding", "softmax", "log_softmax", "sinusoid_table", "get_activation",
    "make_norm", "NORM_KINDS", "SublayerConnection", "SublayerConnectionCache",
    "RMSNorm", "SiLU", "SwiGLUFeedForward",
    "LoRALinear", "apply_lora", "remove_lora", "lora_parameters", "adapter_state_dict",
    "load_adapter_state_dict",
]
