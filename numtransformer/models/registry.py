"""The model kinds: one entry per ``numtransformer train --model`` value.

An entry says how to build the model from a run's settings, which trainer runs
it, the settings where it departs from ``TrainConfig``'s defaults, the tasks
that imply it, the checks its settings must pass, and the extra command-line
options it alone takes.  ``numtransformer.train`` and the CLI read everything
from here: the ``--model``, ``--score``, ``--activation``, ``--cell`` and
``--decoder`` choices, which trainer ``make_trainer(cfg)`` returns, the lower
bound on a checkpoint's parameter count.  A new model kind is one
``register(ModelKind(...))`` call (and, if none of the trainers fits it, its
trainer class).

    from numtransformer.models.registry import get
    kind = get("lm")
    model = kind.build(cfg, src_vocab, tgt_vocab, rng)   # cfg: a TrainConfig

This module imports only the models: trainers are named by import path
(``"numtransformer.train.lm:LMTrainer"``) and resolved by ``numtransformer.train``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, NamedTuple

import numpy as np

from .memnn import MemN2N
from .seq2seq import Seq2Seq
from .llama import llama_lm
from .transformer import Transformer, TransformerLM

__all__ = ["ModelKind", "Option", "register", "get", "names", "kinds", "kind_for_task",
           "DEFAULT", "SCORES", "ACTIVATIONS", "CELLS", "DECODERS", "LM_ARCHS"]

# the choices of the settings the models take by name (the CLI offers exactly these)
SCORES = ("dot", "scaled_dot", "general", "additive", "cosine", "location")  # Seq2Seq(score=)
ACTIVATIONS = ("relu", "gelu", "gelu_tanh")  # Transformer / TransformerLM(activation=)
LM_ARCHS = ("gpt", "llama")  # TransformerLM's GPT-style defaults, or models.llama_lm's options
CELLS = ("rnn", "lstm", "gru")  # Seq2Seq(cell=)
DECODERS = ("luong", "bahdanau", "none")  # Seq2Seq(attention=); none: the bottleneck
DEFAULT = "transformer"  # the kind a run trains when neither --model nor its task says


class Option(NamedTuple):
    """A command-line option only one kind takes (``--hops`` for memnn): ``flag``
    without dashes, ``type`` int or float with lower bound ``lo`` (or ``choices``),
    passed to the trainer as ``keyword``."""

    flag: str
    help: str
    type: type | None = int
    lo: int = 1
    choices: tuple | None = None
    keyword: str | None = None  # default: the flag, dashes as underscores


@dataclass(frozen=True)
class ModelKind:
    """One model kind.

    ``build(cfg, src_vocab, tgt_vocab, rng)`` makes the model from a run's
    settings (a ``TrainConfig`` when ``train_config``, else the trainer's own
    settings as attributes).  ``trainer`` is ``"module:name"``: a ``Trainer``
    subclass when ``train_config``, else a function taking keyword options
    (``numtransformer.memnn_train:train_memnn``).  ``defaults``: the settings
    where this kind departs from ``TrainConfig``'s (a run of this kind starts
    from them; the user's flags win).  ``task_prefix``: tasks that imply this
    kind (``"text:"``), ``default_task`` the task it trains on when none is
    given.  ``problems(cfg)`` lists what is wrong with settings for this kind
    (beyond ``TrainConfig``'s ranges); ``min_parameters(cfg)`` is a lower bound
    on the model's parameter count (a checkpoint storing fewer is refused).
    ``options``: options only this kind takes; ``keywords``: CLI flag (dest) ->
    the trainer's keyword, for a kind not run by a ``TrainConfig``."""

    name: str
    summary: str
    build: Callable[..., Any]
    trainer: str
    train_config: bool = True
    defaults: Mapping[str, Any] = field(default_factory=dict)
    task_prefix: str | None = None
    default_task: str | None = None
    problems: Callable[[Any], list] = lambda cfg: []
    min_parameters: Callable[[Any], int] = lambda cfg: 0
    options: tuple = ()
    keywords: Mapping[str, str] = field(default_factory=dict)


_KINDS: dict[str, ModelKind] = {}


def register(kind: ModelKind) -> ModelKind:
    """Add a model kind (its name must be new)."""
    if kind.name in _KINDS:
        raise ValueError(f"model kind {kind.name!r} is already registered")
    _KINDS[kind.name] = kind
    return kind


def get(name: str) -> ModelKind:
    """The kind called ``name``; a ValueError naming the known kinds otherwise."""
    try:
        return _KINDS[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown model {name!r}; expected one of {list(_KINDS)}") from None


def names(train_config: bool | None = None) -> tuple[str, ...]:
    """The kinds' names in registration order (only those run, or not run, by a
    ``TrainConfig`` if ``train_config`` is given)."""
    return tuple(k.name for k in _KINDS.values()
                 if train_config is None or k.train_config == train_config)


def kinds() -> tuple[ModelKind, ...]:
    return tuple(_KINDS.values())


def kind_for_task(task: str | None) -> ModelKind | None:
    """The kind a task implies (``text:...`` -> lm, ``babi:N`` -> memnn), or None."""
    for kind in _KINDS.values():
        if task and kind.task_prefix and task.startswith(kind.task_prefix):
            return kind
    return None


# -- the kinds -------------------------------------------------------------------------------
def _heads_divide(cfg) -> list:
    if cfg.d_model % cfg.nhead:
        return [f"d_model={cfg.d_model} is not divisible by nhead={cfg.nhead} (each head "
                f"takes d_model / nhead dimensions)"]
    return []


def _build_transformer(cfg, src_vocab, tgt_vocab, rng):
    return Transformer(src_vocab, tgt_vocab, d_model=cfg.d_model, nhead=cfg.nhead,
                       num_encoder_layers=cfg.layers, num_decoder_layers=cfg.layers,
                       dim_feedforward=cfg.dim_feedforward, dropout=cfg.dropout,
                       activation=cfg.activation, norm_first=cfg.norm_first,
                       tie_output=cfg.tie_output, max_len=256, dtype=np.dtype(cfg.dtype),
                       rng=rng)


def _build_seq2seq(cfg, src_vocab, tgt_vocab, rng):
    lstmn = cfg.model == "lstmn"
    return Seq2Seq(src_vocab, tgt_vocab, embed_dim=cfg.d_model, hidden_size=cfg.hidden_size,
                   num_layers=1 if lstmn else cfg.layers, cell=cfg.cell,
                   encoder_cell="lstmn" if lstmn else None, bidirectional=not lstmn,
                   attention=cfg.decoder, score=cfg.score, max_src_len=256,
                   dropout=cfg.dropout, dtype=np.dtype(cfg.dtype), rng=rng)


def _build_lm(cfg, src_vocab, tgt_vocab, rng):  # decoder-only, pre-LN (norm_first n/a)
    options = dict(n_kv_heads=cfg.kv_heads, window=cfg.window,
                   attention_impl=cfg.attention_impl)
    if cfg.arch == "llama":  # RMSNorm, rotary, SwiGLU, no biases (--activation does not apply)
        return llama_lm(tgt_vocab, d_model=cfg.d_model, nhead=cfg.nhead,
                        num_layers=cfg.layers, dim_feedforward=cfg.dim_feedforward,
                        dropout=cfg.dropout, max_len=cfg.context, tie_output=cfg.tie_output,
                        dtype=np.dtype(cfg.dtype), rng=rng, **options)
    return TransformerLM(tgt_vocab, d_model=cfg.d_model, nhead=cfg.nhead,
                         num_layers=cfg.layers, dim_feedforward=cfg.dim_feedforward,
                         dropout=cfg.dropout, activation=cfg.activation,
                         positional="learned", max_len=cfg.context,
                         tie_output=cfg.tie_output, dtype=np.dtype(cfg.dtype), rng=rng,
                         **options)


def _build_memnn(cfg, src_vocab, tgt_vocab, rng):  # cfg: train_memnn's settings
    return MemN2N(src_vocab, cfg.d, cfg.hops, cfg.memory_size, tying=cfg.tying,
                  position_encoding=cfg.position_encoding, temporal=cfg.temporal,
                  pad_id=cfg.pad_id, dtype=np.dtype(cfg.dtype), rng=rng)


def _seq2seq_problems(cfg) -> list:
    if cfg.hidden_size % 2:  # (the lstmn encoder is one direction)
        return [f"hidden_size={cfg.hidden_size} must be even for --model seq2seq (its "
                f"bidirectional encoder splits it over two directions)"]
    return []


def _lm_problems(cfg) -> list:
    problems = _heads_divide(cfg)
    if cfg.context < 2:
        problems.append(f"context must be >= 2 for --model lm, got {cfg.context}")
    if cfg.kv_heads is not None and cfg.nhead % cfg.kv_heads:
        problems.append(f"nhead={cfg.nhead} is not divisible by kv_heads={cfg.kv_heads} (each "
                        f"key/value head serves nhead / kv_heads query heads)")
    if cfg.attention_impl == "tiled" and cfg.dropout > 0:
        problems.append(f"--attention-impl tiled applies no dropout to the attention weights; "
                        f"use --dropout 0 (got {cfg.dropout})")
    if cfg.arch == "llama" and not problems and (cfg.d_model // cfg.nhead) % 2:
        problems.append(f"--arch llama rotates head dimensions in pairs: d_model / nhead = "
                        f"{cfg.d_model // cfg.nhead} must be even")
    return problems


def _lm_only(cfg) -> list:
    """--arch, --kv-heads and --window shape the decoder-only LM alone."""
    given = [f"--{flag}" for flag, on in (("arch", cfg.arch != "gpt"),
                                          ("kv-heads", cfg.kv_heads is not None),
                                          ("window", cfg.window is not None),
                                          ("attention-impl", cfg.attention_impl != "plain"))
             if on]
    verb = "applies" if len(given) == 1 else "apply"
    return [f"{', '.join(given)} {verb} to --model lm only"] if given else []


def _lm_parameters(c) -> int:
    """Attention and FFN weights (and the GPT-style position table)."""
    d, ff = c.d_model, c.dim_feedforward
    d_kv = d // c.nhead * (c.kv_heads or c.nhead)
    if c.arch == "llama":  # q, o: d x d; k, v: d x d_kv; gate, up, down: d x ff
        return c.layers * (2 * d * d + 2 * d * d_kv + 3 * d * ff)
    return c.layers * (2 * d * d + 2 * d * d_kv + 2 * d * ff) + c.context * d


register(ModelKind(
    "transformer", "Transformer encoder-decoder", _build_transformer,
    trainer="numtransformer.train.loop:Trainer",
    problems=lambda c: _heads_divide(c) + _lm_only(c),
    # the encoder's and decoder's attention and FFN weights alone
    min_parameters=lambda c: c.layers * (12 * c.d_model ** 2 + 4 * c.d_model * c.dim_feedforward)))
register(ModelKind(
    "seq2seq", "RNN encoder-decoder", _build_seq2seq,
    trainer="numtransformer.train.loop:Trainer",
    problems=lambda c: _seq2seq_problems(c) + _lm_only(c),
    min_parameters=lambda c: c.layers * c.hidden_size ** 2 + c.d_model))
register(ModelKind(
    "lstmn", "LSTMN encoder, RNN decoder", _build_seq2seq,
    trainer="numtransformer.train.loop:Trainer", problems=_lm_only,
    min_parameters=lambda c: c.hidden_size ** 2 + c.d_model))
register(ModelKind(
    "memnn", "end-to-end memory network (bAbI)", _build_memnn,
    trainer="numtransformer.memnn_train:train_memnn", train_config=False,
    task_prefix="babi:", default_task="babi:1",
    options=(Option("epochs", "memnn: training epochs"),
             Option("hops", "memnn: memory hops"),
             Option("tying", "memnn: weight tying", type=None,
                    choices=("adjacent", "layerwise"))),
    # the shared flags train_memnn takes, under its own names
    keywords={"steps": "steps", "batch_size": "batch_size", "lr": "lr", "seed": "seed",
              "n_train": "n_train", "d_model": "d", "dtype": "dtype", "clip": "max_grad_norm"}))
register(ModelKind(
    "lm", "decoder-only character language model (text:... tasks)", _build_lm,
    trainer="numtransformer.train.lm:LMTrainer", task_prefix="text:",
    default_task="text:hamlet",
    # no label smoothing (it would bias the probabilities that bits per character
    # measure); no dropout and a higher peak rate, which this small model on one play
    # needs (d_model 64 on Hamlet, valid bits/char at step 1,000 of 2,000: 2.53, against
    # 2.79 with dropout 0.1 and 2.97 with dropout 0.1 at lr 2e-3)
    defaults={"label_smoothing": 0.0, "batch_size": 32, "steps": 2000, "lr": 1e-2,
              "warmup": 100, "dropout": 0.0},
    problems=_lm_problems,
    min_parameters=_lm_parameters))
