"""End-To-End Memory Networks (Sukhbaatar, Szlam, Weston & Fergus, 2015).

A story is a set of sentences held in memory; a question reads the memory with
soft attention, K times in a row ("hops"), each read refining the question's
state, and the final state predicts a one-word answer.  It is attention with
a dot score (``DotScore``) where keys and values come from two different
embeddings of the same memories, applied repeatedly.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import numpy as np

from .._init import normal
from .._validate import (as_rng, check_float_dtype, check_ids, check_mask, check_positive_int)
from ..functional.linear import EmbeddingCache
from ..functional.memnn import MemN2NHopCache
from ..kernels import select
from ..module import Module, Parameter

__all__ = ["MemN2N", "MemN2NCache", "MemN2NHopCache", "position_encoding"]

_TYINGS = ("adjacent", "layerwise")


def position_encoding(lengths: np.ndarray, J: int, d: int) -> np.ndarray:
    """The paper's position encoding (sec. 4.1), l_kj for every padded word slot.

    lengths (...) int: J_i of each sentence, the number of word slots up to and
    including its last non-PAD word.  Returns l (..., J, d) float64 with

        l_kj = (1 - j/J_i) - (k/d) (1 - 2 j/J_i)     j = 1..J_i, k = 1..d  (1-based)

    and l_kj = 0 for j > J_i (padding words contribute nothing).  The code's
    0-based word slot s and dimension e are the paper's j = s + 1, k = e + 1.
    """
    return _pe_table(int(J), int(d))[np.asarray(lengths)]


@functools.lru_cache(maxsize=64)
def _pe_table(J: int, d: int) -> np.ndarray:
    """table[n] = l (J, d) of a sentence of length n = 0..J (read-only, cached)."""
    table = np.zeros((J + 1, J, d))
    k = np.arange(1, d + 1) / d
    for n in range(1, J + 1):
        j = np.arange(1, n + 1)[:, None] / n
        table[n, :n] = (1.0 - j) - k * (1.0 - 2.0 * j)
    table.flags.writeable = False
    return table


class MemN2NCache(NamedTuple):
    story: np.ndarray  # (B, N, J) word ids x_ij
    query: np.ndarray  # (B, Jq) word ids q_j
    time: np.ndarray  # (B, N) temporal index t_i of each memory slot
    mask: np.ndarray  # (B, N) True = padding slot (never attended)
    L: np.ndarray  # (B, N, J, d) position weights l_ij of the story's words
    Lq: np.ndarray  # (B, Jq, d) position weights of the question's words
    M: tuple  # (B, N, d) per distinct embedding table: the embedded memories
    u: tuple  # K + 1 arrays (B, d): u^1 (the question) .. u^{K+1}
    p: np.ndarray  # (B, K, N) attention of each hop over the memories
    linear_start: bool  # softmax removed from the hops
    hops: tuple = ()  # K MemN2NHopCache records, hop 1 .. K (functional.memnn_hop_forward)


class MemN2N(Module):
    """End-To-End Memory Network (Sukhbaatar et al., 2015, sec. 2 and 4.1).

    Shapes: story x (B, N, J) word ids, sentence i of example b in x[b, i],
    right-padded with ``pad_id``; query q (B, Jq) word ids; story_pad_mask
    (B, N) True = slot holds no sentence (default: slots whose words are all
    PAD); time (B, N) optional temporal indices.  Returns answer logits a (B, V);
    the cache's ``p`` (B, K, N) is the attention of each hop (for plotting).
    Embedding tables E (V, d), temporal tables T (memory_size, d).

    Sentence and question encoding (position encoding, PE, sec. 4.1):
        l_ij  = position_encoding(J_i)[j]            J_i = length of sentence i
        m_i   = sum_j l_ij * A[x_ij] + T_A[t_i]      input memory   (B, N, d)
        c_i   = sum_j l_ij * C[x_ij] + T_C[t_i]      output memory  (B, N, d)
        u^1   = sum_j l_qj * B[q_j]                  the question   (B, d)
    Temporal index (sec. 4.1, "sentences indexed in reverse order"): by default
    t_i = the number of real sentences after slot i (0 = the most recent), so
    stories of different lengths share the recency code.  With
    ``position_encoding=False``, l = 1 on real words (bag of words).

    Hop k = 1..K (sec. 2.1; masked slots get p = 0; a story with no sentence
    gives p = 0 and o = 0, never NaN; the kernel ``functional.memnn_hop_forward``):
        s^k = m^k u^k                 s_i = <m_i, u>                   (B, N)
        p^k = softmax(s^k)            (linear start: p^k = s^k, sec. 4.2)
        o^k = sum_i p^k_i c^k_i                                         (B, d)
        u^{k+1} = u^k + o^k           (use_H: u^{k+1} = u^k H + o^k, sec. 2.2)
    Answer:  a = u^{K+1} W            W (d, V); the loss applies softmax.

    Weight tying (sec. 2.2):
      adjacent:  A^{k+1} = C^k, B = A^1, W^T = C^K; T_A^{k+1} = T_C^k.
                 Parameters A1, C1..CK (V, d) and TA1, TC1..TCK (memory_size, d):
                 K + 1 distinct tables, so K + 1 distinct embedded memories
                 M_0..M_K with hop k reading m^k = M_{k-1}, c^k = M_k.
      layerwise: A^1 = ... = A^K = A, C^1 = ... = C^K = C (and T_A, T_C), with
                 separate B and W and (by default) the map H.
                 Parameters A, C, B (V, d), TA, TC (memory_size, d), H (d, d),
                 W (d, V): two embedded memories M_0 (from A), M_1 (from C).
    Each distinct memory M is computed once and shared by the hops that read
    it; its gradient sums over those uses before one scatter into its tables,
    so a tied weight's gradient is the sum over all its uses.

    Backward (dv = upstream gradient of v; all sums over the batch):
        dW  += u^{K+1 T} da             (adjacent: dC^K += da^T u^{K+1})
        du^{K+1} = da W^T
      for k = K..1:
        do^k = du^{k+1}
        du^k = du^{k+1}                 (use_H: dH += u^{k T} du^{k+1}, du^k = du^{k+1} H^T)
        dp^k_i = <c^k_i, do^k>
        dc^k_i += p^k_i do^k
        ds^k = p^k (dp^k - sum_i p^k_i dp^k_i)      (linear start: ds^k = dp^k on real slots)
        dm^k_i += ds^k_i u^k
        du^k += sum_i ds^k_i m^k_i
      then, per distinct table (E, T) with accumulated dM:
        dE[x_ij] += l_ij * dM_i         (scatter-add over every word of every sentence)
        dT[t_i]  += dM_i                (real slots; padding slots have dM_i = 0)
        dB[q_j]  += l_qj * du^1
    (the loop over k is ``functional.memnn_hop_backward``, once per hop).
    Token ids and masks get no gradient: backward returns None.

    The question's table B is A1 (adjacent) or B (layer-wise): an alias, not
    a parameter of its own, so ``state_dict()`` holds it once, under that
    public name.  Checkpoints written before also held it under the private
    key ``_B``; ``load_state_dict`` still reads them (see there).

    Init as the paper (sec. 4.2): every weight ~ N(0, init_std = 0.1).
    """

    def __init__(self, vocab_size: int, d: int = 20, hops: int = 3, memory_size: int = 50, *,
                 tying: str = "adjacent", use_H: bool | None = None,
                 position_encoding: bool = True, temporal: bool = True, pad_id: int = 0,
                 init_std: float = 0.1, dtype=np.float32, rng=None):
        self.vocab_size = check_positive_int(self, "vocab_size", vocab_size)
        self.d = check_positive_int(self, "d", d)
        self.hops = check_positive_int(self, "hops", hops)
        self.memory_size = check_positive_int(self, "memory_size", memory_size)
        if tying not in _TYINGS:
            raise ValueError(f"MemN2N: tying must be one of {_TYINGS}, got {tying!r}")
        if use_H is None:
            use_H = tying == "layerwise"
        if not isinstance(pad_id, (int, np.integer)) or not 0 <= pad_id < vocab_size:
            raise ValueError(f"MemN2N: pad_id must be an id in [0, {vocab_size}), got {pad_id!r}")
        init_std = float(init_std)
        if not init_std > 0:
            raise ValueError(f"MemN2N: init_std must be > 0, got {init_std}")
        dtype = check_float_dtype(self, dtype)
        rng = as_rng(rng)
        self.tying, self.use_H = tying, bool(use_H)
        self.position_encoding, self.temporal = bool(position_encoding), bool(temporal)
        self.pad_id = int(pad_id)
        V, K = vocab_size, hops

        def table(rows):
            return Parameter(normal(rng, (rows, d), dtype, init_std))

        # _tables[n] = (word table, temporal table or None) of embedded memory M_n;
        # hop k (0-based) reads keys M[_hop_in[k]], values M[_hop_out[k]].
        if tying == "adjacent":
            self.A1 = table(V)
            for k in range(1, K + 1):
                setattr(self, f"C{k}", table(V))
            if self.temporal:
                self.TA1 = table(memory_size)
                for k in range(1, K + 1):
                    setattr(self, f"TC{k}", table(memory_size))
            words = [self.A1] + [getattr(self, f"C{k}") for k in range(1, K + 1)]
            times = ([self.TA1] + [getattr(self, f"TC{k}") for k in range(1, K + 1)]
                     if self.temporal else [None] * (K + 1))
            self._hop_in, self._hop_out = list(range(K)), list(range(1, K + 1))
            self._question_table = "A1"  # B = A^1
        else:
            self.A, self.C, self.B = table(V), table(V), table(V)
            if self.temporal:
                self.TA, self.TC = table(memory_size), table(memory_size)
            words = [self.A, self.C]
            times = [self.TA, self.TC] if self.temporal else [None, None]
            self._hop_in, self._hop_out = [0] * K, [1] * K
            self._question_table = "B"
        self._tables = list(zip(words, times))
        if self.use_H:
            self.H = Parameter(normal(rng, (d, d), dtype, init_std))
        if tying == "layerwise":
            self.W = Parameter(normal(rng, (d, V), dtype, init_std))

    @property
    def _B(self) -> Parameter:
        """The question's embedding table B (sec. 2.1): the parameter named by
        ``_question_table``, A1 under adjacent tying, B under layer-wise tying."""
        return getattr(self, self._question_table)

    @property
    def dtype(self):
        return self._B.dtype

    def load_state_dict(self, state_dict, strict: bool = True):
        """``Module.load_state_dict``, reading old checkpoints too: they also
        held the question's table under the private key ``_B`` (the same array
        as A1 under adjacent tying, B under layer-wise tying).  That key is read
        as the public one; if both are present they must hold the same values,
        else the load is refused naming both keys."""
        if "_B" in state_dict:
            public = self._question_table
            state_dict = dict(state_dict)
            alias = np.asarray(state_dict.pop("_B"))
            if public not in state_dict:
                if alias.shape != self._B.shape:
                    raise ValueError(f"MemN2N.load_state_dict: the old key '_B' (the question's "
                                     f"table, read as {public!r}) has shape {alias.shape}, "
                                     f"expected {self._B.shape}")
                state_dict[public] = alias
            elif not np.array_equal(np.asarray(state_dict[public]), alias):
                raise ValueError(f"MemN2N.load_state_dict: the old key '_B' (the question's "
                                 f"table, the same parameter as {public!r}) holds values "
                                 f"other than {public!r}'s; a checkpoint must hold one value "
                                 f"per parameter")
        return super().load_state_dict(state_dict, strict)

    # -- inputs ----------------------------------------------------------------------------
    def _check_inputs(self, story, query, story_pad_mask, time):
        story = check_ids(self, "story", story, self.vocab_size)
        query = check_ids(self, "query", query, self.vocab_size)
        if story.ndim != 3 or 0 in story.shape:
            raise ValueError(f"MemN2N: story must have shape (B, N, J) with every size >= 1, "
                             f"got {story.shape}")
        B, N, _ = story.shape
        if query.ndim != 2 or query.shape[0] != B or query.shape[1] < 1:
            raise ValueError(f"MemN2N: query must have shape (B, Jq) with B={B} as the story "
                             f"and Jq >= 1, got {query.shape}")
        if self.temporal and N > self.memory_size:
            raise ValueError(f"MemN2N: story has N={N} sentence slots, expected at most "
                             f"memory_size={self.memory_size} (keep the most recent ones)")
        if story_pad_mask is None:
            story_pad_mask = (story == self.pad_id).all(axis=2)
        else:
            story_pad_mask = check_mask(self, "story_pad_mask", story_pad_mask, (B, N))
        if time is None:
            real = (~story_pad_mask).astype(np.int64)
            after = np.cumsum(real[:, ::-1], axis=1)[:, ::-1] - real
            time = np.minimum(after, self.memory_size - 1)
        else:
            time = check_ids(self, "time", time, self.memory_size)
            if time.shape != (B, N):
                raise ValueError(f"MemN2N: time has shape {time.shape}, expected {(B, N)}")
        return story, query, story_pad_mask, time

    def _weights(self, ids):
        """l (..., J, d) for sentences of word ids (..., J): PE, or 1 on real words."""
        J = ids.shape[-1]
        real = ids != self.pad_id
        if not self.position_encoding:
            return np.repeat(real[..., None], self.d, axis=-1).astype(self.dtype)
        # J_i: up to and including the last real word (0 for an empty sentence)
        lengths = np.where(real.any(axis=-1), J - np.argmax(real[..., ::-1], axis=-1), 0)
        return (position_encoding(lengths, J, self.d) * real[..., None]).astype(self.dtype)

    # -- the contract ----------------------------------------------------------------------
    def forward(self, story, query, story_pad_mask=None, time=None, *, linear_start=False):
        story, query, mask, time = self._check_inputs(story, query, story_pad_mask, time)
        L = self._weights(story)
        Lq = self._weights(query)
        # m_i = sum_j l_ij * E[x_ij] for every distinct table E at once: one gather
        # from the tables side by side (V, n_tables, d), one product, one sum over j.
        E_all = np.stack([E.data for E, _ in self._tables], axis=1)
        M_all = np.einsum("bnjd,bnjtd->bntd", L, E_all[story], optimize=False)
        M = []
        for n, (_, T) in enumerate(self._tables):
            Mn = M_all[:, :, n]
            if T is not None:
                Mn = Mn + T.data[time]
            M.append(np.ascontiguousarray(Mn))
        u = [np.sum(Lq * self._B.data[query], axis=1)]
        kernels = select(u[0].dtype)
        H = self.H.data if self.use_H else None
        hops = []
        for k in range(self.hops):
            u_next, hop = kernels.memnn_hop_forward(u[k], M[self._hop_in[k]], M[self._hop_out[k]],
                                                    mask, linear_start, H)
            u.append(u_next)
            hops.append(hop)
        W = self.W.data if self.tying == "layerwise" else self._tables[-1][0].data.T
        a = u[-1] @ W
        cache = MemN2NCache(story=story, query=query, time=time, mask=mask, L=L, Lq=Lq,
                            M=tuple(M), u=tuple(u), p=np.stack([h.p for h in hops], axis=1),
                            linear_start=bool(linear_start), hops=tuple(hops))
        return a, cache

    def backward(self, da, cache: MemN2NCache):
        u, M = cache.u, cache.M
        if self.tying == "layerwise":
            self.W.grad += u[-1].T @ da
            du = da @ self.W.data.T
        else:
            E_out = self._tables[-1][0]
            E_out.grad += da.T @ u[-1]
            du = da @ E_out.data
        kernels = select(du.dtype)
        H = self.H.data if self.use_H else None
        dM = [np.zeros_like(Mn) for Mn in M]
        for k in reversed(range(self.hops)):
            du, dm, dc, dH = kernels.memnn_hop_backward(du, cache.hops[k], H)
            if dH is not None:
                self.H.grad += dH
            dM[self._hop_out[k]] += dc
            dM[self._hop_in[k]] += dm
        # The scatter-adds dE[x_ij] += l_ij dM_i (padding words have l = 0 and the
        # pad row gets no gradient), dT[t_i] += dM_i and dB[q_j] += lq_j du: the
        # embedding kernel's backward, which sums repeated ids.
        B, N, J = cache.story.shape
        V = self._B.shape[0]
        story_ids = EmbeddingCache(ids=cache.story)
        for n, (E, T) in enumerate(self._tables):
            dX = cache.L * dM[n][:, :, None, :]  # (B, N, J, d): l_ij dM_i
            E.grad += kernels.embedding_backward(dX, story_ids, V, self.pad_id)
            if T is not None:
                T.grad += kernels.embedding_backward(dM[n], EmbeddingCache(ids=cache.time),
                                                     T.shape[0])
        dXq = cache.Lq * du[:, None, :]  # (B, Jq, d): lq_j du
        self._B.grad += kernels.embedding_backward(dXq, EmbeddingCache(ids=cache.query), V,
                                                   self.pad_id)
        return None

    # -- inference -------------------------------------------------------------------------
    def predict(self, story, query, story_pad_mask=None, time=None):
        """(answer ids (B,), attention p (B, K, N)) for a batch of stories."""
        a, cache = self.forward(story, query, story_pad_mask, time)
        return np.argmax(a, axis=-1), cache.p

    def extra_repr(self) -> str:
        return (f"vocab_size={self.vocab_size}, d={self.d}, hops={self.hops}, "
                f"memory_size={self.memory_size}, tying={self.tying!r}, use_H={self.use_H}, "
                f"position_encoding={self.position_encoding}, temporal={self.temporal}")
