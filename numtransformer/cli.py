"""Command line: ``numtransformer <command>`` or ``python -m numtransformer <command>``.

    numtransformer train     train a model on a built-in task (no arguments: the
                             default run, a small Transformer on date normalisation)
    numtransformer eval      evaluate a saved run
    numtransformer decode    translate inputs with a saved run (greedy or beam)
    numtransformer trace     print every named intermediate of one forward pass
    numtransformer embed     sentence embeddings with a pretrained encoder (MiniLM)
    numtransformer generate  continue a text with SmolLM2-135M-Instruct
    numtransformer chat      chat with SmolLM2-135M-Instruct (ChatML)
    numtransformer finetune  LoRA fine-tuning of SmolLM2-135M-Instruct
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
class _Progress:
    """``progress(k, n, name)`` for a long loop, on ``stream``: a counter rewritten in
    place on a terminal; in a log, a line each time the layer family (the name before
    its parenthesis) changes, so a log shows where the time went."""

    def __init__(self, command: str, stream):
        self.command, self.stream = command, stream
        self.tty = hasattr(stream, "isatty") and stream.isatty()
        self.family = None
        self.width = 0

    def __call__(self, k: int, n: int, name: str) -> None:
        if self.tty:
            line = f"{self.command}: {k}/{n} {name}"
            self.stream.write("\r" + line.ljust(self.width))
            self.width = len(line)
        else:
            family = name.split("(", 1)[0]
            if family == self.family:
                return
            self.family = family
            self.stream.write(f"{self.command}: {k}/{n} {family}\n")
        self.stream.flush()

    def done(self) -> None:
        """Clear the counter (a terminal) before the results are printed."""
        if self.tty and self.width:
            self.stream.write("\r" + " " * self.width + "\r")
            self.stream.flush()


def _cmd_gradcheck(args) -> int:
    from .selfcheck import run_all

    start = time.perf_counter()
    progress = _Progress("gradcheck", sys.stderr)
    results = run_all(seed=args.seed, threshold=args.threshold, only=args.only,
                      progress=progress)
    progress.done()
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
    import shlex

    from .memnn_train import save_memnn
    from .train.loop import resolve_trainer

    task = args.task or kind.default_task
    if not task.startswith(kind.task_prefix) or args.model not in (None, kind.name):
        raise UserError("bAbI tasks (--task babi:N) are trained by --model memnn, and "
                        "--model memnn trains only on them")
    if args.resume:
        raise UserError("--resume is not supported for --model memnn (a run takes about a "
                        "minute: train it again)")
    # without --out, a run directory named like every other run's (runs/babi1-memnn-<time>),
    # so that `eval --checkpoint DIR` can read it: a run is never trained for nothing
    from .train.rundir import default_run_dir

    out = args.out or default_run_dir(task, kind.name)
    if os.path.exists(os.path.join(out, "checkpoint.npz")):
        raise UserError(f"{out!r} already holds a checkpoint; choose another --out")
    given = {keyword: getattr(args, dest) for dest, keyword in kind.keywords.items()}
    given.update({o.keyword or o.flag: getattr(args, o.flag) for o in kind.options})
    options = {k: v for k, v in given.items() if v is not None}
    stream = sys.stderr if args.json else sys.stdout
    train = resolve_trainer(kind.trainer)  # train_memnn
    try:
        result = train(int(task.split(":", 1)[1]),
                       log=lambda line: print(line, file=stream, flush=True), **options)
    except KeyboardInterrupt:  # a memnn run keeps its best model in memory: nothing to save
        print("interrupted: nothing saved (a memnn run is not resumable; it takes about a "
              "minute: train it again)", file=sys.stderr)
        return 130
    metrics = {k: v for k, v in result.items() if k not in ("model", "data", "config")}
    # the keys every train --json line has; the answer is one word, so token accuracy and
    # exact match are both the fraction of questions answered right
    metrics.update(task=task, model="memnn", loss=result["test_loss"],
                   token_accuracy=1 - result["test_error"],
                   exact_match=1 - result["test_error"])
    path = os.path.join(out, "checkpoint.npz")
    save_memnn(path, result)
    metrics["out"] = out
    quoted = shlex.quote(out)
    for line in (f"stopped: {result['epochs']} epochs ({result['steps']} steps) reached",
                 f"saved: {path} (the best model by validation error, epoch "
                 f"{result['best_epoch']})",
                 "next:", f"  numtransformer eval --checkpoint {quoted}",
                 f"  numtransformer eval --checkpoint {quoted} --split valid"):
        print(line, file=stream)
    if args.json:
        print(json.dumps(metrics))
    return 0


def _cmd_train(args) -> int:
    from .train import Trainer, make_trainer
    from .train.rundir import default_run_dir

    for kind in (registry.get(args.model) if args.model else None,
                 registry.kind_for_task(args.task)):
        if kind is not None and not kind.train_config:  # trained by its own function
            return _cmd_train_memnn(args, kind)

    from .train.distributed import launched_by_mpi

    if (getattr(args, "nproc", None) or 1) > 1 and not launched_by_mpi():
        return _train_under_mpiexec(args)  # --nproc N: the same command on N ranks
    try:  # (a Ctrl-C while the data is built: before fit took over the signals)
        overrides = _train_overrides(args) if args.resume else _new_run_overrides(args)
        if args.resume:
            if not args.out:
                raise UserError("--resume needs --out DIR, the run to continue")
            trainer = Trainer.resume(args.out, log=lambda line: print(
                line, file=sys.stderr if args.json else sys.stdout), **overrides)
            if trainer.dist.is_root:
                print(f"resuming {args.out} at step {trainer.step} of {trainer.cfg.steps}",
                      file=sys.stderr if args.json else sys.stdout)
        else:
            cfg = TrainConfig(**overrides)
            from .train.sizes import check_fits
            check_fits(cfg)  # a model too large for memory is refused before any allocation
            out = args.out or _same_on_every_rank(default_run_dir(cfg.task, cfg.model))
            trainer = make_trainer(cfg, out_dir=out)
            n_params = trainer.model.num_parameters()
            info = (f"training a {cfg.model} ({n_params:,} parameters, {cfg.dtype}) on "
                    f"{cfg.task}: {trainer.describe_data()}, {cfg.steps} steps of "
                    f"{cfg.batch_size}; saving to {out}")
            if trainer.dist.is_root:
                print(info, file=sys.stderr if args.json else sys.stdout)
    except KeyboardInterrupt:  # before fit took over the signals: nothing to save yet
        print("interrupted before training started: nothing saved", file=sys.stderr)
        return 130
    stream = sys.stderr if args.json else sys.stdout
    trainer.stream = stream
    dist = trainer.dist
    if dist.size > 1:  # which process is which rank: mpiexec names a failed one by its pid
        ranks = ", ".join(f"rank {r} pid {pid} on {host}" for r, (pid, host)
                          in enumerate(dist.pids()))
        if dist.is_root:
            print(f"data-parallel: {dist.size} ranks ({ranks})", file=stream, flush=True)
    try:
        metrics = trainer.fit()
    except BaseException as exc:
        if dist.size > 1:  # say why, then stop every rank (the others wait in an Allreduce)
            print(f"numtransformer train: rank {dist.rank}: {type(exc).__name__}: {exc}; "
                  f"stopping all {dist.size} ranks", file=sys.stderr, flush=True)
            dist.abort(1)
        raise
    finally:
        trainer.close()
    if not dist.is_root:  # rank 0 alone reports
        return 0
    metrics["out"] = trainer.out_dir
    for line in trainer.end_lines(metrics):
        print(line, file=stream)
    if args.json:
        print(json.dumps(metrics))
    if metrics.get("stopped_by") == "interrupted":  # saved: 130 for SIGINT, 143 for SIGTERM
        import signal

        from .train.signals import exit_status

        return exit_status(getattr(signal, metrics.get("signal") or "SIGINT"))
    return 0


def _same_on_every_rank(value):
    """Rank 0's ``value`` on every MPI rank (a default run directory names the time)."""
    from .train.distributed import world

    w = world()
    return value if w.size == 1 else w.comm.bcast(value, root=0)


def _train_command(args) -> list[str]:
    """``numtransformer train`` with the flags ``args`` holds, as a command line."""
    argv = [sys.executable, "-m", "numtransformer", "train"]
    for f in TrainConfig.settings():
        value = getattr(args, f.name, None)
        if f.metadata.get("flag") is None or value is None:
            continue
        flag = "--" + (f.metadata["flag"] or f.name).replace("_", "-")
        argv += [flag] if value is True else [flag, str(value)]
    argv += ["--out", args.out] if args.out else []
    argv += ["--resume"] if args.resume else []
    argv += ["--json"] if args.json else []
    return argv


def _new_run_overrides(args) -> dict:
    """The TrainConfig fields of a new run: the flags over their model kind's
    defaults (a kind and its tasks go together: either implies the other)."""
    overrides = _train_overrides(args)
    implied = registry.kind_for_task(overrides.get("task"))
    if "model" not in overrides and implied is not None:
        overrides["model"] = implied.name
    kind = registry.get(overrides.get("model", registry.DEFAULT))
    if "task" not in overrides and kind.default_task:
        overrides["task"] = kind.default_task
    return {**kind.defaults, **overrides}  # the kind's defaults, then the flags


def _train_under_mpiexec(args) -> int:
    """``train --nproc N``: run the same command under ``mpiexec -n N``, pass its
    output through, and when a rank dies name it (mpiexec names its pid; rank 0
    prints which pid is which rank)."""
    import re
    import subprocess

    from .train.distributed import MPIUnavailable, mpiexec_command
    from .train.rundir import default_run_dir

    if not args.resume:
        # the configuration checked here, once: a mistake is one message, not one per rank
        cfg = TrainConfig(**_new_run_overrides(args))
        from .train.sizes import check_fits
        check_fits(cfg)
        if not args.out:  # every rank must write to one directory
            args.out = default_run_dir(cfg.task, cfg.model)
    else:  # the checkpoint and the settings it resumes with, checked once here too
        if not args.out:
            raise UserError("--resume needs --out DIR, the run to continue")
        from .train import CHECKPOINT
        from .train.loop import restored_config
        restored_config(os.path.join(args.out, CHECKPOINT), _train_overrides(args))
    try:
        command = mpiexec_command(args.nproc, _train_command(args))
    except MPIUnavailable as exc:
        raise UserError(str(exc)) from None
    env = dict(os.environ)
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS"):  # one BLAS thread per rank
        env.setdefault(var, "1")
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, env=env, text=True, bufsize=1)
    ranks, dead, code = {}, None, None
    try:
        for line in proc.stdout:
            sys.stdout.write(line)
            sys.stdout.flush()
            if line.startswith("data-parallel: "):
                ranks = {pid: (int(r), host) for r, pid, host
                         in re.findall(r"rank (\d+) pid (\d+) on (\S+)", line)}
            found = re.search(r"PID (\d+) RUNNING AT", line)
            dead = found.group(1) if found and dead is None else dead
            found = re.search(r"EXIT CODE: (\d+)", line)
            code = found.group(1) if found and code is None else code
    except KeyboardInterrupt:  # mpiexec passes the signal on to the ranks
        pass
    status = proc.wait()
    if status != 0 and dead is not None:
        rank, host = ranks.get(dead, ("?", "?"))
        how = f"signal {code}" if code in ("9", "15", "6", "11") else f"exit code {code}"
        print(f"numtransformer train: rank {rank} (pid {dead} on {host}) ended with {how}; "
              f"mpiexec stopped the other ranks; the last checkpoint in {args.out!r} is "
              f"intact: continue with --resume --nproc {args.nproc}", file=sys.stderr)
    return status if status >= 0 else 128 - status


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
    if m.error_rate is not None and m.error_rate > 1:
        print("  (an error rate above 100%: the outputs are longer than their references, and "
              "every extra token counts as an insertion; see numtransformer eval --help)")
    if m.bleu is not None:
        print(f"  BLEU {m.bleu:.2f}  ({m.bleu_signature})")
    for example in trainer.example_lines(m):
        print(example)
    return 0


def _decode_inputs(args) -> list[tuple[str, str]]:
    """decode's inputs as (where, text): the TEXT arguments ("argument 2"), then the
    lines of --input-file ("in.txt line 3"; "-": standard input)."""
    from ._io import read_lines, source_name

    inputs = [(f"argument {k}", text) for k, text in enumerate(args.text, 1)]
    if args.input_file is not None:
        name = source_name(args.input_file)
        inputs += [(f"{name} line {k}", line)
                   for k, line in enumerate(read_lines(args.input_file, "--input-file"), 1)]
    if not inputs:
        raise UserError("nothing to decode: give TEXT arguments or --input-file F (one input "
                        "per line; - reads standard input)")
    return inputs


MAX_WARNINGS = 10  # decode's warnings about inputs: at most this many lines, then a count


def _screen_inputs(inputs, tokenizer, warn, skipped=": its output line is empty",
                   max_tokens=None) -> list[bool]:
    """Which inputs can be decoded.  A blank input (nothing but spaces), one with no
    token in the vocabulary and one longer than the model reads (``max_tokens``) are
    not: their output line is left empty.  Tokens outside the vocabulary are read as
    <unk>.  Every such input is named in a warning."""
    from .tokens import SPECIALS

    usable, warnings = [], []
    kind = "character" if tokenizer.kind == "char" else "word"
    for where, text in inputs:
        tokens = tokenizer.split(text)
        unknown = [t for t in tokens if t not in tokenizer.stoi or t in SPECIALS]
        names = ", ".join(repr(t) for t in dict.fromkeys(unknown))
        ok = False
        if not text.strip() or not tokens:
            warnings.append(f"{where} is blank{skipped}")
        elif len(unknown) == len(tokens):
            warnings.append(f"{where}: no {kind} of it is in the vocabulary ({names})"
                            f"{skipped}")
        elif max_tokens is not None and len(tokens) > max_tokens:
            warnings.append(f"{where} has {len(tokens)} {kind}s; this model reads at most "
                            f"{max_tokens}{skipped}")
        else:
            ok = True
            if unknown:
                warnings.append(f"{where}: {names} {'is' if len(set(unknown)) == 1 else 'are'} "
                                f"not in the vocabulary (read as <unk>)")
        usable.append(ok)
    for line in warnings[:MAX_WARNINGS]:
        warn(line)
    if len(warnings) > MAX_WARNINGS:
        warn(f"... and {len(warnings) - MAX_WARNINGS} more inputs like these")
    return usable


def _escape_line(text: str) -> str:
    """A continuation on one output line: backslash, newline and carriage return
    written as \\\\, \\n and \\r."""
    return text.replace("\\", "\\\\").replace("\n", "\\n").replace("\r", "\\r")


def _check_attention_path(path: str) -> str | None:
    """--attention: the file writable and its suffix a format matplotlib writes.
    Returns the message for a missing matplotlib (None when it is there), which the
    caller raises after the checks that need the run (--layer): every mistake in
    the command is named, whatever is installed."""
    from ._io import check_output_file
    from .plotting import image_formats

    try:
        formats = image_formats()
    except ImportError as exc:
        check_output_file(path, "--attention")
        return f"--attention: {exc}"
    check_output_file(path, "--attention", formats=formats)
    return None


def _cmd_decode(args) -> int:
    from .train import LMTrainer, Trainer

    # everything the command line says is checked before the run is loaded
    inputs = _decode_inputs(args)
    no_plotting = _check_attention_path(args.attention) if args.attention else None
    trainer = Trainer.from_checkpoint(_checkpoint_path(args.checkpoint))
    lm = isinstance(trainer, LMTrainer)
    if not lm and (args.temperature is not None or args.top_k is not None):
        raise UserError("--temperature and --top-k sample from a language model (--model lm "
                        "runs); sequence-to-sequence runs decode greedily or with --beam")
    if lm and args.beam != 1:
        raise UserError("--beam applies to sequence-to-sequence runs; a language model "
                        "continues each prompt (greedy with --temperature 0)")
    if args.attention:
        n_layers = _attention_layers(trainer)
        if args.layer is not None and args.layer >= n_layers:
            raise UserError(f"--layer {args.layer}: the model has {n_layers} "
                            f"layer{'s' if n_layers != 1 else ''} (--layer counts from 0)")
        if no_plotting:
            raise UserError(no_plotting)
    max_source, max_output = _length_limits(trainer.model, bool(args.attention))
    if args.max_len is not None and max_output is not None and args.max_len > max_output:
        raise UserError(f"--max-len {args.max_len}: this model's positions end at "
                        f"{trainer.model.config['max_len']}: it decodes at most {max_output} "
                        f"tokens{' with --attention' if args.attention else ''}")

    def warn(line):
        print(f"numtransformer decode: warning: {line}", file=sys.stderr)

    usable = _screen_inputs(inputs, trainer.tgt_tok if lm else trainer.src_tok, warn,
                            max_tokens=max_source)
    texts = [text for (_, text), ok in zip(inputs, usable) if ok]
    if lm:
        max_len = 300 if args.max_len is None else args.max_len
        temperature = 0.8 if args.temperature is None else args.temperature
        decoded = trainer.generate(texts, max_len, temperature=temperature, top_k=args.top_k,
                                   seed=args.seed) if texts else []
    else:
        max_len = 64 if args.max_len is None else args.max_len
        decoded = trainer.translate(texts, beam=args.beam, max_len=max_len) if texts else []
    it = iter(decoded)
    outputs = [next(it) if ok else "" for ok in usable]
    if lm and len(inputs) == 1 and args.input_file is None:
        print(inputs[0][1] + outputs[0])  # one prompt: the text it starts, as text
    else:  # one line per input (an lm's continuation escaped onto its line)
        for out in outputs:
            print(_escape_line(out) if lm else out)
    sys.stdout.flush()
    if args.attention:
        first = next((k for k, ok in enumerate(usable) if ok), None)
        if first is None:
            warn("no input could be decoded: no attention drawn")
            return 0
        _draw_attention(args, trainer, lm, inputs[first], outputs[first], max_len)
    return 0


def _short(text: str, width: int = 40) -> str:
    """repr(text), cut to about ``width`` characters for a title."""
    return repr(text) if len(text) <= width else repr(text[:width - 3]) + "..."


def _length_limits(model, attention: bool):
    """(longest source, longest output) a model can decode, None where unlimited: a
    Transformer's positions end at its max_len (the teacher-forced pass that draws the
    attention adds <bos>); an RNN's location score reads at most max_src_len."""
    from .models import Seq2Seq, Transformer

    if isinstance(model, Transformer):
        n = model.config["max_len"]
        return n, n - 1 if attention else n
    if isinstance(model, Seq2Seq) and model.config.get("score") == "location" \
            and model.config.get("attention") == "luong":
        return model.config["max_src_len"], None
    return None, None


def _attention_layers(trainer) -> int:
    """The layers --attention can draw (an RNN decoder: one attention)."""
    from .models import Seq2Seq

    if isinstance(trainer.model, Seq2Seq):
        if trainer.cfg.decoder == "none":
            raise UserError("--attention: this run has no attention to draw (it was trained "
                            "with --decoder none)")
        return 1
    return trainer.cfg.layers


def _draw_attention(args, trainer, lm, source, output, max_len) -> None:
    """--attention: the weights of the first decoded input, a panel per head (--heads)
    or their mean; layers and heads numbered from 1 in the plot, as the study guide
    numbers them (--layer counts from 0, as the parameter names decoder.layers.N do)."""
    from .plotting import plot_attention

    where, text = source
    if lm:  # the causal self-attention over the prompt and what followed it
        src, w = trainer.self_attention(text + output)
        out = src
        kind, labels = "causal self-attention", dict(xlabel="attended position (key)",
                                                    ylabel="position (query)")
    else:
        src, out, w = trainer.cross_attention(text, beam=args.beam, max_len=max_len)
        kind, labels = "cross-attention", dict(xlabel="input", ylabel="output")
    n_layers, n_heads = w.shape[0], w.shape[1]
    layer = n_layers - 1 if args.layer is None else args.layer
    heads = w[layer]
    what = "block" if lm else "decoder layer"
    place = (f" of {what} {layer + 1} of {n_layers} (--layer {layer})"
             if n_layers > 1 or n_heads > 1 else "")
    if args.heads:
        mats, titles = heads, [f"head {h + 1} of {n_heads}" for h in range(n_heads)]
    else:
        mats = heads.mean(axis=0)
        titles = [f"mean of {n_heads} heads"] if n_heads > 1 else None
    try:
        plot_attention(mats, src, out, args.attention, titles=titles,
                       suptitle=f"{kind}{place}: {_short(text)} -> {_short(output)}", **labels)
    except ImportError as exc:
        raise UserError(str(exc)) from None
    print(f"{kind} of {where} ({text!r}) written to {args.attention}", file=sys.stderr)


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
    if args.text is not None and args.text.strip():  # characters outside the vocabulary
        _screen_inputs([("--text", args.text)],
                       trainer.tgt_tok if isinstance(trainer, LMTrainer) else trainer.src_tok,
                       lambda line: print(f"numtransformer trace: warning: {line}",
                                          file=sys.stderr), skipped=" (read as <unk>)")
        longest = _length_limits(model, attention=False)[0]
        n_tokens = len(trainer.src_tok.split(args.text))
        if not isinstance(trainer, LMTrainer) and longest is not None and n_tokens > longest:
            raise UserError(f"--text has {n_tokens} tokens; this model reads at most {longest}")
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
    """One flag per TrainConfig setting (its range or choices, its help and default),
    then the options of the model kinds not run by a TrainConfig (memnn's --hops ...).
    Every flag defaults to None: "keep the config's value"; the help shows the value
    that is kept (TrainConfig's, and where a model kind starts from another, its)."""
    import re

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
        help_text = _model_help() if f.name == "model" else meta.get("help") or ""
        # the default is said once, at the end, with the kinds' own defaults
        help_text = re.sub(r"\s*\(default \{default\}\)", "", help_text).format(default=f.default)
        if not re.search(r"default[: ]", help_text):  # (a help may say it: "default: all")
            help_text += " " + _default_note(f)
        kwargs["help"] = help_text.strip().replace("%", "%%")
        flag = meta["flag"] or f.name
        if meta.get("metavar") or "choices" not in kwargs and "action" not in kwargs:
            kwargs["metavar"] = meta.get("metavar") or flag.upper()
        p.add_argument("--" + flag.replace("_", "-"), **kwargs)
    for kind in registry.kinds():
        defaults = _trainer_defaults(kind)
        for o in kind.options:
            kwargs = {"help": o.help}
            if o.choices is not None:
                kwargs["choices"] = list(o.choices)
            else:
                kwargs["type"] = _range_type(Range(o.type, o.lo))
            default = defaults.get(o.keyword or o.flag)
            if default is not None:
                kwargs["help"] += f" (default: {_shown(default)})"
            p.add_argument("--" + o.flag.replace("_", "-"), **kwargs)


def _trainer_defaults(kind) -> dict:
    """The keyword defaults of a kind's trainer function (memnn: train_memnn's)."""
    if kind.train_config:
        return {}
    import inspect

    from .train.loop import resolve_trainer

    return {name: p.default for name, p in
            inspect.signature(resolve_trainer(kind.trainer)).parameters.items()
            if p.default is not inspect.Parameter.empty}


def _shown(value) -> str:
    if isinstance(value, type):  # a dtype given as its numpy type
        return str(value.__name__)
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def _default_note(f) -> str:
    """'(default: X; lm: Y; memnn: Z)' for a TrainConfig setting: the value an unset flag
    keeps, and where a model kind starts from another value, that kind's."""
    if f.type == "bool":
        shown = "on" if f.default else "off"
    elif f.default is None:
        shown = {"n_train": "the task's own (a corpus: all but valid and test)",
                 "time_budget": "none"}.get(f.name, "none")
    else:
        shown = _shown(f.default)
    per_kind = []
    for kind in registry.kinds():
        if kind.train_config:
            value = (kind.default_task if f.name == "task" else kind.defaults.get(f.name))
        else:  # a kind with its own trainer (memnn): its keyword's default
            keyword = "task" if f.name == "task" else kind.keywords.get(f.name)
            value = kind.default_task if f.name == "task" else (
                _trainer_defaults(kind).get(keyword) if keyword else None)
        if value is not None and _shown(value) != _shown(f.default):
            per_kind.append(f"{kind.name}: {_shown(value)}")
    return f"(default: {'; '.join([shown] + per_kind)})"


class _HelpFormatter(argparse.HelpFormatter):
    """argparse's help, with every option's default shown ("(default: ...)") unless its
    help already says it; flags (on/off) and options without a value have none."""

    def _get_help_string(self, action):
        text = action.help or ""
        if (not action.option_strings or "default" in text
                or action.default is None or action.default is False  # (0 is a default)
                or action.default == argparse.SUPPRESS
                or isinstance(action, (argparse._HelpAction, argparse._VersionAction))):
            return text
        return f"{text} (default: %(default)s)".lstrip()


class _RawHelpFormatter(_HelpFormatter, argparse.RawDescriptionHelpFormatter):
    """The same, with the description's and epilog's paragraphs kept as written."""


EVAL_DESCRIPTION = """\
Evaluate a saved run on a split of its data (the test split by default).

metrics (sequence-to-sequence runs):
  loss            mean cross-entropy per target token, teacher-forced, without
                  label smoothing (the training loss of a run with
                  --label-smoothing > 0 includes it, so it sits higher)
  perplexity      exp(loss)
  token accuracy  the share of target tokens (and the final <eos>) whose
                  likeliest prediction, teacher-forced, is the reference token
  exact match     the share of inputs whose decoded output (greedy, or --beam)
                  equals the reference exactly
  error rate      edit distance between decoded outputs and references
                  (substitutions + deletions + insertions), summed over the
                  split and divided by the number of reference tokens: the
                  character error rate for character tokens, the word error
                  rate for --tokens word, the phoneme error rate for g2p.  It
                  can exceed 100%: every token an output has beyond its
                  reference is an insertion, so an output three times as long
                  as its reference has an error rate of at least 200%.
  BLEU            tsv: corpora, when sacrebleu is installed
lm runs: loss, perplexity, next-character accuracy, bits per character
(loss / ln 2).  memnn runs: the share of questions answered right and wrong.
"""

DECODE_DESCRIPTION = """\
Decode inputs with a saved run: translate them (sequence-to-sequence runs) or
continue them (lm runs).

inputs: the TEXT arguments, then the lines of --input-file (- reads standard
input), numbered from 1 in messages.  Every input gives one output line, in
order.  A blank input (empty or only spaces), an input none of whose
characters (words, for --tokens word runs) is in the run's vocabulary, and an
input longer than the model reads (a Transformer: 256 tokens) are not decoded:
their output line is empty and a warning on stderr names them.  Characters
(words) outside the vocabulary are read as <unk>, with a warning naming them
and the input.

lm runs: one TEXT prompt prints the prompt and its continuation as text.
Several inputs, or --input-file, print one line per input: the continuation
only, with a newline written as \\n, a carriage return as \\r and a backslash
as \\\\.
"""


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = _Parser(
        prog="numtransformer",
        description="Attention models in NumPy with hand-written backward passes.",
        formatter_class=_HelpFormatter,
    )
    parser.add_argument("--version", action="version", version=_version_line(__version__))
    sub = parser.add_subparsers(dest="command", metavar="command")

    p = sub.add_parser("train", help="train a model (no arguments: the default dates run)",
                       formatter_class=_HelpFormatter,
                       description="Train a sequence-to-sequence model on a built-in task "
                       "or corpus, a memory network on bAbI, or a character language model "
                       "on a text. "
                       "Unset options keep the defaults shown (those of TrainConfig, or of "
                       "the model kind where it names its own; with --resume, the saved "
                       "run's values).")
    _add_train_flags(p)
    p.add_argument("--out", metavar="DIR",
                   help="run directory (default: runs/<task name>-<model>-<date-time>)")
    p.add_argument("--resume", action="store_true", help="continue the run saved in --out")
    p.add_argument("--json", action="store_true",
                   help="end with one line of JSON holding the final metrics")
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("eval", help="evaluate a saved run", description=EVAL_DESCRIPTION,
                       formatter_class=_RawHelpFormatter)
    p.add_argument("--checkpoint", required=True, metavar="DIR_OR_FILE",
                   help="a run directory, or its checkpoint.npz")
    p.add_argument("--split", default="test", choices=["train", "valid", "test"],
                   help="the split to evaluate")
    p.add_argument("--limit", type=POSITIVE,
                   help="evaluate only the first N pairs (default: all of the split)")
    p.add_argument("--beam", type=POSITIVE, default=1, help="beam size (1: greedy)")
    p.add_argument("--json", action="store_true", help="print one line of JSON")
    p.set_defaults(func=_cmd_eval)

    p = sub.add_parser("decode", help="decode inputs with a saved run",
                       description=DECODE_DESCRIPTION, formatter_class=_RawHelpFormatter)
    p.add_argument("text", nargs="*", help="inputs to decode")
    p.add_argument("--checkpoint", required=True, metavar="DIR_OR_FILE",
                   help="a run directory, or its checkpoint.npz")
    p.add_argument("--input-file", metavar="F",
                   help="one input per line (- : standard input); one output line per input "
                   "(default: none, the TEXT arguments only)")
    p.add_argument("--beam", type=POSITIVE, default=1, help="beam size (1: greedy)")
    p.add_argument("--max-len", type=POSITIVE, default=None,
                   help="longest output (default: 64); lm: characters to generate "
                   "(default: 300)")
    p.add_argument("--temperature", type=NONNEGATIVE_FLOAT, default=None,
                   help="lm: sampling temperature (default: 0.8; 0: greedy)")
    p.add_argument("--top-k", type=POSITIVE, default=None,
                   help="lm: sample from the k likeliest (default: from all)")
    p.add_argument("--seed", type=NONNEGATIVE, default=0, help="lm: sampling seed")
    p.add_argument("--attention", metavar="OUT.png",
                   help="draw the cross-attention of the first decoded input (lm: the causal "
                   "self-attention over prompt and continuation) to a .png, .pdf, .svg, ... "
                   "file; needs matplotlib (default: no drawing)")
    p.add_argument("--layer", type=NONNEGATIVE,
                   help="decoder layer to draw, counted from 0 as in the parameter names "
                   "(decoder.layers.0: the first); the plot numbers layers and heads from 1 "
                   "(default: the last layer)")
    p.add_argument("--heads", action="store_true",
                   help="draw each head in a grid, not their mean")
    p.set_defaults(func=_cmd_decode)

    from .pretrained.embed import add_embed_arguments, run_embed

    p = sub.add_parser("embed", help="sentence embeddings and cosine similarities "
                       "(all-MiniLM-L6-v2 in NumPy)", formatter_class=_HelpFormatter)
    add_embed_arguments(p)
    for action in p._actions:  # say what an unset option means (pretrained/embed.py's flags)
        if action.dest == "input_file" and "default" not in (action.help or ""):
            action.help += " (default: none, the SENTENCE arguments only)"
    p.set_defaults(func=run_embed)

    from .chat import add_commands as add_chat_commands

    add_chat_commands(sub)  # generate, chat: SmolLM2-135M-Instruct (numtransformer/chat.py)
    from .finetune import add_commands as add_finetune_commands

    add_finetune_commands(sub)  # finetune: LoRA adapters for SmolLM2 (numtransformer/finetune.py)

    p = sub.add_parser("trace", help="print every named intermediate of one forward pass",
                       formatter_class=_HelpFormatter)
    p.add_argument("--checkpoint", metavar="DIR_OR_FILE",
                   help="a saved run (default: a tiny fresh Transformer on a date)")
    p.add_argument("--text", help="the source to trace (default: a training example)")
    p.add_argument("--values", type=NONNEGATIVE, default=4, help="values shown per array")
    p.add_argument("--seed", type=NONNEGATIVE, default=0,
                   help="seed of the tiny fresh model (without --checkpoint)")
    p.set_defaults(func=_cmd_trace)

    p = sub.add_parser("gradcheck", help="check every layer's backward against finite differences",
                       formatter_class=_HelpFormatter,
                       description="Check every layer's backward pass against finite "
                       "differences in float64 (about a minute; progress on stderr).")
    p.add_argument("--seed", type=NONNEGATIVE, default=0,
                   help="random seed for the inputs, parameters and G (each case's sizes are "
                   "fixed)")
    p.add_argument("--threshold", type=POSITIVE_FLOAT, default=1e-7,
                   help="max relative error allowed")
    p.add_argument("--only", metavar="NAME", default=None,
                   help="check only layers whose name contains NAME (default: every layer)")
    p.add_argument("--markdown", action="store_true",
                   help="print one Markdown row per layer (its worst tensor) instead")
    p.set_defaults(func=_cmd_gradcheck)
    return parser


def _version_line(version: str) -> str:
    import platform

    import numpy as np

    return f"numtransformer {version} (numpy {np.__version__}, Python {platform.python_version()})"


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
