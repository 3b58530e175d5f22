"""gradcheck must pass correct layers and catch, and name, each kind of mistake."""

import numpy as np
import pytest

from numtransformer import Linear, Module, Parameter, Softmax, gradcheck
from numtransformer.gradcheck import numerical_gradient


class Quadratic(Module):
    """y = a * x + x * x (elementwise)."""

    def __init__(self, n, missing_term=False):
        self.a = Parameter(np.linspace(0.5, 1.5, n))
        self.missing_term = missing_term

    def forward(self, x):
        return self.a.data * x + x * x, x

    def backward(self, dy, x):
        self.a.grad += np.sum(dy * x, axis=tuple(range(dy.ndim - 1)))
        if self.missing_term:
            return dy * self.a.data  # forgets the 2x term
        return dy * (self.a.data + 2 * x)


class TransposedGradLinear(Linear):
    def backward(self, dy, cache):
        self.W.grad += (cache.x.T @ dy).T  # wrong: transposed (W is square here)
        self.b.grad += dy.sum(axis=0)
        return dy @ self.W.data.T


class OverwritingLinear(Linear):
    def backward(self, dy, cache):
        self.W.grad = cache.x.T @ dy  # wrong: overwrites instead of accumulating
        self.b.grad += dy.sum(axis=0)
        return dy @ self.W.data.T


class MutatingLinear(Linear):
    def forward(self, x):
        out, cache = super().forward(x)
        x *= 1.5  # wrong: mutates the caller's array
        return out, cache


class BadBiasLinear(Linear):
    """A bias grad taken from the wrong slice: only column 0 is wrong."""

    def backward(self, dy, cache):
        dx = super().backward(dy, cache)
        self.b.grad[0] += 0.5
        return dx


def _x(*shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape)


def test_correct_layers_pass_with_tiny_errors():
    report = gradcheck(Quadratic(4), _x(3, 4))
    assert report.passed, report
    assert set(report.errors) == {"input[0]", "a"}
    assert report.max_error < 1e-9


def test_missing_term_is_caught_and_named():
    report = gradcheck(Quadratic(4, missing_term=True), _x(3, 4))
    assert not report.passed
    assert report.failures == ["input[0]"]
    assert report.errors["input[0]"] > 1e-2
    assert report.errors["a"] < 1e-9


def test_transposed_weight_grad_is_caught_and_named():
    report = gradcheck(TransposedGradLinear(4, 4, dtype=np.float64, rng=0), _x(5, 4))
    assert report.failures == ["W"]


def test_overwritten_grads_are_caught_and_named():
    report = gradcheck(OverwritingLinear(3, 4, dtype=np.float64, rng=0), _x(5, 3))
    assert not report.passed
    assert report.problems == ["W: backward overwrites p.grad instead of adding to it"]


def test_input_mutation_is_reported():
    report = gradcheck(MutatingLinear(3, 2, dtype=np.float64, rng=0), _x(4, 3))
    assert not report.passed
    assert any("input[0]" in p and "modified" in p for p in report.problems)


def test_one_wrong_entry_of_a_large_tensor_is_caught_by_the_directional_check():
    lin = BadBiasLinear(3, 300, dtype=np.float64, rng=0)
    # b has 300 entries, only 8 are compared one by one; the directional
    # derivative sees all of them.
    report = gradcheck(lin, _x(2, 3), max_entries=8, seed=3)
    assert "b" in report.failures


def test_wrong_number_of_input_grads_is_a_problem():
    class TwoInputs(Module):
        def forward(self, x, y):
            return x * y, (x, y)

        def backward(self, dout, cache):
            return dout * cache[1]  # forgets dy

    report = gradcheck(TwoInputs(), _x(3), _x(3, seed=1))
    assert not report.passed and "expected 2" in report.problems[0]


def test_exactly_zero_gradients_are_not_false_failures():
    # A bias added before softmax has exactly zero gradient (shift invariance);
    # finite differences give rounding noise there, which must not fail.
    class BiasSoftmax(Module):
        def __init__(self):
            self.c = Parameter(np.array([0.3]))
            self.softmax = Softmax()

        def forward(self, x):
            return self.softmax.forward(x + self.c.data)

        def backward(self, dy, cache):
            dx = self.softmax.backward(dy, cache)
            self.c.grad += dx.sum()
            return dx

    report = gradcheck(BiasSoftmax(), _x(3, 5))
    assert report.passed, report
    assert abs(report.tensors[1].max_abs_grad) < 1e-12


def test_tuple_outputs_get_a_gradient_each():
    class Split(Module):
        def forward(self, x):
            return (x * 2.0, np.sin(x)), x

        def backward(self, douts, x):
            return douts[0] * 2.0 + douts[1] * np.cos(x)

    assert gradcheck(Split(), _x(4, 2)).passed


def test_integer_inputs_and_kwargs_pass_through():
    class Pick(Module):
        def forward(self, x, idx, scale=1.0):
            return x[idx] * scale, (x.shape, idx, scale)

        def backward(self, dy, cache):
            shape, idx, scale = cache
            dx = np.zeros(shape)
            np.add.at(dx, idx, dy * scale)
            return dx

    report = gradcheck(Pick(), _x(5, 2), np.array([0, 3, 3]), scale=-2.0)
    assert report.passed and list(report.errors) == ["input[0]"]


def test_float32_modules_are_checked_in_float64_on_a_copy():
    lin = Linear(3, 2, rng=0)
    report = gradcheck(lin, _x(4, 3).astype(np.float32))
    assert report.passed
    assert lin.W.dtype == np.float32 and not lin.W.grad.any()


def test_report_table_and_assert():
    report = gradcheck(Quadratic(2, missing_term=True), _x(2, 2))
    text = str(report)
    assert "FAILED" in text and "input[0]" in text and "FAIL" in text
    with pytest.raises(AssertionError, match="input"):
        report.assert_passed()


def test_numerical_gradient_of_a_cubic_is_exact():
    x = np.array([0.7, -1.3])
    g = [numerical_gradient(lambda: float(np.sum(x**3)), x, index=i) for i in range(2)]
    np.testing.assert_allclose(g, 3 * np.array([0.7, -1.3]) ** 2, rtol=1e-10)
    assert np.array_equal(x, [0.7, -1.3])  # restored


def test_rejects_non_modules():
    with pytest.raises(TypeError, match="Module"):
        gradcheck(lambda x: x, _x(2))


def test_a_gradient_off_by_one_part_in_a_million_is_caught():
    class SlightlyOff(Linear):
        def backward(self, dy, cache):
            dx = super().backward(dy, cache)
            return dx * (1 + 1e-6)

    report = gradcheck(SlightlyOff(4, 3, dtype=np.float64, rng=0), _x(6, 4, seed=2))
    assert report.failures == ["input[0]"]
    assert 5e-7 < report.errors["input[0]"] < 2e-6


def test_a_backward_that_modifies_its_cache_is_caught():
    class CacheEater(Linear):
        def backward(self, dy, cache):
            dx = super().backward(dy, cache)
            cache.x[...] *= 0.5  # wrong: the second backward sees a different x
            return dx

    report = gradcheck(CacheEater(3, 2, dtype=np.float64, rng=0), _x(4, 3))
    assert any("modify its cache" in p for p in report.problems)


def test_keyword_arrays_and_parameters_modified_in_place_are_caught():
    class MaskEater(Softmax):
        def forward(self, x, mask=None):
            out = super().forward(x, mask=mask)
            mask[0, 0] = True
            return out

    report = gradcheck(MaskEater(), _x(2, 3), mask=np.zeros((2, 3), bool))
    assert any("keyword argument 'mask'" in p for p in report.problems)

    class WeightEater(Linear):
        def backward(self, dy, cache):
            dx = super().backward(dy, cache)
            self.b.data += 1.0
            return dx

    report = gradcheck(WeightEater(3, 2, dtype=np.float64, rng=0), _x(4, 3))
    assert any("parameter b was modified" in p for p in report.problems)


def test_large_inputs_do_not_false_fail():
    from numtransformer import LayerNorm

    x = 1e5 + np.random.default_rng(0).standard_normal((4, 6))
    report = gradcheck(LayerNorm(6, dtype=np.float64), x)
    assert report.passed, report


def test_small_errors_in_large_outputs_are_not_hidden_by_the_floor():
    class Off(Linear):
        def backward(self, dy, cache):
            return super().backward(dy, cache) * (1 + 1e-4)

    lin = Off(16, 16, dtype=np.float64, rng=0)
    lin.W.data *= 0.01
    lin.b.data[...] = 100.0
    report = gradcheck(lin, _x(8, 32, 16), max_entries=16)
    assert "input[0]" in report.failures


def test_zero_gradient_tensors_are_marked_in_the_table():
    class BiasSoftmax(Module):
        def __init__(self):
            self.c = Parameter(np.array([0.3]))
            self.softmax = Softmax()

        def forward(self, x):
            return self.softmax.forward(x + self.c.data)

        def backward(self, dy, cache):
            dx = self.softmax.backward(dy, cache)
            self.c.grad += dx.sum()
            return dx

    report = gradcheck(BiasSoftmax(), _x(3, 5))
    assert report.passed and report.tensors[1].floored and not report.tensors[0].floored
    assert "noise floor" in report.table()


def test_relu_margin_sees_every_relu_and_restores_the_dropout_streams():
    import numtransformer as nt
    from numtransformer.gradcheck import relu_margin

    ffn = nt.PositionwiseFeedForward(3, 5, activation="relu", dropout=0.5, dtype=np.float64,
                                     rng=0)
    x = np.random.default_rng(1).standard_normal((2, 4, 3))
    h = x @ ffn.linear1.W.data + ffn.linear1.b.data
    before = ffn.dropout.rng.bit_generator.state
    assert relu_margin(ffn, x) == np.abs(h).min()
    assert ffn.dropout.rng.bit_generator.state == before  # gradcheck then sees the same masks
    assert relu_margin(nt.Tanh(), x) == np.inf
    assert nt.ReLU.forward is not None and "relu_margin" not in repr(nt.ReLU.forward)


# -- frozen parameters ------------------------------------------------------------------------


def test_frozen_parameters_are_not_checked_but_watched():
    class FrozenBlind(Linear):  # a backward that ignores the flag
        def backward(self, dy, cache):
            self.W.grad += cache.x.T @ dy
            self.b.grad += dy.sum(axis=0)
            return dy @ self.W.data.T

    lin = FrozenBlind(3, 4, dtype=np.float64, rng=0)
    x = np.random.default_rng(0).standard_normal((2, 3))

    class FrozenAware(Linear):  # a backward that honours the flag
        def backward(self, dy, cache):
            dx = dy @ self.W.data.T
            if self.W.requires_grad:
                self.W.grad += cache.x.T @ dy
            if self.b.requires_grad:
                self.b.grad += dy.sum(axis=0)
            return dx

    good = FrozenAware(3, 4, dtype=np.float64, rng=0)
    good.W.requires_grad_(False)
    report = gradcheck(good, x)
    report.assert_passed()
    assert [t.name for t in report.tensors] == ["input[0]", "b"]
    # a backward that adds to a frozen parameter's grad is named
    lin.W.requires_grad_(False)
    report = gradcheck(lin, x)
    assert not report.passed and [t.name for t in report.tensors] == ["input[0]", "b"]
    assert report.problems == ["W: frozen (requires_grad=False), but backward added to its grad"]
    assert "problem: W: frozen" in report.table()
    # the caller's module is untouched: flags, grads
    assert not lin.W.requires_grad and not lin.W.grad.any()


def test_a_frozen_parameter_modified_in_place_is_caught():
    class Drifts(Linear):
        def forward(self, x):
            self.W.data[0, 0] += 1.0  # wrong: the frozen weight moves
            return super().forward(x)

        def backward(self, dy, cache):
            return dy @ self.W.data.T

    m = Drifts(2, 2, bias=False, dtype=np.float64, rng=0)
    m.W.requires_grad_(False)
    report = gradcheck(m, np.ones((1, 2)))
    assert "parameter W was modified in place by forward or backward" in report.problems
