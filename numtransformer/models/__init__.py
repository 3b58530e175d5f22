"""Models composed from the layers: the RNN encoder-decoder with attention and the
Transformer family."""

from .memnn import MemN2N
from .seq2seq import BahdanauDecoder, Encoder, LuongDecoder, Seq2Seq, Seq2SeqState

from .transformer import (
    DecoderState,
    LMState,
    Transformer,
    TransformerDecoder,
    TransformerDecoderLayer,
    TransformerEncoder,
    TransformerEncoderLayer,
    TransformerLM,
)
from .llama import llama_lm
from . import registry  # the model kinds (it builds the models above)
from .registry import ModelKind

__all__ = ["TransformerEncoderLayer", "TransformerDecoderLayer", "TransformerEncoder",
           "TransformerDecoder", "Transformer", "TransformerLM", "DecoderState", "LMState",
           "Seq2Seq", "Encoder", "LuongDecoder", "BahdanauDecoder", "Seq2SeqState", "MemN2N",
           "registry", "ModelKind", "llama_lm"]
