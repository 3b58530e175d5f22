"""The special tokens every vocabulary starts with, at fixed ids.

    <pad> = 0   <bos> = 1   <eos> = 2   <unk> = 3

so padding masks are ``ids == 0`` for every tokenizer and task.  A low-level
module that imports nothing: the models and ``numtransformer.decoding`` name
<bos> and <eos> from here without importing ``numtransformer.data`` (whose
tokenizers, and ``numtransformer.data`` itself, re-export these names).
"""

PAD, BOS, EOS, UNK = "<pad>", "<bos>", "<eos>", "<unk>"
SPECIALS = (PAD, BOS, EOS, UNK)
PAD_ID, BOS_ID, EOS_ID, UNK_ID = 0, 1, 2, 3

__all__ = ["PAD", "BOS", "EOS", "UNK", "SPECIALS", "PAD_ID", "BOS_ID", "EOS_ID", "UNK_ID"]
