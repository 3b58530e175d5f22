"""Decoding: greedy search, beam search, and sampling.

Any sequence-to-sequence model can be decoded if it offers two methods:

    state  = model.start_decoding(src_ids, src_pad_mask)   # encode once
    logits = model.decode_step(state, prev_tokens)         # (B,) -> (B, V); state advances

and its state offers ``state.select(rows)`` (keep, reorder or repeat batch
rows; beam search needs it).  ``Transformer`` does this with key/value caches,
so a step costs O(t), not a recompute of the whole prefix.  A decoder-only LM
offers ``start_decoding(batch_size)`` and ``decode_step(state, tokens)`` with
tokens (B,) or (B, T) (a prompt fed at once); ``sample`` uses that.

Every function here runs in ``numtransformer.inference_mode()`` (the fast
kernels, input checks once, large GEMMs split over the threads): decoding
needs no backward, and its tokens are the same as outside the mode
(tests/test_inference.py).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from .inference import inference_mode
from .layers.activations import log_softmax
from .tokens import BOS_ID, EOS_ID

__all__ = ["greedy_decode", "decode_with_attention", "beam_search", "Hypothesis",
           "length_penalty", "sample"]


def _in_inference_mode(fn):
    """fn, run inside ``inference_mode()``."""
    @functools.wraps(fn)
    def run(*args, **kwargs):
        with inference_mode():
            return fn(*args, **kwargs)
    return run


@_in_inference_mode
def greedy_decode(model, src_ids, src_pad_mask=None, max_len: int = 50,
                  bos_id: int = BOS_ID, eos_id: int = EOS_ID) -> list[list[int]]:
    """The most likely next token at every step, for a batch of sources.

    Returns one token list per source, without <bos> and without the <eos>
    that ended it (a row that never emits <eos> stops at ``max_len`` tokens).
    """
    state = model.start_decoding(src_ids, src_pad_mask)
    B = state.batch_size
    tokens = np.full(B, bos_id, dtype=np.int64)
    out = [[] for _ in range(B)]
    done = np.zeros(B, dtype=bool)
    for _ in range(max_len):
        tokens = np.argmax(model.decode_step(state, tokens), axis=-1)
        for b in np.flatnonzero(~done):
            if tokens[b] == eos_id:
                done[b] = True
            else:
                out[b].append(int(tokens[b]))
        if done.all():
            break
    return out


@_in_inference_mode
def decode_with_attention(model, src_ids, src_pad_mask=None, max_len: int = 50,
                          bos_id: int = BOS_ID, eos_id: int = EOS_ID):
    """Greedy decoding that also returns, per source, the attention matrix of
    its output, for plotting.

    ``model`` is a decoder whose state records one (B, S) array of attention
    weights per step in ``state.attention`` (``Seq2Seq``; ``Seq2Seq``'s method
    of the same name calls this).  Returns a list of (tokens, weights), one per
    source: tokens as ``greedy_decode`` gives them, weights (n_out, S_b) with
    row i the attention while emitting output i (the final <eos> included when
    emitted), S_b the source's real length; weights is None when the model
    has no attention (an empty ``state.attention``).  Runs in eval mode and
    restores the model's mode.
    """
    was_training = model.training
    model.eval()
    try:
        state = model.start_decoding(src_ids, src_pad_mask)
        B = state.batch_size
        tokens = np.full(B, bos_id, dtype=np.int64)
        out, n_steps = [[] for _ in range(B)], np.zeros(B, dtype=np.intp)
        done = np.zeros(B, dtype=bool)
        for _ in range(max_len):
            tokens = np.argmax(model.decode_step(state, tokens), axis=-1)
            n_steps[~done] += 1
            for b in np.flatnonzero(~done):
                if tokens[b] == eos_id:
                    done[b] = True
                else:
                    out[b].append(int(tokens[b]))
            if done.all():
                break
    finally:
        model.train(was_training)
    S = np.asarray(src_ids).shape[1]
    lengths = np.full(B, S) if src_pad_mask is None else S - src_pad_mask.sum(axis=1)
    weights = np.stack(state.attention, axis=1) if state.attention else None
    return [(out[b], None if weights is None else weights[b, :n_steps[b], :lengths[b]])
            for b in range(B)]


def length_penalty(length: int, alpha: float) -> float:
    """GNMT's lp(Y) = ((5 + |Y|) / 6)^alpha (Wu et al., 2016, eq. 14); alpha = 0: 1."""
    return ((5.0 + length) / 6.0) ** alpha


@dataclass
class Hypothesis:
    tokens: list[int]  # without <bos> / <eos>
    log_prob: float  # sum of the token log-probabilities (the <eos> included, if finished)
    score: float  # log_prob / length_penalty(n, alpha), n = len(tokens) + 1 with the <eos>
    #               when finished, len(tokens) when cut at max_len
    finished: bool  # ended with <eos> (False: cut at max_len)


EARLY_STOPS = ("bound", "heuristic", "never")


def _best_reachable_penalty(n_tokens: int, max_len: int, alpha: float) -> float:
    """The largest lp(L) over the lengths L a live hypothesis of ``n_tokens`` tokens
    can still end with: finished at L = n_tokens + 1 .. max_len (the <eos> counted),
    or cut at L = max_len.  lp is monotone in L (increasing for alpha > 0,
    decreasing for alpha < 0), so the largest sits at one end of the range."""
    shortest = min(n_tokens + 1, max_len)
    return max(length_penalty(shortest, alpha), length_penalty(max_len, alpha))


@_in_inference_mode
def beam_search(model, src_ids, src_pad_mask=None, beam_size: int = 4, max_len: int = 50,
                alpha: float = 0.6, bos_id: int = BOS_ID, eos_id: int = EOS_ID,
                return_all: bool = False, early_stop: str = "bound"):
    """Beam search with GNMT's length penalty, batched over sources.

    Every source keeps ``beam_size`` (k) live hypotheses.  Each step extends every
    live one by every token, and of the best 2k candidates (by summed log
    probability) those ending in <eos> among the best k move to the finished
    list (ranked by ``score = log_prob / lp(L)``, L the output length with the
    <eos>; the best k kept) while the best k others stay live.  At ``max_len``
    the live ones count as unfinished candidates (L = max_len).  With
    beam_size=1 and alpha=0 this is exactly greedy decoding.

    When may a source stop before ``max_len``?  ``early_stop`` says:

    "bound" (the default; sound): when it has k finished hypotheses and no live
    one can still produce a hypothesis that beats the worst of them.  The bound
    on what a live hypothesis can still reach, with n tokens and log-probability
    logp_now after this step:

        every token adds log p <= 0, so any descendant has logp <= logp_now <= 0;
        it ends with some length L in [n + 1, max_len] (or is cut at max_len);
        lp(L) > 0, so score = logp / lp(L) <= logp_now / lp(L);
        logp_now <= 0, so logp_now / lp(L) is largest where lp(L) is largest:
        score <= logp_now / max_L lp(L).
        With alpha >= 0, lp(L) = ((5 + L) / 6)^alpha grows with L, so the
        bound is logp_now / lp(max_len); with alpha < 0 it is logp_now / lp(n + 1).

    A hypothesis's log-probability only falls as it grows, but its score need
    not: with alpha > 0 the divisor grows too, and a long hypothesis whose
    tokens cost almost nothing overtakes a short finished one.  So the bound
    uses the most favourable length still reachable, not the next one.  Once
    it holds, nothing the row could still find would enter the k finished
    hypotheses: the result (and the first k of ``return_all``) is what
    decoding to ``max_len`` gives; with alpha = 0 the bound is exact
    (lp = 1) and stops as early as "heuristic".  (Comparing with the best
    finished hypothesis instead of the k-th would already fix the result, but
    not the rest of the k that ``return_all`` lists.)

    "heuristic": stop when k have finished and the best live hypothesis,
    ended at the very next step (divided by lp(n + 1)), would not beat the
    worst of them.  This is a common fast rule (Hugging Face's
    ``early_stopping=False`` is of this kind; its ``"never"`` is the bound
    above); it is exact for alpha = 0 but NOT for alpha > 0, where it can
    return a worse hypothesis than the search would find: a short finished
    one where a longer reachable one scores higher.  (Huang, Zhao and Ma,
    "When to Finish? Optimal Beam Search for Neural Text Generation (modulo
    beam size)", EMNLP 2017, give a bounded stop of the first kind and prove
    it optimal.)

    "never": decode every source to ``max_len``.

    Returns the best token list per source (or, with ``return_all``, every
    source's hypotheses, best first: the finished ones kept, then, for a row
    that ran to ``max_len``, the live ones cut there).
    """
    if beam_size < 1:
        raise ValueError(f"beam_search: beam_size must be >= 1, got {beam_size}")
    if early_stop not in EARLY_STOPS:
        raise ValueError(f"beam_search: early_stop must be one of {EARLY_STOPS}, "
                         f"got {early_stop!r}")
    k = int(beam_size)
    state = model.start_decoding(src_ids, src_pad_mask)
    B = state.batch_size
    state = state.select(np.repeat(np.arange(B), k))  # row b * k + j: source b, beam j
    tokens = np.full(B * k, bos_id, dtype=np.int64)
    seqs = [[[] for _ in range(k)] for _ in range(B)]
    scores = np.full((B, k), -np.inf)
    scores[:, 0] = 0.0  # all beams start identical: expand only the first
    finished: list[list[Hypothesis]] = [[] for _ in range(B)]
    active = np.ones(B, dtype=bool)

    for step in range(max_len):
        logp = log_softmax(model.decode_step(state, tokens).astype(np.float64), axis=-1)
        V = logp.shape[-1]
        cand = scores[:, :, None] + logp.reshape(B, k, V)  # (B, k, V)
        flat = cand.reshape(B, k * V)
        n_top = min(2 * k, k * V)
        top = np.argpartition(-flat, n_top - 1, axis=1)[:, :n_top]
        rows, new_tokens = [], []
        new_scores = np.full((B, k), -np.inf)
        new_seqs = [[[] for _ in range(k)] for _ in range(B)]
        for b in range(B):
            order = top[b][np.argsort(-flat[b, top[b]], kind="stable")]
            live = 0
            for rank, idx in enumerate(order):
                beam, tok = divmod(int(idx), V)
                value = float(flat[b, idx])
                if not np.isfinite(value):
                    continue
                if not active[b]:
                    break
                if tok == eos_id:
                    if rank >= k:  # as fairseq does: only a top-k candidate may finish
                        continue
                    seq = seqs[b][beam]
                    finished[b].append(Hypothesis(
                        list(seq), value, value / length_penalty(len(seq) + 1, alpha), True))
                    continue
                if live < k:
                    new_seqs[b][live] = seqs[b][beam] + [tok]
                    new_scores[b, live] = value
                    rows.append(b * k + beam)
                    new_tokens.append(tok)
                    live += 1
            while live < k:  # keep the row layout: pad with dead beams
                rows.append(b * k)
                new_tokens.append(eos_id)
                live += 1
            finished[b].sort(key=lambda h: -h.score)
            del finished[b][k:]
            if not active[b] or len(finished[b]) < k or early_stop == "never":
                continue
            n_live = step + 1  # tokens in every live hypothesis now
            if early_stop == "bound":
                best_lp = _best_reachable_penalty(n_live, max_len, alpha)
            else:  # "heuristic": as if every live one ended at the next step
                best_lp = length_penalty(n_live + 1, alpha)
            best_live = new_scores[b].max() / best_lp
            if not best_live > finished[b][-1].score:
                active[b] = False
                new_scores[b] = -np.inf
        scores, seqs = new_scores, new_seqs
        if not active.any():
            break
        state = state.select(np.array(rows))
        tokens = np.array(new_tokens, dtype=np.int64)

    results = []
    for b in range(B):
        hyps = list(finished[b])
        for j in range(k):
            if np.isfinite(scores[b, j]):
                seq = seqs[b][j]
                hyps.append(Hypothesis(list(seq), float(scores[b, j]),
                                       float(scores[b, j]) / length_penalty(len(seq), alpha),
                                       False))
        hyps.sort(key=lambda h: -h.score)
        results.append(hyps if return_all else (hyps[0].tokens if hyps else []))
    return results


@_in_inference_mode
def sample(model, prompt_ids, max_new_tokens: int, temperature: float = 1.0,
           top_k: int | None = None, rng=None, eos_id: int | None = None,
           suppress=None) -> np.ndarray:
    """Sample continuations from a decoder-only LM.

    prompt_ids (B, T) ints; at each step logits / temperature, optionally keep
    only the top_k tokens, softmax, draw.  temperature = 0 is greedy.  Returns
    (B, T + n) with the prompt; rows that emitted ``eos_id`` are padded with it.
    ``suppress``: token ids never produced (their logits are set to -inf first;
    e.g. the special tokens, which a plain text never contains).
    """
    prompt = np.asarray(prompt_ids, dtype=np.int64)
    if prompt.ndim != 2 or prompt.shape[1] == 0:
        raise ValueError(f"sample: prompt_ids must be (B, T) with T >= 1, got {prompt.shape}")
    if temperature < 0:
        raise ValueError(f"sample: temperature must be >= 0, got {temperature}")
    rng = np.random.default_rng(rng)
    B = prompt.shape[0]
    state = model.start_decoding(B)
    logits = model.decode_step(state, prompt).astype(np.float64)
    out = [prompt]
    done = np.zeros(B, dtype=bool)
    suppress = None if suppress is None else np.asarray(suppress, dtype=np.int64)
    for _ in range(max_new_tokens):
        if suppress is not None:
            logits[:, suppress] = -np.inf
        if temperature == 0:
            nxt = np.argmax(logits, axis=-1)
        else:
            z = logits / temperature
            if top_k is not None and top_k < z.shape[-1]:
                kth = np.partition(z, -top_k, axis=-1)[:, -top_k][:, None]
                z = np.where(z < kth, -np.inf, z)
            p = np.exp(log_softmax(z, axis=-1))
            u = rng.random((B, 1))
            nxt = np.minimum((np.cumsum(p, axis=-1) < u).sum(axis=-1), z.shape[-1] - 1)
        if eos_id is not None:
            nxt = np.where(done, eos_id, nxt)
            done |= nxt == eos_id
        out.append(nxt[:, None])
        if eos_id is not None and done.all():
            break
        logits = model.decode_step(state, nxt).astype(np.float64)
    return np.concatenate(out, axis=1)
