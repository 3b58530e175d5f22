"""The training loop: ``Trainer`` builds the data, model and optimizer a
``TrainConfig`` describes, trains, evaluates and checkpoints.

    cfg = TrainConfig(task="dates", steps=3000)
    run = make_trainer(cfg, out_dir="runs/dates")  # the trainer the model kind names
    metrics = run.fit()                            # trains, evaluates, saves

A step is: forward, cross-entropy (ignoring padding), backward, global-norm
clipping, learning rate from the schedule, optimizer step.  Everything random
is seeded from ``cfg.seed``: the data order (a function of seed and epoch),
dropout masks (each Dropout's generator), and parameter init.  A checkpoint
holds the parameters, the optimizer moments and step count, every generator's
state and the data position, so ``Trainer.resume(out_dir)`` continues exactly
where the run stopped: a run of ``steps=S`` stopped anywhere (``fit(until=N)``,
an interrupt, a kill, a time budget) and resumed to S has the parameters
(``np.array_equal``) of S steps straight, under every schedule.  Resuming with
a larger ``steps`` matches a straight run of that many steps only under a
schedule that does not depend on ``steps`` (constant, noam): warmup_cosine
decays to the run's last step.  The time-budget schedule (``--time-budget``
with ``budget_schedule="time"``, train/budget.py) sets each step's rate from the
elapsed time as well, so a run under it is reproducible given the same clock
readings only.

Checkpoints are verified before they replace the previous one (loaded back:
every array, the optimizer's step count equal to the run's); SIGINT and SIGTERM
stop the run at a step boundary, save and return (``signals.StopRequests``).

Which trainer runs a model kind is said once, in
``numtransformer.models.registry``: ``make_trainer(cfg)`` builds it,
``Trainer.resume`` / ``Trainer.from_checkpoint`` return it for a saved run, and
a trainer constructed directly refuses a kind that is not its own.
"""

from __future__ import annotations

import importlib
import math
import os
import shlex
import signal
import time

import numpy as np

from .._malloc import keep_freed_memory
from ..checkpoint import (CheckpointError, CheckpointNotSaved, NonFiniteParameters,
                          load_checkpoint, rng_states, save_checkpoint, set_rng_states)
from ..data import BatchIterator, encode_pairs, make_batch, make_task
from ..data.corpora import edit_distance, is_corpus_task, make_corpus_task
from ..data.text import is_text_task
from ..data.tasks import TaskData
from ..data.tokenizers import BOS_ID, PAD_ID, tokenizer_from_json
from ..decoding import beam_search, greedy_decode
from ..losses import CrossEntropyLoss
from ..models import Seq2Seq, registry
from ..optim import (AdamW, ConstantSchedule, NoamSchedule, WarmupCosineSchedule, clip_grad_norm,
                     global_grad_norm)
from .budget import BudgetSchedule
from .config import TrainConfig
from .distributed import MPIUnavailable, world
from .errors import ConfigError, TrainingError, UserError
from .metrics import Metrics, Progress, _sacrebleu
from .rundir import (CHECKPOINT, claim, corpus_file, data_record, describe_record, fingerprint,
                     original_matches, read_splits, splits_bytes, store_data, stored_file)
from .signals import StopRequests, exit_status

__all__ = ["Trainer", "make_trainer", "trainer_class", "resolve_trainer", "build_model",
           "MODEL_KINDS"]

# the kinds a TrainConfig run trains (memnn has its own function, memnn_train.train_memnn)
MODEL_KINDS = registry.names(train_config=True)


def build_model(cfg: TrainConfig, src_vocab: int, tgt_vocab: int, rng):
    """The model a config names, for the given vocabulary sizes (its registry entry builds it)."""
    kind = registry.get(cfg.model)
    if not kind.train_config:
        raise ConfigError(f"--model {cfg.model} is not built from a TrainConfig (see "
                          f"{kind.trainer.replace(':', '.')})")
    return kind.build(cfg, src_vocab, tgt_vocab, rng)


def resolve_trainer(path: str):
    """The object a registry entry's ``trainer`` (``"module:name"``) names."""
    module, _, name = path.partition(":")
    return getattr(importlib.import_module(module), name)


def trainer_class(model: str) -> type:
    """The ``Trainer`` class the registry names for a model kind."""
    kind = registry.get(model)
    if not kind.train_config:
        raise ConfigError(f"--model {model} is not trained from a TrainConfig: its trainer is "
                          f"{kind.trainer.replace(':', '.')}")
    return resolve_trainer(kind.trainer)


def make_trainer(cfg: TrainConfig, out_dir: str | None = None, log=print, stream=None,
                 **kwargs) -> "Trainer":
    """The trainer of the model kind ``cfg.model`` names (``Trainer`` for the
    sequence-to-sequence kinds, ``LMTrainer`` for ``lm``), constructed."""
    if not isinstance(cfg, TrainConfig):
        raise TypeError(f"make_trainer: cfg must be a TrainConfig, got {type(cfg).__name__}")
    return trainer_class(cfg.model)(cfg, out_dir=out_dir, log=log, stream=stream, **kwargs)


def _schedule(cfg: TrainConfig, elapsed=None):
    """The learning-rate schedule; with a time budget, ``budget_schedule="time"`` and
    ``elapsed`` (the run's training seconds), warmup_cosine decays over the budget
    (``budget.BudgetSchedule``; over the steps when those run out first)."""
    if (cfg.schedule == "warmup_cosine" and cfg.time_budget is not None and elapsed is not None
            and cfg.budget_schedule == "time"):
        return BudgetSchedule(cfg.lr, cfg.warmup, cfg.time_budget, elapsed, steps=cfg.steps)
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
    least = registry.get(cfg.model).min_parameters(cfg)
    if least > stored:
        raise CheckpointError(f"checkpoint {path!r}: its settings describe a model of at least "
                              f"{least} parameters but it stores {stored} (another model, or "
                              f"a corrupt config)")


class Trainer:
    """Builds the data, model and optimizer a ``TrainConfig`` describes and trains."""

    def __init__(self, cfg: TrainConfig, out_dir: str | None = None, log=print,
                 stream=None, _restoring: bool = False, _source: dict | None = None):
        self._check_kind(cfg)
        self.cfg, self.out_dir, self.log = cfg, out_dir, log
        self.stream = stream
        # where a run on a file reads it: {"file": a verified copy or the original} or
        # {"splits": the kept valid/test splits, "vocab": (src, tgt)}; None: the task's path
        self._source = _source or {}
        self._stored_in: set = set()  # directories where the run's data is kept already
        self._build_data(cfg)
        self.data_record = None if _restoring else data_record(cfg.task)
        self.model = build_model(cfg, len(self.src_tok), len(self.tgt_tok),
                                 np.random.default_rng([cfg.seed, 1]))
        self.loss_fn = CrossEntropyLoss(ignore_index=PAD_ID, label_smoothing=cfg.label_smoothing)
        self.optimizer = AdamW(self.model, lr=cfg.lr, betas=(0.9, 0.98), eps=1e-9,
                               weight_decay=cfg.weight_decay)
        self.schedule = _schedule(cfg, elapsed=lambda: self.seconds)
        self.step = 0
        self.seconds = 0.0  # training time accumulated over all sessions of the run
        self._join_ranks(cfg, _restoring)
        self.history: list[dict] = []
        self._lock = None
        self._saved_step = None  # the step of the checkpoint in out_dir (None: none yet)
        if out_dir is not None and not _restoring and self.dist.is_root:
            self._claim(out_dir, fresh=True)
            self._store_data(out_dir)
        if not self.dist.is_root:  # rank 0 alone prints, evaluates and saves
            self.out_dir, self.log = None, _quiet

    def _join_ranks(self, cfg: TrainConfig, restoring: bool) -> None:
        """This process's place among the run's data-parallel ranks
        (``distributed.world()``: one process without an MPI launcher).  A run
        resumed on another number of ranks continues on the same global batches
        (the gradients equal up to rounding, the dropout masks not the same)."""
        try:
            self.dist = world()
        except MPIUnavailable as exc:
            raise UserError(str(exc)) from None
        size = self.dist.size
        if size > 1 and cfg.batch_size < size:
            raise ConfigError(f"--batch-size {cfg.batch_size} cannot be shared by {size} "
                              f"ranks: use at least {size}")
        if size > 1 and not self.dist.is_root:  # rank 0 takes SIGINT/SIGTERM for all
            signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
        if cfg.nproc != size:
            if restoring and self.dist.is_root:
                self.log(f"note: this run trained on {cfg.nproc} rank(s) and continues on "
                         f"{size}: the same global batches of {cfg.batch_size}, the gradients "
                         f"equal up to rounding, the dropout masks drawn per rank")
            cfg.nproc = size

    def _build_data(self, cfg: TrainConfig) -> None:
        """The task, its tokenizers and the training batch iterator."""
        if is_text_task(cfg.task):
            raise UserError(f"task {cfg.task!r} is a text for language modelling: train it "
                            f"with --model lm")
        try:  # the loaders check the task name, its files and the split sizes
            if "splits" in self._source:  # a large corpus's kept splits (eval, decode)
                kept, (src, tgt) = self._source["splits"], self._source["vocab"]
                self.task = TaskData(cfg.task, [tuple(p) for p in kept["train_head"]],
                                     [tuple(p) for p in kept["valid"]],
                                     [tuple(p) for p in kept["test"]],
                                     tokenizer_from_json(src), tokenizer_from_json(tgt))
            elif is_corpus_task(cfg.task):
                name = ("tsv:" + self._source["file"]) if "file" in self._source else cfg.task
                self.task = make_corpus_task(name, cfg.n_train, cfg.n_valid, cfg.n_test,
                                             seed=cfg.seed, tokens=cfg.tokens)
                self.task.name = cfg.task
            else:
                self.task = make_task(cfg.task, cfg.n_train, cfg.n_valid, cfg.n_test,
                                      seed=cfg.seed)
        except ValueError as exc:
            raise UserError(str(exc)) from exc
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

    def _check_kind(self, cfg) -> None:
        """Refuse a config whose model kind another trainer runs (``make_trainer``
        picks the right one).  A subclass of the right trainer is fine."""
        if not isinstance(cfg, TrainConfig):
            raise TypeError(f"{type(self).__name__}: cfg must be a TrainConfig, got "
                            f"{type(cfg).__name__}")
        expected = trainer_class(cfg.model)
        own = next((c for c in type(self).__mro__ if c in _trainer_classes()), None)
        if own is not expected:
            raise ConfigError(f"{type(self).__name__}: --model {cfg.model} runs are trained by "
                              f"{expected.__name__}; build it with make_trainer(cfg) (or "
                              f"{expected.__name__}(cfg))")

    # -- output directory ---------------------------------------------------------------
    def _check_split(self, split: str) -> None:
        if split == "train" and "splits" in self._source:
            raise UserError("this run directory keeps the valid and test splits of its "
                            "corpus (of 5 MB or more), not the training split: evaluate "
                            "--split valid or test")

    def _store_data(self, directory: str) -> None:
        """Keep what a run on a file needs in ``directory`` (``rundir.store_data``):
        the corpus copy, or the splits of a large corpus."""
        record, directory = self.data_record, os.path.abspath(directory)
        if not record or directory in self._stored_in:
            return
        if record["stored"] == "copy":
            source = self._source.get("file") or record["path"]
            if stored_file(directory, record) is not None or not os.path.isfile(source):
                return
            if fingerprint(source) != {"size": record["size"], "sha256": record["sha256"]}:
                return  # changed under us: the checkpoint still records what it was
            with open(source, "rb") as f:
                store_data(directory, record, f.read())
        else:
            store_data(directory, record, splits_bytes(self.task))
        self._stored_in.add(directory)

    def _claim(self, out_dir, fresh):
        if not self.dist.is_root:  # rank 0 alone writes the run directory
            return
        self._lock = claim(out_dir, fresh)

    def close(self):
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    VALID_EXAMPLES_SHOWN = 3  # decoded validation examples printed at each evaluation

    # -- one step -------------------------------------------------------------------------
    def train_step(self, batch) -> float:
        model, cfg = self.model, self.cfg
        batch = self.dist.shard(batch)  # this rank's rows of the global batch (all: 1 rank)
        self.dist.reseed_dropout(model, cfg.seed, self.step + 1)  # (several ranks only)
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
        # every parameter of the model (the optimizer holds them all): one fill of the
        # flat gradient buffer, not a walk of the module tree and a fill per parameter
        self.optimizer.zero_grad()
        model.backward(self.loss_fn.backward(1.0, loss_cache), cache)
        # several ranks: the global batch's gradient and loss (one Allreduce, token-weighted)
        loss = self.dist.average_gradients(self.optimizer.params, loss, batch.n_tgt_tokens)
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
    def loss_label(self) -> str:
        """What the progress line calls the training loss: with label smoothing the
        smoothed loss sits above the validation loss (which is not smoothed)."""
        ls = self.cfg.label_smoothing
        return f"train loss (label smoothing {ls:g})" if ls else "train loss"

    def fit(self, until: int | None = None) -> dict:
        """Train to step ``until`` (default: cfg.steps), save, evaluate on the test split.

        SIGINT (Ctrl-C) and SIGTERM are taken at step boundaries only
        (``signals.StopRequests``): the step under way finishes (optimizer step
        and step count both), the run saves, says so, skips the test evaluation
        (``numtransformer eval`` runs it) and returns with ``stopped_by``
        "interrupted" and ``signal`` the signal's name.  A second signal during
        the save waits for the file.  ``stopped_by`` is "steps" (``until`` or
        cfg.steps reached), "time budget" or "interrupted".

        The first call sets glibc's malloc to keep freed memory for reuse
        (``numtransformer._malloc.keep_freed_memory``, for the whole process):
        without it every step faults its working set in again, which costs
        tx-tiny of ``benchmarks/bench_train.py`` 40% of its step time."""
        keep_freed_memory()
        cfg = self.cfg
        until = cfg.steps if until is None else min(until, cfg.steps)
        progress = Progress(cfg.steps, self.stream if self.dist.is_root else _NullStream(),
                            every=max(cfg.steps // 30, 1),
                            budget=cfg.time_budget, loss_label=self.loss_label())
        session_start = time.perf_counter()
        start_step, seconds_before = self.step, self.seconds
        stopped = "steps"
        with StopRequests() as stop:
            self.model.train()
            agreed = None  # the stop request every rank takes at the same step
            while self.step < until and agreed is None:
                batch = next(self.batches)
                loss = self.train_step(batch)  # a signal only sets stop.requested
                # several ranks: rank 0's clock and stop request, so all take the same
                # budget and signal decisions at the same step (the others block signals).
                # The request is read, never written back: a signal landing between the
                # read and an assignment would be erased, and the run would go on.
                self.seconds, agreed = self.dist.agree(
                    seconds_before + time.perf_counter() - session_start, stop.requested)
                progress.update(self.step, loss, self.optimizer.lr, batch.n_tgt_tokens,
                                self.step - start_step, seconds=self.seconds)
                if agreed is not None:
                    if stop.requested is None:  # rank 0's signal, on another rank
                        stop.requested = agreed
                    break
                if (cfg.eval_every and self.step % cfg.eval_every == 0 and self.step < until
                        and self.dist.is_root):
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
                    progress.message(f"time budget of {cfg.time_budget:g} s reached at step "
                                     f"{self.step} of {cfg.steps}: stopping")
                    break
            if agreed is not None:
                stopped = "interrupted"
                progress.message(f"interrupted ({stop.name}) after step {self.step}: "
                                 + ("saving" if self.out_dir else "nothing to save to"))
            if self.out_dir and self._saved_step != self.step:
                self.save()  # a signal now waits for the file
            if stop.requested is not None:  # (also one that came during the save)
                stopped = "interrupted"
        result = {"task": cfg.task, "model": cfg.model, "steps": self.step,
                  "seconds": round(self.seconds, 2), "stopped_by": stopped}
        if stopped == "interrupted":
            result["signal"] = stop.name
            progress.message("test evaluation skipped (interrupted)")
            return result
        if not self.dist.is_root:  # rank 0 evaluates
            return result
        try:
            test = self.evaluate("test", None, n_examples_shown=5)
        except KeyboardInterrupt:  # the checkpoint is saved: only the evaluation is lost
            progress.message("test evaluation interrupted (SIGINT)")
            return {**result, "stopped_by": "interrupted", "signal": "SIGINT"}
        progress.message(self._metrics_line("test", test))
        for line in self.example_lines(test):
            progress.message(line)
        return {**result, **test.to_json()}

    def example_input(self) -> str:
        """An input to show in the suggested ``decode`` command."""
        pairs = self.task.valid or self.task.train
        return pairs[0][0] if pairs else "..."

    def end_lines(self, result: dict, prog: str = "numtransformer") -> list[str]:
        """What the end of a run says: where it saved, why it stopped, what to run next."""
        cfg, step = self.cfg, result.get("steps", self.step)
        why = result.get("stopped_by", "steps")
        if why == "interrupted":
            name = result.get("signal") or "SIGINT"
            code = exit_status(getattr(signal, name, signal.SIGINT))
            reason = f"interrupted by {name} at step {step} of {cfg.steps} (exit status {code})"
        elif why == "time budget":
            reason = (f"time budget of {cfg.time_budget:g} s reached at step {step} of "
                      f"{cfg.steps}")
        else:
            reason = f"{step} steps reached" + (f" of {cfg.steps}" if step < cfg.steps else "")
        if not self.out_dir:
            return [f"stopped: {reason}", "saved: nothing (no output directory)"]
        out = shlex.quote(self.out_dir)
        lines = [f"stopped: {reason}",
                 f"saved: {os.path.join(self.out_dir, CHECKPOINT)} (step {self._saved_step})",
                 "next:",
                 f"  {prog} decode --checkpoint {out} {shlex.quote(self.example_input())}",
                 f"  {prog} eval --checkpoint {out}"]
        ranks = f" --nproc {cfg.nproc}" if cfg.nproc > 1 else ""
        if step < cfg.steps:
            lines.append(f"  {prog} train --out {out} --resume{ranks}           (on to step "
                         f"{cfg.steps})")
        else:
            more = f"  {prog} train --out {out} --resume{ranks} --steps {2 * cfg.steps}"
            if cfg.schedule == "warmup_cosine":
                more += "   (more steps stretch the cosine schedule)"
            lines.append(more)
        return lines

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
        self._check_split(split)
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
                raise UserError("this model has no attention to draw (decoder 'none')")
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
        """Write the run's checkpoint (default: ``out_dir/checkpoint.npz``), verified
        before it replaces the previous one (``save_checkpoint``); a file that
        cannot be written or verified stops the run with a ``TrainingError``
        naming what happened, and the previous checkpoint stays."""
        path = path or os.path.join(self.out_dir, CHECKPOINT)
        if not self.dist.is_root:  # rank 0 alone writes checkpoints
            return path
        config = {"kind": "seq2seq-training-run", "train": self.cfg.to_json(),
                  "model_class": type(self.model).__name__,
                  "model_config": self.model.config,
                  "src_vocab": self.src_tok.to_json(), "tgt_vocab": self.tgt_tok.to_json()}
        if self.data_record:
            directory = os.path.dirname(os.path.abspath(path))
            try:
                self._store_data(directory)
            except OSError as exc:
                raise TrainingError(f"step {self.step}: could not keep the corpus in "
                                    f"{directory!r}: {exc}; stopping") from None
            config["data"] = self.data_record
        meta = {"step": self.step, "seconds": self.seconds,
                "rng": rng_states(self.model, self._rng_extra()),
                "data": self.batches.state_dict(), "history": self.history}
        step = self.step

        def verify(ck):  # what from_checkpoint will insist on
            made = int(ck.optim["step_count"])
            if made != step or ck.meta.get("step") != step:
                raise ValueError(f"the optimizer made {made} steps, the run "
                                 f"{ck.meta.get('step')}, expected {step}")

        try:
            save_checkpoint(path, self.model, config, meta, self.optimizer, verify=verify)
        except NonFiniteParameters as exc:  # the last good checkpoint is left as it was
            raise TrainingError(f"the parameters became NaN/inf by step {self.step} ({exc}); "
                                f"stopping (the last checkpoint is intact)") from None
        except CheckpointNotSaved as exc:
            kept = (f" (step {self._saved_step})" if self._saved_step is not None
                    and str(exc).endswith("is kept") and self._is_run_path(path) else "")
            raise TrainingError(f"step {self.step}: {exc}{kept}; stopping") from None
        if self._is_run_path(path):
            self._saved_step = self.step
        return path

    def _is_run_path(self, path: str) -> bool:
        return bool(self.out_dir) and os.path.abspath(path) == os.path.abspath(
            os.path.join(self.out_dir, CHECKPOINT))

    @classmethod
    def resume(cls, out_dir: str, log=print, stream=None, **overrides) -> "Trainer":
        """Continue the run saved in ``out_dir`` (``overrides``: e.g. more steps).
        ``Trainer.resume`` returns the trainer of the run's model kind."""
        path = os.path.join(out_dir, CHECKPOINT)
        trainer = cls.from_checkpoint(path, log=log, stream=stream, _resuming=True, **overrides)
        trainer.out_dir = out_dir
        trainer._saved_step = trainer.step
        trainer._claim(out_dir, fresh=False)
        return trainer

    @classmethod
    def from_checkpoint(cls, path: str, log=print, stream=None, _resuming: bool = False,
                        **overrides) -> "Trainer":
        """The run saved at ``path``, restored (``Trainer.from_checkpoint``: by the
        trainer of its model kind).  A run on a file reads the data kept in its
        directory (``rundir``), so it works after the corpus moved; resuming one
        whose directory keeps only splits needs the corpus at its recorded path."""
        ck, cfg = restored_config(path, overrides)
        record = ck.config.get("data")
        source = _data_source(path, ck, cfg, record, _resuming, log)
        try:  # Trainer.from_checkpoint: the trainer of the run's kind
            klass = trainer_class(cfg.model) if cls is Trainer else cls
            trainer = klass(cfg, out_dir=None, log=log, stream=stream, _restoring=True,
                            _source=source)
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
                missing = [n for n, _ in opt.trainable() if n not in opt.state[kind]]
                if missing:  # a lazily re-created zero moment would break the exact resume
                    raise ValueError(f"optimizer state {kind!r} is missing for {missing[:3]}")
            set_rng_states(trainer.model, ck.meta["rng"], trainer._rng_extra())
            if "splits" not in source:  # (kept splits: evaluation only, no batches)
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
            trainer.data_record = record if isinstance(record, dict) else None
            if trainer.data_record is None and _resuming:  # a run from before records:
                trainer.data_record = data_record(cfg.task)  # self-contained from now on
            if source.get("record") is not None:
                trainer.data_record = source["record"]
        except (ValueError, KeyError, TypeError) as exc:
            raise CheckpointError(f"checkpoint {path!r} does not fit this model: "
                                  f"{type(exc).__name__}: {exc}") from exc
        return trainer


def restored_config(path: str, overrides: dict):
    """(checkpoint, TrainConfig) of the training run saved at ``path``, its
    settings with ``overrides`` (None values left out) applied and checked, sizes
    included, before any data or model is built from them.  Raises
    CheckpointError naming the file."""
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
    _check_sizes(cfg, ck, path)
    return ck, cfg


def _data_source(path: str, ck, cfg: TrainConfig, record, resuming: bool, log) -> dict:
    """Where a restored run on a file reads its data (``Trainer``'s ``_source``):
    the copy in its directory, the original file, or the kept splits; {} for a
    run that records no file (another task, or a checkpoint from before records)."""
    if not isinstance(record, dict) or not corpus_file(cfg.task):
        return {}
    for key, kind in (("path", str), ("size", int), ("sha256", str), ("stored", str),
                      ("task", str)):
        if not isinstance(record.get(key), kind):
            raise CheckpointError(f"checkpoint {path!r}: its data record has no valid {key!r}")
    where = describe_record(record)
    if cfg.task != record["task"]:  # --task given again: the corpus moved there
        new = corpus_file(cfg.task)
        if not os.path.isfile(new) or fingerprint(new) != {"size": record["size"],
                                                           "sha256": record["sha256"]}:
            raise CheckpointError(f"{cfg.task!r} is not the corpus of this run, {where}")
        return {"file": os.path.abspath(new),
                "record": dict(record, task=cfg.task, path=os.path.abspath(new))}
    directory = os.path.dirname(os.path.abspath(path))
    kept = stored_file(directory, record)
    if record["stored"] == "copy":
        if kept is not None:
            if resuming and not original_matches(record):
                log(f"note: the corpus of this run, {where}, has moved or changed; resuming "
                    f"on the copy kept in {directory!r}")
            return {"file": kept}
        if original_matches(record):
            return {"file": record["path"]}
        raise CheckpointError(f"checkpoint {path!r}: its corpus copy {record.get('file')!r} "
                              f"is missing or changed, and the corpus {where} is not at its "
                              f"recorded path either")
    if resuming or kept is None:  # kept splits serve evaluation, not training
        if original_matches(record):
            return {"file": record["path"]}
        what = ("--resume needs the corpus of this run" if resuming else
                f"checkpoint {path!r}: its kept splits are missing or changed, and so is "
                f"the corpus")
        raise CheckpointError(f"{what}, {where}, which is missing or changed (this run "
                              f"directory keeps only its valid and test splits); put it back "
                              f"or pass --task {record['task'].split(':', 1)[0]}:NEWPATH")
    try:
        splits = read_splits(kept)
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"checkpoint {path!r}: its kept splits {kept!r} are unreadable: "
                              f"{exc}") from None
    return {"splits": splits, "vocab": (ck.config.get("src_vocab"), ck.config.get("tgt_vocab"))}


def _quiet(*args, **kwargs) -> None:
    """The log of a rank other than 0."""


class _NullStream:
    """The progress stream of a rank other than 0."""

    def write(self, text):
        return len(text)

    def flush(self):
        pass

    def isatty(self):
        return False


def _trainer_classes() -> set:
    return {trainer_class(name) for name in registry.names(train_config=True)}
