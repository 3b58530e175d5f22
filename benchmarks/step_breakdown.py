"""Where one training step's time goes: a config of ``bench_train.py`` on one
thread, float32, fast kernels.

    python benchmarks/step_breakdown.py --config rnn-attn --batch 16
    mpiexec -n 2 python benchmarks/step_breakdown.py --config tx-tiny

One process (no MPI launcher): the step's median time (forward, loss,
backward, AdamW), and the part of it spent inside the kernels that run the
GEMMs of the linear layers and the recurrences (the linear and input
projections forward and backward, the recurrent products h W_hh and
da W_hh^T, the recurrent weight gradients): those functions are wrapped with a
clock, so what remains is everything else (attention, norms, activations,
loss, optimizer, Python).  The attention's own batched matmuls count as
"other".  ``--batch`` sets the batch (a rank's share: half the config's B for
two ranks).

Under ``mpiexec -n N``: each rank trains its shard of the config's batch, as
``bench_distributed.py``'s ``ours Nx1`` does, and prints its median forward,
backward, gradient exchange (``World.average_gradients``: the copies, the
Allreduce and the wait for the slower rank) and optimizer times.

Each run sets every thread count to one before NumPy is imported.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
             "NUMTRANSFORMER_NUM_THREADS"):
    os.environ[_var] = "1"
os.environ["NUMTRANSFORMER_KERNELS"] = "fast"

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))

import numpy as np  # noqa: E402

import bench_train as bt  # noqa: E402  (the configs and models)


def _gemm_clock():
    """Wrap the GEMM-running kernels with a clock; returns the accumulator list."""
    from numtransformer import fast
    from numtransformer.fast import linear as fast_linear
    from numtransformer.fast import recurrent as fast_recurrent
    from numtransformer.recurrent import cells

    spent = [0.0]

    def clocked(f):
        def g(*args, **kwargs):
            t = time.perf_counter()
            try:
                return f(*args, **kwargs)
            finally:
                spent[0] += time.perf_counter() - t
        return g

    for module, name in ((fast, "linear_backward"), (fast, "projection_grads"),
                         (fast_linear, "parallel_matmul"), (fast_recurrent, "_product"),
                         (cells, "linear_forward")):
        setattr(module, name, clocked(getattr(module, name)))
    return spent


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default="tx-tiny", choices=sorted(bt.CONFIGS))
    ap.add_argument("--batch", type=int, default=None, help="batch size (default: the config's "
                    "B, or its share per rank under mpiexec)")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=5)
    args = ap.parse_args()

    from numtransformer._malloc import keep_freed_memory
    from numtransformer.losses import CrossEntropyLoss
    from numtransformer.optim import AdamW

    keep_freed_memory()
    under_mpi = any(v in os.environ for v in ("PMI_RANK", "OMPI_COMM_WORLD_RANK"))
    c = dict(bt.CONFIGS[args.config])
    if under_mpi:
        from numtransformer.train.distributed import world
        w = world()
        b = bt.batch(c)
        rows = b["targets"].shape[0]
        b = {k: v[w.rank * rows // w.size:(w.rank + 1) * rows // w.size] for k, v in b.items()}
        spent = [0.0]
    else:
        w = None
        if args.batch is not None:
            c["B"] = args.batch
        b = bt.batch(c)
        spent = _gemm_clock()
    model, fwd = bt.build_ours(c, np.float32)
    loss_fn = CrossEntropyLoss(ignore_index=0)
    opt = AdamW(model, lr=bt.LR, weight_decay=0.01)
    phases = {name: [] for name in ("forward", "backward", "exchange", "optimizer", "step",
                                    "gemm")}
    for i in range(args.warmup + args.steps):
        spent[0] = 0.0
        t0 = time.perf_counter()
        logits, cache = fwd(b)
        loss, lcache = loss_fn.forward(logits, b["targets"])
        opt.zero_grad()
        t1 = time.perf_counter()
        model.backward(loss_fn.backward(1.0, lcache), cache)
        del cache, lcache, logits
        t2 = time.perf_counter()
        if w is not None:
            w.average_gradients(opt.params, float(loss), b["targets"].size)
        t3 = time.perf_counter()
        opt.step()
        t4 = time.perf_counter()
        if i >= args.warmup:
            for name, v in zip(phases, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t4 - t0, spent[0])):
                phases[name].append(v)
    ms = {k: statistics.median(v) * 1e3 for k, v in phases.items()}
    B = b["targets"].shape[0]
    if w is None:
        print(f"{args.config} B={B}, one thread, float32: step {ms['step']:.1f} ms "
              f"(forward {ms['forward']:.1f}, backward {ms['backward']:.1f}, optimizer "
              f"{ms['optimizer']:.1f}); in the GEMM kernels {ms['gemm']:.1f} ms, "
              f"other {ms['step'] - ms['gemm']:.1f} ms")
    else:
        print(f"rank {w.rank}/{w.size} {args.config} B={B}: step {ms['step']:.1f} ms "
              f"(forward {ms['forward']:.1f}, backward {ms['backward']:.1f}, exchange "
              f"{ms['exchange']:.1f}, optimizer {ms['optimizer']:.1f})", flush=True)


if __name__ == "__main__":
    main()
