"""Do the row blocks of numtransformer._parallel pay off?  One process, steps alternated.

    OPENBLAS_NUM_THREADS=2 python benchmarks/bench_threads.py                 # every config
    OPENBLAS_NUM_THREADS=2 python benchmarks/bench_threads.py tx-base --steps 8

In one process (so both sides share the machine's moment-to-moment load), the
training step of bench_train.py's configs alternates between the elementwise
passes on one thread and on the configured number, with BLAS at its configured
threads throughout; the printed speed-up is the median of the per-pair ratios
(> 1: the blocks help).  numtransformer is imported before numpy, so its
OPENBLAS_THREAD_TIMEOUT default applies; set the variable yourself to compare
others (28 is OpenBLAS's own).
"""

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from numtransformer import _parallel  # noqa: E402  (before numpy: see the docstring)
from numtransformer._malloc import keep_freed_memory  # noqa: E402
from numtransformer.losses import CrossEntropyLoss  # noqa: E402
from numtransformer.optim import AdamW  # noqa: E402

import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_train as bt  # noqa: E402


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("configs", nargs="*", default=list(bt.CONFIGS))
    p.add_argument("--steps", type=int, default=8, help="measured pairs of steps")
    p.add_argument("--dtype", default="float32")
    args = p.parse_args(argv)
    keep_freed_memory()
    n = _parallel.get_num_threads()
    if n == 1:
        sys.exit("bench_threads: one thread is configured; nothing to compare "
                 "(set OPENBLAS_NUM_THREADS=2)")
    print(f"elementwise threads 1 vs {n}; OPENBLAS_NUM_THREADS="
          f"{os.environ.get('OPENBLAS_NUM_THREADS', '(unset)')}, OPENBLAS_THREAD_TIMEOUT="
          f"{os.environ.get('OPENBLAS_THREAD_TIMEOUT')}")
    for name in args.configs:
        c = bt.CONFIGS[name]
        model, fwd = bt.build_ours(c, np.dtype(args.dtype))
        b = bt.batch(c)
        loss_fn = CrossEntropyLoss(ignore_index=0)
        opt = AdamW(model, lr=1e-3, weight_decay=0.01)

        def step():
            t0 = time.perf_counter()
            logits, cache = fwd(b)
            loss, lcache = loss_fn.forward(logits, b["targets"])
            model.backward(loss_fn.backward(1.0, lcache), cache)
            opt.step()
            opt.zero_grad()
            return time.perf_counter() - t0

        times = {1: [], n: []}
        for i in range(2 + args.steps):
            for k in (1, n):
                _parallel.set_num_threads(k)
                t = step()
                if i >= 2:  # two warm-up pairs
                    times[k].append(t)
        _parallel.set_num_threads(None)
        ratio = np.median(np.array(times[1]) / np.array(times[n]))
        print(f"{name:10s} {args.dtype}: 1 thread {1e3 * np.median(times[1]):7.1f} ms, "
              f"{n} threads {1e3 * np.median(times[n]):7.1f} ms, speed-up {ratio:.3f}")


if __name__ == "__main__":
    main()
