"""Regenerate every figure of the study guide (docs/figures/*.png) with the library itself.

    python docs/make_figures.py                  # every figure (about 6 minutes on one core)
    python docs/make_figures.py --only 02        # the figures whose name contains "02"
    python docs/make_figures.py --quick --out D  # a smoke run with tiny training (the tests)

Every model here is trained by the same hand-written loop a reader can copy:
forward, cross-entropy, backward, clip, optimizer step.  Everything is seeded,
so a run draws the same figures (up to BLAS rounding).  The numbers each
figure shows are also printed.  Figures are drawn with
matplotlib (the optional ``plot`` extra) and stored as 256-colour PNGs.
"""

from __future__ import annotations

import argparse
import functools
import math
import os
import sys
import time

# The models here are small: one BLAS thread is faster than several fighting
# over tiny matrices.  (Only effective when numpy is not yet imported.)
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import numpy as np  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import numtransformer as nt  # noqa: E402
from numtransformer.data import (PAD_ID, BatchIterator, encode_babi, encode_pairs,  # noqa: E402
                                 make_batch, make_task)
from numtransformer.decoding import greedy_decode  # noqa: E402
from numtransformer.gradcheck import numerical_gradient  # noqa: E402
from numtransformer.layers import sinusoid_table  # noqa: E402
from numtransformer.memnn_train import train_memnn  # noqa: E402
from numtransformer.optim import Adam, WarmupCosineSchedule, clip_grad_norm  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
DPI = 100
DATE = "the 25th of june 2009"  # the date sentence drawn in chapters 3, 4 and 6


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _show(tokens):
    """Token labels for tick marks: a visible mark for the space."""
    return ["\u2423" if t == " " else t for t in tokens]


def fit(model, examples, steps, *, batch_size=64, lr=3e-3, warmup=100, seed=0, log_every=0):
    """The training loop of the guide: forward, loss, backward, clip, step.

    ``examples`` are (src_ids, tgt_ids) pairs; returns the loss of every step."""
    loss_fn = nt.CrossEntropyLoss(ignore_index=PAD_ID)
    opt = Adam(model, lr=lr, betas=(0.9, 0.98), eps=1e-9)
    schedule = WarmupCosineSchedule(lr, min(warmup, steps - 1), steps, min_lr=lr * 0.01)
    batches = BatchIterator(examples, batch_size, seed=seed)
    losses = []
    model.train()
    for step in range(1, steps + 1):
        b = next(batches)
        logits, cache = model.forward(b.src, b.tgt_in, b.src_pad_mask, b.tgt_pad_mask)
        loss, loss_cache = loss_fn.forward(logits, b.tgt_out)
        model.zero_grad()
        model.backward(loss_fn.backward(1.0, loss_cache), cache)
        clip_grad_norm(model.parameters(), 1.0)
        opt.lr = schedule(step)
        opt.step()
        losses.append(float(loss))
        if log_every and step % log_every == 0:
            print(f"    step {step}/{steps}  loss {np.mean(losses[-log_every:]):.4f}", flush=True)
    model.eval()
    return losses


def exact_match(model, pairs, src_tok, tgt_tok, max_len):
    """One bool per pair: did greedy decoding reproduce the target exactly?"""
    hits = []
    for start in range(0, len(pairs), 500):
        chunk = pairs[start:start + 500]
        b = make_batch(encode_pairs(chunk, src_tok, tgt_tok))
        outs = greedy_decode(model, b.src, b.src_pad_mask, max_len=max_len)
        hits += [tgt_tok.decode(o) == t for (_, t), o in zip(chunk, outs)]
    return np.array(hits)


def save(fig, path):
    """Save at DPI, then store the PNG with a 256-colour palette (a third of the bytes)."""
    from PIL import Image

    plt = _pyplot()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    with Image.open(path) as img:
        small = img.convert("RGB").quantize(colors=256, method=Image.Quantize.MEDIANCUT,
                                            dither=Image.Dither.NONE)
    small.save(path, optimize=True)


def heads_figure(path, alpha, xlabels, ylabels, n_heads, suptitle, size, vmax=1.0):
    """One heatmap per (layer, head): alpha (L * H, Tq, Tk), a row of panels per layer,
    one colour scale 0..vmax for all, with its colour bar (weights above vmax saturate)."""
    plt = _pyplot()
    n_layers = alpha.shape[0] // n_heads
    fig, axes = plt.subplots(n_layers, n_heads, figsize=size, squeeze=False)
    for k, ax in enumerate(axes.flat):
        im = heatmap(ax, alpha[k], xlabels, ylabels, f"layer {k // n_heads + 1}, head "
                     f"{k % n_heads + 1}", fontsize=6, vmax=vmax)
    fig.suptitle(suptitle, fontsize=10)
    fig.tight_layout(rect=(0, 0, 0.95, 1))
    fig.colorbar(im, cax=fig.add_axes((0.955, 0.15, 0.01, 0.7)),
                 extend="max" if vmax < 1.0 else "neither")
    save(fig, path)


def heatmap(ax, w, xlabels, ylabels, title=None, fontsize=8, vmax=1.0):
    """Weights as colours, 0 (dark) to vmax (bright)."""
    im = ax.imshow(w, cmap="viridis", vmin=0.0, vmax=vmax, aspect="auto")
    ax.set_xticks(range(len(xlabels)))
    ax.set_xticklabels(xlabels, fontsize=fontsize)
    ax.set_yticks(range(len(ylabels)))
    ax.set_yticklabels(ylabels, fontsize=fontsize)
    ax.tick_params(length=0)
    if title:
        ax.set_title(title, fontsize=9)
    return im


# -- chapter 1 ---------------------------------------------------------------------------
def fig_bottleneck(path, quick):
    """Exact match by source length on reversal, with and without attention."""
    n_train, n_test, steps = (300, 100, 5) if quick else (20000, 2000, 3000)
    task = make_task("reverse", n_train, 0, n_test, seed=0, max_len=20)
    src_tok, tgt_tok = task.src_tokenizer, task.tgt_tokenizer
    train = encode_pairs(task.train, src_tok, tgt_tok)
    lengths = np.array([len(s) for s, _ in task.test])
    results = {}
    for attention in ("luong", "none"):
        model = nt.Seq2Seq(len(src_tok), len(tgt_tok), embed_dim=32, hidden_size=64,
                           attention=attention, score="general", rng=0)
        fit(model, train, steps, log_every=0 if quick else 1000)
        hits = exact_match(model, task.test, src_tok, tgt_tok, max_len=24)
        by_len = {n: float(hits[lengths == n].mean()) for n in sorted(set(lengths))}
        results[attention] = by_len
        print(f"  attention={attention!r}: exact match {hits.mean():.3f}; by length "
              + " ".join(f"{n}:{a:.2f}" for n, a in by_len.items()), flush=True)
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    labels = {"luong": "with attention (Luong, general score)",
              "none": "without attention (one context vector)"}
    for attention, style in (("luong", "o-"), ("none", "s--")):
        xs = list(results[attention])
        ax.plot(xs, [100 * results[attention][n] for n in xs], style, ms=4,
                label=labels[attention])
    ax.set_xlabel("source length (digits)")
    ax.set_ylabel("test exact match (%)")
    ax.set_ylim(-3, 103)
    ax.set_xticks(range(2, 21, 2))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower left")
    ax.set_title(f"Reversing digit strings: LSTM encoder-decoder, H = 64, {steps} steps",
                 fontsize=9)
    fig.tight_layout()
    save(fig, path)


# -- chapter 2 ---------------------------------------------------------------------------
SCORE_TITLES = {
    "dot": "dot:  s\u1d40h",
    "scaled_dot": "scaled_dot:  s\u1d40h / \u221aD",
    "general": "general:  s\u1d40 W_a h",
    "additive": "additive:  v_a\u1d40 tanh(W_q\u1d40s + W_k\u1d40h)",
    "cosine": "cosine:  \u03b2 cos(s, h), \u03b2 = 10",
    "location": "location:  (W_a\u1d40 s)_j",
}


def fig_scores(path, quick):
    """What each score function learned on the same task (reversal, length <= 12)."""
    n_train, n_test, steps = (300, 50, 3) if quick else (10000, 500, 1500)
    task = make_task("reverse", n_train, 0, n_test, seed=0, max_len=12)
    src_tok, tgt_tok = task.src_tokenizer, task.tgt_tokenizer
    train = encode_pairs(task.train, src_tok, tgt_tok)
    source = next(s for s, _ in task.test if len(s) == 10)
    plt = _pyplot()
    fig, axes = plt.subplots(2, 3, figsize=(9.6, 6.4))
    for ax, score in zip(axes.flat, SCORE_TITLES):
        options = {"beta": 10.0} if score == "cosine" else None
        model = nt.Seq2Seq(len(src_tok), len(tgt_tok), embed_dim=32, hidden_size=64,
                           attention="luong", score=score, max_src_len=12,
                           score_options=options, rng=0)
        fit(model, train, steps)
        em = exact_match(model, task.test, src_tok, tgt_tok, max_len=16).mean()
        tokens, alpha = model.decode_with_attention(np.array([src_tok.encode(source)]))[0]
        out = [tgt_tok.itos[i] for i in tokens] + ["<eos>"]
        heatmap(ax, alpha, list(source), out,
                f"{SCORE_TITLES[score]}\ntest exact match {100 * em:.1f}%")
        print(f"  {score}: exact match {em:.3f}, mean max weight "
              f"{alpha.max(axis=1).mean():.2f}", flush=True)
    for ax in axes[1]:
        ax.set_xlabel("source h_j", fontsize=8)
    for ax in axes[:, 0]:
        ax.set_ylabel("output step (query s_t)", fontsize=8)
    fig.suptitle(f"Alignment weights alpha_tj while reversing {source!r}, one model per "
                 f"score ({steps} steps each)", fontsize=10)
    fig.tight_layout()
    save(fig, path)


# -- chapter 3 ---------------------------------------------------------------------------
def fig_lstmn(path, quick):
    """The LSTMN's intra-attention over a date sentence (encoder of a date normaliser)."""
    n_train, n_test, steps = (300, 50, 3) if quick else (20000, 500, 800)
    task = make_task("dates", n_train, 0, n_test, seed=0)
    src_tok, tgt_tok = task.src_tokenizer, task.tgt_tokenizer
    model = nt.Seq2Seq(len(src_tok), len(tgt_tok), embed_dim=32, hidden_size=64,
                       encoder_cell="lstmn", attention="luong", score="general", rng=0)
    fit(model, encode_pairs(task.train, src_tok, tgt_tok), steps,
        log_every=0 if quick else 200)
    em = exact_match(model, task.test, src_tok, tgt_tok, max_len=14).mean()
    print(f"  LSTMN encoder on dates: test exact match {em:.3f}", flush=True)
    src_ids = np.array([src_tok.encode(DATE)])
    (_, _, s), _ = model.encoder.rnn.forward(model.encoder.embed(src_ids))
    s = s[0]
    chars = _show(list(DATE))
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.0, 5.4))
    heatmap(ax, s, chars, [f"{c} " for c in chars], fontsize=9)
    ax.set_xlabel("memory slot i (the tape h_i, c_i)")
    ax.set_ylabel("step t (reading x_t)")
    ax.set_title(f"LSTMN intra-attention s_ti while reading {DATE!r}\n(encoder of a date "
                 f"normaliser, {steps} steps, test exact match {100 * em:.1f}%)", fontsize=9)
    fig.tight_layout()
    save(fig, path)


# -- chapters 4 and 6: one small Transformer trained to normalise dates ------------------
@functools.lru_cache(maxsize=2)
def dates_transformer(quick):
    n_train, n_test, steps = (300, 50, 3) if quick else (20000, 500, 1500)
    task = make_task("dates", n_train, 0, n_test, seed=0)
    src_tok, tgt_tok = task.src_tokenizer, task.tgt_tokenizer
    model = nt.Transformer(len(src_tok), len(tgt_tok), d_model=64, nhead=4,
                           num_encoder_layers=2, num_decoder_layers=2, dim_feedforward=128,
                           dropout=0.0, tie_output=True, max_len=64, rng=0)
    fit(model, encode_pairs(task.train, src_tok, tgt_tok), steps, lr=2e-3, warmup=200,
        log_every=0 if quick else 500)
    em = exact_match(model, task.test, src_tok, tgt_tok, max_len=14).mean()
    print(f"  Transformer on dates: test exact match {em:.3f}", flush=True)
    return model, src_tok, tgt_tok, steps, em


def fig_saturation(path, quick):
    """Why scale by sqrt(d_k): softmax saturation and its vanishing gradient."""
    rng = np.random.default_rng(0)
    d_ks = 2 ** np.arange(0, 11)
    n_keys, n_rows = 16, 200 if quick else 2000
    sm = nt.Softmax()
    stats = {False: ([], []), True: ([], [])}
    for d_k in d_ks:
        q = rng.standard_normal((n_rows, 1, d_k))
        k = rng.standard_normal((n_rows, n_keys, d_k))
        dalpha = rng.standard_normal((n_rows, n_keys))
        for scaled in (False, True):
            e = (q @ k.transpose(0, 2, 1))[:, 0] / (math.sqrt(d_k) if scaled else 1.0)
            alpha, cache = sm.forward(e)
            de = sm.backward(dalpha, cache)
            stats[scaled][0].append(alpha.max(axis=1).mean())
            stats[scaled][1].append(np.linalg.norm(de, axis=1).mean())
    plt = _pyplot()
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(8.4, 3.4))
    for scaled, style, label in ((False, "s--", "e = q\u00b7k"),
                                 (True, "o-", "e = q\u00b7k / \u221ad_k")):
        a1.plot(d_ks, stats[scaled][0], style, ms=4, label=label)
        a2.plot(d_ks, stats[scaled][1], style, ms=4, label=label)
    for ax in (a1, a2):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("d_k (q, k entries ~ N(0, 1))")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    a1.axhline(1 / n_keys, color="gray", lw=0.8, ls=":")
    a1.text(1, 1 / n_keys + 0.02, f"uniform: 1/{n_keys}", fontsize=8, color="gray")
    a1.set_ylabel(f"mean of max_j alpha_j ({n_keys} keys)")
    a1.set_title("the largest weight: 1 = one-hot (saturated)", fontsize=9)
    a2.set_yscale("log")
    a2.set_ylabel("mean |de| for a random dalpha")
    a2.set_title("the gradient through the softmax", fontsize=9)
    fig.tight_layout()
    save(fig, path)
    print(f"  d_k=512: max weight {stats[False][0][9]:.3f} unscaled, {stats[True][0][9]:.3f} "
          f"scaled; |de| {stats[False][1][9]:.2e} unscaled, {stats[True][1][9]:.2e} scaled")


def fig_heads(path, quick):
    """The encoder self-attention of every head, drawn separately."""
    model, src_tok, _, steps, em = dates_transformer(quick)
    src_ids = np.array([src_tok.encode(DATE)])
    # the encoder's input as Transformer.forward builds it (no dropout at eval)
    x = model.src_pos(model.src_embed(src_ids) * model.embed_scale)
    _, cache = model.encoder.forward(x)
    alpha = np.concatenate([c.self_attn.alpha[0] for c in cache.layers])  # (L*H, S, S)
    chars = _show(list(DATE))
    H = model.encoder.layers[0].self_attn.n_heads
    heads_figure(path, alpha, chars, chars, H,
                 f"Encoder self-attention alpha per head (rows: query, columns: key) of a "
                 f"date normaliser ({steps} steps, exact match {100 * em:.1f}%)",
                 size=(11.0, 6.0), vmax=0.6)
    S = alpha.shape[-1]
    for k, a in enumerate(alpha):
        top = np.argsort(-a, axis=None)[:3]
        print(f"  layer {k // H + 1} head {k % H + 1}: max {a.max():.2f}, mean row max "
              f"{a.max(axis=1).mean():.2f}; strongest (query, key): "
              + ", ".join(f"({DATE[i // S]!r}@{i // S}, {DATE[i % S]!r}@{i % S})"
                          for i in top))


def fig_cross_attention(path, quick):
    """The decoder's cross-attention, every layer and head, while writing a date."""
    model, src_tok, tgt_tok, steps, em = dates_transformer(quick)
    src_ids = np.array([src_tok.encode(DATE)])
    out = greedy_decode(model, src_ids, max_len=14)[0]
    tgt_in = np.array([[nt.data.BOS_ID] + out])  # teacher-force the decoded output
    _, cache = model.forward(src_ids, tgt_in)
    alpha = np.concatenate([c.cross_attn.alpha[0] for c in cache.decoder.layers])
    rows = [tgt_tok.itos[i] for i in out] + ["<eos>"]
    print(f"  {DATE!r} -> {tgt_tok.decode(out)!r}")
    heads_figure(path, alpha, _show(list(DATE)), rows,
                 model.decoder.layers[0].cross_attn.n_heads,
                 f"Cross-attention while writing {tgt_tok.decode(out)!r} from {DATE!r} "
                 f"(rows: output step, columns: source)", size=(11.0, 4.6))


# -- chapter 5 ---------------------------------------------------------------------------
def fig_positional(path, quick):
    """The sinusoid table, and PE PE^T: similarity depends on the offset only."""
    PE = sinusoid_table(100, 64)
    plt = _pyplot()
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(9.0, 3.9),
                                 gridspec_kw={"width_ratios": [1.25, 1]})
    im = a1.imshow(PE, cmap="RdBu_r", vmin=-1, vmax=1, aspect="auto",
                   interpolation="nearest")
    a1.set_xlabel("dimension (even: sin, odd: cos)")
    a1.set_ylabel("position pos")
    a1.set_title("PE[pos, 2i] = sin(pos / 10000^(2i/d)),  d = 64", fontsize=9)
    fig.colorbar(im, ax=a1, fraction=0.05)
    im2 = a2.imshow(PE @ PE.T, cmap="viridis", aspect="auto", interpolation="nearest")
    a2.set_xlabel("position q")
    a2.set_ylabel("position p")
    a2.set_title("PE[p] \u00b7 PE[q]: a function of q - p only", fontsize=9)
    fig.colorbar(im2, ax=a2, fraction=0.05)
    fig.tight_layout()
    save(fig, path)


# -- chapter 7 ---------------------------------------------------------------------------
def fig_finite_differences(path, quick):
    """Finite-difference error against the step h: truncation vs rounding."""
    rng = np.random.default_rng(0)
    x64 = rng.standard_normal((2, 3, 6))
    G = rng.standard_normal((2, 3, 6))
    gamma = rng.uniform(0.5, 1.5, 6)
    index = 4  # the input entry whose derivative is taken
    ln = nt.LayerNorm(6, dtype=np.float64)
    ln.gamma.data[...] = gamma
    _, cache = ln.forward(x64)
    analytic = float(ln.backward(G, cache).reshape(-1)[index])
    hs = 2.0 ** -np.arange(1, 31)
    curves = {}
    for dtype in (np.float64, np.float32):
        layer = nt.LayerNorm(6, dtype=dtype)
        layer.gamma.data[...] = gamma
        x = x64.astype(dtype)
        flat = x.reshape(-1)

        def L():
            return float(np.sum(layer(x).astype(np.float64) * G))

        err2, err4 = [], []
        for h in hs:
            saved = flat[index]
            flat[index] = saved + h
            lp = L()
            flat[index] = saved - h
            lm = L()
            flat[index] = saved
            err2.append(abs((lp - lm) / (2 * h) - analytic))
            err4.append(abs(numerical_gradient(L, x, index=index, h=float(h)) - analytic))
        curves[np.dtype(dtype).name] = (np.array(err2), np.array(err4))
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 3.8))
    floor = 1e-17  # an exact 0 cannot be drawn on a log axis
    ax.loglog(hs, np.maximum(curves["float64"][0], floor), "s--", ms=3,
              label="float64, 2nd-order stencil")
    ax.loglog(hs, np.maximum(curves["float64"][1], floor), "o-", ms=3,
              label="float64, 4th-order stencil (gradcheck)")
    ax.loglog(hs, np.maximum(curves["float32"][1], floor), "^:", ms=3,
              label="float32, 4th-order stencil")
    ax.axvline(2.0 ** -13, color="gray", lw=0.8)
    ax.text(2.0 ** -13 * 1.3, 3e-2, "h = 2^-13", fontsize=8)
    ax.set_xlabel("step h")
    ax.set_ylabel("|numeric - analytic|")
    ax.set_title("dL/dx of one LayerNorm input, L = sum(y * G): rounding (left) vs "
                 "truncation (right)", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower left")
    fig.tight_layout()
    save(fig, path)
    i = 12  # h = 2^-13
    print(f"  at h = 2^-13: float64 2nd-order {curves['float64'][0][i]:.1e}, 4th-order "
          f"{curves['float64'][1][i]:.1e}, float32 4th-order {curves['float32'][1][i]:.1e}")


# -- chapter 8 ---------------------------------------------------------------------------
def fig_hops(path, quick):
    """The hop attention of a memory network on a solved two-supporting-facts story."""
    kw = (dict(epochs=2, n_train=200, n_valid=50, n_test=200) if quick
          else dict(epochs=100, n_train=5000, n_valid=500, n_test=1000))
    result = train_memnn(2, hops=3, seed=0, log=None if quick else print, log_every=25, **kw)
    model, data = result["model"], result["data"]
    tok = data.tokenizer
    print(f"  task 2: test error {result['test_error']:.3f} ({result['seconds']:.0f} s)")
    # a short story whose two supporting facts are apart and not the last sentence
    candidates = [e for e in data.test if 6 <= len(e.story) <= 10 and len(e.support) == 2
                  and e.support[1] - e.support[0] >= 2 and e.support[1] < len(e.story) - 1]
    candidates = candidates or list(data.test)
    batch = encode_babi(candidates[:200], tok, model.memory_size)
    answer, p = model.predict(batch.story, batch.query, batch.story_pad_mask)
    solved = np.flatnonzero(answer == batch.answer)
    b = int(solved[0]) if solved.size else 0
    ex = candidates[b]
    n = len(ex.story)
    weights = p[b, :, :n].T  # (sentences, hops)
    labels = [("* " if i in ex.support else "  ") + f"{i + 1}. {s}"
              for i, s in enumerate(ex.story)]
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.6, 0.36 * n + 1.6))
    heatmap(ax, weights, [f"hop {k + 1}" for k in range(weights.shape[1])], labels,
            fontsize=9)
    for i in range(n):
        for k in range(weights.shape[1]):
            ax.text(k, i, f"{weights[i, k]:.2f}", ha="center", va="center", fontsize=7,
                    color="white" if weights[i, k] < 0.6 else "black")
    ax.xaxis.tick_top()
    ax.set_title(f"\"{ex.question}?\"  ->  {tok.itos[answer[b]]}\n(* = supporting fact; "
                 f"{model.hops}-hop MemN2N, test error {100 * result['test_error']:.1f}%)",
                 fontsize=9, pad=24)
    fig.tight_layout()
    save(fig, path)


FIGURES = {
    "01-bottleneck": fig_bottleneck,
    "02-scores": fig_scores,
    "03-lstmn": fig_lstmn,
    "04-saturation": fig_saturation,
    "04-heads": fig_heads,
    "05-positional": fig_positional,
    "06-cross-attention": fig_cross_attention,
    "07-finite-differences": fig_finite_differences,
    "08-hops": fig_hops,
}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=os.path.join(HERE, "figures"), help="output directory")
    p.add_argument("--only", help="draw only the figures whose name contains this "
                                  "(several: comma-separated)")
    p.add_argument("--quick", action="store_true",
                   help="tiny training runs (a smoke test; the figures are not meaningful)")
    args = p.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    start = time.perf_counter()
    for name, draw in FIGURES.items():
        if args.only and not any(part and part in name for part in args.only.split(",")):
            continue
        t0 = time.perf_counter()
        path = os.path.join(args.out, name + ".png")
        print(f"{name}: {draw.__doc__.strip()}", flush=True)
        draw(path, args.quick)
        print(f"  -> {path} ({os.path.getsize(path) // 1024} KB, "
              f"{time.perf_counter() - t0:.0f} s)", flush=True)
    print(f"all figures in {time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
