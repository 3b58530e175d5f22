"""Optimizer steps match torch.optim (float64, several steps, same gradients)."""

import numpy as np
import pytest

from numtransformer import Parameter
from numtransformer.optim import SGD, Adam, AdamW, clip_grad_norm

torch = pytest.importorskip("torch")

CONFIGS = [
    (SGD, torch.optim.SGD, dict(lr=0.1)),
    (SGD, torch.optim.SGD, dict(lr=0.1, momentum=0.9, weight_decay=0.01)),
    (SGD, torch.optim.SGD, dict(lr=0.1, momentum=0.9, nesterov=True)),
    (SGD, torch.optim.SGD, dict(lr=0.1, momentum=0.8, dampening=0.3)),
    (Adam, torch.optim.Adam, dict(lr=0.01)),
    (Adam, torch.optim.Adam, dict(lr=0.01, betas=(0.8, 0.9), eps=1e-6, weight_decay=0.1)),
    (AdamW, torch.optim.AdamW, dict(lr=0.01)),
    (AdamW, torch.optim.AdamW, dict(lr=0.02, weight_decay=0.3, betas=(0.5, 0.7))),
]


@pytest.mark.parametrize("ours_cls, theirs_cls, kwargs", CONFIGS)
def test_five_steps_match_torch(ours_cls, theirs_cls, kwargs):
    rng = np.random.default_rng(0)
    init = [rng.standard_normal((3, 4)), rng.standard_normal(5)]
    ours = [Parameter(a) for a in init]
    theirs = [torch.tensor(a, requires_grad=True) for a in init]
    opt_ours = ours_cls(ours, **kwargs)
    opt_theirs = theirs_cls(theirs, **kwargs)
    for _ in range(5):
        grads = [rng.standard_normal(a.shape) for a in init]
        for p, t, g in zip(ours, theirs, grads):
            p.grad[...] = g
            t.grad = torch.tensor(g)
        opt_ours.step()
        opt_theirs.step()
    for p, t in zip(ours, theirs):
        np.testing.assert_allclose(p.data, t.detach().numpy(), rtol=1e-12, atol=1e-14)


def test_clip_grad_norm_matches_torch():
    rng = np.random.default_rng(1)
    grads = [rng.standard_normal((3, 4)) * 3, rng.standard_normal(7)]
    ours = [Parameter(np.zeros_like(g)) for g in grads]
    theirs = [torch.zeros(g.shape, dtype=torch.float64, requires_grad=True) for g in grads]
    for p, t, g in zip(ours, theirs, grads):
        p.grad[...] = g
        t.grad = torch.tensor(g)
    n_ours = clip_grad_norm(ours, 1.5)
    n_theirs = torch.nn.utils.clip_grad_norm_(theirs, 1.5)
    assert abs(n_ours - float(n_theirs)) < 1e-12
    for p, t in zip(ours, theirs):
        np.testing.assert_allclose(p.grad, t.grad.numpy(), rtol=1e-12)
