"""How big a run is before anything is allocated: its parameter count, a memory
estimate for training it, and the memory the machine has.

    estimate = check_fits(cfg, src_vocab, tgt_vocab)   # UserError if it cannot fit
    print(estimate.parameters, estimate.total_bytes)

The parameter count is exact for every ``TrainConfig`` model kind (tested
against ``model.num_parameters()``); with the vocabulary sizes unknown (None)
it counts the four special tokens only, a lower bound.  Training memory is:

    parameters, gradients, AdamW's two moments    4 * P * itemsize
    activations of one step (rough)               what the forward keeps for backward,
                                                  per token and layer, the attention
                                                  weights, the logits

The activation term is rough: a sequence length of ``seq_len`` (unless given:
32 tokens for sequence-to-sequence tasks, the context for a language model),
and only the larger arrays the forward pass keeps.  Available memory is ``MemAvailable`` +
``SwapFree`` from ``/proc/meminfo`` (capped by a cgroup v2 memory limit), or
``os.sysconf``'s available pages; where neither is known nothing is refused.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from .errors import UserError

__all__ = ["count_parameters", "estimate", "check_fits", "available_memory", "Estimate",
           "format_bytes"]

_GATES = {"rnn": 1, "gru": 3, "lstm": 4}
SEQ2SEQ_LEN = 32  # the sequence length assumed for activations when none is given
MAX_SRC_LEN = 256  # the registry builds Transformer and Seq2Seq with this max length


def _mha(E: int) -> int:  # in_proj (E, 3E) + 3E, out_proj (E, E) + E
    return 4 * E * E + 4 * E


def _ffn(E: int, F: int) -> int:
    return 2 * E * F + F + E


def _rnn_layer(n_in: int, h: int, gates: int) -> int:  # W_ih, W_hh, b_ih, b_hh
    return n_in * gates * h + h * gates * h + 2 * gates * h


def count_parameters(cfg, src_vocab: int | None = None, tgt_vocab: int | None = None) -> int:
    """The parameter count of the model ``cfg`` (a ``TrainConfig``) builds for these
    vocabulary sizes (None: the four special tokens, so a lower bound)."""
    Vs = 4 if src_vocab is None else int(src_vocab)
    Vt = 4 if tgt_vocab is None else int(tgt_vocab)
    E, L = int(cfg.d_model), int(cfg.layers)
    if cfg.model == "transformer":
        F = int(cfg.dim_feedforward)
        n = (Vs + Vt) * E
        n += L * (_mha(E) + _ffn(E, F) + 4 * E)  # encoder layers: attention, FFN, 2 norms
        n += L * (2 * _mha(E) + _ffn(E, F) + 6 * E)  # decoder layers: 2 attentions, 3 norms
        n += 4 * E if cfg.norm_first else 0  # the final norm of each stack
        return n + (0 if cfg.tie_output else E * Vt + Vt)
    if cfg.model == "lm":
        F, H = int(cfg.dim_feedforward), int(cfg.nhead)
        kv = getattr(cfg, "kv_heads", None) or H
        qkv = E + 2 * (E // H) * kv  # the in-projection's width: q, then k and v per kv head
        if getattr(cfg, "arch", "gpt") == "llama":  # no biases, RMSNorm, SwiGLU, rotary
            n = Vt * E + L * (E * qkv + E * E + 3 * E * F + 2 * E) + E
            return n + (0 if cfg.tie_output else E * Vt)
        attention = E * qkv + qkv + E * E + E
        n = Vt * E + int(cfg.context) * E + L * (attention + _ffn(E, F) + 4 * E) + 2 * E
        return n + (0 if cfg.tie_output else E * Vt + Vt)
    if cfg.model in ("seq2seq", "lstmn"):
        H, g = int(cfg.hidden_size), _GATES[cfg.cell]
        L = 1 if cfg.model == "lstmn" else L  # the registry builds lstmn runs with one layer
        n = Vs * E  # the encoder
        if cfg.model == "lstmn":  # one LSTMN layer: LSTM weights, intra-attention, one bias
            n += E * 4 * H + H * 4 * H + 4 * H + H * H + E * H + H * H + H
        else:  # bidirectional, H / 2 per direction
            h = H // 2
            n += 2 * sum(_rnn_layer(E if layer == 0 else 2 * h, h, g) for layer in range(L))
        n += (H * H + H) * (2 if cfg.cell == "lstm" else 1)  # bridges: h (and c)
        n += Vt * E  # the decoder: embedding, cells (input feeding: E + H into the first)
        n += sum(_rnn_layer(E + H if layer == 0 else H, H, g) for layer in range(L))
        if cfg.decoder == "bahdanau":  # additive score, W_o (E + 2H -> H)
            n += 2 * H * H + H + (E + 2 * H) * H + H
        else:
            n += {"general": H * H, "additive": 2 * H * H + H,
                  "location": H * MAX_SRC_LEN}.get(cfg.score, 0) if cfg.decoder == "luong" else 0
            n += 2 * H * H  # W_c
        return n + H * Vt + Vt  # W_s
    raise ValueError(f"count_parameters: no formula for model {cfg.model!r}")


def _activation_floats(cfg, Vt: int, seq_len: int | None) -> int:
    """Floats one training step keeps for backward, roughly."""
    B, E, L = int(cfg.batch_size), int(cfg.d_model), int(cfg.layers)
    if cfg.model == "lm":
        T = int(cfg.context) if seq_len is None else seq_len
    else:
        T = SEQ2SEQ_LEN if seq_len is None else seq_len
    tokens = B * T
    logits = 3 * tokens * Vt  # logits, log-probabilities, their gradient
    if cfg.model in ("transformer", "lm"):
        F, h = int(cfg.dim_feedforward), int(cfg.nhead)
        per_layer = tokens * (12 * E + 2 * F) + B * h * T * T  # the weights alpha
        stacks = 1 if cfg.model == "lm" else 2.5  # the decoder layer is 1.5 encoder layers
        return int(stacks * L * per_layer) + logits
    H, g = int(cfg.hidden_size), _GATES[cfg.cell]
    return 2 * L * tokens * (3 * g * H + 2 * H) + B * T * T + logits


@dataclass(frozen=True)
class Estimate:
    """A run's size: ``parameters`` (exact, or a lower bound when ``lower_bound``),
    the bytes of parameters + gradients + AdamW moments (``state_bytes``), of one
    step's activations (``activation_bytes``, rough), their sum ``total_bytes``, and
    the memory available (``available_bytes``, None if unknown)."""

    parameters: int
    dtype: str
    state_bytes: int
    activation_bytes: int
    available_bytes: int | None
    lower_bound: bool

    @property
    def total_bytes(self) -> int:
        return self.state_bytes + self.activation_bytes

    @property
    def fits(self) -> bool:
        return self.available_bytes is None or self.total_bytes <= self.available_bytes

    def describe(self) -> str:
        return (f"{'at least ' if self.lower_bound else ''}{self.parameters:,} parameters "
                f"({self.dtype}): about {format_bytes(self.state_bytes)} for the parameters, "
                f"their gradients and AdamW's two moments, and "
                f"{format_bytes(self.activation_bytes)} of activations per step")


def estimate(cfg, src_vocab: int | None = None, tgt_vocab: int | None = None,
             seq_len: int | None = None, available: int | None = -1) -> Estimate:
    """The size of training ``cfg`` (see the module docstring); ``available``: bytes
    to compare with (default: ``available_memory()``)."""
    lower_bound = src_vocab is None or tgt_vocab is None
    try:
        P = count_parameters(cfg, src_vocab, tgt_vocab)
    except ValueError:  # a kind without a formula here: the registry's lower bound
        from ..models import registry

        P, lower_bound = int(registry.get(cfg.model).min_parameters(cfg)), True
    itemsize = np.dtype(cfg.dtype).itemsize
    Vt = 4 if tgt_vocab is None else int(tgt_vocab)
    acts = _activation_floats(cfg, Vt, seq_len) * itemsize
    return Estimate(parameters=P, dtype=str(cfg.dtype), state_bytes=4 * P * itemsize,
                    activation_bytes=acts,
                    available_bytes=available_memory() if available == -1 else available,
                    lower_bound=lower_bound)


def check_fits(cfg, src_vocab: int | None = None, tgt_vocab: int | None = None,
               seq_len: int | None = None, available: int | None = -1) -> Estimate:
    """``estimate(...)``, or a one-line ``UserError`` with the parameter count and the
    memory estimate when the run cannot fit in the memory available."""
    est = estimate(cfg, src_vocab, tgt_vocab, seq_len=seq_len, available=available)
    if not est.fits:
        sizes = ("--d-model, --ff, --layers or --batch-size" if cfg.model in ("transformer", "lm")
                 else "--d-model, --hidden-size, --layers or --batch-size")
        raise UserError(f"the model does not fit in memory: {est.describe()}, against "
                        f"{format_bytes(est.available_bytes)} available; choose a smaller "
                        f"{sizes}")
    return est


def format_bytes(n: int | None) -> str:
    if n is None:
        return "unknown"
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if n < 1024 or unit == "PiB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError  # pragma: no cover


def _meminfo() -> dict:
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            pairs = (line.split(":", 1) for line in f if ":" in line)
            return {k.strip(): int(v.split()[0]) * 1024 for k, v in pairs if v.split()}
    except (OSError, ValueError, IndexError):
        return {}


def _cgroup_room() -> int | None:
    """The room left under a cgroup v2 memory limit, if one is set."""
    try:
        with open("/sys/fs/cgroup/memory.max", encoding="ascii") as f:
            limit = f.read().strip()
        if limit == "max":
            return None
        with open("/sys/fs/cgroup/memory.current", encoding="ascii") as f:
            current = int(f.read().strip())
        return max(int(limit) - current, 0)
    except (OSError, ValueError):
        return None


def available_memory() -> int | None:
    """Bytes a new allocation can use: RAM available plus free swap (Linux's
    ``/proc/meminfo``), within a cgroup limit; ``os.sysconf`` elsewhere; None if
    unknown."""
    info = _meminfo()
    if "MemAvailable" in info:
        room = info["MemAvailable"] + info.get("SwapFree", 0)
    else:
        try:
            room = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):
            return None
        if room <= 0:
            return None
    limit = _cgroup_room()
    return room if limit is None else min(room, limit)
