"""Padding, masks, length bucketing, and a resumable shuffling iterator."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from .tokenizers import BOS_ID, EOS_ID, PAD_ID

__all__ = ["pad_sequences", "Batch", "make_batch", "BatchIterator", "encode_pairs"]


def pad_sequences(seqs: Sequence[Sequence[int]], pad_id: int = PAD_ID,
                  length: int | None = None) -> np.ndarray:
    """Right-pad integer sequences into a (B, T) int64 array (T = longest, or ``length``)."""
    T = max((len(s) for s in seqs), default=0) if length is None else length
    out = np.full((len(seqs), T), pad_id, dtype=np.int64)
    for i, s in enumerate(seqs):
        if len(s) > T:
            raise ValueError(f"pad_sequences: sequence {i} has length {len(s)} > {T}")
        out[i, : len(s)] = s
    return out


@dataclass
class Batch:
    """A padded seq2seq batch; masks are True at padding (PyTorch's meaning).

    tgt_in = <bos> y_1 .. y_n   (the decoder's input under teacher forcing)
    tgt_out = y_1 .. y_n <eos>  (what it must predict; padding = PAD_ID, ignored by the loss)
    """

    src: np.ndarray  # (B, S) int64
    src_pad_mask: np.ndarray  # (B, S) bool
    tgt_in: np.ndarray  # (B, T) int64
    tgt_out: np.ndarray  # (B, T) int64
    tgt_pad_mask: np.ndarray  # (B, T) bool

    @property
    def n_tgt_tokens(self) -> int:
        return int((~self.tgt_pad_mask).sum())


def make_batch(examples: Sequence[tuple[Sequence[int], Sequence[int]]]) -> Batch:
    src = pad_sequences([s for s, _ in examples])
    tgt_in = pad_sequences([[BOS_ID, *t] for _, t in examples])
    tgt_out = pad_sequences([[*t, EOS_ID] for _, t in examples])
    return Batch(src=src, src_pad_mask=src == PAD_ID, tgt_in=tgt_in, tgt_out=tgt_out,
                 tgt_pad_mask=tgt_out == PAD_ID)


def encode_pairs(pairs, src_tokenizer, tgt_tokenizer) -> list[tuple[list[int], list[int]]]:
    return [(src_tokenizer.encode(s), tgt_tokenizer.encode(t)) for s, t in pairs]


class BatchIterator:
    """Endless seeded batches over a list of (src_ids, tgt_ids) examples.

    Each epoch is a permutation drawn from ``(seed, epoch)``; with ``bucket``
    the permutation is cut into pools of ``pool_batches`` batches, each pool is
    sorted by length and cut into batches (little padding), and the batch
    order is shuffled.  The whole order is a function of (seed, epoch), so the
    position ``{"epoch", "index"}`` is all ``state_dict`` needs to resume
    exactly where a run stopped.
    """

    def __init__(self, examples, batch_size: int, seed: int = 0, shuffle: bool = True,
                 bucket: bool = True, pool_batches: int = 50):
        if not examples:
            raise ValueError("BatchIterator: no examples")
        if batch_size < 1:
            raise ValueError(f"BatchIterator: batch_size must be >= 1, got {batch_size}")
        self.examples = list(examples)
        self.batch_size, self.seed = int(batch_size), int(seed)
        self.shuffle, self.bucket, self.pool_batches = shuffle, bucket, int(pool_batches)
        self.epoch, self.index = 0, 0
        self._order = self._epoch_order(0)

    def _epoch_order(self, epoch: int) -> list[np.ndarray]:
        n = len(self.examples)
        rng = np.random.default_rng([self.seed, epoch])
        perm = rng.permutation(n) if self.shuffle else np.arange(n)
        if self.bucket:
            pool = self.batch_size * self.pool_batches
            lengths = np.array([len(s) + len(t) for s, t in self.examples])
            chunks = []
            for start in range(0, n, pool):
                part = perm[start: start + pool]
                part = part[np.argsort(lengths[part], kind="stable")]
                chunks.extend(part[i: i + self.batch_size]
                              for i in range(0, len(part), self.batch_size))
            if self.shuffle:
                chunks = [chunks[i] for i in rng.permutation(len(chunks))]
            return chunks
        return [perm[i: i + self.batch_size] for i in range(0, n, self.batch_size)]

    def __iter__(self):
        return self

    def __next__(self) -> Batch:
        if self.index >= len(self._order):
            self.epoch += 1
            self.index = 0
            self._order = self._epoch_order(self.epoch)
        idx = self._order[self.index]
        self.index += 1
        return make_batch([self.examples[i] for i in idx])

    @property
    def batches_per_epoch(self) -> int:
        return len(self._order)

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "index": self.index}

    def load_state_dict(self, state) -> None:
        epoch, index = int(state["epoch"]), int(state["index"])
        if epoch < 0 or index < 0:
            raise ValueError(f"BatchIterator: bad position epoch={epoch}, index={index}")
        order = self._epoch_order(epoch)
        if index > len(order):
            raise ValueError(f"BatchIterator: bad position index={index}, the epoch has "
                             f"{len(order)} batches")
        self.epoch, self.index = epoch, index
        self._order = order
