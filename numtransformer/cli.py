"""Command line: ``numtransformer <command>`` or ``python -m numtransformer <command>``.

    numtransformer train     train a model on a built-in task (no arguments: the
                             default run, a small Transformer on date normalisation)
    numtransformer eval      evaluate a saved run
    numtransformer decode    translate inputs with a saved run (greedy or beam)
    numtransformer trace     print every named intermediate of one forward pass
    numtransformer embed     sentence embeddings with a pretrained encoder (MiniLM)
    numtransformer gradcheck check every layer's backward against finite differences

User mistakes (an unknown task, a missing file, a checkpoint of another kind,
bad sizes) end with one clear line on stderr and exit status 2: they are raised
as ``UserError`` (``numtransformer.train.errors``) where the input is checked
(argparse types, ``TrainConfig``'s checks, file checks), or as a
``CheckpointError`` / ``TrainingError``.  Any other exception is a failure
inside the library and shows its traceback.

``train``'s flags are derived from ``TrainConfig``'s fields, and its ``--model``
choices from ``numtransformer.models.registry``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

from .models import registry
from .train.config import Range, TrainConfig
from .train.errors import UserError


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage mistake is one line (the usage stays behind --help)."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _ranged(kind, lo, *, strict=False, hi=None):
    """An argparse type: ``kind`` (int or float), >= lo (> lo if strict), < hi if given."""
    return _range_type(Range(kind, lo, strict=strict, hi=hi))


def _range_type(rng: Range):
    """An argparse type for the values of ``rng`` (its messages name the range)."""
    def parse(text):
        return rng.parse(text)

    parse.__name__ = rng.kind.__name__  # argparse names the type in its messages
    return parse


POSITIVE = _ranged(int, 1)
NONNEGATIVE = _ranged(int, 0)
POSITIVE_FLOAT = _ranged(float, 0, strict=True)
NONNEGATIVE_FLOAT = _ranged(float, 0)
FRACTION = _ranged(float, 0, hi=1)


# -- gradcheck ------------------------------------------------------------------------------
def _cmd_gradcheck(args) -> int:
    from .selfcheck import run_all

    start = time.perf_counter()
    results = run_all(seed=args.seed, threshold=args.threshold, only=args.only)
    if not results:
        raise UserError(f"no layer matches {args.only!r}")
    if args.markdown:
        print("| layer | tensors | worst max rel. error |\n|---|---|---|")
        for name, report in results:
            mark = "" if report.passed else " FAIL"
            print(f"| {name} | {len(report.tensors)} | {report.max_error:.1e}{mark} |")
        return 0 if all(r.passed for _, r in results) else 1
    rows = [("layer", "tensor", "max rel error", "pass")]
    failed = []
    for name, report in results:
        for t in report.tensors:
            ok = t.error <= report.threshold
            rows.append((name, t.name, f"{t.error:.2e}" + (" *" if t.floored else ""),
                         "ok" if ok else "FAIL"))
        for problem in report.problems:
            rows.append((name, problem, "-", "FAIL"))
        if not report.passed:
            failed.append(name)
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    for k, row in enumerate(rows):
        print("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip())
        if k == 0:
            print("  ".join("-" * w for w in widths))
    worst = max(report.max_error for _, report in results)
    elapsed = time.perf_counter() - start
    print(f"\n{len(results)} layers, {len(rows) - 1} tensors, float64, worst error {worst:.2e} "
          f"(threshold {args.threshold:.0e}), {elapsed:.1f} s")
    if any(t.floored for _, r in results for t in r.tensors):
        print("* exact gradient ~ 0: judged against the finite differences' measured noise")
    if failed:
        print("FAILED: " + ", ".join(failed))
        return 1
    print("all passed")
    return 0


# -- train / eval / decode --------------------------------------------------------------------
def _train_overrides(args) -> dict:
    """The TrainConfig settings given on the command line (unset flags are None: "keep
    the config's value")."""
    return {f.name: getattr(args, f.name) for f in TrainConfig.settings()
            if f.metadata.get("flag") is not None and getattr(args, f.name, None) is not None}


def _checkpoint_path(path: str) -> str:
    from .train import CHECKPOINT

    if os.path.isdir(path):
        path = os.path.join(path, CHECKPOINT)
    if not os.path.exists(path):
        raise UserError(f"no checkpoint at {path!r}")
    return path


# --model lm's defaults where they differ from TrainConfig's (the registry holds them)
LM_DEFAULTS = dict(registry.get("lm").defaults)

_SEQ2SEQ_TASKS = ("dates", "copy", "reverse", "sort", "addition")


def _task_name(value: str) -> str:
    """--task: a built-in seq2seq task, babi:N for a bAbI-style task (memnn), or
    text:NAME / text:PATH for a language model."""
    if (value in _SEQ2SEQ_TASKS or value == "g2p" or value.startswith("tsv:")
            or value.startswith("text:")):
        return value
    from .data.babi import BABI_TASKS

    number = value.split(":", 1)[1] if value.startswith("babi:") else ""
    if number.isdigit() and int(number) in BABI_TASKS:
        return value
    raise argparse.ArgumentTypeError(
        f"unknown task {value!r}; expected {', '.join(_SEQ2SEQ_TASKS)}, g2p, tsv:PATH, "
        f"text:hamlet, text:PATH or babi:N with N in "
        f"{', '.join(map(str, sorted(BABI_TASKS)))}")


def _cmd_train_memnn(args, kind) -> int:
    """A kind whose trainer is a function with its own options (memnn: train_memnn)."""
    from .memnn_train import save_memnn
    from .train.loop import resolve_trainer

    task = args.task or kind.default_task
    if not task.startswith(kind.task_prefix) or args.model not in (None, kind.name):
        raise UserError("bAbI tasks (--task babi:N) are trained by --model memnn, and "
                        "--model memnn trains only on them")
    if args.resume:
        raise UserError("--resume is not supported for --model memnn (a run takes about a "
                        "minute: train it again)")
    if args.out and os.path.exists(os.path.join(args.out, "checkpoint.npz")):
        raise UserError(f"{args.out!r} already holds a checkpoint; choose another --out")
    given = {keyword: getattr(args, dest) for dest, keyword in kind.keywords.items()}
    given.update({o.keyword or o.flag: getattr(args, o.flag) for o in kind.options})
    options = {k: v for k, v in given.items() if v is not None}
    stream = sys.stderr if args.json else sys.stdout
    train = resolve_trainer(kind.trainer)  # train_memnn
    result = train(int(task.split(":", 1)[1]),
                   log=lambda line: print(line, file=stream, flush=True), **options)
    metrics = {k: v for k, v in result.items() if k not in ("model", "data", "config")}
    # the keys every train --json line has; the answer is one word, so token accuracy and
    # exact match are both the fraction of questions answered right
    metrics.update(task=task, model="memnn", loss=result["test_loss"],
                   token_accuracy=1 - result["test_error"],
                   exact_match=1 - result["test_error"])
    if args.out:
        save_memnn(os.path.join(args.out, "checkpoint.npz"), result)
        metrics["out"] = args.out
    if args.json:
        print(json.dumps(metrics))
    return 0


def _cmd_train(args) -> int:
    from .train import Trainer, make_trainer

    for kind in (registry.get(args.model) if args.model else None,
                 registry.kind_for_task(args.task)):
        if kind is not None and not kind.train_config:  # trained by its own function
            return _cmd_train_memnn(args, kind)

    overrides = _train_overrides(args)
    if not args.resume:  # a kind and its tasks go together: either implies the other
        implied = registry.kind_for_task(overrides.get("task"))
        if "model" not in overrides and implied is not None:
            overrides["model"] = implied.name
        kind = registry.get(overrides.get("model", registry.DEFAULT))
        if "task" not in overrides and kind.default_task:
            overrides["task"] = kind.default_task
        overrides = {**kind.defaults, **overrides}  # the kind's defaults, then the flags
    if args.resume:
        if not args.out:
            raise UserError("--resume needs --out DIR, the run to continue")
        trainer = Trainer.resume(args.out, **overrides)
        print(f"resuming {args.out} at step {trainer.step} of {trainer.cfg.steps}",
              file=sys.stderr if args.json else sys.stdout)
    else:
        cfg = TrainConfig(**overrides)
        out = args.out or os.path.join(
            "runs", f"{cfg.task}-{cfg.model}-{time.strftime('%Y%m%d-%H%M%S')}")
        trainer = make_trainer(cfg, out_dir=out)
        n_params = trainer.model.num_parameters()
        info = (f"training a {cfg.model} ({n_params:,} parameters, {cfg.dtype}) on {cfg.task}: "
                f"{trainer.describe_data()}, {cfg.steps} steps of {cfg.batch_size}; "
                f"saving to {out}")
        print(info, file=sys.stderr if args.json else sys.stdout)
    stream = sys.stderr if args.json else sys.stdout
    trainer.stream = stream
    try:
        metrics = trainer.fit()
    finally:
        trainer.close()
    metrics["out"] = trainer.out_dir
    if args.json:
        print(json.dumps(metrics))
    return 0


def _run_kind(path: str) -> str | None:
    from .checkpoint import load_checkpoint

    return load_checkpoint(path).config.get("kind")


def _cmd_eval_memnn(args, path) -> int:
    from .data.babi import encode_babi
    from .memnn_train import evaluate_memnn, load_memnn

    if args.beam != 1:
        raise UserError("--beam applies to sequence outputs; a memory network answers one word")
    model, data, cfg = load_memnn(path)
    examples = getattr(data, args.split)[:args.limit]
    start = time.perf_counter()
    loss, error = evaluate_memnn(model, encode_babi(examples, data.tokenizer, cfg["memory_size"]),
                                 linear_start=cfg["linear_start"])
    result = {"task": f"babi:{cfg['task']}", "model": "memnn", "split": args.split,
              "seconds": round(time.perf_counter() - start, 2), "loss": loss,
              "token_accuracy": 1 - error, "exact_match": 1 - error, "error_rate": error,
              "n": len(examples)}
    if args.json:
        print(json.dumps(result))
    else:
        print(f"babi:{cfg['task']} / memnn, {args.split} split ({len(examples)} questions):\n"
              f"  loss {loss:.4f}  answer accuracy {100 * (1 - error):.2f}%  error "
              f"{100 * error:.2f}%")
    return 0


def _cmd_eval(args) -> int:
    from .memnn_train import MEMNN_RUN
    from .train import Trainer

    path = _checkpoint_path(args.checkpoint)
    if _run_kind(path) == MEMNN_RUN:
        return _cmd_eval_memnn(args, path)
    trainer = Trainer.from_checkpoint(path)
    start = time.perf_counter()
    m = trainer.evaluate(args.split, args.limit, n_examples_shown=0 if args.json else 5,
                         beam=args.beam)
    result = {"task": trainer.cfg.task, "model": trainer.cfg.model, "steps": trainer.step,
              "split": args.split, "beam": args.beam,
              "seconds": round(time.perf_counter() - start, 2), **m.to_json()}
    if args.json:
        print(json.dumps(result))
        return 0
    print(f"{trainer.cfg.task} / {trainer.cfg.model} after {trainer.step} steps, {args.split} "
          f"split, {'beam ' + str(args.beam) if args.beam > 1 else 'greedy'}:")
    line = (f"  loss {m.loss:.4f}  perplexity {m.perplexity:.3f}  token accuracy "
            f"{100 * m.token_accuracy:.2f}%")
    if m.exact_match is not None:
        line += f"  exact match {100 * m.exact_match:.2f}%"
    if m.error_rate is not None:
        line += f"  error rate {100 * m.error_rate:.2f}%"
    if m.bits_per_char is not None:
        line += f"  bits/char {m.bits_per_char:.3f}"
    print(line)
    if m.bleu is not None:
        print(f"  BLEU {m.bleu:.2f}  ({m.bleu_signature})")
    for example in trainer.example_lines(m):
        print(example)
    return 0


def _cmd_decode(args) -> int:
    from .train import LMTrainer, Trainer

    inputs = list(args.text)
    if args.input_file:
        if not os.path.exists(args.input_file):
            raise UserError(f"no such file: {args.input_file!r}")
        with open(args.input_file, encoding="utf-8") as f:
            inputs += [line.rstrip("\n") for line in f]
    if not inputs:
        raise UserError("nothing to decode: give TEXT arguments or --input-file")
    trainer = Trainer.from_checkpoint(_checkpoint_path(args.checkpoint))
    lm = isinstance(trainer, LMTrainer)
    if not lm and (args.temperature is not None or args.top_k is not None):
        raise UserError("--temperature and --top-k sample from a language model (--model lm "
                        "runs); sequence-to-sequence runs decode greedily or with --beam")
    if lm:
        if args.beam != 1:
            raise UserError("--beam applies to sequence-to-sequence runs; a language model "
                            "continues each prompt (greedy with --temperature 0)")
        max_len = 300 if args.max_len is None else args.max_len
        temperature = 0.8 if args.temperature is None else args.temperature
        outputs = trainer.generate(inputs, max_len, temperature=temperature, top_k=args.top_k,
                                   seed=args.seed)
        outputs = [o.replace("\n", "\\n") if args.input_file else o for o in outputs]
    else:
        empty = [i + 1 for i, text in enumerate(inputs) if not text]
        if empty:
            raise UserError(f"input {empty[0]} is empty: a sequence-to-sequence run translates "
                            f"a source of at least one token")
        max_len = 64 if args.max_len is None else args.max_len
        outputs = trainer.translate(inputs, beam=args.beam, max_len=max_len)
    for inp, out in zip(inputs, outputs):
        print(inp + out if lm and not args.input_file else out)
    if args.attention:
        from .plotting import plot_attention

        if lm:  # the causal self-attention over the prompt and what followed it
            src, w = trainer.self_attention(inputs[0] + outputs[0])
            out = src
        else:
            src, out, w = trainer.cross_attention(inputs[0], beam=args.beam, max_len=max_len)
        layer = w.shape[0] - 1 if args.layer is None else args.layer
        if not -w.shape[0] <= layer < w.shape[0]:
            raise UserError(f"--layer {layer}: the model has {w.shape[0]} layers")
        heads = w[layer]
        mats = heads if args.heads else heads.mean(axis=0)
        titles = [f"layer {layer % w.shape[0]}, head {h}" for h in range(len(heads))] \
            if args.heads else None
        try:
            kind = "causal self-attention" if lm else "cross-attention"
            plot_attention(mats, src, out, args.attention, titles=titles,
                           suptitle=f"{kind}: {inputs[0]!r} -> {outputs[0]!r}")
        except ImportError as exc:
            raise UserError(str(exc)) from None
        print(f"attention of {inputs[0]!r} written to {args.attention}", file=sys.stderr)
    return 0


def _cmd_trace(args) -> int:
    import numpy as np

    from .data import make_batch
    from .trace import reference_forward, trace_lines
    from .train import LMTrainer, Trainer

    if args.checkpoint:
        trainer = Trainer.from_checkpoint(_checkpoint_path(args.checkpoint))
    else:  # a tiny fresh model: the point is the shapes and names, not the values
        cfg = TrainConfig(task="dates", n_train=50, n_valid=1, n_test=1, d_model=8, nhead=2,
                          layers=1, dim_feedforward=16, dropout=0.0, seed=args.seed)
        trainer = Trainer(cfg)
    model = trainer.model.eval()
    if isinstance(trainer, LMTrainer):
        source = args.text if args.text is not None else trainer.task.train[:32]
        ids = np.array([trainer.tgt_tok.encode(source)[-trainer.cfg.context:]])
        if ids.size == 0:
            raise UserError("--text is empty")
        logits, cache = reference_forward(model, ids)
        title, header, predicted = repr(source), f"ids {ids[0].tolist()}", "next-character"
    else:
        source = args.text if args.text is not None else trainer.task.train[0][0]
        if not source:
            raise UserError("--text is empty")
        reference = trainer.task.train[0][1] if args.text is None else ""
        batch = make_batch([(trainer.src_tok.encode(source),
                             trainer.tgt_tok.encode(reference))])
        logits, cache = reference_forward(model, batch.src, batch.tgt_in)
        title = repr(source) + (f" (teacher-forced target {reference!r})" if reference else "")
        header = f"src_ids {batch.src[0].tolist()}  tgt_in_ids {batch.tgt_in[0].tolist()}"
        predicted = "next-token"
    print(f"trace of {type(model).__name__}.forward on {title}")
    print(header)
    print(f"every cache field, in the order computed ({model.num_parameters():,} parameters, "
          f"{np.dtype(trainer.cfg.dtype)}):\n")
    for line in trace_lines(cache, n_values=args.values):
        print(line)
    print(f"\nlogits {logits.shape}: {predicted} argmax {logits[0].argmax(-1).tolist()}")
    return 0


# -- the parser --------------------------------------------------------------------------------
def _model_help() -> str:
    return "; ".join(f"{k.name}: {k.summary}" + (" (default)" if k.name == registry.DEFAULT else "")
                     for k in registry.kinds())


_FLAG_TYPES = {"task": _task_name}  # settings whose command-line value the CLI checks itself


def _add_train_flags(p) -> None:
    """One flag per TrainConfig setting (its range or choices, its help), then the
    options of the model kinds not run by a TrainConfig (memnn's --hops ...).  Every
    flag defaults to None: "keep the config's value"."""
    for f in TrainConfig.settings():
        meta = f.metadata
        if meta.get("flag") is None:
            continue
        kwargs = {"dest": f.name, "default": None}
        if f.type == "bool":
            kwargs.update(action="store_const", const=True)
        elif f.name in _FLAG_TYPES:
            kwargs["type"] = _FLAG_TYPES[f.name]
        elif meta.get("range") is not None:
            kwargs["type"] = _range_type(meta["range"])
        choices = meta.get("choices")
        if choices is not None:
            kwargs["choices"] = list(choices() if callable(choices) else choices)
        help_text = _model_help() if f.name == "model" else meta.get("help")
        if help_text:
            kwargs["help"] = help_text.format(default=f.default)
        flag = meta["flag"] or f.name
        if meta.get("metavar") or "choices" not in kwargs and "action" not in kwargs:
            kwargs["metavar"] = meta.get("metavar") or flag.upper()
        p.add_argument("--" + flag.replace("_", "-"), **kwargs)
    for kind in registry.kinds():
        for o in kind.options:
            kwargs = {"help": o.help}
            if o.choices is not None:
                kwargs["choices"] = list(o.choices)
            else:
                kwargs["type"] = _range_type(Range(o.type, o.lo))
            p.add_argument("--" + o.flag.replace("_", "-"), **kwargs)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="numtransformer",
        description="Attention models in NumPy with hand-written backward passes.",
    )
    sub = parser.add_subparsers(dest="command", metavar="command")

    p = sub.add_parser("train", help="train a model (no arguments: the default dates run)",
                       description="Train a sequence-to-sequence model on a built-in task "
                       "or corpus, a memory network on bAbI, or a character language model "
                       "on a text. "
                       "Unset options keep the defaults of TrainConfig (or, with --resume, "
                       "the saved run's values).")
    _add_train_flags(p)
    p.add_argument("--out", metavar="DIR", help="run directory (default runs/<task>-<model>-<time>)")
    p.add_argument("--resume", action="store_true", help="continue the run saved in --out")
    p.add_argument("--json", action="store_true",
                   help="end with one line of JSON holding the final metrics")
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("eval", help="evaluate a saved run")
    p.add_argument("--checkpoint", required=True, metavar="DIR_OR_FILE")
    p.add_argument("--split", default="test", choices=["train", "valid", "test"])
    p.add_argument("--limit", type=POSITIVE, help="evaluate only the first N pairs")
    p.add_argument("--beam", type=POSITIVE, default=1, help="beam size (1: greedy)")
    p.add_argument("--json", action="store_true", help="print one line of JSON")
    p.set_defaults(func=_cmd_eval)

    p = sub.add_parser("decode", help="decode inputs with a saved run")
    p.add_argument("text", nargs="*", help="inputs to decode")
    p.add_argument("--checkpoint", required=True, metavar="DIR_OR_FILE")
    p.add_argument("--input-file", metavar="F", help="one input per line; one output per line")
    p.add_argument("--beam", type=POSITIVE, default=1, help="beam size (1: greedy)")
    p.add_argument("--max-len", type=POSITIVE, default=None,
                   help="longest output (default 64); lm: characters to generate (default 300)")
    p.add_argument("--temperature", type=NONNEGATIVE_FLOAT, default=None,
                   help="lm: sampling temperature (default 0.8; 0: greedy)")
    p.add_argument("--top-k", type=POSITIVE, default=None, help="lm: sample from the k likeliest")
    p.add_argument("--seed", type=NONNEGATIVE, default=0, help="lm: sampling seed")
    p.add_argument("--attention", metavar="OUT.png",
                   help="draw the cross-attention of the first input (lm: the causal "
                   "self-attention over prompt and continuation; needs matplotlib)")
    p.add_argument("--layer", type=NONNEGATIVE, help="decoder layer to draw (default: the last)")
    p.add_argument("--heads", action="store_true", help="draw each head, not their mean")
    p.set_defaults(func=_cmd_decode)

    from .pretrained.embed import add_embed_arguments, run_embed

    p = sub.add_parser("embed", help="sentence embeddings and cosine similarities "
                       "(all-MiniLM-L6-v2 in NumPy)")
    add_embed_arguments(p)
    p.set_defaults(func=run_embed)

    p = sub.add_parser("trace", help="print every named intermediate of one forward pass")
    p.add_argument("--checkpoint", metavar="DIR_OR_FILE",
                   help="a saved run (default: a tiny fresh Transformer on a date)")
    p.add_argument("--text", help="the source to trace (default: a training example)")
    p.add_argument("--values", type=NONNEGATIVE, default=4, help="values shown per array")
    p.add_argument("--seed", type=NONNEGATIVE, default=0)
    p.set_defaults(func=_cmd_trace)

    p = sub.add_parser("gradcheck", help="check every layer's backward against finite differences")
    p.add_argument("--seed", type=NONNEGATIVE, default=0, help="random seed for the inputs, parameters and G "
                   "(each case's sizes are fixed)")
    p.add_argument("--threshold", type=POSITIVE_FLOAT, default=1e-7,
                   help="max relative error allowed (default 1e-7)")
    p.add_argument("--only", metavar="NAME", default=None,
                   help="check only layers whose name contains NAME")
    p.add_argument("--markdown", action="store_true",
                   help="print one Markdown row per layer (its worst tensor) instead")
    p.set_defaults(func=_cmd_gradcheck)
    return parser


def main(argv=None) -> int:
    from .checkpoint import CheckpointError
    from .train import TrainingError

    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return args.func(args)
    except BrokenPipeError:  # output piped into `head` and the like: stop quietly
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
    except (UserError, CheckpointError, TrainingError) as exc:
        # a mistake in what was asked (raised where the input is checked), a file that
        # is not a usable run, a run that cannot go on: one line.  Anything else is a
        # failure inside the library and shows its traceback.
        print(f"numtransformer {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
