"""Tiled (FlashAttention-style) attention against the plain core: time and peak memory.

    python benchmarks/bench_flash.py [--threads 1] [--dtypes float32,float64]
        [--lengths 256,1024,4096] [--block 128] [--sweep 1024] [--causal]
        [--huge] [--repeat 3]

One head (B = 1, H = 1, d = 64), forward + backward:
``flash_attention_forward`` / ``_backward`` (the tiled kernel) against
``scaled_dot_product_attention_forward`` / ``_backward``, both as the layers
select them (``numtransformer.kernels``: the fast kernels for float32, the
reference ones for float64; ``NUMTRANSFORMER_KERNELS=fast`` or ``reference``
to choose).  For each length and dtype:

* time: the best of ``--repeat`` runs of forward + backward, plain and tiled
  interleaved;
* peak extra memory: the peak that ``tracemalloc`` sees during one forward +
  backward (NumPy reports its buffers to it), above what was held before the
  call (q, k, v and the upstream gradient): the scores and weights for the
  plain kernel, O(T d) arrays and one tile for the tiled one.

``--sweep T`` times the tiled kernel at length T for block sizes 32 .. 512
(block_q = block_k).  ``--huge`` adds T = 65536 for the tiled kernel alone in
float32 (the plain kernel would need a 16 GiB score matrix per array; about a
minute per pass on one core, causal halves it).  The plain kernel is skipped
above ``--plain-max`` (default 8192).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import tracemalloc


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--dtypes", default="float32,float64")
    p.add_argument("--lengths", default="256,1024,4096")
    p.add_argument("--block", type=int, default=128, help="block_q = block_k of the tiled kernel")
    p.add_argument("--sweep", type=int, default=1024,
                   help="length of the block-size sweep (0: none)")
    p.add_argument("--causal", action="store_true", help="causal attention (default: none)")
    p.add_argument("--huge", action="store_true", help="also T = 65536, tiled only, float32")
    p.add_argument("--plain-max", type=int, default=8192)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--d", type=int, default=64)
    return p.parse_args()


args = parse_args()
for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[var] = str(args.threads)

import numpy as np  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from numtransformer.kernels import get_kernels, select  # noqa: E402


def problem(T, dtype):
    rng = np.random.default_rng(0)
    q, k, v, do = (rng.standard_normal((1, 1, T, args.d)).astype(dtype) for _ in range(4))
    return q, k, v, do


def plain_step(q, k, v, do):
    K = select(q.dtype)
    mask = None
    if args.causal:
        T = q.shape[2]
        mask = np.triu(np.ones((T, T), dtype=bool), 1)
    out, cache = K.scaled_dot_product_attention_forward(q, k, v, mask)
    K.scaled_dot_product_attention_backward(do, cache)


def tiled_step(q, k, v, do, block=None):
    block = block or args.block
    K = select(q.dtype)
    out, cache = K.flash_attention_forward(q, k, v, causal=args.causal, block_q=block,
                                           block_k=block)
    K.flash_attention_backward(do, cache)


def seconds(step, *a, **kw):
    t = time.perf_counter()
    step(*a, **kw)
    return time.perf_counter() - t


def peak_extra(step, *a, **kw) -> int:
    """Bytes: tracemalloc's peak during the call, above what was held before it."""
    tracemalloc.start()
    before, _ = tracemalloc.get_traced_memory()
    tracemalloc.reset_peak()
    step(*a, **kw)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return peak - before


def mib(n) -> str:
    return f"{n / 2**20:.1f}"


def main():
    dtypes = [np.dtype(x) for x in args.dtypes.split(",")]
    lengths = [int(x) for x in args.lengths.split(",")]
    print(f"one head, d={args.d}, threads={args.threads}, block={args.block}, "
          f"causal={args.causal}, kernels={get_kernels()}, numpy {np.__version__}; "
          f"forward + backward, best of {args.repeat}")
    print("| dtype | T | plain ms | tiled ms | tiled / plain | plain peak MiB | "
          "tiled peak MiB | tiled / plain memory |")
    print("|---|---|---|---|---|---|---|---|")
    runs = [(dt, T) for dt in dtypes for T in lengths]
    if args.huge:
        runs.append((np.dtype(np.float32), 65536))
    for dt, T in runs:
        q, k, v, do = problem(T, dt)
        plain = T <= args.plain_max
        tp, tt = [], []
        if T <= 8192:
            for _ in range(args.repeat):  # interleaved, so machine noise hits both
                if plain:
                    tp.append(seconds(plain_step, q, k, v, do))
                tt.append(seconds(tiled_step, q, k, v, do))
            mt = peak_extra(tiled_step, q, k, v, do)
        else:  # one run, timed and traced at once (tracemalloc costs nothing per tile)
            start = time.perf_counter()
            mt = peak_extra(tiled_step, q, k, v, do)
            tt.append(time.perf_counter() - start)
        mp = peak_extra(plain_step, q, k, v, do) if plain else None
        cells = [str(dt), str(T),
                 f"{1e3 * min(tp):.1f}" if plain else "-", f"{1e3 * min(tt):.1f}",
                 f"{min(tt) / min(tp):.2f}" if plain else "-",
                 mib(mp) if plain else "-", mib(mt) if mt is not None else "-",
                 f"{mt / mp:.3f}" if plain and mt is not None else "-"]
        print("| " + " | ".join(cells) + " |", flush=True)
    if args.sweep:
        T = args.sweep
        print(f"\nblock size at T={T} (block_q = block_k), tiled ms (best of {args.repeat}), "
              f"plain ms for reference")
        print("| dtype | plain | " + " | ".join(str(b) for b in (32, 64, 128, 256, 512)) + " |")
        print("|---|---|" + "---|" * 5)
        for dt in dtypes:
            q, k, v, do = problem(T, dt)
            blocks = (32, 64, 128, 256, 512)
            tp, tb = [], {b: [] for b in blocks}
            for _ in range(args.repeat):  # interleaved: plain, then each block size
                tp.append(seconds(plain_step, q, k, v, do))
                for b in blocks:
                    tb[b].append(seconds(tiled_step, q, k, v, do, block=b))
            print(f"| {dt} | {1e3 * min(tp):.1f} | "
                  + " | ".join(f"{1e3 * min(tb[b]):.1f}" for b in blocks) + " |", flush=True)


if __name__ == "__main__":
    main()
