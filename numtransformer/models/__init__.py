"""Models composed from the layers: the Transformer family (and, later, seq2seq RNNs)."""

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

__all__ = ["TransformerEncoderLayer", "TransformerDecoderLayer", "TransformerEncoder",
           "TransformerDecoder", "Transformer", "TransformerLM", "DecoderState", "LMState"]
