"""End-To-End Memory Networks on the bAbI-style tasks: test error per task.

    python benchmarks/memnn_babi.py [--tasks 1,2,3,5,6,7] [--n-train 5000] [--epochs 100]
                                    [--hops 3] [--tying adjacent] [--jobs 1] [--seed 0]

Per-task training: one MemN2N per task (3 hops, position encoding, temporal
encoding, adjacent tying, d = 20), each on its own generated stories
(``numtransformer.data.babi``: train / valid / test never share a story).
The recipe is the paper's (Sukhbaatar et al., 2015, sec. 4.2): SGD at 0.01
halved every ``--anneal-every`` epochs, gradient norm clipped at 40, batches of
32, linear start (softmax removed until the validation loss stops falling, at
most ``--linear-start`` epochs, at half the learning rate) and random noise
(10% empty memories); the model with the lowest validation error is kept.
Unlike the paper, one run per task (no best-of-10 restarts) and, by default,
5000 training stories per task instead of bAbI's 1000.

Prints a table of train / test error per task with the time each took, the
mean test error and the wall time, then, for one solved test story of each
task, the attention of every hop over the story's sentences (supporting facts
marked with *), so a reader can see which sentences each hop read.
"""

from __future__ import annotations

import argparse
import os
import sys
import time


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tasks", default="1,2,3,5,6,7", help="comma-separated task ids")
    p.add_argument("--n-train", type=int, default=5000)
    p.add_argument("--n-valid", type=int, default=500)
    p.add_argument("--n-test", type=int, default=1000)
    p.add_argument("--epochs", type=int, default=100)
    p.add_argument("--anneal-every", type=int, default=25)
    p.add_argument("--linear-start", type=int, default=20,
                   help="at most this many linear-start epochs (0: none)")
    p.add_argument("--random-noise", type=float, default=0.1)
    p.add_argument("--hops", type=int, default=3)
    p.add_argument("--tying", default="adjacent", choices=["adjacent", "layerwise"])
    p.add_argument("--d", type=int, default=20, help="embedding size")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--jobs", type=int, default=1, help="tasks trained in parallel processes")
    p.add_argument("--threads", type=int, default=1, help="BLAS threads per process")
    p.add_argument("--quiet", action="store_true", help="no per-epoch lines")
    return p.parse_args()


args = parse_args()
for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[var] = str(args.threads)

import numpy as np  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from numtransformer.data.babi import BABI_TASKS, encode_babi  # noqa: E402
from numtransformer.memnn_train import train_memnn  # noqa: E402


def run_task(task: int) -> dict:
    log = None if args.quiet else (lambda line: print(line, flush=True))
    return train_memnn(task, hops=args.hops, tying=args.tying, d=args.d, epochs=args.epochs,
                       anneal_every=args.anneal_every,
                       linear_start_epochs=args.linear_start, linear_start_patience=3,
                       random_noise=args.random_noise, n_train=args.n_train,
                       n_valid=args.n_valid, n_test=args.n_test, seed=args.seed, log=log,
                       log_every=10)


def show_attention(result: dict) -> None:
    """One solved test story: each sentence with the attention of every hop."""
    model, data = result["model"], result["data"]
    tok = data.tokenizer
    # a short story (4-10 sentences) the model answers correctly, whose support
    # is not simply the last sentence
    candidates = [e for e in data.test if 4 <= len(e.story) <= 10
                  and e.support and max(e.support) < len(e.story) - 1]
    candidates = candidates or list(data.test)
    batch = encode_babi(candidates[:200], tok, model.memory_size)
    answer, p = model.predict(batch.story, batch.query, batch.story_pad_mask)
    solved = np.flatnonzero(answer == batch.answer)
    if solved.size == 0:
        print(f"task {result['task']}: no solved story to show")
        return
    b = int(solved[0])
    ex = candidates[b]
    print(f"\ntask {result['task']} ({BABI_TASKS[result['task']]}): "
          f"\"{ex.question}?\" -> {tok.itos[answer[b]]} (correct)")
    hops = p.shape[1]
    print("  " + "".join(f"hop {k + 1:<4}" for k in range(hops)) + "  sentence  "
          "(* = supporting fact)")
    for i, sentence in enumerate(ex.story):
        mark = "*" if i in ex.support else " "
        weights = "".join(f"{p[b, k, i]:<8.2f}" for k in range(hops))
        print(f"  {weights} {mark} {i + 1:2d} {sentence}")


def main() -> int:
    tasks = [int(t) for t in args.tasks.split(",") if t.strip()]
    unknown = [t for t in tasks if t not in BABI_TASKS]
    if unknown:
        print(f"unknown task(s) {unknown}; expected some of {sorted(BABI_TASKS)}", file=sys.stderr)
        return 2
    start = time.perf_counter()
    if args.jobs > 1:
        import multiprocessing

        with multiprocessing.get_context("fork").Pool(args.jobs) as pool:
            results = pool.map(run_task, tasks, chunksize=1)
    else:
        results = [run_task(t) for t in tasks]
    wall = time.perf_counter() - start

    print(f"\nEnd-To-End Memory Network, {args.hops} hops, {args.tying} tying, PE + TE, "
          f"linear start <= {args.linear_start} epochs, random noise {args.random_noise}, "
          f"per-task training, {args.n_train} train / {args.n_test} test stories per task, "
          f"{args.epochs} epochs, seed {args.seed}")
    rows = [("task", "name", "train err %", "test err %", "best epoch", "time s")]
    for r in results:
        rows.append((str(r["task"]), BABI_TASKS[r["task"]], f"{100 * r['train_error']:.1f}",
                     f"{100 * r['test_error']:.1f}", str(r["best_epoch"]), f"{r['seconds']:.0f}"))
    mean = float(np.mean([r["test_error"] for r in results]))
    rows.append(("mean", "", "", f"{100 * mean:.1f}", "", ""))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for k, row in enumerate(rows):
        print("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip())
        if k == 0 or k == len(rows) - 2:
            print("  ".join("-" * w for w in widths))
    print(f"wall time {wall:.0f} s ({args.jobs} process(es), {args.threads} BLAS thread(s) each)")
    for r in results:
        show_attention(r)
    return 0


if __name__ == "__main__":
    sys.exit(main())
