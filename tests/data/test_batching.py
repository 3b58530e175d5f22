import numpy as np
import pytest

from numtransformer.data import BOS_ID, EOS_ID, PAD_ID, BatchIterator, make_batch, pad_sequences


def test_pad_sequences_and_masks():
    out = pad_sequences([[5, 6, 7], [8]])
    assert out.dtype == np.int64 and out.tolist() == [[5, 6, 7], [8, 0, 0]]
    with pytest.raises(ValueError, match="length 3 > 2"):
        pad_sequences([[1, 2, 3]], length=2)


def test_make_batch_shifts_the_target_for_teacher_forcing():
    b = make_batch([([4, 5], [6, 7, 8]), ([9], [10])])
    assert b.src.tolist() == [[4, 5], [9, PAD_ID]]
    assert b.src_pad_mask.tolist() == [[False, False], [False, True]]
    assert b.tgt_in.tolist() == [[BOS_ID, 6, 7, 8], [BOS_ID, 10, PAD_ID, PAD_ID]]
    assert b.tgt_out.tolist() == [[6, 7, 8, EOS_ID], [10, EOS_ID, PAD_ID, PAD_ID]]
    assert b.tgt_pad_mask.tolist() == [[False] * 4, [False, False, True, True]]
    assert b.n_tgt_tokens == 6


def _examples(n, seed=0):
    rng = np.random.default_rng(seed)
    return [(list(rng.integers(4, 9, rng.integers(1, 12))), list(rng.integers(4, 9, 3)))
            for _ in range(n)]


def test_an_epoch_visits_every_example_once():
    ex = _examples(103)
    it = BatchIterator(ex, batch_size=10, seed=1, pool_batches=3)
    seen = []
    for _ in range(it.batches_per_epoch):
        b = next(it)
        seen += [tuple(row[~m]) for row, m in zip(b.src, b.src_pad_mask)]
    assert sorted(seen) == sorted(tuple(s) for s, _ in ex)
    next(it)
    assert it.epoch == 1


def test_bucketing_reduces_padding():
    ex = _examples(400, seed=2)

    def pad_fraction(bucket):
        it = BatchIterator(ex, batch_size=16, seed=0, bucket=bucket)
        batches = [next(it) for _ in range(it.batches_per_epoch)]
        return np.mean([b.src_pad_mask.mean() for b in batches])

    assert pad_fraction(True) < 0.5 * pad_fraction(False)


def test_resume_from_state_gives_the_same_batches():
    ex = _examples(57)
    a = BatchIterator(ex, batch_size=8, seed=5)
    for _ in range(11):  # crosses an epoch boundary
        next(a)
    state = a.state_dict()
    expected = [next(a).src for _ in range(9)]
    b = BatchIterator(ex, batch_size=8, seed=5)
    b.load_state_dict(state)
    assert all(np.array_equal(x, next(b).src) for x in expected)


def test_bad_arguments():
    with pytest.raises(ValueError, match="no examples"):
        BatchIterator([], 4)
    with pytest.raises(ValueError, match="batch_size"):
        BatchIterator(_examples(3), 0)
