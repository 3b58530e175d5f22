"""Reference kernels: attention scores, the attention step, multi-head attention."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

__all__ = ["AdditiveEnergyCache", "additive_energy_forward", "additive_energy_backward"]


class AdditiveEnergyCache(NamedTuple):
    t: np.ndarray  # (B, Tq, Tk, A): tanh(sq_i + hk_j)
    v_a: np.ndarray  # (A,) the scoring vector


def additive_energy_forward(sq, hk, v_a):
    """The additive (Bahdanau) energy of every query-key pair, from their projections.

    Shapes: sq (B, Tq, A) the projected queries, hk (B, Tk, A) the projected
    keys, v_a (A,); e (B, Tq, Tk).

        t_ij = tanh(sq_i + hk_j)            (B, Tq, Tk, A): sq and hk broadcast
        e_ij = t_ij . v_a

    The projections (sq = s W_q, hk = h W_k, or LSTMN's sums of several) stay
    with the caller, who computes each once; this kernel is the part every
    additive score shares.  Returns (e, AdditiveEnergyCache).
    """
    t = np.tanh(sq[:, :, None, :] + hk[:, None, :, :])
    e = t @ v_a
    return e, AdditiveEnergyCache(t=t, v_a=v_a)


def additive_energy_backward(de, cache: AdditiveEnergyCache):
    """The gradients of e_ij = tanh(sq_i + hk_j) . v_a.  Returns (dsq, dhk, dv_a).

        dv_a  = sum_{b,i,j} de_ij t_ij
        dt_ij = de_ij v_a
        dz_ij = dt_ij (1 - t_ij^2)          z_ij = sq_i + hk_j ;  tanh' = 1 - tanh^2
        dsq_i = sum_j dz_ij                 sq_i was broadcast over the keys j: sum them
        dhk_j = sum_i dz_ij                 hk_j was broadcast over the queries i
    """
    t, v_a = cache.t, cache.v_a
    dv_a = (de[..., None] * t).sum(axis=(0, 1, 2))
    dt = de[..., None] * v_a
    dz = dt * (1.0 - t * t)
    dsq = dz.sum(axis=2)
    dhk = dz.sum(axis=1)
    return dsq, dhk, dv_a
