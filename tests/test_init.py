"""numtransformer._init: the initial weights drawn in blocks equal the one-call draw
(values and the generator's state after), and a float32 parameter is never built
through a float64 array of its size."""

import tracemalloc

import numpy as np
import pytest

from numtransformer import _init
from numtransformer.layers import Linear


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(), (3,), (5, 0), (1500, 1500)])
def test_blocks_draw_the_same_numbers(dtype, shape):
    a, b = np.random.default_rng(3), np.random.default_rng(3)
    assert np.array_equal(_init.uniform(b, -0.5, 0.5, shape, dtype),
                          a.uniform(-0.5, 0.5, shape).astype(dtype))
    assert np.array_equal(_init.normal(b, shape, dtype, 0.02),
                          (0.02 * a.standard_normal(shape)).astype(dtype))
    assert a.bit_generator.state == b.bit_generator.state


def test_a_float32_linear_allocates_no_float64_twin():
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        lin = Linear(2048, 2048, dtype=np.float32, rng=0)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    weight = lin.W.data.nbytes
    # W and its gradient, plus at most two float64 blocks of scratch (a draw and its
    # scaled copy) and small change; the old way added a float64 array of 2 x weight
    assert peak < 2 * weight + 2 * 8 * _init.BLOCK + 2 ** 20
    assert peak < 4 * weight


def test_skipped_gives_zeros_without_drawing_and_ends_with_its_block():
    rng = np.random.default_rng(5)
    state = rng.bit_generator.state
    with _init.skipped():
        lin = Linear(4, 3, dtype=np.float32, rng=rng)
        w = _init.normal(rng, (2, 2), np.float64)
    assert not lin.W.data.any() and not lin.b.data.any() and not w.any()
    assert lin.W.data.dtype == np.float32 and w.dtype == np.float64
    assert rng.bit_generator.state == state  # nothing drawn
    assert _init.uniform(rng, -1, 1, (50,), np.float32).any()  # drawing again after the block
    with pytest.raises(RuntimeError), _init.skipped():
        raise RuntimeError
    assert _init.normal(rng, (50,), np.float32).any()  # an exception ends the block too
