"""Attention heatmaps (matplotlib is an optional dependency: the ``plot`` extra)."""

from __future__ import annotations

import math

import numpy as np

__all__ = ["plot_attention"]


def _pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg")  # files only: no display needed
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise ImportError("drawing attention needs matplotlib: "
                          "pip install 'numtransformer[plot]' (or pip install matplotlib)") from exc
    return plt


def plot_attention(weights, src_tokens, tgt_tokens, path: str, titles=None,
                   suptitle: str | None = None) -> str:
    """Draw one attention matrix (Tq, Tk), or several (n, Tq, Tk) side by side
    (one per head), with the target tokens down the rows and the source tokens
    along the columns; save to ``path`` (PNG, PDF or SVG by extension)."""
    w = np.asarray(weights, dtype=np.float64)
    if w.ndim == 2:
        w = w[None]
    if w.ndim != 3:
        raise ValueError(f"plot_attention: weights must be (Tq, Tk) or (n, Tq, Tk), got {w.shape}")
    n, Tq, Tk = w.shape
    if len(src_tokens) != Tk or len(tgt_tokens) != Tq:
        raise ValueError(f"plot_attention: {len(tgt_tokens)} target / {len(src_tokens)} source "
                         f"tokens for weights of shape {w.shape[1:]}")
    plt = _pyplot()
    cols = min(n, 4)
    rows = math.ceil(n / cols)
    cell = 0.32
    fig, axes = plt.subplots(rows, cols, squeeze=False,
                             figsize=(cols * max(2.5, cell * Tk + 1.2), rows * max(2.5, cell * Tq + 1.2)))
    for k, ax in enumerate(axes.flat):
        if k >= n:
            ax.axis("off")
            continue
        ax.imshow(w[k], cmap="viridis", vmin=0.0, vmax=1.0, aspect="auto")
        ax.set_xticks(range(Tk))
        ax.set_xticklabels(src_tokens, rotation=90, fontsize=8)
        ax.set_yticks(range(Tq))
        ax.set_yticklabels(tgt_tokens, fontsize=8)
        if titles is not None:
            ax.set_title(titles[k], fontsize=9)
    if suptitle:
        fig.suptitle(suptitle, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
