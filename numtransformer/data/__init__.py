"""Data: tokenizers, built-in tasks, batching."""

from .babi import BABI_TASKS, BabiExample, babi_vocabulary, encode_babi, make_babi
from .batching import Batch, BatchIterator, encode_pairs, make_batch, pad_sequences
from .tasks import DATE_FORMATS, TASKS, TaskData, make_task
from .tokenizers import (
    BOS_ID,
    EOS_ID,
    PAD_ID,
    SPECIALS,
    UNK_ID,
    CharTokenizer,
    Tokenizer,
    WordTokenizer,
    load_tokenizer,
)

__all__ = [
    "Batch", "BatchIterator", "encode_pairs", "make_batch", "pad_sequences",
    "TASKS", "DATE_FORMATS", "TaskData", "make_task",
    "Tokenizer", "CharTokenizer", "WordTokenizer", "load_tokenizer",
    "PAD_ID", "BOS_ID", "EOS_ID", "UNK_ID", "SPECIALS",
    "BABI_TASKS", "BabiExample", "babi_vocabulary", "encode_babi", "make_babi",
]
