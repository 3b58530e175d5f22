"""RNN encoder-decoder models with attention: the first half of the story.

``Encoder`` reads the source into a memory of states h_1..h_S and a bridged
initial decoder state; a decoder writes the target one token at a time:

* ``LuongDecoder`` (Luong, Pham & Manning, 2015): the state s_t asks the
  memory *after* its recurrence step; any score of ``numtransformer.attention``
  (dot, scaled_dot, general, additive, cosine, location); input feeding as an
  option.  With ``score=None`` it is a plain encoder-decoder without
  attention: the context is the bridged final encoder state at every step, so
  the whole source must pass through one vector.  (Cho et al., 2014 feed
  their summary c into every step's recurrence and output; this one
  initialises the state with it and gives it to every step's output layer,
  see ``LuongDecoder``.)
* ``BahdanauDecoder`` (Bahdanau, Cho & Bengio, 2015): the previous state
  s_{t-1} asks the memory with the additive score and the context is fed into
  the recurrence.

``Seq2Seq`` puts an encoder and a decoder together behind the interface of
``numtransformer.models.Transformer`` (``forward(src_ids, tgt_in_ids,
src_pad_mask, tgt_pad_mask) -> (logits, cache)``, ``backward(dlogits, cache)``,
``start_decoding`` / ``decode_step`` for ``numtransformer.decoding``), so one
trainer and one beam search drive both families.

Every backward pass is written out: BPTT through the decoder, into the memory
through the attention's keys and values, into the bridge through the initial
state, and on through the encoder's RNN into the embeddings.

Where each part lives:

    encoder.py     Encoder (embedding, RNN or LSTMN, the bridge)
    luong.py       LuongDecoder (any score, input feeding; score=None: no attention)
    bahdanau.py    BahdanauDecoder (additive score on the shared kernels)
    decoder.py     Seq2SeqState (incremental decoding), the decoders' shared base
    model.py       Seq2Seq
    common.py      make_score, SCORES, the argument checks

Every name is importable from ``numtransformer.models.seq2seq``.  The
recurrences step with ``RNN.step`` / ``RNN.step_backward``; the attention
runs on the shared kernels (``numtransformer.kernels.select``); greedy
decoding with attention matrices is ``numtransformer.decoding.decode_with_attention``.
"""

from __future__ import annotations

from ...recurrent.rnn import StackStep
from .bahdanau import BahdanauCache, BahdanauDecoder, BahdanauStep
from .common import _ATTENTIONS, _RNN_CELLS, SCORES, _check_cell, _lengths_from_mask, make_score
from .decoder import Seq2SeqState, _RNNDecoder
from .encoder import Encoder, EncoderCache
from .luong import LuongCache, LuongDecoder, LuongStep
from .model import Seq2Seq, Seq2SeqCache

__all__ = ["Encoder", "LuongDecoder", "BahdanauDecoder", "Seq2Seq", "Seq2SeqState",
           "make_score", "SCORES", "EncoderCache", "LuongCache", "LuongStep", "BahdanauCache",
           "BahdanauStep", "Seq2SeqCache"]
