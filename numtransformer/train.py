"""Training: one loop for every model, with evaluation, checkpoints that
resume bit for bit, and a progress display.

    cfg = TrainConfig(task="dates", steps=3000)
    run = Trainer(cfg, out_dir="runs/dates")     # builds data, model, optimizer
    metrics = run.fit()                          # trains, evaluates, saves

A step is: forward, cross-entropy (ignoring padding), backward, global-norm
clipping, learning rate from the schedule, optimizer step.  Everything random
is seeded from ``cfg.seed``: the data order (a function of seed and epoch),
dropout masks (each Dropout's generator), and parameter init.  A checkpoint
holds the parameters, the optimizer moments and step count, every generator's
state and the data position, so ``Trainer.resume(out_dir)`` continues exactly
where the run stopped: N steps + resume + N steps gives the same parameters
(``np.array_equal``) as 2N steps straight.

``--model lm`` (``LMTrainer``, which ``Trainer(cfg)`` returns for it) is the
same loop for a decoder-only character language model on a text
(``task="text:hamlet"`` or ``"text:PATH"``): random windows of ``context``
characters, next-character cross-entropy, evaluation in bits per character.
"""

from __future__ import annotations

import dataclasses
import math
import os
import sys
import time
from dataclasses import dataclass, field

import numpy as np

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: _Lock falls back to a pid file
    fcntl = None

from ._malloc import keep_freed_memory
from .checkpoint import (CheckpointError, NonFiniteParameters, load_checkpoint, rng_states,
                         save_checkpoint, set_rng_states)
from .data import BatchIterator, encode_pairs, make_batch, make_task
from .data.corpora import edit_distance, is_corpus_task, make_corpus_task
from .data.text import WindowIterator, eval_windows, is_text_task, make_text_task
from .data.tokenizers import BOS_ID, EOS_ID, PAD_ID, UNK_ID
from .decoding import beam_search, greedy_decode, sample
from .losses import CrossEntropyLoss
from .models import Seq2Seq, Transformer, TransformerLM
from .optim import (AdamW, ConstantSchedule, NoamSchedule, WarmupCosineSchedule, clip_grad_norm,
                    global_grad_norm)

__all__ = ["TrainConfig", "Trainer", "LMTrainer", "TrainingError", "build_model",
           "MODEL_KINDS"]

CHECKPOINT = "checkpoint.npz"
SPECIAL_IDS = (PAD_ID, BOS_ID, EOS_ID, UNK_ID)  # never in a text: never generated


class TrainingError(RuntimeError):
    """A run that cannot go on (non-finite loss, a busy output directory, ...)."""


@dataclass
class TrainConfig:
    """Everything that defines a run; stored in every checkpoint."""

    # task: a built-in task, "tsv:PATH" (sentence pairs) or "g2p" (CMU dictionary)
    task: str = "dates"
    tokens: str = "char"  # char | word (tsv corpora)
    n_train: int | None = None
    n_valid: int = 500
    n_test: int = 1000
    # model
    model: str = "transformer"
    d_model: int = 64
    nhead: int = 4
    layers: int = 2  # encoder layers = decoder layers
    dim_feedforward: int = 256
    dropout: float = 0.1
    norm_first: bool = False
    activation: str = "relu"
    tie_output: bool = True
    # model: RNN seq2seq (used by --model seq2seq / lstmn)
    cell: str = "lstm"  # rnn | lstm | gru
    score: str = "general"  # dot | scaled_dot | general | additive | cosine | location
    decoder: str = "luong"  # luong | bahdanau | none (no attention: the bottleneck)
    hidden_size: int = 128
    # optimisation
    # 4000: three seeds of the default run all reach 100% test exact match on dates, where
    # 3000 steps gave 99.8-99.9% (2 of 1000 dates wrong with 2 BLAS threads, seed 0)
    steps: int = 4000
    batch_size: int = 64
    context: int = 128  # lm: characters per training window (and the positions it can see)
    lr: float = 2e-3  # the peak rate of every schedule (noam: its factor is set to match)
    schedule: str = "warmup_cosine"  # constant | warmup_cosine | noam
    warmup: int = 200
    weight_decay: float = 0.01
    clip: float = 1.0
    label_smoothing: float = 0.1
    # bookkeeping
    eval_every: int = 500
    checkpoint_every: int = 500
    eval_examples: int = 500
    time_budget: float | None = None
    seed: int = 0
    dtype: str = "float32"

    def __post_init__(self):
        """Range checks: a bad value is named here, not deep inside a layer or schedule."""
        def need(ok, name, what):
            if not ok:
                raise ValueError(f"TrainConfig: {name} must be {what}, got "
                                 f"{getattr(self, name)!r}")

        def number(name):
            v = getattr(self, name)
            return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)

        def integer(name):
            v = getattr(self, name)
            return isinstance(v, (int, np.integer)) and not isinstance(v, bool)

        for name in ("d_model", "nhead", "layers", "dim_feedforward", "hidden_size", "steps",
                     "batch_size", "context", "n_valid", "n_test", "eval_examples"):
            need(integer(name) and getattr(self, name) >= 1, name, "an integer >= 1")
        for name in ("warmup", "eval_every", "checkpoint_every", "seed"):
            need(integer(name) and getattr(self, name) >= 0, name, "an integer >= 0")
        need(self.n_train is None or (integer("n_train") and self.n_train >= 1), "n_train",
             "None or an integer >= 1")
        need(number("lr") and self.lr > 0, "lr", "a number > 0")
        for name in ("weight_decay", "clip"):
            need(number(name) and getattr(self, name) >= 0, name, "a number >= 0 (0: off)")
        for name in ("dropout", "label_smoothing"):
            need(number(name) and 0 <= getattr(self, name) < 1, name, "a number in [0, 1)")
        need(self.time_budget is None or (number("time_budget") and self.time_budget > 0),
             "time_budget", "None or a number of seconds > 0")

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


MODEL_KINDS = ("transformer", "seq2seq", "lstmn", "lm")


def build_model(cfg: TrainConfig, src_vocab: int, tgt_vocab: int, rng):
    """The model a config names, for the given vocabulary sizes."""
    dtype = np.dtype(cfg.dtype)
    if cfg.model == "transformer":
        return Transformer(src_vocab, tgt_vocab, d_model=cfg.d_model, nhead=cfg.nhead,
                           num_encoder_layers=cfg.layers, num_decoder_layers=cfg.layers,
                           dim_feedforward=cfg.dim_feedforward, dropout=cfg.dropout,
                           activation=cfg.activation, norm_first=cfg.norm_first,
                           tie_output=cfg.tie_output, max_len=256, dtype=dtype, rng=rng)
    if cfg.model in ("seq2seq", "lstmn"):
        lstmn = cfg.model == "lstmn"
        return Seq2Seq(src_vocab, tgt_vocab, embed_dim=cfg.d_model, hidden_size=cfg.hidden_size,
                       num_layers=1 if lstmn else cfg.layers, cell=cfg.cell,
                       encoder_cell="lstmn" if lstmn else None, bidirectional=not lstmn,
                       attention=cfg.decoder, score=cfg.score, max_src_len=256,
                       dropout=cfg.dropout, dtype=dtype, rng=rng)
    if cfg.model == "lm":  # decoder-only, pre-LN (cfg.norm_first does not apply)
        return TransformerLM(tgt_vocab, d_model=cfg.d_model, nhead=cfg.nhead,
                             num_layers=cfg.layers, dim_feedforward=cfg.dim_feedforward,
                             dropout=cfg.dropout, activation=cfg.activation,
                             positional="learned", max_len=cfg.context,
                             tie_output=cfg.tie_output, dtype=dtype, rng=rng)
    raise ValueError(f"unknown model {cfg.model!r}; expected one of {list(MODEL_KINDS)}")


def _schedule(cfg: TrainConfig):
    if cfg.schedule == "constant":
        return ConstantSchedule(cfg.lr)
    if cfg.schedule == "warmup_cosine":
        return WarmupCosineSchedule(cfg.lr, min(cfg.warmup, cfg.steps - 1), cfg.steps,
                                    min_lr=cfg.lr * 0.02)
    if cfg.schedule == "noam":  # lr is the peak here too: factor * (d_model * warmup)^-0.5
        return NoamSchedule(cfg.d_model, cfg.warmup,
                            factor=cfg.lr * math.sqrt(cfg.d_model * max(cfg.warmup, 1)))
    raise ValueError(f"unknown schedule {cfg.schedule!r}; expected constant, warmup_cosine "
                     f"or noam")


class _Lock:
    """An exclusive lock file in the output directory: a second run pointed at
    the same directory refuses to start instead of corrupting the first.

    Where ``fcntl`` exists (POSIX) the lock is an ``flock`` on ``.lock``, which
    the kernel drops when its process ends, however it ends (SIGKILL too): a
    dead run's lock is free at once, and two runs that start together cannot
    both win.  (Taking over a "stale" pid file is check-then-act: two runs that
    both find it stale both took it.)  The file is never removed, only
    unlocked: removed, a run that had just opened it would lock the unlinked
    file while the next run locks a new one.  Without ``fcntl``: an O_EXCL file
    holding the pid, taken over when that pid is gone."""

    def __init__(self, directory: str):
        self.path = os.path.join(directory, ".lock")
        self.fd = None

    def acquire(self):
        if fcntl is not None:
            fd = os.open(self.path, os.O_CREAT | os.O_RDWR, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:  # BlockingIOError: another run holds it
                try:
                    pid = int(os.read(fd, 32).decode().strip() or 0)
                except (OSError, ValueError):
                    pid = 0
                os.close(fd)
                raise TrainingError(f"output directory {os.path.dirname(self.path)!r} is in "
                                    f"use by another run" + (f" (pid {pid})" if pid else ""))
            os.ftruncate(fd, 0)
            os.write(fd, str(os.getpid()).encode())
            self.fd = fd
            return self
        for _ in range(2):
            try:
                self.fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
                os.write(self.fd, str(os.getpid()).encode())
                return self
            except FileExistsError:
                try:
                    pid = int(open(self.path).read().strip() or 0)
                except (OSError, ValueError):
                    pid = 0
                if pid and _alive(pid):
                    raise TrainingError(f"output directory {os.path.dirname(self.path)!r} is "
                                        f"in use by another run (pid {pid})") from None
                os.unlink(self.path)  # stale: its process is gone
        raise TrainingError(f"could not lock {self.path!r}")

    def release(self):
        if self.fd is not None:
            if fcntl is not None:
                os.ftruncate(self.fd, 0)
                os.close(self.fd)  # (closing drops the flock)
                self.fd = None
                return
            os.close(self.fd)
            self.fd = None
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


MAX_EXAMPLES = 10**7  # per split, for a run restored from a checkpoint


def _check_sizes(cfg: TrainConfig, ck, path: str) -> None:
    """Refuse settings whose data or model would dwarf what the checkpoint holds,
    before anything is built from them (a forged n_train=10**12 would generate
    examples for ever, a d_model=2**20 allocate terabytes).  The model bound is a
    lower bound on its parameter count (the square attention / recurrent weights
    alone), set against the parameters the file stores."""
    for name in ("n_train", "n_valid", "n_test"):
        n = getattr(cfg, name)
        if n is not None and not 0 <= n <= MAX_EXAMPLES:
            raise CheckpointError(f"checkpoint {path!r}: {name}={n} is outside "
                                  f"[0, {MAX_EXAMPLES}]")
    stored = sum(int(a.size) for a in ck.params.values())
    for name in ("d_model", "dim_feedforward", "hidden_size", "layers", "nhead", "batch_size",
                 "context"):
        if getattr(cfg, name) < 1:
            raise CheckpointError(f"checkpoint {path!r}: {name}={getattr(cfg, name)} < 1")
    d, ff = cfg.d_model, cfg.dim_feedforward
    if cfg.model == "transformer":
        least = cfg.layers * (12 * d * d + 4 * d * ff)  # enc + dec attention and FFN weights
    elif cfg.model == "lm":  # self-attention and FFN weights, the position table
        least = cfg.layers * (4 * d * d + 2 * d * ff) + cfg.context * d
    else:
        least = (cfg.layers if cfg.model == "seq2seq" else 1) * cfg.hidden_size ** 2
        least += cfg.d_model  # (an embedding row)
    if least > stored:
        raise CheckpointError(f"checkpoint {path!r}: its settings describe a model of at least "
                              f"{least} parameters but it stores {stored} (another model, or "
                              f"a corrupt config)")


class Progress:
    """One status line: step, loss, tokens/s, learning rate, ETA.  Redrawn in
    place on a terminal, printed every ``every`` steps otherwise."""

    def __init__(self, total: int, stream=None, every: int = 100):
        self.total, self.stream = total, stream or sys.stdout
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.every = every
        self.start = time.perf_counter()
        self.tokens = 0
        self.loss_avg = None

    def update(self, step, loss, lr, tokens, steps_done):
        self.tokens += tokens
        self.loss_avg = loss if self.loss_avg is None else 0.98 * self.loss_avg + 0.02 * loss
        if not self.tty and step % self.every and step != self.total:
            return
        elapsed = time.perf_counter() - self.start
        rate = self.tokens / max(elapsed, 1e-9)
        eta = elapsed / max(steps_done, 1) * (self.total - step)
        width = 24
        filled = int(width * step / max(self.total, 1))
        bar = "#" * filled + "." * (width - filled)
        line = (f"[{bar}] step {step}/{self.total}  loss {self.loss_avg:.4f}  "
                f"{rate:,.0f} tok/s  lr {lr:.2e}  eta {_fmt_time(eta)}")
        if self.tty:
            self.stream.write("\r" + line)
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def message(self, text):
        if self.tty:
            self.stream.write("\r" + " " * 100 + "\r")
        self.stream.write(text + "\n")
        self.stream.flush()


def _fmt_time(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


@dataclass
class Metrics:
    loss: float
    token_accuracy: float  # teacher-forced next-token accuracy
    exact_match: float | None  # decoded output == reference (None: a language model)
    perplexity: float
    error_rate: float | None  # edit distance / reference length, in target tokens (CER, WER, PER)
    bleu: float | None = None  # sacrebleu corpus BLEU, when sacrebleu is installed (tsv tasks)
    bleu_signature: str | None = None
    examples: list = field(default_factory=list)  # (source, prediction, reference)
    bits_per_char: float | None = None  # language models: loss / ln 2

    def to_json(self) -> dict:
        out = {"loss": self.loss, "token_accuracy": self.token_accuracy,
               "perplexity": self.perplexity}
        for name in ("exact_match", "error_rate", "bits_per_char"):
            if getattr(self, name) is not None:
                out[name] = getattr(self, name)
        if self.bleu is not None:
            out["bleu"] = self.bleu
            out["bleu_signature"] = self.bleu_signature
        return out


def _sacrebleu(hypotheses, references, tokens):
    """Corpus BLEU and its signature through sacrebleu, or (None, None) without it."""
    try:
        import sacrebleu
    except ImportError:
        return None, None
    tokenize = "char" if tokens == "char" else "13a"
    metric = sacrebleu.metrics.BLEU(tokenize=tokenize)
    score = metric.corpus_score(hypotheses, [references])
    return float(score.score), str(metric.get_signature())


class Trainer:
    """Builds the data, model and optimizer a ``TrainConfig`` describes and trains."""

    def __new__(cls, cfg: TrainConfig = None, *args, **kwargs):
        # Trainer(cfg) builds the trainer of the model the config names
        if cls is Trainer and getattr(cfg, "model", None) == "lm":
            cls = LMTrainer
        return super().__new__(cls)

    def __init__(self, cfg: TrainConfig, out_dir: str | None = None, log=print,
                 stream=None, _restoring: bool = False):
        self.cfg, self.out_dir, self.log = cfg, out_dir, log
        self.stream = stream
        self._build_data(cfg)
        self.model = build_model(cfg, len(self.src_tok), len(self.tgt_tok),
                                 np.random.default_rng([cfg.seed, 1]))
        self.loss_fn = CrossEntropyLoss(ignore_index=PAD_ID, label_smoothing=cfg.label_smoothing)
        self.optimizer = AdamW(self.model, lr=cfg.lr, betas=(0.9, 0.98), eps=1e-9,
                               weight_decay=cfg.weight_decay)
        self.schedule = _schedule(cfg)
        self.step = 0
        self.seconds = 0.0  # training time accumulated over all sessions of the run
        self.history: list[dict] = []
        self._lock = None
        if out_dir is not None and not _restoring:
            self._claim(out_dir, fresh=True)

    def _build_data(self, cfg: TrainConfig) -> None:
        """The task, its tokenizers and the training batch iterator."""
        if is_text_task(cfg.task):
            raise ValueError(f"task {cfg.task!r} is a text for language modelling: train it "
                             f"with --model lm")
        if is_corpus_task(cfg.task):
            self.task = make_corpus_task(cfg.task, cfg.n_train, cfg.n_valid, cfg.n_test,
                                         seed=cfg.seed, tokens=cfg.tokens)
        else:
            self.task = make_task(cfg.task, cfg.n_train, cfg.n_valid, cfg.n_test, seed=cfg.seed)
        self.src_tok, self.tgt_tok = self.task.src_tokenizer, self.task.tgt_tokenizer
        self.train_examples = encode_pairs(self.task.train, self.src_tok, self.tgt_tok)
        self.batches = BatchIterator(self.train_examples, cfg.batch_size, seed=cfg.seed)

    def describe_data(self) -> str:
        return (f"{len(self.task.train):,} train / {len(self.task.valid):,} valid / "
                f"{len(self.task.test):,} test pairs")

    def _forward(self, batch):
        """-> (logits, cache, targets) of one training batch."""
        logits, cache = self.model.forward(batch.src, batch.tgt_in, batch.src_pad_mask,
                                           batch.tgt_pad_mask)
        return logits, cache, batch.tgt_out

    # -- output directory ---------------------------------------------------------------
    def _claim(self, out_dir, fresh):
        os.makedirs(out_dir, exist_ok=True)
        self._lock = _Lock(out_dir).acquire()
        if fresh and os.path.exists(os.path.join(out_dir, CHECKPOINT)):
            self._lock.release()
            raise TrainingError(f"{out_dir!r} already holds a checkpoint; pass --resume to "
                                f"continue it or choose another --out")
        # A save cut short (the process killed mid-write) leaves its temp file; with the
        # lock held no other run can be writing one, so they are all garbage.
        for name in os.listdir(out_dir):
            if name.startswith(".ckpt-") and name.endswith(".tmp"):
                try:
                    os.unlink(os.path.join(out_dir, name))
                except OSError:
                    pass

    def close(self):
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    VALID_EXAMPLES_SHOWN = 3  # decoded validation examples printed at each evaluation

    # -- one step -------------------------------------------------------------------------
    def train_step(self, batch) -> float:
        model, cfg = self.model, self.cfg
        logits, cache, targets = self._forward(batch)
        try:
            loss, loss_cache = self.loss_fn.forward(logits, targets)
        except ValueError:  # the loss refuses NaN/inf logits: name the step instead
            if np.isfinite(logits).all():
                raise
            raise TrainingError(f"the logits became NaN/inf at step {self.step + 1}; "
                                f"stopping (the last checkpoint is intact)") from None
        loss = float(loss)
        if not math.isfinite(loss):
            raise TrainingError(f"the loss became {loss} at step {self.step + 1}; stopping "
                                f"(the last checkpoint is intact)")
        model.zero_grad()
        model.backward(self.loss_fn.backward(1.0, loss_cache), cache)
        # the norm is taken without clipping too: an inf gradient must stop the run
        # before the optimizer writes NaN into the parameters
        norm = (clip_grad_norm(self.optimizer.params, cfg.clip) if cfg.clip
                else global_grad_norm(self.optimizer.params))
        if not math.isfinite(norm):
            raise TrainingError(f"the gradient norm became {norm} at step {self.step + 1}; "
                                f"stopping (the last checkpoint is intact)")
        self.optimizer.lr = self.schedule(self.step + 1)
        self.optimizer.step()
        self.step += 1
        return loss

    # -- the loop --------------------------------------------------------------------------
    def fit(self, until: int | None = None) -> dict:
        """Train to step ``until`` (default: cfg.steps), save, evaluate on the test split.

        The first call sets glibc's malloc to keep freed memory for reuse
        (``numtransformer._malloc.keep_freed_memory``, for the whole process):
        without it every step faults its working set in again, which costs
        tx-tiny of ``benchmarks/bench_train.py`` 40% of its step time."""
        keep_freed_memory()
        cfg = self.cfg
        until = cfg.steps if until is None else min(until, cfg.steps)
        progress = Progress(cfg.steps, self.stream, every=max(cfg.steps // 30, 1))
        session_start = time.perf_counter()
        start_step, seconds_before = self.step, self.seconds
        stopped = "steps"
        try:
            self.model.train()
            while self.step < until:
                batch = next(self.batches)
                loss = self.train_step(batch)
                self.seconds = seconds_before + time.perf_counter() - session_start
                progress.update(self.step, loss, self.optimizer.lr, batch.n_tgt_tokens,
                                self.step - start_step)
                if cfg.eval_every and self.step % cfg.eval_every == 0 and self.step < until:
                    m = self.evaluate("valid", cfg.eval_examples,
                                      n_examples_shown=self.VALID_EXAMPLES_SHOWN)
                    progress.message(self._metrics_line("valid", m))
                    for line in self.example_lines(m):
                        progress.message(line)
                    self.history.append({"step": self.step, **m.to_json()})
                    self.model.train()
                if (self.out_dir and cfg.checkpoint_every
                        and self.step % cfg.checkpoint_every == 0):
                    self.save()
                if cfg.time_budget is not None and self.seconds >= cfg.time_budget:
                    stopped = "time budget"
                    break
        except KeyboardInterrupt:
            stopped = "interrupted"
            progress.message("interrupted: saving and evaluating")
        if self.out_dir:
            self.save()
        test = self.evaluate("test", None, n_examples_shown=5)
        progress.message(self._metrics_line("test", test))
        for line in self.example_lines(test):
            progress.message(line)
        return {"task": cfg.task, "model": cfg.model, "steps": self.step,
                "seconds": round(self.seconds, 2), "stopped_by": stopped, **test.to_json()}

    def example_lines(self, m: Metrics) -> list[str]:
        return [f"  {'ok ' if pred == ref else 'ERR'} {src!r:34} -> {pred!r}   "
                f"(reference {ref!r})" for src, pred, ref in m.examples]

    def _metrics_line(self, split, m: Metrics) -> str:
        line = (f"step {self.step}: {split} loss {m.loss:.4f}  ppl {m.perplexity:.3f}  "
                f"token acc {100 * m.token_accuracy:.2f}%  exact match "
                f"{100 * m.exact_match:.2f}%  error rate {100 * m.error_rate:.2f}%")
        if m.bleu is not None:
            line += f"  BLEU {m.bleu:.2f} ({m.bleu_signature})"
        return line

    # -- evaluation ------------------------------------------------------------------------
    def evaluate(self, split: str = "valid", limit: int | None = None, batch_size: int = 250,
                 n_examples_shown: int = 0, beam: int = 1) -> Metrics:
        """Teacher-forced loss / perplexity / token accuracy, and greedy (or beam)
        exact match of whole sequences, on a split (its first ``limit`` pairs).
        ``n_examples_shown`` decoded examples come back in ``examples``, the wrong
        ones first."""
        pairs = getattr(self.task, split)
        if limit is not None:
            pairs = pairs[:limit]
        self.model.eval()
        total_loss, n_tokens, n_correct, n_exact = 0.0, 0, 0, 0
        n_edits, n_ref_tokens = 0, 0
        wrong, right, hypotheses, references = [], [], [], []
        for start in range(0, len(pairs), batch_size):
            chunk = pairs[start:start + batch_size]
            batch = make_batch(encode_pairs(chunk, self.src_tok, self.tgt_tok))
            logits = self.model(batch.src, batch.tgt_in, batch.src_pad_mask, batch.tgt_pad_mask)
            loss_sum = CrossEntropyLoss(ignore_index=PAD_ID, reduction="sum")(logits,
                                                                               batch.tgt_out)
            real = ~batch.tgt_pad_mask
            total_loss += float(loss_sum)
            n_tokens += int(real.sum())
            n_correct += int(((logits.argmax(-1) == batch.tgt_out) & real).sum())
            max_len = batch.tgt_out.shape[1] + 5
            if beam > 1:
                outs = beam_search(self.model, batch.src, batch.src_pad_mask, beam_size=beam,
                                   max_len=max_len)
            else:
                outs = greedy_decode(self.model, batch.src, batch.src_pad_mask, max_len=max_len)
            for (src, ref), out in zip(chunk, outs):
                pred = self.tgt_tok.decode(out)
                n_exact += pred == ref
                ref_tokens = self.tgt_tok.split(ref)
                n_edits += edit_distance(self.tgt_tok.split(pred), ref_tokens)
                n_ref_tokens += len(ref_tokens)
                hypotheses.append(pred)
                references.append(ref)
                kept = wrong if pred != ref else right
                if len(kept) < n_examples_shown:
                    kept.append((src, pred, ref))
        shown = (wrong + right)[:n_examples_shown]  # the mistakes first: they say the most
        loss = total_loss / max(n_tokens, 1)
        bleu = signature = None
        if self.cfg.task.startswith("tsv:"):
            bleu, signature = _sacrebleu(hypotheses, references, self.cfg.tokens)
        return Metrics(loss=loss, token_accuracy=n_correct / max(n_tokens, 1),
                       exact_match=n_exact / max(len(pairs), 1), perplexity=math.exp(min(loss, 50)),
                       error_rate=n_edits / max(n_ref_tokens, 1), bleu=bleu,
                       bleu_signature=signature, examples=shown)

    def translate(self, sources: list[str], beam: int = 1, max_len: int = 64) -> list[str]:
        self.model.eval()
        ids = [self.src_tok.encode(s) for s in sources]
        batch = make_batch([(s, []) for s in ids])
        if beam > 1:
            outs = beam_search(self.model, batch.src, batch.src_pad_mask, beam_size=beam,
                               max_len=max_len)
        else:
            outs = greedy_decode(self.model, batch.src, batch.src_pad_mask, max_len=max_len)
        return [self.tgt_tok.decode(o) for o in outs]

    def cross_attention(self, source: str, beam: int = 1, max_len: int = 64):
        """Decode ``source``, then return (src_tokens, out_tokens, weights (L, H, Tq, Tk)):
        the cross-attention of every decoder layer and head while producing the output.

        The weights come from a teacher-forced forward over the decoded tokens:
        its cache holds every layer's ``alpha`` (the cache is the trace)."""
        self.model.eval()
        out = self.translate([source], beam=beam, max_len=max_len)[0]
        src_ids = np.array([self.src_tok.encode(source)])
        out_ids = self.tgt_tok.encode(out)
        tgt_in = np.array([[BOS_ID] + out_ids])
        if isinstance(self.model, Seq2Seq):
            alpha = self.model.attention_weights(src_ids, tgt_in)
            if alpha is None:
                raise ValueError("this model has no attention to draw (decoder 'none')")
            weights = alpha[0][None, None]  # one "layer", one "head"
        else:
            _, cache = self.model.forward(src_ids, tgt_in)
            weights = np.stack([c.cross_attn.alpha[0] for c in cache.decoder.layers])
        src_tokens = [self.src_tok.itos[i] for i in src_ids[0]]
        out_tokens = [self.tgt_tok.itos[i] for i in out_ids] + ["<eos>"]
        return src_tokens, out_tokens, weights

    # -- checkpoints -------------------------------------------------------------------------
    def _rng_extra(self):
        return {}

    def save(self, path: str | None = None) -> str:
        path = path or os.path.join(self.out_dir, CHECKPOINT)
        config = {"kind": "seq2seq-training-run", "train": self.cfg.to_json(),
                  "model_class": type(self.model).__name__,
                  "model_config": self.model.config,
                  "src_vocab": self.src_tok.to_json(), "tgt_vocab": self.tgt_tok.to_json()}
        meta = {"step": self.step, "seconds": self.seconds,
                "rng": rng_states(self.model, self._rng_extra()),
                "data": self.batches.state_dict(), "history": self.history}
        try:
            save_checkpoint(path, self.model, config, meta, self.optimizer)
        except NonFiniteParameters as exc:  # the last good checkpoint is left as it was
            raise TrainingError(f"the parameters became NaN/inf by step {self.step} ({exc}); "
                                f"stopping (the last checkpoint is intact)") from None
        return path

    @classmethod
    def resume(cls, out_dir: str, log=print, stream=None, **overrides) -> "Trainer":
        """Continue the run saved in ``out_dir`` (``overrides``: e.g. more steps)."""
        path = os.path.join(out_dir, CHECKPOINT)
        trainer = cls.from_checkpoint(path, log=log, stream=stream, **overrides)
        trainer.out_dir = out_dir
        trainer._claim(out_dir, fresh=False)
        return trainer

    @classmethod
    def from_checkpoint(cls, path: str, log=print, stream=None, **overrides) -> "Trainer":
        ck = load_checkpoint(path)
        if ck.config.get("kind") == "memnn-training-run":
            raise CheckpointError(f"checkpoint {path!r} is a memory-network run: "
                                  f"`numtransformer eval` evaluates it; decode, trace and "
                                  f"--resume take sequence-to-sequence and language-model runs")
        if ck.config.get("kind") != "seq2seq-training-run":
            raise CheckpointError(f"checkpoint {path!r} is not a numtransformer training run")
        if not isinstance(ck.config.get("train"), dict):
            raise CheckpointError(f"checkpoint {path!r}: config has no training settings")
        train = dict(ck.config["train"])
        for key, value in overrides.items():
            if value is not None:
                train[key] = value
        try:
            cfg = TrainConfig.from_json(train)
        except CheckpointError as exc:
            raise CheckpointError(f"checkpoint {path!r}: {exc}") from exc
        _check_sizes(cfg, ck, path)  # before any data or model is built from them
        try:
            trainer = cls(cfg, out_dir=None, log=log, stream=stream, _restoring=True)
        except (ValueError, TypeError) as exc:
            raise CheckpointError(f"checkpoint {path!r}: its training settings do not build a "
                                  f"run: {exc}") from exc
        if (trainer.src_tok.to_json() != ck.config.get("src_vocab")
                or trainer.tgt_tok.to_json() != ck.config.get("tgt_vocab")):
            raise CheckpointError(f"checkpoint {path!r}: its vocabulary does not match the "
                                  f"task's (was the data generator changed?)")
        try:
            own = dict(trainer.model._named_parameters_all())
            for name, value in ck.params.items():  # a cast would break the bit-exact resume
                if name in own and value.dtype != own[name].dtype:
                    raise ValueError(f"parameter {name!r} has dtype {value.dtype}, the run "
                                     f"computes in {own[name].dtype}")
            trainer.model.load_state_dict(ck.params)
            trainer.optimizer.load_state_dict(ck.optim)
            opt = trainer.optimizer
            for kind in opt.state_kinds if opt.step_count else ():
                missing = [n for n, _ in opt.named_params if n not in opt.state[kind]]
                if missing:  # a lazily re-created zero moment would break the exact resume
                    raise ValueError(f"optimizer state {kind!r} is missing for {missing[:3]}")
            set_rng_states(trainer.model, ck.meta["rng"], trainer._rng_extra())
            trainer.batches.load_state_dict(ck.meta["data"])
            step, history = ck.meta["step"], ck.meta.get("history", [])
            if isinstance(step, bool) or not isinstance(step, int) or step < 0:
                raise ValueError(f"meta step={step!r} is not a step count")
            if opt.step_count != step:  # one optimizer step per training step
                raise ValueError(f"the optimizer made {opt.step_count} steps, the run {step}")
            if not isinstance(history, list):
                raise ValueError("meta history is not a list")
            trainer.step = step
            trainer.seconds = float(ck.meta.get("seconds", 0.0))
            trainer.history = list(history)
        except (ValueError, KeyError, TypeError) as exc:
            raise CheckpointError(f"checkpoint {path!r} does not fit this model: "
                                  f"{type(exc).__name__}: {exc}") from exc
        return trainer


class LMTrainer(Trainer):
    """The training loop for ``--model lm``: a decoder-only Transformer
    (``TransformerLM``, pre-LN, learned positions, tied output) learning the
    next character of a text.

    Batches are ``batch_size`` random windows of ``context`` characters from the
    train split (``WindowIterator``); the loss is the cross-entropy of every
    position's next character.  Evaluation scores each character of a split
    once, in consecutive windows of ``context`` (each from a fresh context):
    loss in nats per character, perplexity, next-character accuracy, and bits
    per character = loss / ln 2.  Generation continues a prompt by sampling
    with the KV cache; past ``context`` characters it keeps the last half as
    the new prompt.  Checkpoints, resume, time budget and progress are the
    seq2seq loop's own.
    """

    SAMPLE_TEMPERATURE = 0.8  # the samples printed after training
    VALID_EXAMPLES_SHOWN = 1  # one sample at each evaluation (generating costs time)

    def _build_data(self, cfg: TrainConfig) -> None:
        if not is_text_task(cfg.task):
            raise ValueError(f"--model lm trains on a text: --task text:hamlet (built in) or "
                             f"text:PATH, not {cfg.task!r}")
        if cfg.context < 2:
            raise ValueError(f"context must be >= 2, got {cfg.context}")
        self.task = make_text_task(cfg.task, cfg.context)
        self.src_tok = self.tgt_tok = self.task.tokenizer
        self.batches = WindowIterator(self.task.ids("train"), cfg.batch_size, cfg.context,
                                      seed=cfg.seed)

    def describe_data(self) -> str:
        return (f"{len(self.task.train):,} train / {len(self.task.valid):,} valid / "
                f"{len(self.task.test):,} test characters, {len(self.tgt_tok)} symbols, "
                f"windows of {self.cfg.context}")

    def _forward(self, batch):
        logits, cache = self.model.forward(batch.ids)
        return logits, cache, batch.targets

    def evaluate(self, split: str = "valid", limit: int | None = None, batch_size: int = 64,
                 n_examples_shown: int = 0, beam: int = 1) -> Metrics:
        """Loss per character, perplexity, next-character accuracy and bits per
        character on a split (its first ``limit`` windows); ``n_examples_shown``
        samples continue prompts taken from the split."""
        if beam != 1:
            raise ValueError("a language model is scored by its probabilities; beam search "
                             "applies to sequence-to-sequence runs")
        ids = self.task.ids(split)
        windows = eval_windows(ids, self.cfg.context, limit)
        self.model.eval()
        loss_fn = CrossEntropyLoss(reduction="sum")
        total_loss, n_tokens, n_correct = 0.0, 0, 0
        full = [w for w in windows if w[0].size == self.cfg.context]
        groups = [full[i:i + batch_size] for i in range(0, len(full), batch_size)]
        groups += [[w] for w in windows if w[0].size != self.cfg.context]  # the short tail
        for group in groups:
            x = np.stack([w[0] for w in group])
            y = np.stack([w[1] for w in group])
            logits = self.model(x)
            total_loss += float(loss_fn(logits, y))
            n_tokens += y.size
            n_correct += int((logits.argmax(-1) == y).sum())
        loss = total_loss / max(n_tokens, 1)
        shown = []
        if n_examples_shown:
            text = getattr(self.task, split)
            n_prompt, n_new = min(48, self.cfg.context // 2), 160
            step = max((len(text) - n_prompt - n_new) // n_examples_shown, 1)
            starts = [i * step for i in range(n_examples_shown)
                      if i * step + n_prompt + n_new <= len(text)]
            prompts = [text[s:s + n_prompt] for s in starts]
            outs = self.generate(prompts, n_new, temperature=self.SAMPLE_TEMPERATURE, seed=0)
            shown = [(p, o, text[s + n_prompt:s + n_prompt + n_new])
                     for p, o, s in zip(prompts, outs, starts)]
        return Metrics(loss=loss, token_accuracy=n_correct / max(n_tokens, 1),
                       exact_match=None, perplexity=math.exp(min(loss, 50)), error_rate=None,
                       bits_per_char=loss / math.log(2), examples=shown)

    def example_lines(self, m: Metrics) -> list[str]:
        lines = []
        for i, (prompt, out, ref) in enumerate(m.examples):
            lines += [f"  sample {i + 1} (temperature {self.SAMPLE_TEMPERATURE}): prompt "
                      f"{prompt!r}", f"    model: {out!r}", f"    text:  {ref!r}"]
        return lines

    def _metrics_line(self, split, m: Metrics) -> str:
        return (f"step {self.step}: {split} loss {m.loss:.4f}  ppl {m.perplexity:.3f}  "
                f"next-char acc {100 * m.token_accuracy:.2f}%  bits/char "
                f"{m.bits_per_char:.3f}")

    def generate(self, prompts: list[str], n: int, temperature: float = 0.0,
                 top_k: int | None = None, seed: int = 0) -> list[str]:
        """Continue each prompt by ``n`` characters (temperature 0: greedy).

        Decoding uses the KV cache; the model sees at most ``context``
        positions, so when a continuation would run past them the last
        ``context // 2`` characters become a fresh prompt.  An empty prompt
        starts from a newline (or the most frequent character)."""
        if n < 0:
            raise ValueError(f"n must be >= 0, got {n}")
        self.model.eval()
        ctx = self.cfg.context
        tok = self.tgt_tok
        fallback = tok.stoi.get("\n", 4 if len(tok) > 4 else 3)
        rng = np.random.default_rng(seed)
        outs = []
        for prompt in prompts:
            seq = tok.encode(prompt) or [fallback]
            produced = 0
            while produced < n:
                remaining = n - produced
                keep = len(seq) if len(seq) + remaining <= ctx else ctx // 2
                context = seq[-min(keep, len(seq)):]
                new = min(remaining, ctx - len(context))
                ids = sample(self.model, np.array([context]), new, temperature=temperature,
                             top_k=top_k, rng=rng, suppress=SPECIAL_IDS)
                seq.extend(int(i) for i in ids[0, len(context):])
                produced += new
            outs.append(tok.decode(seq[len(seq) - n:], strip_special=False) if n else "")
        return outs

    def translate(self, sources: list[str], beam: int = 1, max_len: int = 64) -> list[str]:
        """Greedy continuations of ``max_len`` characters (``generate`` samples)."""
        if beam != 1:
            raise ValueError("beam search applies to sequence-to-sequence runs; a language "
                             "model continues a prompt (greedy, or sampled with a temperature)")
        return self.generate(sources, max_len)

    def self_attention(self, text: str):
        """(tokens, weights (L, H, T, T)): the causal self-attention of every layer
        and head over the last ``context`` characters of ``text``."""
        self.model.eval()
        ids = self.tgt_tok.encode(text)[-self.cfg.context:]
        if not ids:
            raise ValueError("no text to draw the attention of")
        _, cache = self.model.forward(np.array([ids]))
        weights = np.stack([c.self_attn.alpha[0] for c in cache.blocks])
        return [self.tgt_tok.itos[i] for i in ids], weights

    def cross_attention(self, source: str, beam: int = 1, max_len: int = 64):
        raise ValueError("a language model has no cross-attention; self_attention(text) "
                         "gives its causal self-attention")
