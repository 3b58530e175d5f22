"""``TransformerStack``: the counterpart of ``torch.nn.Transformer`` (embeddings in, out)."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from .._validate import as_rng, check_float, check_float_dtype, check_positive_int
from ..models.transformer import TransformerDecoder, TransformerEncoder, check_sequences
from ..module import Module

__all__ = ["TransformerStack"]


class TransformerStackCache(NamedTuple):
    encoder: tuple  # the encoder stack's cache (m = Encoder(src))
    decoder: tuple  # the decoder stack's cache (y = Decoder(tgt, m))


class TransformerStack(Module):
    """An encoder stack and a decoder stack, wired as ``torch.nn.Transformer``.

    ``torch.nn.Transformer`` has no embeddings, positional encoding or output
    projection: it maps a source sequence of vectors and a target sequence of
    vectors to output vectors.  ``numtransformer.models.Transformer`` is a
    whole model (token ids in, logits out), so ``from_torch(nn.Transformer)``
    builds this class instead, and ``to_torch`` maps it back.

    Shapes (batch-first): src (B, S, D), tgt (B, T, D), output y (B, T, D).
    Masks (boolean, True = blocked): src_mask (S, S) or (B, S, S), tgt_mask
    (T, T) or (B, T, T) (usually ``causal_mask(T)``), src_key_padding_mask
    (B, S), tgt_key_padding_mask (B, T), memory_key_padding_mask (B, S).
    torch's ``memory_mask`` (a mask on the cross-attention) has no counterpart
    in our decoder layer and is not accepted.

    Forward:
        m = Encoder(src, src_mask, src_key_padding_mask)                 (B, S, D)
        y = Decoder(tgt, m, tgt_mask, tgt_key_padding_mask, memory_key_padding_mask)
    Backward:
        dtgt, dm = Decoder.backward(dy)      (dm: summed over every decoder layer)
        dsrc     = Encoder.backward(dm)
    backward returns (dsrc, dtgt).

    ``final_norm=True`` (the default) gives each stack a last LayerNorm, as
    ``nn.Transformer`` always has (for both norm_first settings).  Parameter
    names: encoder.layers.{i}.*, encoder.norm.*, decoder.layers.{i}.*,
    decoder.norm.* -- the same paths as torch's (see numtransformer.interop for
    the per-layer mapping).  Source: "Attention Is All You Need", sec. 3.1.
    """

    def __init__(self, d_model: int = 512, nhead: int = 8, num_encoder_layers: int = 6,
                 num_decoder_layers: int = 6, dim_feedforward: int = 2048,
                 dropout: float = 0.1, activation: str = "relu", layer_norm_eps: float = 1e-5,
                 norm_first: bool = False, final_norm: bool = True, *, dtype=np.float32,
                 rng=None):
        check_positive_int(self, "num_encoder_layers", num_encoder_layers)
        check_positive_int(self, "num_decoder_layers", num_decoder_layers)
        dtype = check_float_dtype(self, dtype)
        rng = as_rng(rng)
        kw = dict(d_model=d_model, nhead=nhead, dim_feedforward=dim_feedforward,
                  dropout=dropout, activation=activation, layer_norm_eps=layer_norm_eps,
                  norm_first=norm_first, final_norm=final_norm, dtype=dtype)
        self.encoder = TransformerEncoder(num_encoder_layers, **kw, rng=rng)
        self.decoder = TransformerDecoder(num_decoder_layers, **kw, rng=rng)
        self.d_model, self.nhead = d_model, nhead

    @classmethod
    def from_stacks(cls, encoder: TransformerEncoder,
                    decoder: TransformerDecoder) -> "TransformerStack":
        """Wrap an existing encoder and decoder (their parameters are shared, not copied)."""
        if not isinstance(encoder, TransformerEncoder):
            raise TypeError(f"TransformerStack: encoder must be a TransformerEncoder, got "
                            f"{type(encoder).__name__}")
        if not isinstance(decoder, TransformerDecoder):
            raise TypeError(f"TransformerStack: decoder must be a TransformerDecoder, got "
                            f"{type(decoder).__name__}")
        if encoder.d_model != decoder.d_model:
            raise ValueError(f"TransformerStack: encoder d_model={encoder.d_model} differs "
                             f"from decoder d_model={decoder.d_model}")
        if encoder.layers[0].dtype != decoder.layers[0].dtype:
            raise TypeError(f"TransformerStack: encoder dtype {encoder.layers[0].dtype} differs "
                            f"from decoder dtype {decoder.layers[0].dtype}")
        self = cls.__new__(cls)
        self.encoder, self.decoder = encoder, decoder
        self.d_model, self.nhead = encoder.d_model, encoder.layers[0].nhead
        return self

    @property
    def dtype(self):
        return self.encoder.layers[0].dtype

    def forward(self, src, tgt, src_mask=None, tgt_mask=None, src_key_padding_mask=None,
                tgt_key_padding_mask=None, memory_key_padding_mask=None):
        src = check_float(self, "src", src, dtype=self.dtype, ndim=3, last_dim=self.d_model,
                          last_dim_name="d_model")
        tgt = check_float(self, "tgt", tgt, dtype=self.dtype, ndim=3, last_dim=self.d_model,
                          last_dim_name="d_model")
        if src.shape[0] != tgt.shape[0]:
            raise ValueError(f"TransformerStack: src has batch size {src.shape[0]}, tgt has "
                             f"{tgt.shape[0]}")
        check_sequences(self, "src", src, [("src_mask", src_mask, "self_attn"),
                                           ("src_key_padding_mask", src_key_padding_mask,
                                            "self_kpm")])
        check_sequences(self, "tgt", tgt, [("tgt_mask", tgt_mask, "self_attn"),
                                           ("tgt_key_padding_mask", tgt_key_padding_mask,
                                            "self_kpm"),
                                           ("memory_key_padding_mask", memory_key_padding_mask,
                                            "mem_kpm")], "src", src)
        m, c_enc = self.encoder.forward(src, src_key_padding_mask=src_key_padding_mask,
                                        mask=src_mask)
        y, c_dec = self.decoder.forward(tgt, m, tgt_mask=tgt_mask,
                                        tgt_key_padding_mask=tgt_key_padding_mask,
                                        memory_key_padding_mask=memory_key_padding_mask)
        return y, TransformerStackCache(encoder=c_enc, decoder=c_dec)

    def backward(self, dy, cache: TransformerStackCache):
        dtgt, dm = self.decoder.backward(dy, cache.decoder)
        dsrc = self.encoder.backward(dm, cache.encoder)
        return dsrc, dtgt

    def extra_repr(self) -> str:
        return (f"d_model={self.d_model}, nhead={self.nhead}, "
                f"num_encoder_layers={len(self.encoder.layers)}, "
                f"num_decoder_layers={len(self.decoder.layers)}")
