"""Packed sequences: a batch of variable-length sequences laid end to end, with no padding.

A padded batch (B, T, D) spends every position-wise GEMM, norm and activation on
its padding rows too.  Packed, the same n sequences of lengths L_0, ..., L_{n-1}
are one (N, D) matrix of N = sum_i L_i rows (sequence i at rows
offsets[i] .. offsets[i+1] - 1): every position-wise sublayer (the projections,
the FFN, the norms, the residual adds) acts on rows alone, so it runs unchanged
on it as one large GEMM with no padding rows at all.  Only attention mixes rows,
and only within a sequence: it runs per *group* of consecutive sequences of
similar length, gathered into a padded (b, T, .) block with a key-padding mask
(the FlashAttention "varlen" idea, with the padding kept to the attention core,
whose cost is small next to the GEMMs' at the lengths of sentences).

Inference only (no caches, no dropout): ``MultiHeadAttention.forward_packed``,
``TransformerEncoderLayer.forward_packed`` and ``BertModel.forward_packed`` use
it, and tests/attention/test_packed.py proves each equal to the padded forward
(float64 <= 1e-13 relative, float32 within rounding).

    packing = Packing([5, 5, 4, 2])    # rows 0-4, 5-9, 10-13, 14-15
    packing.groups                      # [(0, 2, 5), (2, 3, 4), (3, 4, 2)]: sequences 0-1
                                        # (T=5), 2 (T=4: 4 < 0.9 * 5), 3 (T=2)
"""

from __future__ import annotations

import numpy as np

__all__ = ["Packing"]


class Packing:
    """Where each sequence of a packed (N, D) matrix sits, and the attention groups.

    ``lengths``: the sequences' lengths in packed order (ints >= 1).  Groups are
    runs of consecutive sequences: a group starts at a sequence of length T and
    takes the sequences after it while there are fewer than ``max_group`` and
    each is no longer than T and at least ``1 - max_pad`` of it (so at most that
    fraction of the group's block is padding).  Sorting the sequences by length
    (longest first) before packing makes the groups few and large.

    Attributes: ``lengths`` (n,), ``offsets`` (n + 1,) (sequence i is rows
    offsets[i] .. offsets[i+1] - 1), ``n_rows`` = N, ``positions`` (N,) (each
    row's position in its sequence), ``groups``: a list of (first, stop, T)
    sequence ranges with their block length T.
    """

    def __init__(self, lengths, max_group: int = 32, max_pad: float = 0.1):
        lengths = np.asarray(lengths)
        if lengths.ndim != 1 or lengths.dtype.kind not in "iu":
            raise ValueError(f"Packing: lengths must be a 1-D array of ints, got "
                             f"{lengths.dtype} of shape {lengths.shape}")
        if lengths.size and lengths.min() < 1:
            raise ValueError(f"Packing: every length must be >= 1, got "
                             f"{int(lengths.min())}")
        if isinstance(max_group, bool) or not isinstance(max_group, (int, np.integer)) \
                or max_group < 1:
            raise ValueError(f"Packing: max_group must be an int >= 1, got {max_group!r}")
        if not 0.0 <= max_pad < 1.0:
            raise ValueError(f"Packing: max_pad must be in [0, 1), got {max_pad!r}")
        self.lengths = lengths.astype(np.int64)
        self.offsets = np.concatenate([[0], np.cumsum(self.lengths)]).astype(np.int64)
        self.n_rows = int(self.offsets[-1])
        starts = np.repeat(self.offsets[:-1], self.lengths)
        self.positions = np.arange(self.n_rows, dtype=np.int64) - starts
        self.groups = []
        n, i = len(self.lengths), 0
        while i < n:
            T, j = int(self.lengths[i]), i + 1
            while (j < n and j - i < max_group and self.lengths[j] <= T
                   and self.lengths[j] >= (1.0 - max_pad) * T):
                j += 1
            self.groups.append((i, j, T))
            i = j
        self._blocks = [None] * len(self.groups)

    def __len__(self) -> int:
        return len(self.lengths)

    def block(self, g: int):
        """Group g as a padded block: (first_row, rows, kpm, valid).

        Equal lengths (every sequence of the group exactly T long): the group is the
        contiguous rows first_row .. first_row + b*T - 1, a (b, T) reshape needs no
        copy, and rows, kpm, valid are None.  Otherwise ``rows`` (b, T) are the packed
        row of each block position (padding positions repeat the sequence's last
        row, so every gathered value is finite), ``kpm`` (b, T) is True at padding
        and ``valid`` (b, T) its complement."""
        if self._blocks[g] is None:
            first, stop, T = self.groups[g]
            L = self.lengths[first:stop]
            if (L == T).all():
                self._blocks[g] = (int(self.offsets[first]), None, None, None)
            else:
                t = np.arange(T)
                valid = t[None, :] < L[:, None]
                rows = self.offsets[first:stop, None] + np.minimum(t[None, :], L[:, None] - 1)
                self._blocks[g] = (int(self.offsets[first]), rows, ~valid, valid)
        return self._blocks[g]

    def segment_mean(self, h):
        """(n, D): the mean of each sequence's rows of h (N, D) (mean pooling)."""
        sums = np.add.reduceat(h, self.offsets[:-1], axis=0)
        return sums / self.lengths.astype(h.dtype)[:, None]

    def unpack(self, h, fill=0.0):
        """(n, T_max, D): h (N, D) padded back into a batch (tests, inspection)."""
        T = int(self.lengths.max()) if len(self.lengths) else 0
        out = np.full((len(self.lengths), T) + h.shape[1:], fill, h.dtype)
        seq = np.repeat(np.arange(len(self.lengths)), self.lengths)
        out[seq, self.positions] = h
        return out

    def __repr__(self) -> str:
        return (f"Packing(sequences={len(self.lengths)}, rows={self.n_rows}, "
                f"groups={len(self.groups)})")
