"""Forward + backward time of the core layers, numtransformer vs PyTorch.

    python benchmarks/bench_layers.py [--threads 1] [--dtype float32] [--repeat 20]

Each layer runs at a Transformer-like size.  Ours and PyTorch's run in the
same process, interleaved (ours, theirs, ours, theirs, ...), so machine noise
hits both alike; the table reports each median and the median of the per-pair
ratios (ours / torch: below 1 means numtransformer is faster).  PyTorch is
optional: without it only our times are printed.  Set the BLAS thread count
with --threads (it must be set before numpy is imported, which this script
does itself).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    p.add_argument("--repeat", type=int, default=20)
    return p.parse_args()


args = parse_args()
for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[var] = str(args.threads)

import numpy as np  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
import numtransformer as nt  # noqa: E402

try:
    import torch  # noqa: E402

    torch.set_num_threads(args.threads)
except ImportError:  # pragma: no cover
    torch = None

DT = np.dtype(args.dtype)
rng = np.random.default_rng(0)
N, D, F, V = 2048, 256, 1024, 8000  # rows (B*T), model width, FFN width, vocabulary


def ours_step(module, inputs, dout):
    out, cache = module.forward(*inputs)
    module.backward(dout, cache)


def cases():
    x = rng.standard_normal((N, D)).astype(DT)
    xf = rng.standard_normal((N, F)).astype(DT)
    ids = rng.integers(0, V, N)
    logits = rng.standard_normal((N, V)).astype(DT)
    scores = rng.standard_normal((16, 8, 128, 128)).astype(DT)
    g = lambda *s: rng.standard_normal(s).astype(DT)  # noqa: E731

    yield "Linear 256->1024", nt.Linear(D, F, dtype=DT, rng=0), (x,), g(N, F), \
        (lambda: torch.nn.Linear(D, F), lambda t: (t,), "x")
    yield "LayerNorm 256", nt.LayerNorm(D, dtype=DT), (x,), g(N, D), \
        (lambda: torch.nn.LayerNorm(D), lambda t: (t,), "x")
    yield "GELU 1024", nt.GELU(), (xf,), g(N, F), (lambda: torch.nn.GELU(), lambda t: (t,), "xf")
    yield "Softmax 16x8x128x128", nt.Softmax(), (scores,), g(*scores.shape), \
        (lambda: torch.nn.Softmax(-1), lambda t: (t,), "scores")
    yield "Embedding 8000x256", nt.Embedding(V, D, dtype=DT, rng=0), (ids,), g(N, D), \
        (lambda: torch.nn.Embedding(V, D), lambda t: (t,), "ids")
    yield "FFN 256-1024-256", nt.PositionwiseFeedForward(D, F, dtype=DT, rng=0), (x,), g(N, D), \
        (lambda: torch.nn.Sequential(torch.nn.Linear(D, F), torch.nn.ReLU(),
                                     torch.nn.Linear(F, D)), lambda t: (t,), "x")
    yield "CrossEntropy 8000", nt.CrossEntropyLoss(), (logits, ids), 1.0, \
        (lambda: torch.nn.CrossEntropyLoss(), lambda t: (t, torch.from_numpy(ids)), "logits")
    _ = (x, xf, logits, scores)


def main():
    print(f"threads={args.threads} dtype={DT} repeat={args.repeat} numpy={np.__version__}"
          + (f" torch={torch.__version__}" if torch else " torch=absent"))
    header = f"{'layer':24s} {'ours ms':>9s} {'torch ms':>9s} {'ratio':>7s}"
    print(header + "\n" + "-" * len(header))
    for name, module, inputs, dout, (make_torch, torch_inputs, _) in cases():
        theirs_step = None
        if torch is not None:
            tm = make_torch().to(getattr(torch, args.dtype))
            tin = [torch.from_numpy(a) if isinstance(a, np.ndarray) else a for a in inputs]
            if tin[0].is_floating_point():
                tin[0].requires_grad_(True)
            targs = torch_inputs(tin[0])
            tdout = torch.from_numpy(np.asarray(dout, dtype=DT))

            def theirs_step():
                tm.zero_grad(set_to_none=False)
                out = tm(*targs)
                out.backward(tdout)

        ours, theirs, ratios = [], [], []
        for i in range(args.repeat + 3):  # 3 warm-up rounds
            t0 = time.perf_counter()
            ours_step(module, inputs, dout)
            t1 = time.perf_counter()
            if theirs_step is not None:
                theirs_step()
            t2 = time.perf_counter()
            if i >= 3:
                ours.append(t1 - t0)
                if theirs_step is not None:
                    theirs.append(t2 - t1)
                    ratios.append((t1 - t0) / (t2 - t1))
        mo = statistics.median(ours) * 1e3
        if theirs:
            mt = statistics.median(theirs) * 1e3
            print(f"{name:24s} {mo:9.2f} {mt:9.2f} {statistics.median(ratios):7.2f}")
        else:
            print(f"{name:24s} {mo:9.2f} {'-':>9s} {'-':>7s}")


if __name__ == "__main__":
    main()
