"""Inputs for the oracle families: deterministic builders and random samplers.

``attention_case(B, H, H_kv, Tq, Tk, d, d_v, mask, seed)`` and its siblings
build the keyword arguments of one oracle call from a few integers (the
arrays drawn from ``numpy.random.default_rng(seed)``); ``sample_cases(family,
n, seed)`` draws n of them with NumPy alone, and the hypothesis strategies of
``numtransformer.oracle.strategies`` draw the same integers with hypothesis
(so a failing case shrinks to small shapes).

Mask kinds (``MASK_KINDS``): "none"; "key_padding" (a random suffix of keys of
each sequence padded, sometimes all of them: a fully blocked sequence);
"causal"; "window" (a causal sliding window); "random" (a random boolean
attn_mask); "blocked_rows" (some query rows blocked entirely); "bias" (a
float attn_mask added to the scores).
"""

from __future__ import annotations

import numpy as np

__all__ = ["MASK_KINDS", "FAMILIES", "attention_case", "mha_case", "norm_case",
           "cross_entropy_case", "recurrent_case", "rotary_case", "sample_case", "sample_cases",
           "covering_cases", "describe"]

MASK_KINDS = ("none", "key_padding", "causal", "window", "random", "blocked_rows", "bias")


def _masks(rng, mask: str, B: int, Tq: int, Tk: int) -> dict:
    if mask == "none":
        return {}
    if mask == "key_padding":
        lengths = rng.integers(0, Tk + 1, size=B)  # 0: the whole sequence is padding
        lengths[rng.integers(B)] = max(1, Tk - 1)
        return {"key_padding_mask": np.arange(Tk)[None, :] >= lengths[:, None]}
    if mask == "causal":
        return {"is_causal": True}
    if mask == "window":
        return {"window": int(rng.integers(1, max(Tq, Tk) + 1))}
    if mask == "random":
        return {"attn_mask": rng.random((B, 1, Tq, Tk)) < 0.4}
    if mask == "blocked_rows":
        m = rng.random((Tq, Tk)) < 0.3
        m[rng.integers(Tq)] = True  # at least one query sees nothing
        return {"attn_mask": m}
    if mask == "bias":
        return {"attn_mask": rng.standard_normal((1, 1, Tq, Tk))}
    raise ValueError(f"unknown mask kind {mask!r}; expected one of {MASK_KINDS}")


def attention_case(B=2, H=2, H_kv=None, Tq=3, Tk=4, d=4, d_v=None, mask="none", seed=0,
                   layout="bhtd") -> dict:
    """The keyword arguments of ``scaled_dot_product_attention``: q (B, H, Tq, d),
    k (B, H_kv, Tk, d), v (B, H_kv, Tk, d_v) in ``layout``, and the mask of kind ``mask``."""
    rng = np.random.default_rng(seed)
    H_kv = H if H_kv is None else H_kv
    d_v = d if d_v is None else d_v
    q = rng.standard_normal((B, H, Tq, d))
    k = rng.standard_normal((B, H_kv, Tk, d))
    v = rng.standard_normal((B, H_kv, Tk, d_v))
    if layout == "bthd":
        q, k, v = (np.ascontiguousarray(a.transpose(0, 2, 1, 3)) for a in (q, k, v))
    case = {"q": q, "k": k, "v": v, **_masks(rng, mask, B, Tq, Tk)}
    if layout != "bhtd":
        case["layout"] = layout
    return case


def mha_case(B=2, Tq=3, Tk=4, D=8, n_heads=2, n_kv_heads=None, mask="none", bias=True,
             seed=0, self_attention=False) -> dict:
    """The keyword arguments of ``multi_head_attention`` (numtransformer layout)."""
    rng = np.random.default_rng(seed)
    n_kv = n_heads if n_kv_heads is None else n_kv_heads
    d = D // n_heads
    if self_attention:
        Tk = Tq
    s = 1.0 / np.sqrt(D)
    case = {"query": rng.standard_normal((B, Tq, D)),
            "key": rng.standard_normal((B, Tk, D)),
            "value": rng.standard_normal((B, Tk, D)),
            "W_q": rng.standard_normal((D, n_heads * d)) * s,
            "W_k": rng.standard_normal((D, n_kv * d)) * s,
            "W_v": rng.standard_normal((D, n_kv * d)) * s,
            "W_o": rng.standard_normal((n_heads * d, D)) * s,
            "n_heads": n_heads, "n_kv_heads": n_kv}
    if bias:
        case.update(b_q=rng.standard_normal(n_heads * d) * 0.1,
                    b_k=rng.standard_normal(n_kv * d) * 0.1,
                    b_v=rng.standard_normal(n_kv * d) * 0.1,
                    b_o=rng.standard_normal(D) * 0.1)
    case.update(_masks(rng, mask, B, Tq, Tk))
    return case


def norm_case(shape=(2, 3, 5), affine=True, kind="layer_norm", seed=0) -> dict:
    """The keyword arguments of ``layer_norm`` (kind="layer_norm") or ``rms_norm``."""
    rng = np.random.default_rng(seed)
    n = shape[-1]
    case = {"x": rng.standard_normal(shape) * 2.0 + 0.5}
    if affine:
        case["gamma"] = 1.0 + 0.3 * rng.standard_normal(n)
        if kind == "layer_norm":
            case["beta"] = 0.3 * rng.standard_normal(n)
    return case


def cross_entropy_case(N=4, V=5, T=None, ignore_frac=0.25, label_smoothing=0.0,
                       reduction="mean", seed=0) -> dict:
    """The keyword arguments of ``cross_entropy``: logits (N, V) or (N, T, V)."""
    rng = np.random.default_rng(seed)
    lead = (N,) if T is None else (N, T)
    targets = rng.integers(0, V, size=lead)
    targets[rng.random(lead) < ignore_frac] = -100
    return {"logits": rng.standard_normal(lead + (V,)) * 2.0, "targets": targets,
            "label_smoothing": float(label_smoothing), "reduction": reduction}


def recurrent_case(kind="lstm", B=2, T=3, D=3, H=4, bias=True, states=True, seed=0) -> dict:
    """The keyword arguments of ``lstm``/``gru`` (``kind`` "lstm", "gru") or of
    ``lstm_step``/``gru_step`` (``kind`` "lstm_step", "gru_step")."""
    rng = np.random.default_rng(seed)
    G = 4 if kind.startswith("lstm") else 3
    step = kind.endswith("_step")
    s = 1.0 / np.sqrt(H)
    case = {"x": rng.standard_normal((B, D) if step else (B, T, D)),
            "W_ih": rng.standard_normal((D, G * H)) * s,
            "W_hh": rng.standard_normal((H, G * H)) * s}
    if bias:
        case.update(b_ih=rng.standard_normal(G * H) * 0.1, b_hh=rng.standard_normal(G * H) * 0.1)
    names = ("h", "c") if G == 4 else ("h",)
    for n in names:
        key = n + ("_prev" if step else "0")
        case[key] = rng.standard_normal((B, H)) * 0.5 if (states or step) else None
    return case


def rotary_case(B=2, H=2, T=4, d=6, layout="half", seed=0, offset=0) -> dict:
    """The keyword arguments of ``rotary_embedding``: x (B, H, T, d), d even."""
    rng = np.random.default_rng(seed)
    return {"x": rng.standard_normal((B, H, T, d)), "positions": offset + np.arange(T),
            "layout": layout}


def _sample_attention(rng):
    H_kv = int(rng.choice([1, 2]))
    H = H_kv * int(rng.choice([1, 2]))
    return attention_case(B=int(rng.integers(1, 4)), H=H, H_kv=H_kv,
                          Tq=int(rng.integers(1, 6)), Tk=int(rng.integers(1, 6)),
                          d=int(rng.integers(1, 7)), d_v=int(rng.integers(1, 7)),
                          mask=str(rng.choice(MASK_KINDS)), seed=int(rng.integers(2**31)))


def _sample_mha(rng):
    n_kv = int(rng.choice([1, 2]))
    n_heads = n_kv * int(rng.choice([1, 2]))
    return mha_case(B=int(rng.integers(1, 3)), Tq=int(rng.integers(1, 5)),
                    Tk=int(rng.integers(1, 5)), D=n_heads * int(rng.integers(1, 4)),
                    n_heads=n_heads, n_kv_heads=n_kv, mask=str(rng.choice(MASK_KINDS)),
                    bias=bool(rng.integers(2)), seed=int(rng.integers(2**31)))


def _sample_shape(rng):
    return tuple(int(rng.integers(1, 4)) for _ in range(int(rng.integers(0, 3)))) + (
        int(rng.integers(1, 8)),)


FAMILIES = {
    "scaled_dot_product_attention": _sample_attention,
    "multi_head_attention": _sample_mha,
    "layer_norm": lambda rng: norm_case(_sample_shape(rng), bool(rng.integers(2)),
                                        "layer_norm", int(rng.integers(2**31))),
    "rms_norm": lambda rng: norm_case(_sample_shape(rng), bool(rng.integers(2)), "rms_norm",
                                      int(rng.integers(2**31))),
    "cross_entropy": lambda rng: cross_entropy_case(
        int(rng.integers(1, 5)), int(rng.integers(1, 7)),
        None if rng.integers(2) else int(rng.integers(1, 4)), float(rng.choice([0, 0.3, 1.0])),
        float(rng.choice([0.0, 0.1])), str(rng.choice(["mean", "sum", "none"])),
        int(rng.integers(2**31))),
    "lstm_step": lambda rng: recurrent_case("lstm_step", int(rng.integers(1, 4)), 1,
                                            int(rng.integers(1, 5)), int(rng.integers(1, 5)),
                                            bool(rng.integers(2)), True, int(rng.integers(2**31))),
    "gru_step": lambda rng: recurrent_case("gru_step", int(rng.integers(1, 4)), 1,
                                           int(rng.integers(1, 5)), int(rng.integers(1, 5)),
                                           bool(rng.integers(2)), True, int(rng.integers(2**31))),
    "lstm": lambda rng: recurrent_case("lstm", int(rng.integers(1, 3)), int(rng.integers(1, 5)),
                                       int(rng.integers(1, 4)), int(rng.integers(1, 4)),
                                       bool(rng.integers(2)), bool(rng.integers(2)),
                                       int(rng.integers(2**31))),
    "gru": lambda rng: recurrent_case("gru", int(rng.integers(1, 3)), int(rng.integers(1, 5)),
                                      int(rng.integers(1, 4)), int(rng.integers(1, 4)),
                                      bool(rng.integers(2)), bool(rng.integers(2)),
                                      int(rng.integers(2**31))),
    "rotary_embedding": lambda rng: rotary_case(
        int(rng.integers(1, 3)), int(rng.integers(1, 3)), int(rng.integers(1, 6)),
        2 * int(rng.integers(1, 5)), str(rng.choice(["half", "interleaved"])),
        int(rng.integers(2**31)), int(rng.integers(0, 50))),
}


def sample_case(family: str, rng) -> dict:
    """One random case of ``family`` (a name of ``FAMILIES``) drawn from ``rng``."""
    if family not in FAMILIES:
        raise ValueError(f"sample_case: unknown family {family!r}; expected one of "
                         f"{sorted(FAMILIES)}")
    return FAMILIES[family](rng)


def sample_cases(family: str, n: int = 20, seed: int = 0) -> list[dict]:
    """n random cases of ``family``, reproducible from ``seed``."""
    rng = np.random.default_rng(seed)
    return [sample_case(family, rng) for _ in range(n)]


def covering_cases(family: str) -> list[dict]:
    """A fixed list of cases of ``family`` that takes every option at least once:
    every mask kind, grouped and plain heads, length-1 sequences, biases or none,
    every reduction with and without smoothing, both rotary layouts, ..."""
    if family == "scaled_dot_product_attention":
        out = [attention_case(B=2, H=4, H_kv=2, Tq=3, Tk=4, d=3, d_v=2, mask=m, seed=i)
               for i, m in enumerate(MASK_KINDS)]
        out += [attention_case(B=1, H=2, Tq=1, Tk=1, d=2, mask="none", seed=20),
                attention_case(B=2, H=2, H_kv=1, Tq=4, Tk=3, d=2, mask="random", seed=21),
                dict(attention_case(B=2, H=2, Tq=3, Tk=3, d=4, mask="causal", seed=22),
                     scale=0.3),
                dict(attention_case(B=2, H=2, H_kv=1, Tq=3, Tk=4, d=2, mask="key_padding",
                                    seed=23), return_weights=True)]
        return out
    if family == "multi_head_attention":
        return [mha_case(B=2, Tq=3, Tk=4, D=8, n_heads=4, n_kv_heads=kv, mask=m, bias=b, seed=i)
                for i, (kv, m, b) in enumerate([(4, "none", True), (2, "key_padding", True),
                                                (1, "causal", False), (2, "bias", True),
                                                (4, "blocked_rows", False)])]
    if family in ("layer_norm", "rms_norm"):
        return [norm_case(shape, affine, family, seed=i) for i, (shape, affine) in
                enumerate([((2, 3, 5), True), ((4, 6), False), ((1, 1, 2), True)])]
    if family == "cross_entropy":
        out = [cross_entropy_case(N=4, V=5, T=T, ignore_frac=0.3, label_smoothing=ls,
                                  reduction=r, seed=i)
               for i, (T, ls, r) in enumerate([(None, 0.0, "mean"), (3, 0.1, "mean"),
                                               (None, 0.0, "sum"), (2, 0.2, "sum"),
                                               (None, 0.0, "none"), (3, 0.1, "none")])]
        one = cross_entropy_case(N=3, V=4, ignore_frac=0.0, label_smoothing=0.1, seed=9)
        one["targets"][1:] = -100  # a single target counts: mean divides by 1
        return out + [one, cross_entropy_case(N=2, V=3, ignore_frac=1.0, seed=10)]
    if family in ("lstm_step", "gru_step", "lstm", "gru"):
        return [recurrent_case(family, B=2, T=3, D=3, H=4, bias=b, states=s, seed=i)
                for i, (b, s) in enumerate([(True, True), (False, True), (True, False)])]
    if family == "rotary_embedding":
        return [rotary_case(B=2, H=2, T=4, d=6, layout=lay, seed=i, offset=off)
                for i, (lay, off) in enumerate([("half", 0), ("interleaved", 5)])]
    raise ValueError(f"covering_cases: unknown family {family!r}; expected one of "
                     f"{sorted(FAMILIES)}")


def describe(case: dict) -> str:
    """One line: the shapes of the arrays and the options of a case."""
    parts = []
    for k, v in case.items():
        if isinstance(v, np.ndarray):
            kind = "bool " if v.dtype == np.bool_ else ("int " if v.dtype.kind in "iu" else "")
            parts.append(f"{k}={kind}{'x'.join(map(str, v.shape)) or '()'}")
        elif v is not None:
            parts.append(f"{k}={v!r}")
    return ", ".join(parts)
