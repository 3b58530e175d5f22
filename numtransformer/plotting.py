"""Attention heatmaps (matplotlib is an optional dependency: the ``plot`` extra).

``plot_attention`` draws one attention matrix, or one per head in a grid, with
the output tokens down the rows and the input tokens along the columns, one
colour scale from 0 to 1 for every panel and its colour bar.  Tokens a reader
could not see are drawn as symbols: a space as ``␣``, a newline as ``⏎``, a tab
as ``⇥``, other control characters by their escape (``\\x07``).
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["plot_attention", "attention_figure", "token_label", "image_formats"]

# what a token that would be invisible (or break a label) is drawn as
_VISIBLE = {" ": "␣", "\n": "⏎", "\t": "⇥", "\r": "\\r", "": "∅"}


def _pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg")  # files only: no display needed
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise ImportError("drawing attention needs matplotlib: "
                          "pip install 'numtransformer[plot]' (or pip install matplotlib)") from exc
    return plt


def image_formats() -> tuple[str, ...]:
    """The file suffixes (without the dot) matplotlib can write here; ImportError
    naming the ``plot`` extra when matplotlib is not installed."""
    _pyplot()
    from matplotlib.backend_bases import FigureCanvasBase

    return tuple(sorted(FigureCanvasBase.get_supported_filetypes()))


def token_label(token: str) -> str:
    """A token as a tick label: invisible characters as visible symbols."""
    if token in _VISIBLE:
        return _VISIBLE[token]
    if token.isprintable():
        return token
    return "".join(_VISIBLE.get(ch) or (ch if ch.isprintable() else repr(ch)[1:-1])
                   for ch in token)


def attention_figure(weights, src_tokens, tgt_tokens, titles=None, suptitle: str | None = None,
                     xlabel: str = "input", ylabel: str = "output"):
    """The matplotlib figure ``plot_attention`` saves (see there); the caller closes it."""
    w = np.asarray(weights, dtype=np.float64)
    if w.ndim == 2:
        w = w[None]
    if w.ndim != 3:
        raise ValueError(f"plot_attention: weights must be (Tq, Tk) or (n, Tq, Tk), got {w.shape}")
    n, Tq, Tk = w.shape
    if len(src_tokens) != Tk or len(tgt_tokens) != Tq:
        raise ValueError(f"plot_attention: {len(tgt_tokens)} target / {len(src_tokens)} source "
                         f"tokens for weights of shape {w.shape[1:]}")
    if titles is not None and len(titles) != n:
        raise ValueError(f"plot_attention: {len(titles)} titles for {n} matrices")
    plt = _pyplot()
    cols = math.ceil(math.sqrt(n))  # heads in a near-square grid
    rows = math.ceil(n / cols)
    cell = 0.3
    panel_w, panel_h = max(2.6, cell * Tk + 1.4), max(2.4, cell * Tq + 1.2)
    figsize = (cols * panel_w + 1.0, rows * panel_h + (0.5 if suptitle else 0.0))
    fig, axes = plt.subplots(rows, cols, squeeze=False, constrained_layout=True, figsize=figsize)
    xlabels = [token_label(t) for t in src_tokens]
    ylabels = [token_label(t) for t in tgt_tokens]
    rotation = 90 if max(map(len, xlabels), default=0) > 2 else 0  # characters stay upright
    image = None
    for k, ax in enumerate(axes.flat):
        if k >= n:
            ax.axis("off")
            continue
        image = ax.imshow(w[k], cmap="viridis", vmin=0.0, vmax=1.0, aspect="auto",
                          interpolation="nearest")
        ax.set_xticks(range(Tk))
        ax.set_xticklabels(xlabels, rotation=rotation, fontsize=8)
        ax.set_yticks(range(Tq))
        ax.set_yticklabels(ylabels, fontsize=8)
        ax.set_xlabel(xlabel, fontsize=9)
        ax.set_ylabel(ylabel, fontsize=9)
        if titles is not None:
            ax.set_title(titles[k], fontsize=9)
    bar = fig.colorbar(image, ax=axes.ravel().tolist(), shrink=0.8)
    bar.set_label("attention weight", fontsize=9)
    if suptitle:
        fig.suptitle(suptitle, fontsize=10)
    return fig


def plot_attention(weights, src_tokens, tgt_tokens, path: str, titles=None,
                   suptitle: str | None = None, xlabel: str = "input",
                   ylabel: str = "output") -> str:
    """Draw one attention matrix (Tq, Tk), or several (n, Tq, Tk) in a grid (one per
    head, ``titles`` naming each), with the target (output) tokens down the rows
    and the source (input) tokens along the columns, one colour scale 0..1 and its
    colour bar; save to ``path`` (PNG, PDF, SVG, ... by its suffix)."""
    plt = _pyplot()
    fig = attention_figure(weights, src_tokens, tgt_tokens, titles=titles, suptitle=suptitle,
                           xlabel=xlabel, ylabel=ylabel)
    try:
        fig.savefig(path, dpi=120)
    finally:
        plt.close(fig)
    return path
