"""Attention plots: a colour bar, axis titles (output / input), visible labels for
spaces and newlines, heads in a grid (matplotlib's Agg backend; skipped without
matplotlib)."""

import numpy as np
import pytest

pytest.importorskip("matplotlib")

from numtransformer.plotting import (attention_figure, image_formats, plot_attention,  # noqa: E402
                                     token_label)


def _weights(n, tq, tk, seed=0):
    return np.random.default_rng(seed).dirichlet(np.ones(tk), size=(n, tq))


def test_invisible_tokens_get_visible_labels():
    assert [token_label(t) for t in (" ", "\n", "\t", "a", "<eos>", "\x07", "a b")] == \
        ["␣", "⏎", "⇥", "a", "<eos>", "\\x07", "a b"]


def test_heads_in_a_grid_with_one_colour_bar_and_axis_titles():
    import matplotlib.pyplot as plt

    src, out = list("a b\n"), list("x y") + ["<eos>"]
    fig = attention_figure(_weights(4, 4, 4), src, out,
                           titles=[f"head {h + 1}" for h in range(4)], suptitle="s")
    try:
        panels = [ax for ax in fig.axes if ax.get_label() != "<colorbar>"]
        bars = [ax for ax in fig.axes if ax.get_label() == "<colorbar>"]
        assert len(panels) == 4 and len(bars) == 1  # one colour scale for every head
        assert bars[0].get_ylabel() == "attention weight"
        assert bars[0].get_ylim() == (0.0, 1.0)
        origins = sorted({(round(ax.get_position().x0, 2), round(ax.get_position().y0, 2))
                          for ax in panels})
        assert len({x for x, _ in origins}) == 2 and len({y for _, y in origins}) == 2  # 2 x 2
        for k, ax in enumerate(panels):
            assert ax.get_xlabel() == "input" and ax.get_ylabel() == "output"
            assert ax.get_title() == f"head {k + 1}"
            assert [t.get_text() for t in ax.get_xticklabels()] == ["a", "␣", "b", "⏎"]
            assert [t.get_text() for t in ax.get_yticklabels()] == ["x", "␣", "y", "<eos>"]
        assert fig._suptitle.get_text() == "s"
    finally:
        plt.close(fig)


def test_odd_head_counts_leave_the_spare_panels_blank():
    import matplotlib.pyplot as plt

    fig = attention_figure(_weights(3, 2, 5), list("abcde"), list("xy"), xlabel="key",
                           ylabel="query")
    try:
        panels = [ax for ax in fig.axes if ax.get_label() != "<colorbar>"]
        shown = [ax for ax in panels if ax.axison]
        assert len(panels) == 4 and len(shown) == 3
        assert shown[0].get_xlabel() == "key" and shown[0].get_ylabel() == "query"
    finally:
        plt.close(fig)


@pytest.mark.parametrize("suffix,magic", [("png", b"\x89PNG"), ("svg", b"<?xml"),
                                          ("pdf", b"%PDF")])
def test_plot_attention_writes_the_format_its_suffix_names(tmp_path, suffix, magic):
    assert suffix in image_formats()
    path = str(tmp_path / f"att.{suffix}")
    assert plot_attention(_weights(1, 3, 3)[0], list("a b"), list("xyz"), path) == path
    assert open(path, "rb").read(len(magic)) == magic


def test_mismatched_labels_are_named():
    with pytest.raises(ValueError, match="plot_attention: 2 target / 3 source tokens"):
        attention_figure(_weights(1, 3, 3), list("abc"), list("xy"))
    with pytest.raises(ValueError, match="plot_attention: 1 titles for 2 matrices"):
        attention_figure(_weights(2, 2, 2), list("ab"), list("xy"), titles=["one"])
